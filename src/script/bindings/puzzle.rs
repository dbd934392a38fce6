//! Puzzle bindings (spec §1): `gen_puzzle`, `gen_prompt`, `gen_dataset`, JSONL datasets,
//! tokenizers, and the `Puzzle` and `Sample` script types with their getters.

use super::args::{RResult, guard, options};
use crate::puzzle::dataset::{read_jsonl, write_jsonl};
use crate::puzzle::prompt::gen_prompt;
use crate::puzzle::sample::DEFAULT_LAST_K;
use crate::puzzle::{
    Frame, PromptOptions, Puzzle, PuzzleParams, QueryFilter, Sample, Style, gen_puzzle,
};
use crate::script::docs::Registrar;
use crate::script::state::{HostState, lock};
use crate::tokenizer::{fixture_tokenizer, load_tokenizer};
use anyhow::{Result, anyhow, bail, ensure};
use rhai::{Array, Dynamic, INT, Map};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A puzzle as a script value (shared, immutable).
#[derive(Clone)]
pub struct ScriptPuzzle(pub Arc<Puzzle>);

/// A sample as a script value (shared, immutable).
#[derive(Clone)]
pub struct ScriptSample(pub Arc<Sample>);

/// A tokenizer as a script value.
#[derive(Clone)]
pub struct ScriptTokenizer(pub Arc<tokenizers::Tokenizer>);

/// The keys of `gen_puzzle(params)` (missing keys keep the W1 defaults).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PuzzleKeys {
    #[serde(default)]
    relations: Option<String>,
    #[serde(default, deserialize_with = "super::args::count")]
    n: Option<usize>,
    #[serde(default, deserialize_with = "super::args::count")]
    m: Option<usize>,
    #[serde(default)]
    frame: Option<String>,
    #[serde(default, deserialize_with = "super::args::count")]
    n_color: Option<usize>,
    #[serde(default, deserialize_with = "super::args::count")]
    n_train: Option<usize>,
    #[serde(default, deserialize_with = "super::args::count")]
    n_test: Option<usize>,
    #[serde(default, rename = "Q_train", deserialize_with = "super::args::count")]
    q_train: Option<usize>,
    #[serde(default, rename = "Q_test", deserialize_with = "super::args::count")]
    q_test: Option<usize>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default, deserialize_with = "super::args::count")]
    seed: Option<usize>,
}

/// The keys of `gen_prompt(puzzle, opts)` (missing keys keep the defaults).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptKeys {
    #[serde(default)]
    style: Option<String>,
    #[serde(default)]
    transpose: Option<bool>,
    #[serde(default)]
    color_quote: Option<String>,
    #[serde(default)]
    remove_instructions: Option<bool>,
    #[serde(default)]
    template: Option<TemplateSpec>,
}

/// The `template` option: a JSON file of prompt words, or the words as a map.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TemplateSpec {
    Path(String),
    Words(Box<crate::puzzle::template::PromptTemplate>),
}

/// Prompt keys, for splitting the one map of `gen_dataset` into its parts.
const PROMPT_KEYS: [&str; 5] = [
    "style",
    "transpose",
    "color_quote",
    "remove_instructions",
    "template",
];
/// The keys only `gen_dataset` takes (their values may be script objects, e.g. a Tokenizer).
const DATASET_KEYS: [&str; 2] = ["seeds", "tokenizer"];

fn get_usize(v: &Dynamic, key: &str) -> Result<usize> {
    let i = v
        .as_int()
        .map_err(|t| anyhow!("{key} must be an int, got {t}"))?;
    ensure!(i >= 0, "{key} must be >= 0, got {i}");
    Ok(i as usize)
}

fn get_str(v: &Dynamic, key: &str) -> Result<String> {
    v.clone()
        .into_string()
        .map_err(|t| anyhow!("{key} must be a string, got {t}"))
}

/// Puzzle parameters from a script map (missing keys keep the W1 defaults).
pub fn puzzle_params(map: &Map) -> Result<PuzzleParams> {
    let k: PuzzleKeys = options(map)?;
    let d = PuzzleParams::default();
    Ok(PuzzleParams {
        relations: k.relations.unwrap_or(d.relations),
        n: k.n.unwrap_or(d.n),
        m: k.m.unwrap_or(d.m),
        frame: match k.frame {
            Some(f) => Frame::parse(&f)?,
            None => d.frame,
        },
        n_color: k.n_color.unwrap_or(d.n_color),
        n_train: k.n_train.unwrap_or(d.n_train),
        n_test: k.n_test.unwrap_or(d.n_test),
        q_train: k.q_train.unwrap_or(d.q_train),
        q_test: k.q_test.unwrap_or(d.q_test),
        seed: k.seed.map_or(d.seed, |v| v as u64),
        filter: match k.filter {
            Some(f) => QueryFilter::parse(&f)?,
            None => d.filter,
        },
    })
}

