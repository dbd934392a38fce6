//! The fixture tokenizer: a small Qwen2-style byte-level BPE built entirely in code.
//!
//! Tests and examples need a real tokenizer without downloading one. This module trains a
//! byte-level BPE with the same pre-tokenizer, decoder and special tokens as Qwen2 on a built-in,
//! deterministic corpus that covers the MinARC prompt vocabulary (ChatML markers, instructions,
//! grids in dict/list/markdown styles with corner and center coordinates, quoted and bare colour
//! letters, relation definitions, question and answer lines). The result is byte-identical on
//! every run and can be saved as a standard Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)
//! that Python `tokenizers` / `transformers` load.
//!
//! Guarantees checked at build time: every colour letter `K B R G Y E P O T M` is a single token both
//! bare (`"K"`) and with a leading space (`" K"`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// End-of-text special token (Qwen2's pad token).
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// ChatML turn opener.
pub const IM_START: &str = "<|im_start|>";
/// ChatML turn closer (Qwen2-Instruct's eos token).
pub const IM_END: &str = "<|im_end|>";

/// The Qwen2 pre-tokenizer regex (single digits, contractions, letter runs with one optional
/// leading non-letter, punctuation runs with an optional leading space, newline runs, spaces).
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2-Instruct's ChatML chat template (Jinja), written into `tokenizer_config.json`.
pub const QWEN2_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Total vocabulary size of the fixture tokenizer (special tokens + 256 bytes + merges).
const FIXTURE_VOCAB_SIZE: usize = 1024;

/// The ten colour letters (kept local so this module stands alone).
const LETTERS: [&str; 10] = ["K", "B", "R", "G", "Y", "E", "P", "O", "T", "M"];

/// Size of the fixture vocabulary, special tokens included.
pub fn fixture_vocab_size() -> usize {
    FIXTURE_VOCAB_SIZE
}

/// The special tokens in id order (they get ids 0, 1, 2).
fn special_tokens() -> Vec<AddedToken> {
    [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect()
}

/// An untrained tokenizer with Qwen2's pre-tokenizer, post-processor and decoder.
fn qwen2_skeleton() -> Result<Tokenizer> {
    let split = Split::new(
        SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("compiling the Qwen2 pre-tokenizer regex: {e}"))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(pre));
    tok.with_post_processor(Some(ByteLevel::new(false, false, false)));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(tok)
}

/// Builds the fixture tokenizer (deterministic: same vocabulary and merges on every run).
pub fn fixture_tokenizer() -> Result<Tokenizer> {
    let mut tok = qwen2_skeleton()?;
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(FIXTURE_VOCAB_SIZE)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(special_tokens())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    let corpus = fixture_corpus();
    tok.train(&mut trainer, corpus.iter())
        .map_err(|e| anyhow!("training the fixture BPE: {e}"))?;
    check_fixture(&tok)?;
    Ok(tok)
}

/// Asserts the fixture's contract: special ids 0..3, single-token colour letters.
fn check_fixture(tok: &Tokenizer) -> Result<()> {
    for (i, s) in [ENDOFTEXT, IM_START, IM_END].iter().enumerate() {
        let id = tok.token_to_id(s);
        if id != Some(i as u32) {
            bail!("fixture tokenizer: special token {s} has id {id:?}, expected {i}");
        }
    }
    for l in LETTERS {
        for text in [l.to_string(), format!(" {l}")] {
            let enc = tok
                .encode(text.as_str(), false)
                .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
            if enc.get_ids().len() != 1 {
                bail!(
                    "fixture tokenizer: {text:?} is not a single token: {:?}",
                    enc.get_tokens()
                );
            }
        }
    }
    let n = tok.get_vocab_size(true);
    if n != FIXTURE_VOCAB_SIZE {
        bail!("fixture tokenizer: vocabulary has {n} entries, expected {FIXTURE_VOCAB_SIZE}");
    }
    Ok(())
}

