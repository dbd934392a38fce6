//! The [`Backend`] trait — "a model I can ask questions" (M3, M9) — and its in-process
//! implementation [`Local`] with its LRU activation store. Code above the trait never asks which
//! implementation it has (the HTTP client `remote::Remote` is the other one).
//!
//! Every tensor a `Backend` returns is f32 on the CPU, whatever the compute device/dtype.

pub mod disk;
pub mod kv;
pub mod local;
pub mod lru;
pub mod spread;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::ig::{NodeForwardRequest, NodeGrad, NodeGradRequest, ResidualRequest};
use crate::model::config::ModelConfig;
use crate::model::intervene::{IntervenedRun, Intervention};
use crate::model::outputs::CaptureSpec;

pub use crate::model::sample::{CachedSample, SampleInput};
pub use local::Local;
pub use lru::CacheStats;

/// Identifies a cached sample: dataset name + sample index (r.index).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleKey {
    /// Dataset name.
    pub dataset: String,
    /// Sample index within the dataset (0..N-1).
    pub index: usize,
}

impl SampleKey {
    /// Builds a key.
    pub fn new(dataset: impl Into<String>, index: usize) -> Self {
        Self {
            dataset: dataset.into(),
            index,
        }
    }
}

/// An activation of a cached sample, as [`Backend::activation`] returns it at k positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Act {
    /// hidden_states\[layer\] `[1,k,e]` (layer in 0..=L; L = after the final norm).
    HiddenStates(usize),
    /// The attention block's residual contribution o_proj(attn_out) of a layer `[1,k,e]`.
    AttnOutput(usize),
    /// The MLP output of a layer `[1,k,e]`.
    MlpOutput(usize),
    /// Per-head residual contributions of a layer: One(h) `[1,k,e]` (One(H) = the MLP output);
    /// Many(hs) the sum of those heads `[1,k,e]`; All `[1,k,n,e]`.
    HeadOutput(usize, HeadSel),
    /// Attention weights of a layer: One(h) `[1,k,s]`; Many/All `[1,h,k,s]`. Cached by
    /// (dataset, index, layer, heads, pos_ids) when pos_ids is given. Needs the full-sequence
    /// hidden_states of the layer.
    AttnWeights(usize, HeadSel),
    /// Logits `[1,k,v]` (stored ones, else lm_head(hidden_states\[L\])).
    Logits,
    /// The per-head attention output before o_proj of a layer `[1,k,n,d]` (the seed's attn_out).
    AttnOut(usize),
    /// The mean square of the residual entering layer l, the input_layernorm's variance `[1,k,1]`
    /// f32 (l = L: the final norm's).
    InputNormVar(usize),
    /// The post_attention_layernorm's variance of a layer `[1,k,1]` f32.
    PostAttnNormVar(usize),
}

/// Head selection for accessors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeadSel {
    /// One query head; `One(H)` (H = num_attention_heads) is the MLP pseudo-head in
    /// `head_output` (returns the layer's MLP output).
    One(usize),
    /// Several query heads.
    Many(Vec<usize>),
    /// Every query head.
    All,
}

/// What [`Backend::intervene`] returns besides the logits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterveneOptions {
    /// Positions whose logits are returned (None: the positions that predict the sample's
    /// answers, answer_indices − 1, or the last position when it has none).
    #[serde(default)]
    pub logit_positions: Option<Vec<usize>>,
    /// Layers whose residual streams are returned (hidden_states\[l\], l in 0..=L).
    #[serde(default)]
    pub hidden_layers: Vec<usize>,
}

impl InterveneOptions {
    /// The logit positions in force for a sample: the asked ones, else the positions that
    /// predict its answers (answer_indices − 1), else its last position.
    pub fn positions_for(&self, input: &SampleInput, seq_len: usize) -> anyhow::Result<Vec<usize>> {
        Ok(match &self.logit_positions {
            Some(p) => p.clone(),
            None if !input.answer_indices.is_empty() => input.answer_positions()?,
            None => vec![seq_len.saturating_sub(1)],
        })
    }
}

/// The checks of a [`Backend::forward_samples`] call: one capture per sample, a batch size in
/// 1..=[`crate::limits::FORWARD_BATCH`].
pub fn check_forward_samples(
    inputs: &[SampleInput],
    captures: &[CaptureSpec],
    batch: usize,
) -> Result<()> {
    anyhow::ensure!(
        inputs.len() == captures.len(),
        "{} samples but {} capture specs",
        inputs.len(),
        captures.len()
    );
    crate::limits::FORWARD_BATCH.check(batch, "the forward batch size")?;
    anyhow::ensure!(batch >= 1, "the forward batch size must be at least 1");
    Ok(())
}