/// Prompt options from a script map (missing keys keep the defaults).
pub fn prompt_options(map: &Map) -> Result<PromptOptions> {
    let k: PromptKeys = options(map)?;
    let d = PromptOptions::default();
    let o = PromptOptions {
        style: match k.style {
            Some(s) => Style::parse(&s)?,
            None => d.style,
        },
        transpose: k.transpose.unwrap_or(d.transpose),
        color_quote: k.color_quote.unwrap_or(d.color_quote),
        remove_instructions: k.remove_instructions.unwrap_or(d.remove_instructions),
        template: match k.template {
            None => None,
            Some(TemplateSpec::Path(p)) => Some(
                crate::puzzle::template::PromptTemplate::from_file(Path::new(&p))?,
            ),
            Some(TemplateSpec::Words(t)) => {
                t.validate().map_err(|e| anyhow!("template: {e}"))?;
                Some(*t)
            }
        },
    };
    o.validate()?;
    Ok(o)
}

/// Splits the map of `gen_dataset` into its puzzle and prompt parts (the dataset keys are read
/// directly); an unknown key is reported by the puzzle part, with the other keys named.
fn dataset_parts(map: &Map) -> Result<(PuzzleParams, PromptOptions)> {
    let (mut puzzle, mut prompt) = (Map::new(), Map::new());
    for (k, v) in map {
        if PROMPT_KEYS.contains(&k.as_str()) {
            prompt.insert(k.clone(), v.clone());
        } else if !DATASET_KEYS.contains(&k.as_str()) {
            puzzle.insert(k.clone(), v.clone());
        }
    }
    let params = puzzle_params(&puzzle).map_err(|e| {
        if e.to_string().starts_with("unknown option") {
            anyhow!(
                "{e}; also: {}, {}",
                PROMPT_KEYS.join(", "),
                DATASET_KEYS.join(", ")
            )
        } else {
            e
        }
    })?;
    Ok((params, prompt_options(&prompt)?))
}

/// Seeds: `"A..B"`, `"A..=B"`, `"A"` or `[A, B]` (half-open).
fn seed_range(v: &Dynamic) -> Result<std::ops::Range<u64>> {
    if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        return crate::puzzle::cli::parse_seeds(s.as_str());
    }
    if let Some(arr) = v.read_lock::<Array>() {
        ensure!(
            arr.len() == 2,
            "seeds as an array must be [start, end], got {} elements",
            arr.len()
        );
        let (a, b) = (
            get_usize(&arr[0], "seeds[0]")?,
            get_usize(&arr[1], "seeds[1]")?,
        );
        ensure!(a < b, "seed range [{a}, {b}] is empty");
        let range = a as u64..b as u64;
        crate::puzzle::cli::check_seed_count(&range)?;
        return Ok(range);
    }
    bail!(
        "seeds must be a string like \"0..25\" or an array [start, end], got {}",
        v.type_name()
    )
}

/// Tokenizers by spec ("fixture" or a path), loaded once per session.
type TokenizerCache = Mutex<HashMap<String, Arc<tokenizers::Tokenizer>>>;

fn tokenizer_for(st: &HostState, spec: &str) -> Result<ScriptTokenizer> {
    let cache = st.slot::<TokenizerCache>("puzzle.tokenizers", Default::default)?;
    let key = if spec == "fixture" {
        spec.to_string()
    } else {
        std::fs::canonicalize(spec)
            .map_err(|e| anyhow!("tokenizer {spec}: {e}"))?
            .display()
            .to_string()
    };
    if let Some(t) = lock(&cache).get(&key) {
        return Ok(ScriptTokenizer(t.clone()));
    }
    let tok = if spec == "fixture" {
        fixture_tokenizer()?
    } else {
        load_tokenizer(Path::new(spec))?
    };
    let tok = Arc::new(tok);
    lock(&cache).insert(key, tok.clone());
    Ok(ScriptTokenizer(tok))
}

fn dataset_tokenizer(st: &HostState, map: &Map) -> Result<Option<ScriptTokenizer>> {
    match map.get("tokenizer") {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => {
            if let Some(t) = v.read_lock::<ScriptTokenizer>() {
                return Ok(Some(t.clone()));
            }
            let spec = get_str(v, "tokenizer")?;
            Ok(Some(tokenizer_for(st, &spec)?))
        }
    }
}

