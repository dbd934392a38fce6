//! `forward` of a dataset into a model's activation cache: capture options, skipping cached
//! samples, token-count checks, progress and interrupts.

use super::args::{RResult, guard, options};
use super::model::{Cached, ScriptModel};
use super::puzzle::ScriptSample;
use crate::backend::{Backend, SampleKey};
use crate::model::{CaptureSpec, SampleInput};
use crate::script::docs::Registrar;
use crate::script::state::HostState;
use anyhow::{Context, Result, anyhow, ensure};
use candle_core::DType;
use rhai::{Array, Dynamic, Map};
use std::sync::Arc;

/// Register `forward(model, dataset, samples[, opts])`.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "forward",
        "forward(model: Model, dataset: String, samples: Array) -> Array",
        "Forward every sample not yet cached under dataset (progress bar, Ctrl-C stops); returns one Cached handle per sample.",
        move |m: ScriptModel, dataset: &str, samples: Array| forward(&st, &m, dataset, &samples),
    );
    let st = state.clone();
    r.func(
        "forward",
        "forward(model: Model, dataset: String, samples: Array, opts: Map) -> Array",
        "forward with capture options: layers ([int], L = final norm), positions ([int] or a span name such as \"A-\" resolved per sample), dtype (storage: \"f32\", \"f16\", \"bf16\"), logits (store logits), force (recompute cached samples), batch (samples per forward, default 1: right-padded, same activations; faster on a GPU).",
        move |m: ScriptModel, dataset: &str, samples: Array, opts: Map| {
            let o = guard("forward", || forward_options(&opts))?;
            forward_with(&st, &m, dataset, &samples, &o)
        },
    );
}

pub(super) fn sample_input(s: &ScriptSample) -> SampleInput {
    SampleInput {
        index: s.0.index,
        prompt: s.0.prompt.clone(),
        labels: s.0.labels.clone(),
        candidate_ids: s.0.candidate_ids.clone(),
        answer_indices: s.0.answer_indices.clone(),
        objective: s.0.objective.clone(),
    }
}

pub(super) fn samples_of(arr: &Array) -> Result<Vec<ScriptSample>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<ScriptSample>()
                .map(|s| s.clone())
                .ok_or_else(|| anyhow!("element {k} is a {}, expected a Sample", v.type_name()))
        })
        .collect()
}

/// Which positions a forward stores: all, fixed ones, or a span resolved per sample.
enum CapturePositions {
    All,
    Fixed(Vec<usize>),
    Span(String),
}

/// Capture options of `forward(model, dataset, samples, opts)`.
pub(super) struct ForwardOptions {
    layers: Option<Vec<usize>>,
    positions: CapturePositions,
    dtype: DType,
    logits: bool,
    pub(super) force: bool,
    /// Samples per forward (right-padded to the longest of the batch).
    pub(super) batch: usize,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            layers: None,
            positions: CapturePositions::All,
            dtype: DType::F32,
            logits: false,
            force: false,
            batch: 1,
        }
    }
}

/// The option map of `forward(..., opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardKeys {
    #[serde(default)]
    layers: Option<Vec<usize>>,
    #[serde(default)]
    positions: Option<PositionsKey>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    logits: Option<bool>,
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    batch: Option<usize>,
}

#[derive(serde::Deserialize)]
#[serde(untagged, expecting = "an array of ints or a span name such as \"A-\"")]
enum PositionsKey {
    Fixed(Vec<usize>),
    Span(String),
}

pub(super) fn forward_options(map: &Map) -> Result<ForwardOptions> {
    let k: ForwardKeys = options(map)?;
    let d = ForwardOptions::default();
    Ok(ForwardOptions {
        layers: k.layers,
        positions: match k.positions {
            None => d.positions,
            Some(PositionsKey::Fixed(p)) => CapturePositions::Fixed(p),
            Some(PositionsKey::Span(s)) => CapturePositions::Span(s),
        },
        dtype: match k.dtype {
            None => d.dtype,
            Some(name) => crate::model::config::parse_dtype(&name)?,
        },
        logits: k.logits.unwrap_or(d.logits),
        force: k.force.unwrap_or(d.force),
        batch: match k.batch {
            None => d.batch,
            Some(n) => {
                crate::limits::FORWARD_BATCH.check(n, "the forward batch size")?;
                ensure!(n >= 1, "batch must be at least 1");
                n
            }
        },
    })
}