/// Tiny deterministic generator for the corpus (a 64-bit LCG; the corpus only needs variety).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// The training corpus: prompt-like text covering everything the MinARC prompts contain.
fn fixture_corpus() -> Vec<String> {
    let mut rng = Lcg(0x5eed);
    let mut docs = Vec::new();
    let intro = format!(
        "{IM_START}system\nYou are a helpful assistant.{IM_END}\n{IM_START}user\n\
         # A grid is written as a dict that maps the (x,y) coordinate of each cell to its color.\n\
         # A grid is written as a list of [x, y, color] items, one for each cell.\n\
         # A grid is written as a markdown table: the header row holds the x coordinates, the first column holds the y coordinates.\n\
         # Colors are single letters. For example:\n\
         # The functions below define the positional relations between a candidate cell (x,y) and the queried cell (x0,y0).\n\
         # pos_relation_fn is one of the functions above. Infer which one from the examples, then answer the test questions.\n\
         # **Respond with \"Answer: <Color>\" directly, without any intermediate thinking.**\n\
         # What is the color of the cell in positional relation pos_relation_fn to cell\n\
         [color for (x,y), color in grid.items() if pos_relation_fn(*(x,y), *(1,2))][0] = ?\n\
         [color for x, y, color in grid if pos_relation_fn(*(x,y), *(1,2))][0] = ?\n\
         [color for (x,y), color in table if pos_relation_fn(*(x,y), *(1,2))][0] = ?\n\
         ------------------------------\n# Example 1\n# Test\n{IM_END}\n{IM_START}assistant\n"
    );
    let defs = [
        ("at", "x == x0 and y == y0", "the same cell as"),
        ("left_of", "x == x0 - 1 and y == y0", "the left neighbor of"),
        (
            "right_of",
            "x == x0 + 1 and y == y0",
            "the right neighbor of",
        ),
        ("above", "x == x0 and y == y0 - 1", "the upper neighbor of"),
        ("below", "x == x0 and y == y0 + 1", "the lower neighbor of"),
        (
            "upper_left_of",
            "x == x0 - 1 and y == y0 - 1",
            "the upper left neighbor of",
        ),
        (
            "lower_left_of",
            "x == x0 - 1 and y == y0 + 1",
            "the lower left neighbor of",
        ),
        (
            "upper_right_of",
            "x == x0 + 1 and y == y0 - 1",
            "the upper right neighbor of",
        ),
        (
            "lower_right_of",
            "x == x0 + 1 and y == y0 + 1",
            "the lower right neighbor of",
        ),
        (
            "mirror_x_of",
            "x == -x0 and y == y0",
            "the mirror image across the y axis of",
        ),
        (
            "mirror_y_of",
            "x == x0 and y == -y0",
            "the mirror image across the x axis of",
        ),
        (
            "mirror_origin_of",
            "x == -x0 and y == -y0",
            "the mirror image through the origin of",
        ),
        (
            "mirror_diag1_of",
            "x == y0 and y == x0",
            "the mirror image across the line y = x of",
        ),
        (
            "mirror_diag2_of",
            "x == -y0 and y == -x0",
            "the mirror image across the line y = -x of",
        ),
        (
            "rotate_cw_of",
            "x == y0 and y == -x0",
            "the clockwise rotation by 90 degrees of",
        ),
        (
            "rotate_ccw_of",
            "x == -y0 and y == x0",
            "the counterclockwise rotation by 90 degrees of",
        ),
    ];
    let mut block = String::new();
    for (name, body, phrase) in defs {
        block.push_str(&format!(
            "def {name}(x,y, x0,y0):\n    # (x,y) is {phrase} (x0,y0)\n    # e.g. {name}(*(2,6), *(3,5)) == False\n    return {body}\n\n"
        ));
    }
    for _ in 0..4 {
        docs.push(intro.clone());
        docs.push(block.clone());
    }
    // Grids in the three styles, corner and center coordinates, with and without quotes.
    for round in 0..48 {
        let (lo, hi) = match round % 4 {
            0 => (0i32, 5i32),
            1 => (-2, 3),
            2 => (0, 12),
            _ => (-5, 6),
        };
        let q = ["", "'", "\""][round % 3];
        let n_color = 2 + round % 9;
        let mut dict = String::from("grid = {\n");
        let mut list = String::from("grid = [\n");
        let mut md = String::from("|  |");
        for x in lo..hi {
            md.push_str(&format!(" {x} |"));
        }
        md.push_str("\n|---|");
        for _ in lo..hi {
            md.push_str("---|");
        }
        md.push('\n');
        for y in lo..hi {
            md.push_str(&format!("| {y} |"));
            for x in lo..hi {
                let c = LETTERS[rng.below(n_color)];
                dict.push_str(&format!(" ({x},{y}):{q}{c}{q},"));
                list.push_str(&format!(" [{x}, {y}, {q}{c}{q}],"));
                md.push_str(&format!(" {q}{c}{q} |"));
            }
            dict.push('\n');
            list.push('\n');
            md.push('\n');
        }
        dict.push_str("}\n\n");
        list.push_str("]\n\n");
        md.push('\n');
        let mut qa = String::new();
        for k in 0..6 {
            let (x0, y0) = (
                lo + rng.below((hi - lo) as usize) as i32,
                lo + rng.below((hi - lo) as usize) as i32,
            );
            let (c0, c) = (LETTERS[rng.below(n_color)], LETTERS[rng.below(n_color)]);
            qa.push_str(&format!(
                "------------------------------\n# Example {}\n# What is the color of the cell in positional relation pos_relation_fn to cell ({x0},{y0}):{q}{c0}{q}?\n\
                 [color for (x,y), color in grid.items() if pos_relation_fn(*(x,y), *({x0},{y0}))][0] = ?\nAnswer: {q}{c}{q}\n\n",
                k + 1
            ));
        }
        docs.extend([dict, list, md, qa]);
    }
    // Answer lines for every colour, so that " K" etc. become merges.
    let mut answers = String::new();
    for _ in 0..20 {
        for l in LETTERS {
            answers.push_str(&format!("Answer: {l}\n{IM_END}\n{IM_START}user\n"));
        }
        answers.push_str(&format!(" {}\n", LETTERS.join(" ")));
    }
    docs.push(answers);
    docs.push(PROSE.to_string());
    docs
}