/// Generate one sample per seed (the W1 dataset), with progress and interrupts.
fn gen_dataset(st: &HostState, map: &Map) -> RResult<Array> {
    let (params, opts, seeds, tok) = guard("gen_dataset", || {
        let (params, opts) = dataset_parts(map)?;
        params.validate()?;
        let seeds = seed_range(map.get("seeds").unwrap_or(&Dynamic::from("0..25")))?;
        let tok = dataset_tokenizer(st, map)?;
        Ok((params, opts, seeds, tok))
    })?;
    let pb = st.progress(seeds.end - seeds.start, "gen_dataset");
    let mut out = Array::new();
    for (index, seed) in seeds.enumerate() {
        st.check_interrupt()?;
        let sample = guard("gen_dataset", || {
            let p = PuzzleParams {
                seed,
                ..params.clone()
            };
            let puzzle = gen_puzzle(&p)?;
            Sample::build(index, puzzle, &opts, tok.as_ref().map(|t| t.0.as_ref()))
        })?;
        out.push(Dynamic::from(ScriptSample(Arc::new(sample))));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

fn samples_of(arr: &Array) -> Result<Vec<Sample>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<ScriptSample>()
                .map(|s| (*s.0).clone())
                .ok_or_else(|| anyhow!("element {k} is a {}, expected a Sample", v.type_name()))
        })
        .collect()
}

fn ints<T: Copy + TryInto<INT>>(v: &[T]) -> Array {
    v.iter()
        .map(|&x| Dynamic::from_int(x.try_into().unwrap_or(INT::MAX)))
        .collect()
}

fn strings(v: &[String]) -> Array {
    v.iter().map(|s| Dynamic::from(s.clone())).collect()
}

/// Register the puzzle domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    r.type_named::<ScriptPuzzle>(
        "Puzzle",
        "A generated puzzle: hidden relation, train and test examples.",
    )
    .type_named::<ScriptSample>(
        "Sample",
        "One verbalised puzzle with answers and token positions (the seed's Result record).",
    )
    .type_named::<ScriptTokenizer>("Tokenizer", "A Hugging Face tokenizer.");
    register_generation(r, state);
    register_sample_getters(r);
    register_puzzle_getters(r);
}

