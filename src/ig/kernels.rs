//! Shared kernels of the node backward / forward / residual attribution: one head's attention
//! (through the model's autograd-safe component attention, so no fused kernel can cut the
//! gradient), the linearised RMSNorm backward, and the chunked IG path gradient.
//!
//! Gradients use candle autograd over composed (autograd-safe) ops: the scaled input is a `Var`
//! holding a chunk of IG points as a batch `[b,..]`, frozen inputs have batch 1, the loss is
//! Σ_b w_b Σ(y_b ⊙ gy) (gy = the frozen upstream gradient, A6) and the gradient of the Var summed
//! over b is the weighted path average.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::node_type::NodeType;
use super::rule::IgRule;
use crate::model::components::{AttnInputs, KvProj, NoSink, Norm};
use crate::model::ops::check_positions;
use crate::model::ops::index_tensor;
use crate::model::qwen2::Qwen2;
use crate::model::sample::{CachedSample, Objective};
use anyhow::ensure;

pub(super) fn f32t(t: &Tensor, dev: &Device) -> Result<Tensor> {
    Ok(t.to_device(dev)?.to_dtype(DType::F32)?)
}

pub(super) fn select_rows(x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    Ok(x.index_select(&index_tensor(pos, x.device())?, 1)?)
}

/// One attention head of one layer, computed through the model's own attention
/// ([`Qwen2::attention_weights`] / [`Qwen2::attention`], autograd-safe), so the IG kernels and
/// the forward share one implementation of attention.
pub(super) struct Head<'m> {
    m: &'m Qwen2,
    layer: usize,
    head: [usize; 1],
}

impl<'m> Head<'m> {
    pub(super) fn new(m: &'m Qwen2, layer: usize, head: usize) -> Result<Self> {
        let cfg = m.config();
        cfg.check_layer(layer)?;
        cfg.check_heads(&[head])?;
        Ok(Self {
            m,
            layer,
            head: [head],
        })
    }

    /// Post-softmax weights `[b,1,i,j]` f32 from xq `[b|1,i,e]` and xk `[b|1,j,e]`.
    pub(super) fn probs(
        &self,
        xq: &Tensor,
        xk: &Tensor,
        q_pos: &[usize],
        no_sink: NoSink,
    ) -> Result<Tensor> {
        let a = AttnInputs::new(xq, xk, xk, q_pos)
            .heads(&self.head)
            .no_sink(no_sink);
        self.m.attention_weights(self.layer, &a)
    }

    /// The head's weights `[1,1,i,j]` (no sink handling) for xq `[1,i,e]` against given keys.
    pub(super) fn probs_kv(&self, xq: &Tensor, kv: &KvProj, q_pos: &[usize]) -> Result<Tensor> {
        let a = AttnInputs::new(xq, xq, xq, q_pos)
            .heads(&self.head)
            .with_kv(kv);
        self.m.attention_weights(self.layer, &a)
    }

    /// ∂⟨apply(w), gy⟩/∂w `[b,1,i,j]` (the same at every w: `apply` is linear in w) for the
    /// query-side input xq `[1,i,e]`, given values, gy `[1,i,e]`.
    pub(super) fn weights_vjp(
        &self,
        xq: &Tensor,
        kv: &KvProj,
        q_pos: &[usize],
        gy: &Tensor,
    ) -> Result<Tensor> {
        let a = AttnInputs::new(xq, xq, xq, q_pos)
            .heads(&self.head)
            .with_kv(kv);
        self.m.attention_weights_vjp(self.layer, &a, gy)
    }

    /// The head's residual contribution `[b,i,e]` from weights `[b|1,1,i,j]`, the query-side
    /// input xq `[b|1,i,e]` (for its shape) and xv `[b|1,j,e]`.
    pub(super) fn apply(
        &self,
        w: &Tensor,
        xq: &Tensor,
        xv: &Tensor,
        q_pos: &[usize],
    ) -> Result<Tensor> {
        let a = AttnInputs::new(xq, xv, xv, q_pos)
            .heads(&self.head)
            .with_weights(w);
        self.m.attention(self.layer, &a)
    }
}

/// Linearised RMSNorm backward (A5): gx = w ⊙ gy ⊙ rsqrt(var + eps). gy `[1,k,e]`, var `[1,k,1]`.
pub(super) fn ln_back(m: &Qwen2, norm: Norm, gy: &Tensor, var: &Tensor) -> Result<Tensor> {
    let w = match norm {
        Norm::Input(l) => m.weights().layer(l)?.input_norm.clone(),
        Norm::PostAttention(l) => m.weights().layer(l)?.post_norm.clone(),
        Norm::Final => m.weights().final_norm.clone(),
    };
    let dev = gy.device();
    let scale = (f32t(var, dev)? + m.config().rms_norm_eps)?
        .sqrt()?
        .recip()?;
    Ok(gy.broadcast_mul(&scale)?.broadcast_mul(&f32t(&w, dev)?)?)
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

/// The labels, candidates and objective of a sample's lm_head node at k positions.
pub(super) fn lm_labels(s: &CachedSample, k: usize) -> Result<(&[u32], &[u32], &Objective)> {
    let inp = &s.input;
    ensure!(
        inp.labels.len() == k,
        "lm_head: {} positions but the sample has {} labels",
        k,
        inp.labels.len()
    );
    Ok((&inp.labels, &inp.candidate_ids, &inp.objective))
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

/// The normed attention input of layer `l` at the rows `pos` only `[1,k,e]` (the query side,
/// with the cached variance; the same rows as selecting them from [`attn_inputs`]).
pub(super) fn attn_query_rows(
    m: &Qwen2,
    s: &CachedSample,
    l: usize,
    pos: &[usize],
) -> Result<Tensor> {
    let hs = s.outputs.hidden_state(l, Some(pos))?;
    let var = s.outputs.input_norm_var(l, Some(pos))?;
    normed(m, Norm::Input(l), &hs, &var)
}

/// (full-sequence normed input `[1,s,e]`, its variance `[1,s,1]`) of a layer's attention.
pub(super) fn attn_inputs(m: &Qwen2, s: &CachedSample, l: usize) -> Result<(Tensor, Tensor)> {
    let hs = s.outputs.hidden_state(l, None)?;
    let var = s.outputs.input_norm_var(l, None)?;
    Ok((normed(m, Norm::Input(l), &hs, &var)?, var))
}