/// General prose so that the merges go beyond the prompt vocabulary (the fixture must reach a
/// fixed vocabulary size; any text encodes anyway, byte-level BPE has no unknown tokens).
const PROSE: &str = "Mechanistic interpretability studies how a trained language model computes its answers. \
A transformer reads the prompt token by token; every layer adds the output of its attention heads and of its \
multilayer perceptron to the residual stream. Attention heads move information between positions: a head at \
the answer position may look back at the query cell, find the neighbouring cell in the grid, and copy its \
colour. Attribution methods such as integrated gradients measure how much each component contributes to the \
logit of the correct answer. Researchers then group heads with similar attention patterns into clusters, \
draw a circuit graph, and verify the hypothesis by patching activations or ablating components. \
The puzzles are small: a rectangular grid of coloured cells, a hidden positional relation, several worked \
examples and a few questions. The model must infer the relation from the examples and then apply it. \
Some relations are simple neighbours (left, right, upper, lower, and the four diagonal corners); others are \
reflections across an axis, through the origin, or across a diagonal line, and rotations by ninety degrees \
clockwise or counterclockwise around the centre of the grid. Coordinates may be negative when the origin \
sits in the middle. Numbers, punctuation, quotes, brackets, parentheses, braces, colons, commas, question \
marks and newlines all appear in the prompts, together with markdown tables, python dictionaries and lists. \
The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly; \
pack my box with five dozen liquor jugs. Sphinx of black quartz, judge my vow. \
Training data, evaluation data and held out test data must be kept separate; results are reported with \
the number of samples, the accuracy, the mean log probability, and the standard error of the estimate.";

/// Writes `tokenizer.json` and `tokenizer_config.json` (HF format: ChatML chat template,
/// eos/pad tokens, added_tokens_decoder, model_max_length) into `dir`, creating it if needed.
pub fn write_fixture_tokenizer(dir: &Path) -> Result<()> {
    write_tokenizer_files(dir, &fixture_tokenizer()?)
}

/// Writes the ChatML `tokenizer_config.json` (eos/pad tokens, added_tokens_decoder,
/// model_max_length) into `dir`.
fn write_tokenizer_config(dir: &Path) -> Result<()> {
    let mut decoder = serde_json::Map::new();
    for (i, s) in [ENDOFTEXT, IM_START, IM_END].iter().enumerate() {
        decoder.insert(
            i.to_string(),
            serde_json::json!({
                "content": s, "lstrip": false, "normalized": false,
                "rstrip": false, "single_word": false, "special": true
            }),
        );
    }
    let config = serde_json::json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": null,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null
    });
    let cpath = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&config)?;
    std::fs::write(&cpath, text).with_context(|| format!("writing {}", cpath.display()))?;
    Ok(())
}

