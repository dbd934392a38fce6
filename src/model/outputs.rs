//! What a forward with capture stores (M2): `CaptureSpec` selects layers, positions and the
//! storage dtype; `Outputs` holds the captured tensors on the CPU.
//!
//! ## Bytes per sample
//! With `c` captured decoder layers (of `0..L`), `f` = 1 if the final norm (layer index `L`) is
//! captured else 0, `k` stored positions (`s` when all), hidden size `e`, vocab `v` and `B` bytes
//! per element of the storage dtype (4 for f32, 2 for f16/bf16):
//!
//! ```text
//! bytes = (3c + f)·k·e·B            hidden_states, attn_outs (n·d = e), mlp_outputs
//!       + (2c + f)·k·4              RMSNorm variances (always f32)
//!       + [logits]·k·v·4            logits (always f32), only when requested
//! ```
//! Example: Qwen2.5-0.5B shapes (L=24, e=896), s=2000, everything in bf16 ≈ 73·2000·896·2 ≈ 262 MB;
//! only the 2 answer positions ≈ 262 KB. [`Outputs::bytes`] reports the real figure.
//!
//! ## What works with selected positions
//! All accessors work for the stored positions (pos_ids are absolute positions; asking for a
//! position that was not stored is an error). Attention weights need the full-sequence
//! hidden_states of their layer (keys/values span all positions), so with a position selection
//! they fail with a clear error; so does anything else that needs unstored rows.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

/// Which activations a forward stores.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSpec {
    /// Layers to store (`0..L` decoder layers; `L` = final norm / hidden_states\[L\]). None = all.
    pub layers: Option<Vec<usize>>,
    /// Absolute positions to store (strictly increasing). None = all.
    pub positions: Option<Vec<usize>>,
    /// Storage dtype of hidden_states / attn_outs / mlp_outputs (F32, F16 or BF16).
    pub dtype: DType,
    /// Also store logits `[1,k,v]` (f32) at the stored positions.
    pub logits: bool,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        Self {
            layers: None,
            positions: None,
            dtype: DType::F32,
            logits: false,
        }
    }
}

impl CaptureSpec {
    /// Everything, f32, no logits.
    pub fn full() -> Self {
        Self::default()
    }

    /// Whether layer index `l` (0..=L) is captured.
    pub fn has_layer(&self, l: usize) -> bool {
        self.layers.as_ref().is_none_or(|ls| ls.contains(&l))
    }

    /// Validates against a model with `num_layers` layers and a sequence of `seq_len` tokens.
    pub fn validate(&self, num_layers: usize, seq_len: usize) -> Result<()> {
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!(
                "capture dtype {:?} not supported (f32, f16 or bf16)",
                self.dtype
            );
        }
        if let Some(ls) = &self.layers
            && let Some(&l) = ls.iter().find(|&&l| l > num_layers)
        {
            bail!("capture layer {l} out of range (0..={num_layers}; {num_layers} = final norm)");
        }
        if let Some(ps) = &self.positions {
            if ps.is_empty() {
                bail!("capture positions must not be empty");
            }
            if ps.windows(2).any(|w| w[0] >= w[1]) {
                bail!("capture positions must be strictly increasing");
            }
            super::ops::check_positions(ps, seq_len, "capture")?;
        }
        Ok(())
    }
}

/// Captured activations of one sample (all on the CPU). See the module docs for the layout.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Token count s of the sample.
    pub seq_len: usize,
    /// Stored positions (None = all 0..s).
    pub positions: Option<Vec<usize>>,
    /// Storage dtype of the big tensors.
    pub dtype: DType,
    /// L+1 entries `[1,k,e]`: index l < L = residual entering layer l, index L = after the final norm.
    pub hidden_states: Vec<Option<Tensor>>,
    /// L entries `[1,k,n,d]`: per-head attention output before o_proj.
    pub attn_outs: Vec<Option<Tensor>>,
    /// L entries `[1,k,e]`: MLP output (the MLP's residual contribution).
    pub mlp_outputs: Vec<Option<Tensor>>,
    /// L entries `[1,k,1]` f32: input_layernorm variance (mean square of hidden_states\[l\]).
    pub input_norm_vars: Vec<Option<Tensor>>,
    /// L entries `[1,k,1]` f32: post_attention_layernorm variance.
    pub post_attn_norm_vars: Vec<Option<Tensor>>,
    /// `[1,k,1]` f32: final norm variance.
    pub final_norm_var: Option<Tensor>,
    /// `[1,k,v]` f32 logits, when requested.
    pub logits: Option<Tensor>,
}

