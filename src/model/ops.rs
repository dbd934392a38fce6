//! Small tensor helpers shared by the forward pass and the component functions.
//! Everything here is autograd-safe (composed candle ops) unless the name says `fused`.

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};

/// Additive mask value for disallowed keys. Finite so that a fully masked row cannot produce NaN;
/// exp(NEG_MASK − max) underflows to exactly 0 in f32.
pub const NEG_MASK: f32 = -1e30;

/// `x @ w_t (+ bias)`: x `[.., in]`, w_t `[in, out]`, bias `[out]` → `[.., out]`.
/// Leading dims are folded into one matmul.
pub fn linear(x: &Tensor, w_t: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let y = x.broadcast_matmul(w_t)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Mean square over the last dim, in f32: x `[.., e]` → `[.., 1]`.
pub fn rms_variance(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F32)?.sqr()?.mean_keepdim(D::Minus1)?)
}

/// RMSNorm with a given variance (HF order): `w ⊙ (x_f32 · rsqrt(var + eps)).to(dtype)`.
/// x `[b|1,k,e]`, variance `[b|1,k,1]` f32, w `[e]` → `[b,k,e]` in w's dtype.
pub fn rms_apply(x: &Tensor, variance: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let scale = (variance.to_dtype(DType::F32)? + eps)?.sqrt()?.recip()?;
    let y = x.to_dtype(DType::F32)?.broadcast_mul(&scale)?;
    Ok(y.to_dtype(w.dtype())?.broadcast_mul(w)?)
}

/// A2–A4 on logits `[b,k,v]` f32: per example, the mean over the k positions of
/// log-softmax(logits + mask)\[label\], mask = −1e4 everywhere except 0 at `candidate_ids`
/// (empty list = no mask) → `[b]`. The one implementation of the objective (the lm_head node
/// and the causal metrics use it). Autograd-safe.
pub fn label_log_prob(logits: &Tensor, labels: &[u32], candidate_ids: &[u32]) -> Result<Tensor> {
    let (b, k, v) = logits.dims3()?;
    if labels.len() != k {
        bail!("{} labels for {k} positions", labels.len());
    }
    if let Some(&t) = labels
        .iter()
        .chain(candidate_ids)
        .find(|&&t| t as usize >= v)
    {
        bail!("token id {t} out of range (vocab size {v})");
    }
    let dev = logits.device();
    let mut logits = logits.clone();
    if !candidate_ids.is_empty() {
        let mut m = vec![-1e4f32; v];
        for &c in candidate_ids {
            m[c as usize] = 0.0;
        }
        logits = logits.broadcast_add(&Tensor::from_vec(m, v, dev)?)?;
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let idx = Tensor::new(labels, dev)?
        .reshape((1, k, 1))?
        .broadcast_as((b, k, 1))?
        .contiguous()?;
    Ok(logp.gather(&idx, 2)?.squeeze(2)?.mean(1)?)
}

/// The objective of logits `[b,k,v]` f32 → `[b]`: [`label_log_prob`] for `LogProb` and
/// `Argmax` (whose labels were resolved at forward), the same without the candidate mask for
/// `FullVocab`, and the mean of logit(label) − logit(foil) for `LogitDiff`. Autograd-safe.
pub fn objective_value(
    logits: &Tensor,
    labels: &[u32],
    candidate_ids: &[u32],
    objective: &super::sample::Objective,
) -> Result<Tensor> {
    use super::sample::Objective;
    match objective {
        Objective::LogProb | Objective::Argmax => label_log_prob(logits, labels, candidate_ids),
        Objective::FullVocab => label_log_prob(logits, labels, &[]),
        Objective::LogitDiff { foils } => {
            let (b, k, v) = logits.dims3()?;
            if labels.len() != k || foils.len() != k {
                bail!(
                    "logit_diff: {} labels and {} foils for {k} positions",
                    labels.len(),
                    foils.len()
                );
            }
            if let Some(&t) = labels.iter().chain(foils).find(|&&t| t as usize >= v) {
                bail!("token id {t} out of range (vocab size {v})");
            }
            let dev = logits.device();
            let pick = |ids: &[u32]| -> Result<Tensor> {
                let idx = Tensor::new(ids, dev)?
                    .reshape((1, k, 1))?
                    .broadcast_as((b, k, 1))?
                    .contiguous()?;
                Ok(logits.gather(&idx, 2)?.squeeze(2)?)
            };
            Ok((pick(labels)? - pick(foils)?)?.mean(1)?)
        }
    }
}

/// Composed (autograd-safe) softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Rotate-half RoPE (autograd-safe): x `[b,h,t,d]`, cos/sin `[t, d/2]` → `[b,h,t,d]`.
/// out1 = x1·cos − x2·sin, out2 = x2·cos + x1·sin with x1/x2 the two halves of d.
pub fn rope_rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?
        .unsqueeze(0)?
        .unsqueeze(0)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?
        .unsqueeze(0)?
        .unsqueeze(0)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

/// `[len]` u32 index tensor.
pub fn index_tensor(idx: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(v, idx.len(), dev)?)
}

/// Batch size of a `[b, ..]` tensor list after broadcasting (each batch must be 1 or b).
pub fn broadcast_batch(named: &[(&str, &Tensor)]) -> Result<usize> {
    let b = named
        .iter()
        .map(|(_, t)| t.dims().first().copied().unwrap_or(1))
        .max()
        .unwrap_or(1);
    for (name, t) in named {
        let bt = t.dims().first().copied().unwrap_or(1);
        if bt != 1 && bt != b {
            bail!("batch size mismatch: {name} has batch {bt}, expected 1 or {b}");
        }
    }
    Ok(b)
}

/// Expands a batch-1 tensor `[1, ..]` to `[b, ..]` (contiguous); returns it unchanged if already b.
pub fn expand_batch(t: &Tensor, b: usize) -> Result<Tensor> {
    if t.dim(0)? == b {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    Ok(t.broadcast_as(dims)?.contiguous()?)
}

/// Checks that every position is < `len`.
pub fn check_positions(pos: &[usize], len: usize, what: &str) -> Result<()> {
    if let Some(&p) = pos.iter().find(|&&p| p >= len) {
        bail!("{what} position {p} out of range (sequence length {len})");
    }
    Ok(())
}

/// A caller's position list: `None` (every position) or a non-empty list of positions below
/// `seq_len`. Local and remote backends refuse the same lists.
pub fn check_pos_ids(pos_ids: Option<&[usize]>, seq_len: usize) -> Result<()> {
    if let Some(p) = pos_ids {
        if p.is_empty() {
            bail!("pos_ids is an empty list; pass none (null, ()) for all positions");
        }
        check_positions(p, seq_len, "pos_ids")?;
    }
    Ok(())
}

/// Makes glibc malloc keep freed tensor buffers for reuse instead of returning them to the OS
/// (and page-faulting them back in on the next op): mmap threshold 32 MiB (the maximum), trim
/// threshold 1 GiB. Without this, a forward that *retains* its captured activations runs
/// 14–18% slower than the plain forward on Qwen2.5-0.5B shapes (measured); with it, the two
/// run at the same speed. Called once by [`super::Qwen2::load`]; a no-op off Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only adjusts allocator tunables; valid at any time.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}