/// A model that can forward samples, cache their activations and answer questions about them.
pub trait Backend: Send + Sync {
    /// The model configuration.
    fn config(&self) -> &ModelConfig;
    /// The tokenizer.
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    /// Model path/name, dtype, device.
    fn describe(&self) -> String;
    /// The `gen_dataset` options of the puzzle distribution the model was trained on (the
    /// `dataset` entry of the folder's `minarc.json`), when the model records one.
    fn dataset_options(&self) -> Option<&serde_json::Value>;
    /// Tokenize, forward with capture, store under (dataset, input.index). Skips if already
    /// cached unless `force`. Returns seq_len.
    fn forward_sample(
        &self,
        dataset: &str,
        input: &SampleInput,
        capture: &CaptureSpec,
        force: bool,
    ) -> Result<usize>;
    /// Forwards several samples (`captures[k]` is sample k's capture), `batch` per forward
    /// where the backend batches (the default forwards one at a time), and calls `on_done(n)`
    /// as n more samples are done. Returns each seq_len in order.
    fn forward_samples(
        &self,
        dataset: &str,
        inputs: &[SampleInput],
        captures: &[CaptureSpec],
        force: bool,
        batch: usize,
        on_done: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Vec<usize>> {
        check_forward_samples(inputs, captures, batch)?;
        let mut out = Vec::with_capacity(inputs.len());
        for (input, capture) in inputs.iter().zip(captures) {
            crate::cancel::check()?;
            out.push(
                self.forward_sample(dataset, input, capture, force)
                    .with_context(|| format!("sample {}", input.index))?,
            );
            on_done(1)?;
        }
        Ok(out)
    }
    /// Whether the sample is cached (an error when the backend cannot tell, e.g. an
    /// unreachable server).
    fn has_sample(&self, key: &SampleKey) -> Result<bool>;
    /// Cached datasets and their sample indices (sorted); an error when the backend cannot
    /// tell (an unreachable server is not "no datasets").
    fn datasets(&self) -> Result<Vec<(String, Vec<usize>)>>;
    /// Removes a dataset (and its cached attention weights).
    fn drop_dataset(&self, dataset: &str) -> Result<()>;
    /// Writes a dataset's captured activations to the folder `dir` (one safetensors file per
    /// sample + index.json; for a served model a folder name under the server's `--store`).
    /// Returns the number of samples written.
    fn save_dataset(&self, dataset: &str, dir: &str) -> Result<usize>;
    /// Reads activations saved by [`Backend::save_dataset`] into the cache under `name`
    /// (default: the name they were saved under) without recomputing them; refused when they
    /// were computed by another model. Returns (name, samples).
    fn load_dataset(&self, dir: &str, name: Option<&str>) -> Result<(String, usize)>;
    /// Token count of a cached sample.
    fn seq_len(&self, key: &SampleKey) -> Result<usize>;
    /// One activation of a cached sample at `pos_ids` (None = every position); see [`Act`]
    /// for the shapes. The one getter every backend implements.
    fn activation(&self, key: &SampleKey, act: &Act, pos_ids: Option<&[usize]>) -> Result<Tensor>;
    /// hidden_states\[layer\] `[1,k,e]` (layer in 0..=L; L = after the final norm).
    fn hidden_states(
        &self,
        key: &SampleKey,
        layer: usize,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.activation(key, &Act::HiddenStates(layer), pos_ids)
    }
    /// The attention block's residual contribution o_proj(attn_out) `[1,k,e]`.
    fn attn_output(
        &self,
        key: &SampleKey,
        layer: usize,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.activation(key, &Act::AttnOutput(layer), pos_ids)
    }
    /// The MLP output `[1,k,e]`.
    fn mlp_output(
        &self,
        key: &SampleKey,
        layer: usize,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.activation(key, &Act::MlpOutput(layer), pos_ids)
    }
    /// See [`Act::HeadOutput`].
    fn head_output(
        &self,
        key: &SampleKey,
        layer: usize,
        heads: &HeadSel,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.activation(key, &Act::HeadOutput(layer, heads.clone()), pos_ids)
    }
    /// See [`Act::AttnWeights`].
    fn attn_weights(
        &self,
        key: &SampleKey,
        layer: usize,
        heads: &HeadSel,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.activation(key, &Act::AttnWeights(layer, heads.clone()), pos_ids)
    }
    /// Logits `[1,k,v]` (stored ones, else lm_head(hidden_states\[L\])).
    fn logits(&self, key: &SampleKey, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.activation(key, &Act::Logits, pos_ids)
    }
    /// Logit lens: `lm_head(final_norm(x))` for an arbitrary residual x `[b,k,e]` → `[b,k,v]`,
    /// with the final norm's variance computed afresh from x (never a cached one). Used by the
    /// logit and head lenses (V4, V6, V7).
    fn lens_logits(&self, x: &Tensor) -> Result<Tensor>;
    /// The SampleInput given at forward time.
    fn sample_meta(&self, key: &SampleKey) -> Result<SampleInput>;
    /// A13: one node's backward (path-averaged, residual-space gradient; attn_a: weights and
    /// their gradient).
    fn node_gradient(&self, key: &SampleKey, req: &NodeGradRequest) -> Result<NodeGrad>;
    /// A15: one node's forward with an optional replacement residual `[1,k,e]` (lm_head: `[1]`).
    fn node_forward(&self, key: &SampleKey, req: &NodeForwardRequest) -> Result<Tensor>;
    /// A18: residual attribution `[L',H+1,g]` of downstream gradients to heads and MLPs.
    fn attribute_residual(&self, key: &SampleKey, req: &ResidualRequest) -> Result<Tensor>;
    /// A model weight by its Hugging Face name, in HF layout, f32 on the host; `rows` picks rows
    /// of dim 0 (e.g. the unembedding rows of some tokens).
    fn weight(&self, name: &str, rows: Option<&[usize]>) -> Result<Tensor>;
    /// Forwards the tokens of a cached sample once per intervention set (an empty set is the
    /// clean run) and returns, per set, the logits `[k,v]` at the option's positions and the
    /// asked residual streams. The sample's cache is never changed.
    fn intervene(
        &self,
        key: &SampleKey,
        sets: &[Vec<Intervention>],
        opts: &InterveneOptions,
    ) -> Result<Vec<IntervenedRun>>;
}
