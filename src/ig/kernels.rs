//! Shared kernels of the node backward / forward / residual attribution: one head's attention
//! written out (its q/k/v/o slices, rotate-half RoPE, composed softmax) so that no fused kernel
//! can cut the gradient, the linearised RMSNorm backward, and the chunked IG path gradient.
//!
//! Gradients use candle autograd over composed (autograd-safe) ops: the scaled input is a `Var`
//! holding a chunk of IG points as a batch `[b,..]`, frozen inputs have batch 1, the loss is
//! Σ_b w_b Σ(y_b ⊙ gy) (gy = the frozen upstream gradient, A6) and the gradient of the Var summed
//! over b is the weighted path average.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::node_type::NodeType;
use super::rule::IgRule;
use crate::model::components::{NoSink, Norm};
use crate::model::ops::check_positions;
use crate::model::ops::{index_tensor, rope_rotate_half, softmax_last};
use crate::model::qwen2::Qwen2;
use crate::model::sample::CachedSample;
use anyhow::ensure;

pub(super) fn f32t(t: &Tensor, dev: &Device) -> Result<Tensor> {
    Ok(t.to_device(dev)?.to_dtype(DType::F32)?)
}

pub(super) fn select_rows(x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    Ok(x.index_select(&index_tensor(pos, x.device())?, 1)?)
}

/// One head's parameters in f32: wq/wk/wv `[e,d]`, biases `[d]`, wo `[d,e]`.
pub(super) struct HeadParams {
    pub(super) wq: Tensor,
    pub(super) bq: Tensor,
    pub(super) wk: Tensor,
    pub(super) bk: Tensor,
    pub(super) wv: Tensor,
    pub(super) bv: Tensor,
    pub(super) wo: Tensor,
}

pub(super) fn head_params(m: &Qwen2, layer: usize, head: usize) -> Result<HeadParams> {
    let cfg = m.config();
    cfg.check_layer(layer)?;
    cfg.check_heads(&[head])?;
    let d = cfg.head_dim();
    let g = cfg.kv_group(head);
    let lw = &m.weights().layers[layer];
    let dev = m.device();
    let cols = |w: &Tensor, i: usize| -> Result<Tensor> {
        f32t(&w.narrow(1, i * d, d)?.contiguous()?, dev)
    };
    let vec = |b: &Tensor, i: usize| -> Result<Tensor> { f32t(&b.narrow(0, i * d, d)?, dev) };
    Ok(HeadParams {
        wq: cols(&lw.wq_t, head)?,
        bq: vec(&lw.bq, head)?,
        wk: cols(&lw.wk_t, g)?,
        bk: vec(&lw.bk, g)?,
        wv: cols(&lw.wv_t, g)?,
        bv: vec(&lw.bv, g)?,
        wo: f32t(&lw.wo_t.narrow(0, head * d, d)?.contiguous()?, dev)?,
    })
}

/// x `[b,t,e]` @ w `[e,d]` + b → `[b,1,t,d]`.
pub(super) fn project(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_matmul(w)?.broadcast_add(b)?.unsqueeze(1)?)
}

pub(super) fn rope(m: &Qwen2, x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    let (cos, sin) = m.rope_at(pos)?;
    rope_rotate_half(x, &f32t(&cos, x.device())?, &f32t(&sin, x.device())?)
}

/// Additive mask `[i,j]`: key t allowed iff t ≤ q_pos; the sink key 0 masked too when asked.
pub(super) fn mask(
    q_pos: &[usize],
    j: usize,
    sink: bool,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    // the model's mask; keep = 1 where a key is allowed
    let add = crate::model::qwen2::query_mask(q_pos, j, sink.then_some(0), dev)?;
    let keep = add.eq(0f32)?.to_dtype(DType::F32)?;
    Ok((add, keep))
}

