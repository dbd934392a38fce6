//! P11: the per-sample record (`Sample`, the seed's `Result`), answer selection and the A9 span
//! helper that turns span names into token positions.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::color::color_letter;
use super::prompt::{PromptOptions, gen_prompt, resolve_tokens};
use super::{Example, Puzzle, PuzzleParams, Qa};
pub use crate::model::sample::Objective;

/// Number of train examples whose QAs give the answers (the notebook's choice, P11).
pub const DEFAULT_LAST_K: usize = 2;

/// Generation and prompt parameters recorded with each sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenParams {
    /// Puzzle parameters (n, m, frame, n_color, n_train, n_test, Q_train, Q_test, seed, relations).
    #[serde(flatten)]
    pub puzzle: PuzzleParams,
    /// Prompt options (style, transpose, color_quote, remove_instructions).
    #[serde(flatten)]
    pub prompt: PromptOptions,
}

impl GenParams {
    /// The parameters recorded with a custom prompt (the defaults: no puzzle was generated).
    pub fn custom() -> Self {
        GenParams {
            puzzle: PuzzleParams::default(),
            prompt: PromptOptions::default(),
        }
    }
}

/// One sample: a verbalised puzzle with its answers and, when a tokenizer was given, the token
/// positions and ids a model evaluation needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Position in the dataset (0..N−1; it indexes per-sample buffers downstream).
    pub index: usize,
    /// The full prompt, teacher-forced (all answers are written in).
    pub prompt: String,
    /// Answer colour letters of the selected QAs (all QAs of the last 2 train examples).
    pub answers: Vec<String>,
    /// Token position of each answer colour token (empty without a tokenizer).
    pub answer_indices: Vec<usize>,
    /// Token id at each answer position: the teacher-forced answer token (" C" for the default
    /// unquoted prompt; the bare letter's token when a quote precedes it). Empty without a tokenizer.
    pub labels: Vec<u32>,
    /// The answer-token ids of the first n_color colours, in colour order (empty without a tokenizer).
    pub candidate_ids: Vec<u32>,
    /// The selected queries as printed, e.g. `(3,3):B`.
    pub queries: Vec<String>,
    /// The puzzle with every tracked range filled (None for a custom prompt).
    #[serde(default)]
    pub puzzle: Option<Puzzle>,
    /// Name of the hidden relation.
    pub rel_fn: String,
    /// Generation parameters.
    pub params: GenParams,
    /// Prompt length in tokens (None without a tokenizer).
    pub n_tokens: Option<usize>,
    /// Named spans given by the user (token positions), looked up before the puzzle's spans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spans: BTreeMap<String, Vec<usize>>,
    /// The objective of the sample's lm_head node (default: the seed's log-prob).
    #[serde(default, skip_serializing_if = "Objective::is_default")]
    pub objective: Objective,
}

/// What a custom sample explains: its answers (texts found in the prompt, character spans or
/// token positions), candidates and foils (single-token texts or ids), objective and spans.
#[derive(Clone, Debug, Default)]
pub struct CustomSpec {
    /// Answer texts: the last occurrence of each in the prompt.
    pub answer_texts: Vec<String>,
    /// Answer character spans `[start, end)`.
    pub answer_spans: Vec<[usize; 2]>,
    /// Answer token positions.
    pub answer_tokens: Vec<usize>,
    /// Candidate ids (texts are resolved by the caller with `single_token_id`).
    pub candidate_ids: Vec<u32>,
    /// Foil ids, one per answer token (logit_diff).
    pub foil_ids: Vec<u32>,
    /// `log_prob` (default), `full_vocab`, `logit_diff` or `argmax`.
    pub objective: Option<String>,
    /// Named spans (token positions).
    pub spans: BTreeMap<String, Vec<usize>>,
}

/// The token id of the answer token for `letter` written as in the prompt's answer lines.
fn answer_token_id(tok: &Tokenizer, answer_head: &str, quote: &str, letter: char) -> Result<u32> {
    let head = format!("{answer_head}{quote}");
    let text = format!("{head}{letter}{quote}");
    let enc = tok
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
    let b = head.len();
    let i = enc
        .get_offsets()
        .iter()
        .position(|&(s, e)| s <= b && b < e)
        .with_context(|| format!("no token covers the letter in {text:?}"))?;
    Ok(enc.get_ids()[i])
}

