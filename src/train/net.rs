//! The trainable Qwen2: the weights as candle `Var`s under their Hugging Face names and a
//! forward built only from composed ops (candle's fused softmax, RMSNorm and RoPE pass no
//! gradient). It computes the same function as [`crate::model::qwen2::Qwen2`]'s inference
//! forward (checked by tests), batched: ids `[b, s]`, every sequence of one length.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use candle_core::{D, DType, Device, Tensor, Var};

use crate::model::config::ModelConfig;
use crate::model::fixture::{Normal, tensor_specs};
use crate::model::ops::{causal_softmax, rms_apply, rms_variance, rope_rotate_half};
use crate::model::qwen2::{rope_inv_freq, rope_tables};

/// The trainable model.
pub struct Net {
    cfg: ModelConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
    inv_freq: Vec<f32>,
    device: Device,
}

impl Net {
    /// Fresh weights, deterministic in `seed`: linear weights N(0, 1/fan_in) (the output
    /// projections o_proj and down_proj further scaled by 1/√(2·layers), so the residual stream
    /// does not grow with depth), embeddings and lm_head N(0, 1/e), norm weights 1, biases 0.
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Net> {
        cfg.validate()?;
        let mut rng = Normal::new(seed);
        let depth = 1.0 / ((2 * cfg.num_hidden_layers) as f32).sqrt();
        let mut named = Vec::new();
        for (name, shape, mean, std) in tensor_specs(cfg) {
            let len: usize = shape.iter().product();
            let (mean, std) = if name.ends_with("norm.weight") {
                (1.0, 0.0)
            } else if name.ends_with(".bias") {
                (0.0, 0.0)
            } else if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                (mean, std * depth)
            } else {
                (mean, std)
            };
            let t = Tensor::from_vec(rng.vec(len, mean, std), shape, device)?;
            named.push((name, t));
        }
        Net::from_tensors(cfg, named, DType::F32, device)
    }

    /// A model from named tensors in HF layout (all of `cfg`'s weights, nothing else), held
    /// and computed in `dtype` (f32 for training; f64 for finite-difference checks).
    pub fn from_tensors(
        cfg: &ModelConfig,
        named: Vec<(String, Tensor)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Net> {
        let specs = tensor_specs(cfg);
        let mut have: HashMap<String, Tensor> = named.into_iter().collect();
        let mut names = Vec::with_capacity(specs.len());
        let mut vars = Vec::with_capacity(specs.len());
        for (name, shape, _, _) in specs {
            let t = have
                .remove(&name)
                .with_context(|| format!("weight {name} is missing"))?;
            ensure!(
                t.dims() == shape.as_slice(),
                "weight {name} has shape {:?}, expected {shape:?}",
                t.dims()
            );
            vars.push(Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?);
            names.push(name);
        }
        if let Some(extra) = have.keys().next() {
            anyhow::bail!("unexpected weight {extra}");
        }
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(Net {
            cfg: cfg.clone(),
            names,
            vars,
            index,
            inv_freq: rope_inv_freq(cfg),
            device: device.clone(),
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Weight names in canonical order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The variables, in the order of [`Net::names`].
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Detached copies of the weights with their names (for export and the inference model).
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    fn w(&self, name: &str) -> &Tensor {
        self.vars[self.index[name]].as_tensor()
    }

    /// `x @ w.T (+ b)` with w in HF layout `[out, in]`: x `[b,s,in]` → `[b,s,out]`.
    fn proj(&self, x: &Tensor, name: &str, bias: bool) -> Result<Tensor> {
        let w = self.w(&format!("{name}.weight"));
        let y = x.broadcast_matmul(&w.t()?)?;
        Ok(if bias {
            y.broadcast_add(self.w(&format!("{name}.bias")))?
        } else {
            y
        })
    }

    /// Logits `[k, v]` at the flat positions `rows` (index into the b·s positions of `ids`,
    /// row-major) of ids `[b, s]`: only the rows the loss reads go through the final norm and
    /// lm_head.
    pub fn logits_at(&self, ids: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let e = self.cfg.hidden_size;
        let n = self.cfg.num_attention_heads;
        let kvh = self.cfg.num_kv_heads();
        let d = self.cfg.head_dim();
        let eps = self.cfg.rms_norm_eps;
        ensure!(
            s <= self.cfg.max_position_embeddings,
            "sequence of {s} tokens exceeds max_position_embeddings {}",
            self.cfg.max_position_embeddings
        );
        // bounded before anything is allocated: one sequence's [n, s, s] attention block and
        // the batch's widest activation [b, s, max(e, intermediate)], each at most 2^28 values
        let widest = e.max(self.cfg.intermediate_size);
        ensure!(
            n.saturating_mul(s).saturating_mul(s) <= MAX_BLOCK
                && b.saturating_mul(s).saturating_mul(widest) <= MAX_BLOCK,
            "a batch of {b} sequences of {s} tokens is too large to train on (attention block \
             {n}×{s}×{s}, activations {b}×{s}×{widest}; at most {MAX_BLOCK} values each): \
             lower optim.batch, the grid sizes or n_train"
        );
        let pos: Vec<usize> = (0..s).collect();
        let dtype = self.vars[0].dtype();
        let (cos, sin) = rope_tables(&self.inv_freq, &pos, dtype, &self.device)?;
        let scale = 1.0 / (d as f64).sqrt();
        let mut x = self
            .w("model.embed_tokens.weight")
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, e))?; // [b,s,e]
        for l in 0..self.cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let xn = rms_apply(
                &x,
                &rms_variance(&x)?,
                self.w(&format!("{p}.input_layernorm.weight")),
                eps,
            )?;
            let heads = |t: Tensor, h: usize| -> Result<Tensor> {
                Ok(t.reshape((b, s, h, d))?.transpose(1, 2)?.contiguous()?) // [b,h,s,d]
            };
            let q = heads(self.proj(&xn, &format!("{p}.self_attn.q_proj"), true)?, n)?;
            let k = heads(self.proj(&xn, &format!("{p}.self_attn.k_proj"), true)?, kvh)?;
            let v = heads(self.proj(&xn, &format!("{p}.self_attn.v_proj"), true)?, kvh)?;
            let q = (rope_rotate_half(&q, &cos, &sin)? * scale)?; // scale folded into q
            let k = repeat_kv(&rope_rotate_half(&k, &cos, &sin)?, n / kvh)?; // [b,n,s,d]
            let v = repeat_kv(&v, n / kvh)?;
            // one sequence at a time: the [n,s,s] blocks stay small enough for the allocator
            // to reuse them instead of mapping fresh pages for every op
            let mut per_seq = Vec::with_capacity(b);
            for i in 0..b {
                let (qi, ki, vi) = (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
                let w = causal_softmax(&qi.matmul(&ki.t()?)?)?; // [1,n,s,s]
                per_seq.push(w.matmul(&vi)?); // [1,n,s,d]
            }
            let attn = Tensor::cat(&per_seq, 0)?; // [b,n,s,d]
            let attn = attn.transpose(1, 2)?.contiguous()?.reshape((b, s, n * d))?;
            let h = (&x + self.proj(&attn, &format!("{p}.self_attn.o_proj"), false)?)?;
            let xn2 = rms_apply(
                &h,
                &rms_variance(&h)?,
                self.w(&format!("{p}.post_attention_layernorm.weight")),
                eps,
            )?;
            let gate = self.proj(&xn2, &format!("{p}.mlp.gate_proj"), false)?;
            let up = self.proj(&xn2, &format!("{p}.mlp.up_proj"), false)?;
            let mlp = self.proj(&(gate.silu()? * up)?, &format!("{p}.mlp.down_proj"), false)?;
            x = (h + mlp)?;
        }
        let xs = x.reshape((b * s, e))?.index_select(rows, 0)?; // [k,e]
        let xs = rms_apply(&xs, &rms_variance(&xs)?, self.w("model.norm.weight"), eps)?;
        let head = if self.cfg.tie_word_embeddings {
            self.w("model.embed_tokens.weight")
        } else {
            self.w("lm_head.weight")
        };
        Ok(xs.matmul(&head.t()?)?) // [k,v]
    }
}

/// Largest attention block or activation (values) a training step may allocate.
const MAX_BLOCK: usize = 1 << 28;

/// Repeats each key/value head `g` times: `[b,kvh,s,d]` → `[b,kvh·g,s,d]` (GQA).
fn repeat_kv(x: &Tensor, g: usize) -> Result<Tensor> {
    if g == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, h, g, s, d))?
        .contiguous()?
        .reshape((b, h * g, s, d))?)
}

/// Weighted mean negative log-likelihood of `labels` under logits `[k, v]`, with weights `[k]`
/// (their sum must be positive) → scalar.
pub fn weighted_nll(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?; // [k]
    let total = weights.sum_all()?;
    Ok((picked * weights)?.sum_all()?.neg()?.div(&total)?)
}