/// Post-softmax weights of one head `[b,1,i,j]` (f32, autograd-safe).
pub(super) fn head_probs(
    m: &Qwen2,
    p: &HeadParams,
    xq: &Tensor,
    xk: &Tensor,
    q_pos: &[usize],
    no_sink: NoSink,
) -> Result<Tensor> {
    let d = p.wq.dim(1)?;
    let j = xk.dim(1)?;
    let q = rope(m, &project(xq, &p.wq, &p.bq)?, q_pos)?; // [bq,1,i,d]
    let kpos: Vec<usize> = (0..j).collect();
    let k = rope(m, &project(xk, &p.wk, &p.bk)?, &kpos)?; // [bk,1,j,d]
    let scores = (q.broadcast_matmul(&k.transpose(2, 3)?)? / (d as f64).sqrt())?; // [b,1,i,j]
    let (add, keep) = mask(q_pos, j, no_sink == NoSink::MaskBeforeSoftmax, xq.device())?;
    let w = softmax_last(&scores.broadcast_add(&add)?)?;
    Ok(match no_sink {
        NoSink::Off => w,
        // rows with no allowed key (query at 0) are zeroed, as in the model
        NoSink::MaskBeforeSoftmax => w.broadcast_mul(&keep)?,
        NoSink::ZeroAfterSoftmax => {
            let mut z = vec![1f32; j];
            z[0] = 0.0;
            w.broadcast_mul(&Tensor::from_vec(z, j, xq.device())?)?
        }
    })
}

/// One head's residual contribution `[b,i,e]` from weights `[b,1,i,j]` and xv `[b,j,e]`.
pub(super) fn head_apply(p: &HeadParams, w: &Tensor, xv: &Tensor) -> Result<Tensor> {
    let v = project(xv, &p.wv, &p.bv)?; // [bv,1,j,d]
    let o = w.broadcast_matmul(&v)?.squeeze(1)?; // [b,i,d]
    Ok(o.broadcast_matmul(&p.wo)?)
}

/// Linearised RMSNorm backward (A5): gx = w ⊙ gy ⊙ rsqrt(var + eps). gy `[1,k,e]`, var `[1,k,1]`.
pub(super) fn ln_back(m: &Qwen2, norm: Norm, gy: &Tensor, var: &Tensor) -> Result<Tensor> {
    let w = match norm {
        Norm::Input(l) => &m.weights().layers[l].input_norm,
        Norm::PostAttention(l) => &m.weights().layers[l].post_norm,
        Norm::Final => &m.weights().final_norm,
    };
    let dev = gy.device();
    let scale = (f32t(var, dev)? + m.config().rms_norm_eps)?
        .sqrt()?
        .recip()?;
    Ok(gy.broadcast_mul(&scale)?.broadcast_mul(&f32t(w, dev)?)?)
}

/// The normed input with the cached variance: `[1,k,e]` f32.
pub(super) fn normed(m: &Qwen2, norm: Norm, x: &Tensor, var: &Tensor) -> Result<Tensor> {
    f32t(&m.rms_norm(norm, x, Some(var))?, m.device())
}

/// The normed input with a recomputed variance (node forward on a partial sum).
pub(super) fn normed_fresh(m: &Qwen2, norm: Norm, x: &Tensor) -> Result<Tensor> {
    f32t(&m.rms_norm(norm, x, None)?, m.device())
}

/// IG points per backward pass: the path is processed in chunks of this many points, so memory
/// is bounded by the chunk and cancellation ([`crate::cancel`]) is checked between chunks.
pub(super) const IG_CHUNK: usize = 16;

/// Σ over the rule's points, in chunks of [`IG_CHUNK`] with a cancellation check before each,
/// of `f(x_b, w_b)`: x_b = α_b·x the chunk's scaled batch `[b,..]` (x `[1,..]`), w_b its
/// weights.
pub(super) fn sum_over_ig_chunks(
    x: &Tensor,
    rule: &IgRule,
    mut f: impl FnMut(Tensor, Vec<f32>) -> Result<Tensor>,
) -> Result<Tensor> {
    let pts = rule.points()?;
    let mut total: Option<Tensor> = None;
    for chunk in pts.chunks(IG_CHUNK) {
        crate::cancel::check()?;
        let xs: Vec<Tensor> = chunk
            .iter()
            .map(|(a, _)| x.affine(*a, 0.0))
            .collect::<candle_core::Result<_>>()?;
        let w: Vec<f32> = chunk.iter().map(|(_, w)| *w as f32).collect();
        let part = f(Tensor::cat(&xs, 0)?, w)?;
        total = Some(match total {
            None => part,
            Some(t) => (t + part)?,
        });
    }
    total.context("the IG rule has no points")
}

