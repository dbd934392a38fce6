//! Qwen2 / Llama weights in the layout this crate computes with: every linear weight is stored
//! **pre-transposed and contiguous** as `[in, out]` (HF stores `[out, in]`), so `x @ w_t`
//! runs on a contiguous right-hand side (2–4× faster at small row counts).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::loader::WeightFiles;

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// input_layernorm weight `[e]`.
    pub input_norm: Tensor,
    /// q_proj `[e, n·d]` and bias `[n·d]`.
    pub wq_t: Tensor,
    /// q_proj bias `[n·d]`.
    pub bq: Tensor,
    /// k_proj `[e, kvh·d]`.
    pub wk_t: Tensor,
    /// k_proj bias `[kvh·d]`.
    pub bk: Tensor,
    /// v_proj `[e, kvh·d]`.
    pub wv_t: Tensor,
    /// v_proj bias `[kvh·d]`.
    pub bv: Tensor,
    /// o_proj `[n·d, e]` (no bias). Head h's slice is rows h·d..(h+1)·d.
    pub wo_t: Tensor,
    /// post_attention_layernorm weight `[e]`.
    pub post_norm: Tensor,
    /// gate_proj `[e, m]`.
    pub w_gate_t: Tensor,
    /// up_proj `[e, m]`.
    pub w_up_t: Tensor,
    /// down_proj `[m, e]`.
    pub w_down_t: Tensor,
}

/// All weights of a Qwen2 causal LM.
#[derive(Debug, Clone)]
pub struct Weights {
    /// embed_tokens `[v, e]`.
    pub embed: Tensor,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final norm weight `[e]`.
    pub final_norm: Tensor,
    /// lm_head as `[e, v]`: a contiguous transposed copy when untied, the (strided) transposed
    /// view of `embed` when tied (no extra memory; same speed at large row counts).
    pub lm_head_t: Tensor,
}

fn linear_t(
    files: &WeightFiles,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let prefix = name.strip_suffix(".weight").unwrap_or(name);
    if let Some(q) = files.gptq()
        && files.contains(&format!("{prefix}.qweight"))
    {
        // GPTQ: dequantised straight into our [in, out] layout
        let w = super::gptq::dequantize(files, q, prefix, in_dim, out_dim)?;
        return Ok(w.to_dtype(dtype)?.to_device(dev)?);
    }
    // HF layout [out, in] -> ours [in, out], contiguous.
    let w = files.tensor(name, &[out_dim, in_dim], dtype, dev)?;
    Ok(w.t()?.contiguous()?)
}

impl Weights {
    /// Loads all weights with HF names (`model.layers.{l}.self_attn.q_proj.weight`, …),
    /// converting to `dtype` on `dev`. A missing `lm_head.weight` with tied embeddings uses the
    /// embedding; with untied embeddings it is an error.
    pub fn load(
        files: &WeightFiles,
        cfg: &ModelConfig,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let e = cfg.hidden_size;
        let m = cfg.intermediate_size;
        let nd = cfg.num_attention_heads * cfg.head_dim();
        let kvd = cfg.num_kv_heads() * cfg.head_dim();
        let v = cfg.vocab_size;
        let embed = files.tensor("model.embed_tokens.weight", &[v, e], dtype, dev)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let vec = |name: &str, n: usize| files.tensor(&format!("{p}.{name}"), &[n], dtype, dev);
            let lin = |name: &str, o: usize, i: usize| {
                linear_t(files, &format!("{p}.{name}.weight"), o, i, dtype, dev)
            };
            // Llama-style checkpoints have no q/k/v biases: a zero bias adds exactly nothing
            let bias = |name: &str, n: usize| {
                if cfg.has_qkv_bias() {
                    vec(name, n)
                } else {
                    Ok(Tensor::zeros(n, dtype, dev)?)
                }
            };
            layers.push(LayerWeights {
                input_norm: vec("input_layernorm.weight", e)?,
                wq_t: lin("self_attn.q_proj", nd, e)?,
                bq: bias("self_attn.q_proj.bias", nd)?,
                wk_t: lin("self_attn.k_proj", kvd, e)?,
                bk: bias("self_attn.k_proj.bias", kvd)?,
                wv_t: lin("self_attn.v_proj", kvd, e)?,
                bv: bias("self_attn.v_proj.bias", kvd)?,
                wo_t: lin("self_attn.o_proj", e, nd)?,
                post_norm: vec("post_attention_layernorm.weight", e)?,
                w_gate_t: lin("mlp.gate_proj", m, e)?,
                w_up_t: lin("mlp.up_proj", m, e)?,
                w_down_t: lin("mlp.down_proj", e, m)?,
            });
        }
        let final_norm = files.tensor("model.norm.weight", &[e], dtype, dev)?;
        let lm_head_t = if cfg.tie_word_embeddings {
            embed.t()?
        } else {
            linear_t(files, "lm_head.weight", v, e, dtype, dev)?
        };
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head_t,
        })
    }
}