/// Resolves a tokenizer location: a `tokenizer.json` file itself, or a model folder holding one.
fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

/// Loads `tokenizer.json` from a model folder (or the file itself when `dir` is a file), with a
/// clear error naming the file.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let file = tokenizer_file(dir);
    if !file.is_file() {
        bail!("tokenizer file {} does not exist", file.display());
    }
    Tokenizer::from_file(&file).map_err(|e| anyhow!("loading tokenizer {}: {e}", file.display()))
}

/// The tokens of `enc`, the encoding of `prompt` (as the backends encode it,
/// `add_special_tokens = true`), that overlap each character span `[start, end)` (counted in
/// characters, not bytes): their positions and ids, in order. Every span must be non-empty,
/// inside the prompt, and overlap at least one token.
pub fn tokens_in_char_spans(
    enc: &tokenizers::Encoding,
    prompt: &str,
    spans: &[[usize; 2]],
) -> Result<(Vec<usize>, Vec<u32>)> {
    let n_chars = prompt.chars().count();
    // byte offset of every character boundary (n_chars + 1 entries)
    let bounds: Vec<usize> = prompt
        .char_indices()
        .map(|(b, _)| b)
        .chain([prompt.len()])
        .collect();
    let (mut pos, mut ids) = (Vec::new(), Vec::new());
    for &[start, end] in spans {
        if start >= end || end > n_chars {
            bail!(
                "answer span [{start}, {end}) is empty or outside the prompt's {n_chars} characters"
            );
        }
        let (b0, b1) = (bounds[start], bounds[end]);
        let before = pos.len();
        for (i, &(s, e)) in enc.get_offsets().iter().enumerate() {
            if s < b1 && e > b0 && s < e {
                pos.push(i);
                ids.push(enc.get_ids()[i]);
            }
        }
        if pos.len() == before {
            bail!(
                "answer span [{start}, {end}) ({:?}) covers no token",
                &prompt[b0..b1]
            );
        }
    }
    Ok((pos, ids))
}

/// The character span `[start, end)` of the last occurrence of `text` in `prompt`.
pub fn last_char_span(prompt: &str, text: &str) -> Result<[usize; 2]> {
    if text.is_empty() {
        bail!("an answer text is empty");
    }
    let b = prompt
        .rfind(text)
        .ok_or_else(|| anyhow!("answer {text:?} does not occur in the prompt"))?;
    let start = prompt[..b].chars().count();
    Ok([start, start + text.chars().count()])
}

/// The id of a text that is exactly one token (candidates and foils).
pub fn single_token_id(tok: &Tokenizer, text: &str) -> Result<u32> {
    let enc = tok
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
    match enc.get_ids() {
        [id] => Ok(*id),
        ids => bail!(
            "{text:?} is {} tokens ({:?}), not one",
            ids.len(),
            enc.get_tokens()
        ),
    }
}

/// The word-level tokenizer of `minarc train` models: a cell or query key such as ` (3,1):`
/// or `(3,1)` is one token (coordinates −9..=9), as is every letter run, number up to 99,
/// punctuation mark, newline run and space run, each with an optional leading space. Keys as
/// single tokens make the grid lookup a one-token induction (find the key, copy the colour
/// after it) and cut a MinARC prompt to about half the fixture BPE's tokens (440 against 825
/// for the compact training prompt). Unknown
/// pieces (words outside the prompts) become `<unk>`. Deterministic; saved as a standard
/// Hugging Face `tokenizer.json` (WordLevel model, Split pre-tokenizer, Fuse decoder).
pub fn word_tokenizer() -> Result<Tokenizer> {
    let mut vocab: Vec<String> = [ENDOFTEXT, IM_START, IM_END, WORD_UNK]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut add = |s: String| {
        if !vocab.contains(&s) {
            vocab.push(s);
        }
    };
    for n in 1..=4 {
        add("\n".repeat(n));
        add(" ".repeat(n));
    }
    for x in -9i32..=9 {
        for y in -9i32..=9 {
            for sp in ["", " "] {
                add(format!("{sp}({x},{y}):"));
                add(format!("{sp}({x},{y})"));
            }
        }
    }
    for c in ('A'..='Z').chain('a'..='z') {
        add(c.to_string());
        add(format!(" {c}"));
    }
    for w in WORD_WORDS {
        add(w.to_string());
        add(format!(" {w}"));
    }
    for n in 0..=99 {
        add(n.to_string());
        add(format!(" {n}"));
    }
    for c in (33u8..127)
        .map(char::from)
        .filter(|c| !c.is_ascii_alphanumeric())
    {
        add(c.to_string());
        add(format!(" {c}"));
    }
    let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = [ENDOFTEXT, IM_START, IM_END]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": WORD_PRETOKENIZE_REGEX},
            "behavior": "Isolated",
            "invert": false
        },
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab_json, "unk_token": WORD_UNK}
    });
    let tok: Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| anyhow!("building the word-level tokenizer: {e}"))?;
    Ok(tok)
}

