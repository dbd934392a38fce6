//! Training and held-out sequences: fresh MinARC puzzles verbalised with the configured prompt,
//! tokenized, with the token positions the loss reads.
//!
//! Step `t` draws its variant and its puzzle seeds from a ChaCha8 stream keyed by
//! (run seed, t), so a batch depends only on the configuration and the step (resuming needs no
//! RNG state). Training seeds lie in `held_out..`; seeds `0..held_out` are never trained on.

use anyhow::{Context, Result, bail, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::config::TrainConfig;
use crate::puzzle::sample::DEFAULT_LAST_K;
use crate::puzzle::{PuzzleParams, Relation, Sample, gen_puzzle};

/// What a target token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// An answer colour; `evaluated` when it belongs to the last two examples (the answers
    /// the main job and the model card score).
    Answer {
        /// Whether the answer is scored (last two examples).
        evaluated: bool,
    },
    /// The colour of the query cell in a question line (a lookup in the example's grid).
    Query,
}

/// One target: the token at `pos` (predicted from position `pos − 1`) is `label`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Token position of the target token (≥ 1).
    pub pos: usize,
    /// Its token id.
    pub label: u32,
    /// Answer or query colour.
    pub kind: TargetKind,
}

/// One tokenized puzzle.
#[derive(Clone, Debug)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Target tokens, in prompt order.
    pub targets: Vec<Target>,
    /// The hidden relation.
    pub relation: Relation,
    /// The puzzle seed.
    pub seed: u64,
    /// For each answer target (by token position): the colour token that each relation of the
    /// puzzle's set reads for its question (relations whose cell lies outside the grid are
    /// left out). The hidden relation's reading is the answer; the others tell which relation
    /// a wrong answer followed.
    pub readings: Vec<(usize, Vec<(Relation, u32)>)>,
}

/// The sequence of puzzle `params` (None when the generator runs out of attempts for its seed).
pub fn sequence(
    cfg: &TrainConfig,
    params: &PuzzleParams,
    tok: &Tokenizer,
) -> Result<Option<Sequence>> {
    let puzzle = match gen_puzzle(params) {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let sample = Sample::build(0, puzzle, &cfg.prompt_options(), Some(tok))?;
    let enc = tok
        .encode(sample.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing puzzle {}: {e}", params.seed))?;
    let ids = enc.get_ids().to_vec();
    let puzzle = sample.puzzle()?;
    let n_ex = puzzle.train.len();
    let mut targets = Vec::new();
    let mut readings = Vec::new();
    for (k, ex) in puzzle.train.iter().enumerate() {
        for qa in &ex.output {
            let token = |t: &Option<crate::puzzle::Track>, what: &str| -> Result<usize> {
                let p = t
                    .as_ref()
                    .and_then(|t| t.token)
                    .with_context(|| format!("{what} position not resolved"))?;
                ensure!(p >= 1 && p < ids.len(), "{what} position {p} out of range");
                Ok(p)
            };
            let q = token(&qa.query.value_ranges, "query colour")?;
            let expected = sample.candidate_ids[qa.query.value as usize];
            if ids[q] == expected {
                targets.push(Target {
                    pos: q,
                    label: ids[q],
                    kind: TargetKind::Query,
                });
            }
            let a = token(&qa.answer.value_ranges, "answer")?;
            ensure!(
                ids[a] == sample.candidate_ids[qa.answer.value as usize],
                "puzzle {}: the answer token does not encode the answer colour",
                params.seed
            );
            targets.push(Target {
                pos: a,
                label: ids[a],
                kind: TargetKind::Answer {
                    evaluated: k + DEFAULT_LAST_K >= n_ex,
                },
            });
            let (x0, y0) = qa.query.key;
            let by_relation = puzzle
                .relations
                .iter()
                .filter_map(|&r| {
                    let (x, y) = r.target(x0, y0);
                    let c = ex.input.get(x, y)?;
                    sample.candidate_ids.get(c as usize).map(|&t| (r, t))
                })
                .collect();
            readings.push((a, by_relation));
        }
    }
    Ok(Some(Sequence {
        ids,
        targets,
        relation: puzzle.rel_fn,
        seed: params.seed,
        readings,
    }))
}

/// The training batch of step `step`: `optim.batch` fresh puzzles of one variant.
pub fn batch(cfg: &TrainConfig, step: usize, tok: &Tokenizer) -> Result<Vec<Sequence>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.run.seed);
    rng.set_stream(step as u64);
    let variants = cfg.variants_at(step);
    let variant = &variants[rng.random_range(0..variants.len() as u32) as usize];
    let span = u64::MAX - cfg.run.held_out;
    let b = cfg.optim.batch;
    let mut out = Vec::with_capacity(b);
    for _ in 0..b.saturating_mul(100) {
        if out.len() == b {
            break;
        }
        let seed = cfg.run.held_out + rng.random_range(0..span);
        let p = PuzzleParams {
            seed,
            ..variant.clone()
        };
        if let Some(s) = sequence(cfg, &p, tok)? {
            out.push(s);
        }
    }
    if out.len() < b {
        bail!(
            "step {step}: only {} of {b} puzzles could be generated for variant {}×{} n_train {}",
            out.len(),
            variant.n,
            variant.m,
            variant.n_train
        );
    }
    check_layout(&out)?;
    Ok(out)
}

/// The held-out sequences with seeds `0..n` of the evaluation variant (seeds whose puzzle
/// cannot be generated are skipped, as `gen_dataset` would fail on them).
pub fn held_out(cfg: &TrainConfig, n: usize, tok: &Tokenizer) -> Result<Vec<Sequence>> {
    let v = cfg.eval_variant();
    let mut out = Vec::with_capacity(n);
    for seed in 0..n as u64 {
        if let Some(s) = sequence(cfg, &PuzzleParams { seed, ..v.clone() }, tok)? {
            out.push(s);
        }
    }
    ensure!(!out.is_empty(), "no held-out puzzle could be generated");
    Ok(out)
}

/// All sequences of a batch must have one length (the prompt layout of a variant is fixed).
fn check_layout(seqs: &[Sequence]) -> Result<()> {
    let s = seqs[0].ids.len();
    if let Some(q) = seqs.iter().find(|q| q.ids.len() != s) {
        bail!(
            "puzzle {} has {} tokens where the batch has {s}: the prompt layout is not fixed",
            q.seed,
            q.ids.len()
        );
    }
    Ok(())
}