fn register_generation(r: &mut Registrar, state: &Arc<HostState>) {
    r.func(
        "gen_puzzle",
        "gen_puzzle(params: Map) -> Puzzle",
        "Generate a puzzle (P5). Keys (defaults): relations (\"side+at\"), n, m (5), frame (\"corner\"), n_color (5), n_train (5), n_test (0), Q_train (4), Q_test (1), seed (0), filter (\"unique\": P5's ambiguity filter; \"distinct\": query cells whose candidate cells all differ in colour, so only the answers tell the relation).",
        |map: Map| {
            guard("gen_puzzle", || {
                Ok(ScriptPuzzle(Arc::new(gen_puzzle(&puzzle_params(&map)?)?)))
            })
        },
    )
    .func(
        "gen_prompt",
        "gen_prompt(puzzle: Puzzle) -> String",
        "The full prompt of a puzzle with the default options (dict style).",
        |p: ScriptPuzzle| {
            guard("gen_prompt", || {
                let mut puzzle = (*p.0).clone();
                gen_prompt(&mut puzzle, &PromptOptions::default())
            })
        },
    )
    .func(
        "gen_prompt",
        "gen_prompt(puzzle: Puzzle, opts: Map) -> String",
        "The full prompt (P9). Keys: style (\"dict\", \"list\", \"markdown\"), transpose (true), color_quote (\"\"), remove_instructions (false), template (a JSON file of prompt words, see minarc puzzles --write-template, or a map of them; missing words keep the default).",
        |p: ScriptPuzzle, map: Map| {
            guard("gen_prompt", || {
                let mut puzzle = (*p.0).clone();
                gen_prompt(&mut puzzle, &prompt_options(&map)?)
            })
        },
    );
    let st = state.clone();
    r.func(
        "gen_dataset",
        "gen_dataset(params: Map) -> Array",
        "One Sample per seed (W1): the gen_puzzle and gen_prompt keys plus seeds (\"0..25\" or [start, end]) and tokenizer (\"fixture\", a tokenizer.json path or model folder, or a Tokenizer; without it samples have no token positions).",
        move |map: Map| gen_dataset(&st, &map),
    );
    let st = state.clone();
    r.func(
        "load_tokenizer",
        "load_tokenizer(spec: String) -> Tokenizer",
        "\"fixture\" (the built-in test tokenizer) or a tokenizer.json file / model folder; loaded once per session.",
        move |spec: &str| guard("load_tokenizer", || tokenizer_for(&st, spec)),
    )
    .func(
        "encode",
        "encode(tok: Tokenizer, text: String) -> Array",
        "The token ids of a text, encoded as the models encode prompts.",
        |tok: ScriptTokenizer, text: &str| {
            guard("encode", || {
                crate::limits::TEXT_BYTES.check(text.len(), "text")?;
                let enc = tok.0.encode(text, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
                Ok(enc.get_ids().iter().map(|&i| Dynamic::from_int(i as INT)).collect::<Array>())
            })
        },
    )
    .func(
        "decode",
        "decode(tok: Tokenizer, ids: Array) -> String",
        "The text of token ids (special tokens included).",
        |tok: ScriptTokenizer, ids: Array| {
            guard("decode", || {
                let v = tok.0.get_vocab_size(true);
                let ids: Vec<u32> = super::args::usize_list("ids", &ids)?
                    .into_iter()
                    .map(|i| {
                        ensure!(i < v, "token id {i} is not in the vocabulary ({v} tokens)");
                        Ok(i as u32)
                    })
                    .collect::<Result<_>>()?;
                tok.0.decode(&ids, false).map_err(|e| anyhow!("decoding: {e}"))
            })
        },
    )
    .getter("vocab_size", "t.vocab_size -> int", "Number of tokens (added tokens included).", |t: &mut ScriptTokenizer| {
        t.0.get_vocab_size(true) as INT
    })
    .func(
        "save_dataset",
        "save_dataset(samples: Array, path: String)",
        "Write samples as JSONL (the `minarc puzzles` format).",
        |samples: Array, path: &str| {
            guard("save_dataset", || write_jsonl(Path::new(path), &samples_of(&samples)?))
        },
    )
    .func(
        "load_dataset",
        "load_dataset(path: String) -> Array",
        "Read samples from a JSONL file written by save_dataset or `minarc puzzles`.",
        |path: &str| {
            guard("load_dataset", || {
                Ok(read_jsonl(Path::new(path))?
                    .into_iter()
                    .map(|s| Dynamic::from(ScriptSample(Arc::new(s))))
                    .collect::<Array>())
            })
        },
    );
}

fn register_sample_getters(r: &mut Registrar) {
    r.getter("index", "s.index -> int", "Position of the sample in its dataset.", |s: &mut ScriptSample| {
        s.0.index as INT
    })
    .getter("prompt", "s.prompt -> String", "The full teacher-forced prompt.", |s: &mut ScriptSample| {
        s.0.prompt.clone()
    })
    .getter("answers", "s.answers -> Array", "Answer colour letters (all QAs of the last 2 train examples).", |s: &mut ScriptSample| {
        strings(&s.0.answers)
    })
    .getter("answer_indices", "s.answer_indices -> Array", "Token position of each answer colour token.", |s: &mut ScriptSample| {
        ints(&s.0.answer_indices)
    })
    .getter("labels", "s.labels -> Array", "Token id at each answer position.", |s: &mut ScriptSample| {
        ints(&s.0.labels)
    })
    .getter("candidate_ids", "s.candidate_ids -> Array", "Answer-token ids of the first n_color colours.", |s: &mut ScriptSample| {
        ints(&s.0.candidate_ids)
    })
    .getter("queries", "s.queries -> Array", "The selected queries as printed, e.g. (3,3):B.", |s: &mut ScriptSample| {
        strings(&s.0.queries)
    })
    .getter("rel_fn", "s.rel_fn -> String", "Name of the hidden relation.", |s: &mut ScriptSample| {
        s.0.rel_fn.clone()
    })
    .getter("n_tokens", "s.n_tokens -> int", "Prompt length in tokens, or () without a tokenizer.", |s: &mut ScriptSample| {
        s.0.n_tokens.map(|n| Dynamic::from_int(n as INT)).unwrap_or(Dynamic::UNIT)
    })
    .getter("puzzle", "s.puzzle -> Puzzle", "The sample's puzzle, or () for a custom prompt.", |s: &mut ScriptSample| {
        s.0.puzzle
            .clone()
            .map_or(Dynamic::UNIT, |p| Dynamic::from(ScriptPuzzle(Arc::new(p))))
    })
    .func(
        "prompt_sample",
        "prompt_sample(tok: Tokenizer, prompt: String, opts: Map) -> Sample",
        "A sample from any prompt (teacher-forced: the answers are written in it). opts: answers (texts, the last occurrence of each, or [start, end] character spans: every token they cover is a target), answer_tokens (token positions), candidates and foils (single-token texts or ids), objective (\"log_prob\" (default), \"full_vocab\", \"logit_diff\" with one foil per answer token, \"argmax\": the model's own prediction), spans (#{name: [positions]}), index (0). Span A = the answer tokens, A- the positions that predict them.",
        |tok: ScriptTokenizer, prompt: &str, opts: Map| {
            guard("prompt_sample", || Ok(ScriptSample(Arc::new(prompt_sample(&tok.0, prompt, &opts)?))))
        },
    )
    .func(
        "positions",
        "positions(s: Sample, span: String) -> Array",
        "Token positions of a span (A9) over the last 2 train examples: A, V, QV or Qy, optionally followed by -, + or ^.",
        |s: &mut ScriptSample, span: &str| {
            guard("positions", || Ok(ints(&s.0.positions(span, DEFAULT_LAST_K)?)))
        },
    )
    .func(
        "positions",
        "positions(s: Sample, span: String, last_k: int) -> Array",
        "Token positions of a span over the last last_k train examples.",
        |s: &mut ScriptSample, span: &str, last_k: INT| {
            guard("positions", || {
                ensure!(last_k >= 1, "last_k must be >= 1, got {last_k}");
                Ok(ints(&s.0.positions(span, last_k as usize)?))
            })
        },
    )
    .func("to_string", "to_string(s: Sample) -> String", "One-line summary of a sample.", |s: &mut ScriptSample| {
        sample_summary(&s.0)
    })
    .func("to_debug", "to_debug(s: Sample) -> String", "One-line summary of a sample.", |s: &mut ScriptSample| {
        sample_summary(&s.0)
    });
}

fn sample_summary(s: &Sample) -> String {
    let tokens = s
        .n_tokens
        .map(|n| format!("{n} tokens"))
        .unwrap_or_else(|| "untokenized".into());
    format!(
        "Sample#{} rel_fn={} answers={} ({tokens})",
        s.index,
        s.rel_fn,
        s.answers.join("")
    )
}

fn puzzle_summary(p: &Puzzle) -> String {
    format!(
        "Puzzle rel_fn={} {}x{} {} frame, {} colours, {} train / {} test examples, seed {}",
        p.rel_fn.name(),
        p.params.n,
        p.params.m,
        p.params.frame.name(),
        p.params.n_color,
        p.train.len(),
        p.test.len(),
        p.params.seed
    )
}

fn register_puzzle_getters(r: &mut Registrar) {
    r.getter(
        "rel_fn",
        "p.rel_fn -> String",
        "Name of the puzzle's hidden relation.",
        |p: &mut ScriptPuzzle| p.0.rel_fn.name().to_string(),
    )
    .getter(
        "n_train",
        "p.n_train -> int",
        "Number of train examples.",
        |p: &mut ScriptPuzzle| p.0.train.len() as INT,
    )
    .getter(
        "n_test",
        "p.n_test -> int",
        "Number of test examples.",
        |p: &mut ScriptPuzzle| p.0.test.len() as INT,
    )
    .func(
        "to_string",
        "to_string(p: Puzzle) -> String",
        "One-line summary of a puzzle.",
        |p: &mut ScriptPuzzle| puzzle_summary(&p.0),
    )
    .func(
        "to_debug",
        "to_debug(p: Puzzle) -> String",
        "One-line summary of a puzzle.",
        |p: &mut ScriptPuzzle| puzzle_summary(&p.0),
    )
    .func(
        "to_string",
        "to_string(t: Tokenizer) -> String",
        "Vocabulary size of a tokenizer.",
        |t: &mut ScriptTokenizer| format!("Tokenizer(vocab {})", t.0.get_vocab_size(true)),
    )
    .func(
        "to_debug",
        "to_debug(t: Tokenizer) -> String",
        "Vocabulary size of a tokenizer.",
        |t: &mut ScriptTokenizer| format!("Tokenizer(vocab {})", t.0.get_vocab_size(true)),
    );
}

fn prompt_sample(tok: &tokenizers::Tokenizer, prompt: &str, opts: &Map) -> anyhow::Result<Sample> {
    let spec: crate::puzzle::sample::PromptSpec = super::args::options(opts)?;
    spec.build(tok, prompt)
}