/// The unknown-piece token of [`word_tokenizer`].
pub const WORD_UNK: &str = "<unk>";

/// Words of the prompts kept whole by [`word_tokenizer`].
const WORD_WORDS: [&str; 6] = ["grid", "system", "user", "assistant", "color", "Answer"];

/// Pieces of [`word_tokenizer`]: keys `(x,y)` with an optional colon, letter runs, numbers,
/// single punctuation marks (each with one optional leading space), newline runs, space runs.
pub const WORD_PRETOKENIZE_REGEX: &str =
    r" ?\(-?\d+,-?\d+\):?| ?[A-Za-z_]+| ?\d+|\n+| ?[^\sA-Za-z\d]| +|\s";

/// Writes `tok` as `tokenizer.json` and the ChatML `tokenizer_config.json` into `dir`.
pub fn write_tokenizer_files(dir: &Path, tok: &Tokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("tokenizer.json");
    tok.save(&path, true)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    write_tokenizer_config(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_letters_are_single_tokens() {
        let tok = fixture_tokenizer().unwrap();
        let mut seen = std::collections::HashSet::new();
        for l in LETTERS {
            let bare = tok.encode(l, false).unwrap();
            let spaced = tok.encode(format!(" {l}").as_str(), false).unwrap();
            assert_eq!(bare.get_tokens(), &[l.to_string()]);
            assert_eq!(spaced.get_tokens(), &[format!("Ġ{l}")]);
            assert!(seen.insert(spaced.get_ids()[0]), "ids must differ");
        }
    }

    #[test]
    fn deterministic_bytes_and_roundtrip() {
        let a = fixture_tokenizer().unwrap().to_string(false).unwrap();
        let b = fixture_tokenizer().unwrap().to_string(false).unwrap();
        assert_eq!(a, b);
        let dir = tempfile::tempdir().unwrap();
        write_fixture_tokenizer(dir.path()).unwrap();
        let loaded = load_tokenizer(dir.path()).unwrap();
        assert_eq!(loaded.to_string(false).unwrap(), a);
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["eos_token"], IM_END);
        assert_eq!(cfg["added_tokens_decoder"]["1"]["content"], IM_START);
        assert_eq!(loaded.get_vocab_size(true), fixture_vocab_size());
    }

    #[test]
    fn qwen2_style_pre_tokenization_and_offsets() {
        let tok = fixture_tokenizer().unwrap();
        let text = format!("{IM_START}user\n (12,-3):K, 'B'?{IM_END}");
        let enc = tok.encode(text.as_str(), false).unwrap();
        let toks = enc.get_tokens();
        assert_eq!(toks[0], IM_START);
        assert_eq!(enc.get_ids()[0], 1);
        assert_eq!(toks.last().unwrap(), IM_END);
        // Qwen2 splits numbers into single digits.
        let digits: Vec<&str> = enc
            .get_offsets()
            .iter()
            .map(|&(a, b)| &text[a..b])
            .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
            .collect();
        assert_eq!(digits, vec!["1", "2", "3"]);
        // Offsets are byte offsets that tile the text exactly.
        let mut end = 0;
        for &(a, b) in enc.get_offsets() {
            assert_eq!(a, end);
            end = b;
        }
        assert_eq!(end, text.len());
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        // Non-ASCII text round-trips through the byte-level alphabet.
        let enc = tok.encode("naïve café ☕", false).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "naïve café ☕");
    }

    #[test]
    fn missing_file_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_tokenizer(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let err = load_tokenizer(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