impl ForwardOptions {
    /// The capture spec for one sample (a span is resolved on the sample's own tokens).
    pub(super) fn spec(&self, s: &ScriptSample) -> Result<CaptureSpec> {
        let positions = match &self.positions {
            CapturePositions::All => None,
            CapturePositions::Fixed(p) => Some(p.clone()),
            CapturePositions::Span(span) => {
                let mut p = s.0.positions(span, crate::puzzle::sample::DEFAULT_LAST_K)?;
                p.sort_unstable();
                p.dedup();
                Some(p)
            }
        };
        Ok(CaptureSpec {
            layers: self.layers.clone(),
            positions,
            dtype: self.dtype,
            logits: self.logits,
        })
    }
}

/// Forward every sample not yet cached under `dataset`; one `Cached` handle per sample.
fn forward(st: &HostState, m: &ScriptModel, dataset: &str, samples: &Array) -> RResult<Array> {
    forward_with(st, m, dataset, samples, &ForwardOptions::default())
}

/// [`forward`] with capture options (layers, positions, storage dtype, logits, force).
fn forward_with(
    st: &HostState,
    m: &ScriptModel,
    dataset: &str,
    samples: &Array,
    opts: &ForwardOptions,
) -> RResult<Array> {
    let samples = guard("forward", || {
        ensure!(!dataset.is_empty(), "the dataset name must not be empty");
        samples_of(samples)
    })?;
    // A sharded run forwards its slice only (the handles of the others are returned unforwarded,
    // so `mr` over them takes the same slice); a replay of reduced results forwards nothing.
    let mine = st.shard_mode().range(samples.len());
    let pb = st.progress(mine.len() as u64, &format!("forward {dataset}"));
    let b = m.0.as_ref();
    let mut fresh = vec![false; samples.len()];
    let (mut inputs, mut specs) = (Vec::new(), Vec::new());
    // a sample index listed again is forwarded once (as one at a time would skip it as cached)
    let mut queued = std::collections::HashSet::new();
    for k in mine.clone() {
        let s = &samples[k];
        st.check_interrupt()?;
        fresh[k] = guard("forward", || {
            let f = (opts.force || !b.has_sample(&SampleKey::new(dataset, s.0.index))?)
                && queued.insert(s.0.index);
            if f {
                check_tokens(b, s)?;
                specs.push(
                    opts.spec(s)
                        .with_context(|| format!("sample {}", s.0.index))?,
                );
                inputs.push(sample_input(s));
            }
            Ok(f)
        })?;
        if !fresh[k] {
            pb.inc(1);
        }
    }
    guard("forward", || {
        b.forward_samples(dataset, &inputs, &specs, opts.force, opts.batch, &mut |n| {
            pb.inc(n as u64);
            Ok(())
        })
    })?;
    pb.finish_and_clear();
    Ok(samples
        .into_iter()
        .zip(fresh)
        .map(|(s, fresh)| {
            Dynamic::from(Cached {
                dataset: dataset.to_string(),
                sample: s,
                fresh,
                home: None,
            })
        })
        .collect())
}

/// One sample of a forward on one backend: skipped when cached (unless `force`), else its
/// token count checked and forwarded with its capture spec. Returns whether it ran.
pub(super) fn forward_one(
    b: &dyn Backend,
    dataset: &str,
    s: &ScriptSample,
    opts: &ForwardOptions,
) -> Result<bool> {
    let fresh = opts.force || !b.has_sample(&SampleKey::new(dataset, s.0.index))?;
    if fresh {
        check_tokens(b, s)?;
        b.forward_sample(dataset, &sample_input(s), &opts.spec(s)?, opts.force)
            .with_context(|| format!("sample {}", s.0.index))?;
    }
    Ok(fresh)
}

/// A sample generated with a tokenizer must tokenize to the same length on this model.
pub(super) fn check_tokens(b: &dyn Backend, s: &ScriptSample) -> Result<()> {
    if let Some(n) = s.0.n_tokens {
        let enc = b
            .tokenizer()
            .encode(s.0.prompt.as_str(), true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        ensure!(
            enc.len() == n,
            "sample {} has {n} tokens but the model's tokenizer gives {}: \
             generate the dataset with tokenizer: tokenizer(model)",
            s.0.index,
            enc.len()
        );
    }
    Ok(())
}