impl Sample {
    /// Verbalises `puzzle`, tokenizes the prompt once (if a tokenizer is given), fills all token
    /// positions and builds the record. Checks that every label equals the candidate id of its
    /// answer colour.
    pub fn build(
        index: usize,
        mut puzzle: Puzzle,
        prompt_opts: &PromptOptions,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Sample> {
        let prompt = gen_prompt(&mut puzzle, prompt_opts)?;
        let mut sample = Sample {
            index,
            prompt,
            answers: Vec::new(),
            answer_indices: Vec::new(),
            labels: Vec::new(),
            candidate_ids: Vec::new(),
            queries: Vec::new(),
            rel_fn: puzzle.rel_fn.name().to_string(),
            params: GenParams {
                puzzle: puzzle.params.clone(),
                prompt: prompt_opts.clone(),
            },
            puzzle: Some(puzzle),
            n_tokens: None,
            spans: BTreeMap::new(),
            objective: Objective::default(),
        };
        let quote = prompt_opts.color_quote.clone();
        let (answers, queries): (Vec<String>, Vec<String>) = sample
            .selected_qas(DEFAULT_LAST_K)?
            .iter()
            .map(|qa| {
                let (x0, y0) = qa.query.key;
                (
                    color_letter(qa.answer.value).to_string(),
                    format!("({x0},{y0}):{quote}{}{quote}", color_letter(qa.query.value)),
                )
            })
            .unzip();
        sample.answers = answers;
        sample.queries = queries;
        if let Some(tok) = tokenizer {
            sample.tokenize(tok)?;
        }
        Ok(sample)
    }

    /// Fills the token fields from one encoding of the prompt.
    fn tokenize(&mut self, tok: &Tokenizer) -> Result<()> {
        let enc = tok
            .encode(self.prompt.as_str(), false)
            .map_err(|e| anyhow!("tokenizing the prompt of sample {}: {e}", self.index))?;
        let puzzle = self
            .puzzle
            .as_mut()
            .context("a custom sample has no puzzle to tokenize")?;
        resolve_tokens(puzzle, enc.get_offsets())?;
        let ids = enc.get_ids();
        self.n_tokens = Some(ids.len());
        let quote = &self.params.prompt.color_quote;
        let answer_head = self.params.prompt.words().answer_head.clone();
        self.candidate_ids = (0..self.params.puzzle.n_color as u8)
            .map(|c| answer_token_id(tok, &answer_head, quote, color_letter(c)))
            .collect::<Result<_>>()?;
        // each candidate must be the colour letter (with its space or quote), not glued to the
        // end of the answer head: otherwise the objective would compare other text
        for (c, &id) in self.candidate_ids.iter().enumerate() {
            let text = tok
                .decode(&[id], false)
                .map_err(|e| anyhow!("decoding token {id}: {e}"))?;
            let letter = color_letter(c as u8).to_string();
            let bare = text.trim().trim_matches(|ch: char| quote.contains(ch));
            ensure!(
                bare == letter,
                "the answer token of colour {letter} is {text:?}: the tokenizer joins it to the end of \
                 the answer head {answer_head:?}; end the head so that the letter stands alone \
                 (e.g. with \": \")"
            );
        }
        let mut answer_indices = Vec::new();
        let mut labels = Vec::new();
        for qa in self.selected_qas(DEFAULT_LAST_K)? {
            let pos = qa
                .answer
                .value_ranges
                .as_ref()
                .and_then(|t| t.token)
                .context("answer position not resolved")?;
            let label = ids[pos];
            let expected = self.candidate_ids[qa.answer.value as usize];
            ensure!(
                label == expected,
                "sample {}: the token at answer position {pos} has id {label}, but the answer {} encodes as {expected}",
                self.index,
                color_letter(qa.answer.value)
            );
            answer_indices.push(pos);
            labels.push(label);
        }
        self.answer_indices = answer_indices;
        self.labels = labels;
        Ok(())
    }

    /// The puzzle of a generated sample (an error for a custom prompt).
    pub fn puzzle(&self) -> Result<&Puzzle> {
        self.puzzle.as_ref().with_context(|| {
            format!(
                "sample {} is a custom prompt: it has no puzzle (use its own spans)",
                self.index
            )
        })
    }

    /// A sample from any prompt: the answers (texts, character spans or token positions) become
    /// the targets (every token they cover; labels = those tokens), with optional candidates,
    /// foils, objective and named spans. The span `A` is the answer tokens (`A-` predicts them).
    pub fn custom(
        index: usize,
        prompt: &str,
        tok: &Tokenizer,
        spec: &CustomSpec,
    ) -> Result<Sample> {
        let enc = tok
            .encode(prompt, true)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        let n = enc.get_ids().len();
        let mut spans = spec.answer_spans.clone();
        for t in &spec.answer_texts {
            spans.push(crate::tokenizer::last_char_span(prompt, t)?);
        }
        let (mut pos, mut labels) = crate::tokenizer::tokens_in_char_spans(&enc, prompt, &spans)?;
        for &p in &spec.answer_tokens {
            ensure!(p < n, "answer token {p} is outside the prompt's {n} tokens");
            pos.push(p);
            labels.push(enc.get_ids()[p]);
        }
        ensure!(
            !pos.is_empty(),
            "a custom sample needs answers: texts, character spans or token positions"
        );
        if let Some(&p) = pos.iter().find(|&&p| p == 0) {
            bail!("answer token {p} is the first token: no position predicts it");
        }
        for (name, ps) in &spec.spans {
            if let Some(&p) = ps.iter().find(|&&p| p >= n) {
                bail!("span {name:?}: position {p} is outside the prompt's {n} tokens");
            }
        }
        let objective = match spec.objective.as_deref().unwrap_or("log_prob") {
            "log_prob" => Objective::LogProb,
            "full_vocab" => Objective::FullVocab,
            "argmax" => Objective::Argmax,
            "logit_diff" => {
                ensure!(
                    spec.foil_ids.len() == labels.len(),
                    "logit_diff needs one foil per answer token: {} foils for {} answer tokens",
                    spec.foil_ids.len(),
                    labels.len()
                );
                Objective::LogitDiff {
                    foils: spec.foil_ids.clone(),
                }
            }
            other => {
                bail!("unknown objective {other:?} (log_prob, full_vocab, logit_diff or argmax)")
            }
        };
        if !matches!(objective, Objective::LogitDiff { .. }) {
            ensure!(
                spec.foil_ids.is_empty(),
                "foils are for the logit_diff objective"
            );
        }
        if !spec.candidate_ids.is_empty()
            && matches!(objective, Objective::LogProb)
            && let Some(l) = labels.iter().find(|l| !spec.candidate_ids.contains(l))
        {
            bail!(
                "answer token id {l} is not among the candidates {:?}",
                spec.candidate_ids
            );
        }
        let answers = labels
            .iter()
            .map(|&id| {
                tok.decode(&[id], false)
                    .map_err(|e| anyhow!("decoding token {id}: {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(Sample {
            index,
            prompt: prompt.to_string(),
            answers,
            answer_indices: pos,
            labels,
            candidate_ids: spec.candidate_ids.clone(),
            queries: Vec::new(),
            puzzle: None,
            rel_fn: "custom".into(),
            params: GenParams::custom(),
            n_tokens: Some(n),
            spans: spec.spans.clone(),
            objective,
        })
    }

    /// The last `last_k` train examples (the ones answers and spans are taken from).
    pub fn last_examples(&self, last_k: usize) -> Result<&[Example]> {
        let train = &self.puzzle()?.train;
        ensure!(
            (1..=train.len()).contains(&last_k),
            "last_k={last_k} is out of range: the puzzle has {} train examples",
            train.len()
        );
        Ok(&train[train.len() - last_k..])
    }

    /// All QAs of the last `last_k` train examples (fewer if the puzzle has fewer examples).
    pub fn selected_qas(&self, last_k: usize) -> Result<Vec<&Qa>> {
        let k = last_k.min(self.puzzle()?.train.len());
        Ok(self
            .last_examples(k)?
            .iter()
            .flat_map(|e| &e.output)
            .collect())
    }

    /// Token positions of a span (A9), one per QA over the last `last_k` train examples:
    /// `A` answer colour token; `V` the answer cell's colour token in the example's grid; `QV` the
    /// query colour token in the question line; `Qy` the query's y-coordinate token there (its
    /// first digit). A trailing `-` / `+` shifts by −1 / +1 (`A-` predicts the answer); a trailing
    /// `^` gives QA j the index of QA j−1 of the same example (QA 0 keeps its own).
    pub fn positions(&self, span: &str, last_k: usize) -> Result<Vec<usize>> {
        let n_tokens = self.n_tokens.with_context(|| {
            format!(
                "sample {} has no token positions (built without a tokenizer)",
                self.index
            )
        })?;
        if let Some(p) = self.spans.get(span) {
            return Ok(p.clone());
        }
        let (base, modifier) = match span.chars().last() {
            Some(c @ ('-' | '+' | '^')) => (&span[..span.len() - 1], Some(c)),
            _ => (span, None),
        };
        if self.puzzle.is_none() {
            // a custom prompt: A is its answer tokens; other spans are the user's
            ensure!(
                base == "A" && modifier != Some('^'),
                "sample {}: span {span:?} is not defined (a custom prompt knows A, A-, A+ and its own spans {:?})",
                self.index,
                self.spans.keys().collect::<Vec<_>>()
            );
            return self
                .answer_indices
                .iter()
                .map(|&a| {
                    let p = match modifier {
                        Some('-') => a.checked_sub(1),
                        Some('+') => Some(a + 1),
                        _ => Some(a),
                    };
                    p.filter(|&p| p < n_tokens).with_context(|| {
                        format!(
                            "span {span:?} of answer {a} is outside the prompt's {n_tokens} tokens"
                        )
                    })
                })
                .collect();
        }
        let mut out = Vec::new();
        for ex in self.last_examples(last_k)? {
            let mut idx = Vec::new();
            for qa in &ex.output {
                let t = match base {
                    "A" => qa.answer.value_ranges.as_ref(),
                    "V" => {
                        let (x, y) = qa.answer.key;
                        let (i, j) = ex
                            .input
                            .storage_index(x, y)
                            .context("answer key outside the grid")?;
                        ex.input_ranges.as_ref().map(|g| &g.cells[i][j].color)
                    }
                    "QV" => qa.query.value_ranges.as_ref(),
                    "Qy" => qa.query.key_ranges.as_ref().map(|k| &k.y),
                    _ => bail!(
                        "unknown span {span:?} (expected A, V, QV or Qy, optionally followed by -, + or ^)"
                    ),
                };
                let pos = t
                    .and_then(|t| t.token)
                    .with_context(|| format!("span {span:?}: token position not resolved"))?;
                idx.push(pos as i64);
            }
            match modifier {
                Some('-') => idx.iter_mut().for_each(|i| *i -= 1),
                Some('+') => idx.iter_mut().for_each(|i| *i += 1),
                Some('^') => {
                    for j in (1..idx.len()).rev() {
                        idx[j] = idx[j - 1];
                    }
                }
                _ => {}
            }
            for i in idx {
                ensure!(
                    (0..n_tokens as i64).contains(&i),
                    "span {span:?} gives position {i}, outside the prompt's {n_tokens} tokens"
                );
                out.push(i as usize);
            }
        }
        Ok(out)
    }
}

/// One answer of a [`PromptSpec`]: a text (its last occurrence) or a character span.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum AnswerOpt {
    /// The last occurrence of this text in the prompt.
    Text(String),
    /// Characters `[start, end)`.
    Span([usize; 2]),
}

/// A candidate or foil: a token id or a single-token text.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum TokenOpt {
    /// A token id.
    Id(u32),
    /// A text that is one token.
    Text(String),
}

/// What a custom sample explains, as scripts (`prompt_sample`) and `POST /prompt_sample` give
/// it: answers (texts or character spans), answer token positions, candidates and foils
/// (ids or single-token texts), objective, named spans and the sample index.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Answers: texts (last occurrence) or character spans; every token they cover is a target.
    #[serde(default)]
    pub answers: Vec<AnswerOpt>,
    /// Answer token positions.
    #[serde(default)]
    pub answer_tokens: Vec<usize>,
    /// Candidates (the A3 mask of the log-prob objective).
    #[serde(default)]
    pub candidates: Vec<TokenOpt>,
    /// Foils, one per answer token (logit_diff).
    #[serde(default)]
    pub foils: Vec<TokenOpt>,
    /// log_prob (default), full_vocab, logit_diff or argmax.
    #[serde(default)]
    pub objective: Option<String>,
    /// Named spans (token positions).
    #[serde(default)]
    pub spans: BTreeMap<String, Vec<usize>>,
    /// Sample index in its dataset.
    #[serde(default)]
    pub index: usize,
}