impl Outputs {
    /// Number of decoder layers L.
    pub fn num_layers(&self) -> usize {
        self.attn_outs.len()
    }

    /// Row indices (into the stored rows) of absolute `pos_ids`; None = all stored rows.
    pub fn row_indices(&self, pos_ids: Option<&[usize]>) -> Result<Option<Vec<usize>>> {
        let Some(pos) = pos_ids else {
            return Ok(None);
        };
        super::ops::check_pos_ids(pos_ids, self.seq_len)?;
        match &self.positions {
            None => Ok(Some(pos.to_vec())),
            Some(stored) => pos
                .iter()
                .map(|p| {
                    stored.binary_search(p).map_err(|_| {
                        anyhow::anyhow!(
                            "position {p} was not captured (stored positions: {stored:?})"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Whether every position 0..s is stored.
    pub fn has_all_positions(&self) -> bool {
        self.positions.is_none()
    }

    fn select(&self, t: &Option<Tensor>, what: &str, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        let t = t
            .as_ref()
            .with_context(|| format!("{what} was not captured for this sample"))?;
        let t = match self.row_indices(pos_ids)? {
            None => t.clone(),
            Some(rows) => t.index_select(&super::ops::index_tensor(&rows, t.device())?, 1)?,
        };
        Ok(t.to_dtype(DType::F32)?)
    }

    fn check_layer(&self, layer: usize, max: usize) -> Result<()> {
        if layer >= max {
            bail!("layer {layer} out of range (0..{max})");
        }
        Ok(())
    }

    /// hidden_states\[layer\] `[1,k,e]` f32 (layer in 0..=L).
    pub fn hidden_state(&self, layer: usize, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.check_layer(layer, self.hidden_states.len())?;
        self.select(
            &self.hidden_states[layer],
            &format!("hidden_states[{layer}]"),
            pos_ids,
        )
    }

    /// attn_outs\[layer\] `[1,k,n,d]` f32.
    pub fn attn_out(&self, layer: usize, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.check_layer(layer, self.num_layers())?;
        self.select(
            &self.attn_outs[layer],
            &format!("attn_outs[{layer}]"),
            pos_ids,
        )
    }

    /// mlp_outputs\[layer\] `[1,k,e]` f32.
    pub fn mlp_output(&self, layer: usize, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.check_layer(layer, self.num_layers())?;
        self.select(
            &self.mlp_outputs[layer],
            &format!("mlp_outputs[{layer}]"),
            pos_ids,
        )
    }

    /// input_layernorm variance of `layer` `[1,k,1]` f32.
    pub fn input_norm_var(&self, layer: usize, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.check_layer(layer, self.num_layers())?;
        self.select(
            &self.input_norm_vars[layer],
            &format!("input_layernorm[{layer}] variance"),
            pos_ids,
        )
    }

    /// post_attention_layernorm variance of `layer` `[1,k,1]` f32.
    pub fn post_attn_norm_var(&self, layer: usize, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.check_layer(layer, self.num_layers())?;
        self.select(
            &self.post_attn_norm_vars[layer],
            &format!("post_attention_layernorm[{layer}] variance"),
            pos_ids,
        )
    }

    /// Final norm variance `[1,k,1]` f32.
    pub fn final_norm_var(&self, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.select(&self.final_norm_var, "final norm variance", pos_ids)
    }

    /// Logits `[1,k,v]` f32 (only when captured with `logits: true`).
    pub fn logits(&self, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        self.select(&self.logits, "logits", pos_ids)
    }

    /// Bytes held by the stored tensors.
    pub fn bytes(&self) -> usize {
        let size = |t: &Option<Tensor>| {
            t.as_ref()
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .unwrap_or(0)
        };
        let sum = |v: &Vec<Option<Tensor>>| v.iter().map(size).sum::<usize>();
        sum(&self.hidden_states)
            + sum(&self.attn_outs)
            + sum(&self.mlp_outputs)
            + sum(&self.input_norm_vars)
            + sum(&self.post_attn_norm_vars)
            + size(&self.final_norm_var)
            + size(&self.logits)
    }
}

/// Prepares a tensor for storage: select rows (dim 1), convert dtype, move to the CPU.
pub(crate) fn store(t: &Tensor, rows: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
    let t = match rows {
        Some(r) => t.index_select(r, 1)?,
        None => t.clone(),
    };
    Ok(t.to_dtype(dtype)?.to_device(&Device::Cpu)?)
}