impl Weights {
    /// A weight by its Hugging Face name in HF layout (`[out, in]` for linear weights), f32, or
    /// only the given rows of dim 0 (`rows`: e.g. the unembedding rows of a few tokens).
    pub fn by_name(&self, cfg: &ModelConfig, name: &str, rows: Option<&[usize]>) -> Result<Tensor> {
        use anyhow::{anyhow, bail, ensure};
        let unknown = || {
            anyhow!(
                "no weight {name:?} (names as in Hugging Face checkpoints: model.embed_tokens.weight, \
                 lm_head.weight, model.norm.weight, model.layers.{{l}}.self_attn.q_proj.weight, …)"
            )
        };
        let t: Tensor = match name {
            "model.embed_tokens.weight" => self.embed.clone(),
            "lm_head.weight" => self.lm_head_t.t()?,
            "model.norm.weight" => self.final_norm.clone(),
            _ => {
                let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
                let (l, part) = rest.split_once('.').ok_or_else(unknown)?;
                let l: usize = l.parse().map_err(|_| unknown())?;
                ensure!(
                    l < self.layers.len(),
                    "weight {name:?}: layer {l} out of range (model has {} layers)",
                    self.layers.len()
                );
                let lw = &self.layers[l];
                let bias = |b: &Tensor| -> Result<Tensor> {
                    if !cfg.has_qkv_bias() {
                        bail!("weight {name:?}: this model has no q/k/v biases");
                    }
                    Ok(b.clone())
                };
                match part {
                    "input_layernorm.weight" => lw.input_norm.clone(),
                    "post_attention_layernorm.weight" => lw.post_norm.clone(),
                    "self_attn.q_proj.weight" => lw.wq_t.t()?,
                    "self_attn.k_proj.weight" => lw.wk_t.t()?,
                    "self_attn.v_proj.weight" => lw.wv_t.t()?,
                    "self_attn.o_proj.weight" => lw.wo_t.t()?,
                    "self_attn.q_proj.bias" => bias(&lw.bq)?,
                    "self_attn.k_proj.bias" => bias(&lw.bk)?,
                    "self_attn.v_proj.bias" => bias(&lw.bv)?,
                    "mlp.gate_proj.weight" => lw.w_gate_t.t()?,
                    "mlp.up_proj.weight" => lw.w_up_t.t()?,
                    "mlp.down_proj.weight" => lw.w_down_t.t()?,
                    _ => return Err(unknown()),
                }
            }
        };
        let t = match rows {
            None => t,
            Some(r) => {
                let n = t.dim(0)?;
                if let Some(&bad) = r.iter().find(|&&i| i >= n) {
                    bail!("weight {name:?}: row {bad} out of range ({n} rows)");
                }
                // rows of a transposed view: select columns of the stored [in, out] layout
                if t.is_contiguous() {
                    t.index_select(&super::ops::index_tensor(r, t.device())?, 0)?
                } else {
                    t.t()?
                        .index_select(&super::ops::index_tensor(r, t.device())?, 1)?
                        .t()?
                }
            }
        };
        Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}