impl PromptSpec {
    /// The sample of `prompt` this spec describes (see [`Sample::custom`]).
    pub fn build(&self, tok: &Tokenizer, prompt: &str) -> Result<Sample> {
        crate::limits::TEXT_BYTES.check(prompt.len(), "prompt")?;
        let o = self;
        crate::limits::COUNT.check(o.answers.len() + o.answer_tokens.len(), "answers")?;
        let ids = |what: &str, v: &[TokenOpt]| -> anyhow::Result<Vec<u32>> {
            v.iter()
                .enumerate()
                .map(|(i, t)| match t {
                    TokenOpt::Id(id) => Ok(*id),
                    TokenOpt::Text(s) => crate::tokenizer::single_token_id(tok, s)
                        .map_err(|e| anyhow::anyhow!("{what}[{i}]: {e}")),
                })
                .collect()
        };
        let mut spec = CustomSpec {
            answer_tokens: o.answer_tokens.clone(),
            candidate_ids: ids("candidates", &o.candidates)?,
            foil_ids: ids("foils", &o.foils)?,
            objective: o.objective.clone(),
            spans: o.spans.clone(),
            ..Default::default()
        };
        let vocab = tok.get_vocab_size(true);
        if let Some(&t) = spec
            .candidate_ids
            .iter()
            .chain(&spec.foil_ids)
            .find(|&&t| t as usize >= vocab)
        {
            anyhow::bail!("token id {t} is not in the vocabulary ({vocab} tokens)");
        }
        for a in &o.answers {
            match a {
                AnswerOpt::Text(t) => spec.answer_texts.push(t.clone()),
                AnswerOpt::Span(s) => spec.answer_spans.push(*s),
            }
        }
        Sample::custom(o.index, prompt, tok, &spec)
    }
}