/// Path-averaged gradient Σ_b w_b ∂/∂x_b Σ(y(x_b) ⊙ gy) with x_b = α_b·x over the rule's points
/// ([`sum_over_ig_chunks`]): x `[1,..]`, `y_of` maps the scaled batch `[b,..]` (a Var) to
/// y `[b,k,e]`, gy `[1,k,e]` → `[1,..]`.
pub(super) fn ig_path_grad(
    x: &Tensor,
    rule: &IgRule,
    gy: &Tensor,
    y_of: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    sum_over_ig_chunks(x, rule, |xs, w| {
        let n = w.len();
        let xs = Var::from_tensor(&xs)?;
        let w = Tensor::from_vec(w, n, x.device())?;
        let y = y_of(xs.as_tensor())?;
        path_grad(&xs, &y, &w, gy)
    })
}

/// ∂/∂xs of Σ_b w_b Σ (y_b ⊙ gy), summed over b → `[1,..]`. y `[b,k,e]`, gy `[1,k,e]`.
pub(super) fn path_grad(xs: &Var, y: &Tensor, weights: &Tensor, gy: &Tensor) -> Result<Tensor> {
    let b = y.dim(0)?;
    let yw = y
        .to_dtype(DType::F32)?
        .broadcast_mul(&weights.reshape((b, 1, 1))?)?;
    let loss = yw.broadcast_mul(gy)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads
        .get(xs.as_tensor())
        .context("no gradient reached the scaled input")?;
    Ok(g.sum_keepdim(0)?)
}

// ---------------------------------------------------------------------------------------------
// cached-sample inputs shared by the backward and the forward

pub(super) fn check_req_positions(s: &CachedSample, pos: &[usize], what: &str) -> Result<()> {
    ensure!(!pos.is_empty(), "{what} positions are empty");
    check_positions(pos, s.outputs.seq_len, what)
}

pub(super) fn lm_labels(s: &CachedSample, k: usize) -> Result<(&[u32], &[u32])> {
    let inp = &s.input;
    ensure!(
        inp.labels.len() == k,
        "lm_head: {} positions but the sample has {} labels",
        k,
        inp.labels.len()
    );
    Ok((&inp.labels, &inp.candidate_ids))
}

/// Mid-layer residual (hidden + attention output) at pos `[1,k,e]`.
pub(super) fn mid_residual(
    m: &Qwen2,
    s: &CachedSample,
    layer: usize,
    pos: &[usize],
) -> Result<Tensor> {
    let h = f32t(&s.outputs.hidden_state(layer, Some(pos))?, m.device())?;
    let a = s.outputs.attn_out(layer, Some(pos))?;
    let ao = f32t(&m.heads_output_sum(layer, &a, None)?, m.device())?;
    Ok((h + ao)?)
}

pub(super) fn need_head(req_head: Option<usize>, t: NodeType) -> Result<usize> {
    req_head.with_context(|| format!("{t} node needs a head"))
}

pub(super) fn need_full(s: &CachedSample, t: NodeType) -> Result<()> {
    ensure!(
        s.outputs.has_all_positions(),
        "{t} needs the full-sequence activations, but the sample was captured at selected \
         positions only"
    );
    Ok(())
}

/// (full-sequence normed input `[1,s,e]`, its variance `[1,s,1]`) of a layer's attention.
pub(super) fn attn_inputs(m: &Qwen2, s: &CachedSample, l: usize) -> Result<(Tensor, Tensor)> {
    let hs = s.outputs.hidden_state(l, None)?;
    let var = s.outputs.input_norm_var(l, None)?;
    Ok((normed(m, Norm::Input(l), &hs, &var)?, var))
}
