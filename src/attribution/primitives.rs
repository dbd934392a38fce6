//! The per-type node backward (A13), node forward (A15) and residual attribution (A18),
//! computed on a `&Qwen2` and one cached sample. Pure functions: `Local` calls them, and so will
//! the HTTP server. Requests and responses are serde-friendly plain data.
//!
//! Gradients use candle autograd over composed (autograd-safe) ops: the scaled input is a `Var`
//! holding all IG points as a batch `[b,..]`, frozen inputs have batch 1, the loss is
//! Σ_b w_b Σ(y_b ⊙ gy) (gy = the frozen upstream gradient, A6) and the gradient of the Var summed
//! over b is the weighted path average. The single-head attention is written out here (one
//! head's q/k/v/o slices, rotate-half RoPE, composed softmax) so that no fused kernel can cut the
//! gradient.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ig::{Adaptive, Completeness, IgRule};
use super::node::NodeType;
use super::wire;
use crate::model::backend::CachedSample;
use crate::model::components::{NoSink, Norm};
use crate::model::ops::{check_positions, index_tensor, rope_rotate_half, softmax_last};
use crate::model::qwen2::Qwen2;

/// How attn_qns excludes the attention sink (key 0); see [`NoSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// Key 0 masked before the softmax (weights renormalise over the other keys).
    #[default]
    MaskBeforeSoftmax,
    /// Weight of key 0 zeroed after the softmax (no renormalisation).
    ZeroAfterSoftmax,
}

impl From<SinkMode> for NoSink {
    fn from(m: SinkMode) -> Self {
        match m {
            SinkMode::MaskBeforeSoftmax => NoSink::MaskBeforeSoftmax,
            SinkMode::ZeroAfterSoftmax => NoSink::ZeroAfterSoftmax,
        }
    }
}

/// A node backward (A13/A14/S6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeGradRequest {
    /// Node type (not embed).
    pub node_type: NodeType,
    /// Layer (L for lm_head).
    pub layer: usize,
    /// Head for attention types.
    pub head: Option<usize>,
    /// Output positions (k).
    pub pos_ids: Vec<usize>,
    /// Positions of the attributed input (k'); = pos_ids except attn_k/attn_v.
    pub src_pos_ids: Vec<usize>,
    /// Σ of downstream grads `[1,k,e]` (None for lm_head only).
    #[serde(with = "wire::opt_tensor", default)]
    pub output_grad: Option<Tensor>,
    /// Path rule; None = the type's default (Seed{4}; plain gradient for attn_v / attn_a).
    #[serde(default)]
    pub ig: Option<IgRule>,
    /// lm_head only: raise the resolution until the completeness delta ≤ tol.
    #[serde(default)]
    pub adaptive: Option<Adaptive>,
    /// Sink handling of attn_qns.
    #[serde(default)]
    pub sink: SinkMode,
}

impl NodeGradRequest {
    /// A request with the type's default rule.
    pub fn new(
        node_type: NodeType,
        layer: usize,
        head: Option<usize>,
        pos_ids: Vec<usize>,
        src_pos_ids: Vec<usize>,
        output_grad: Option<Tensor>,
    ) -> Self {
        Self {
            node_type,
            layer,
            head,
            pos_ids,
            src_pos_ids,
            output_grad,
            ig: None,
            adaptive: None,
            sink: SinkMode::default(),
        }
    }
}

/// The default path rule of a node type (A13): plain gradient for attn_v (affine in v) and
/// attn_a, the seed's 4 steps otherwise.
pub fn default_rule(t: NodeType) -> IgRule {
    match t {
        NodeType::AttnV | NodeType::AttnA => IgRule::PLAIN,
        _ => IgRule::default(),
    }
}

/// A node backward's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeGrad {
    /// Residual-space gradient `[1,k',e]` at src_pos_ids (None for attn_a).
    #[serde(with = "wire::opt_tensor", default)]
    pub grad: Option<Tensor>,
    /// attn_a: the head's weights `[1,k,s]`.
    #[serde(with = "wire::opt_tensor", default)]
    pub aw: Option<Tensor>,
    /// attn_a: the gradient w.r.t. the weights `[1,k,s]`.
    #[serde(with = "wire::opt_tensor", default)]
    pub grad_aw: Option<Tensor>,
    /// lm_head: IG completeness of the returned gradient.
    pub completeness: Option<Completeness>,
    /// lm_head with adaptive mode: whether the tolerance was reached.
    pub converged: Option<bool>,
    /// The rule used.
    pub rule: IgRule,
}

/// A node forward (A15).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeForwardRequest {
    /// Node type.
    pub node_type: NodeType,
    /// Layer.
    pub layer: usize,
    /// Head for attention types.
    pub head: Option<usize>,
    /// Output positions (k).
    pub pos_ids: Vec<usize>,
    /// Positions the upstream sum stands for (attn_k/attn_v: k'; others = pos_ids).
    pub src_pos_ids: Vec<usize>,
    /// Replacement residual `[1,k'|k,e]` (None = the cached one).
    #[serde(with = "wire::opt_tensor", default)]
    pub upstream_sum: Option<Tensor>,
    /// Sink handling of attn_qns.
    #[serde(default)]
    pub sink: SinkMode,
}

/// One downstream gradient for residual attribution, at its own positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidualGrad {
    /// Positions of the gradient rows (the node's src_pos_ids).
    pub pos_ids: Vec<usize>,
    /// `[1,k,e]`.
    #[serde(with = "wire::tensor")]
    pub grad: Tensor,
    /// The node's downstream layer (layer, + 0.5 for MLP types).
    pub downstream_layer: f64,
}

/// Residual attribution (A18).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidualRequest {
    /// The g downstream gradients.
    pub grads: Vec<ResidualGrad>,
    /// First layer (default 0).
    pub from_layer: usize,
    /// End layer (exclusive); None = ceil(max downstream layer).
    pub to_layer: Option<usize>,
}

/// The end layer A18 uses by default: ceil of the largest downstream layer (the seed's floor
/// dropped the same-layer heads of MLP nodes, defect 21).
pub fn default_to_layer(grads: &[ResidualGrad]) -> usize {
    grads
        .iter()
        .map(|g| g.downstream_layer)
        .fold(0.0, f64::max)
        .ceil() as usize
}

// ---------------------------------------------------------------------------------------------
// shared helpers

fn f32t(t: &Tensor, dev: &Device) -> Result<Tensor> {
    Ok(t.to_device(dev)?.to_dtype(DType::F32)?)
}

fn select_rows(x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    Ok(x.index_select(&index_tensor(pos, x.device())?, 1)?)
}

/// One head's parameters in f32: wq/wk/wv `[e,d]`, biases `[d]`, wo `[d,e]`.
struct HeadParams {
    wq: Tensor,
    bq: Tensor,
    wk: Tensor,
    bk: Tensor,
    wv: Tensor,
    bv: Tensor,
    wo: Tensor,
}

fn head_params(m: &Qwen2, layer: usize, head: usize) -> Result<HeadParams> {
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
fn project(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_matmul(w)?.broadcast_add(b)?.unsqueeze(1)?)
}

fn rope(m: &Qwen2, x: &Tensor, pos: &[usize]) -> Result<Tensor> {
    let (cos, sin) = m.rope_at(pos)?;
    rope_rotate_half(x, &f32t(&cos, x.device())?, &f32t(&sin, x.device())?)
}

/// Additive mask `[i,j]`: key t allowed iff t ≤ q_pos; the sink key 0 masked too when asked.
fn mask(q_pos: &[usize], j: usize, sink: bool, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut add = vec![0f32; q_pos.len() * j];
    let mut keep = vec![1f32; q_pos.len() * j];
    for (r, &p) in q_pos.iter().enumerate() {
        for t in 0..j {
            if t > p || (sink && t == 0) {
                add[r * j + t] = crate::model::ops::NEG_MASK;
                keep[r * j + t] = 0.0;
            }
        }
    }
    let shape = (q_pos.len(), j);
    Ok((
        Tensor::from_vec(add, shape, dev)?,
        Tensor::from_vec(keep, shape, dev)?,
    ))
}

/// Post-softmax weights of one head `[b,1,i,j]` (f32, autograd-safe).
fn head_probs(
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
fn head_apply(p: &HeadParams, w: &Tensor, xv: &Tensor) -> Result<Tensor> {
    let v = project(xv, &p.wv, &p.bv)?; // [bv,1,j,d]
    let o = w.broadcast_matmul(&v)?.squeeze(1)?; // [b,i,d]
    Ok(o.broadcast_matmul(&p.wo)?)
}

/// Linearised RMSNorm backward (A5): gx = w ⊙ gy ⊙ rsqrt(var + eps). gy `[1,k,e]`, var `[1,k,1]`.
fn ln_back(m: &Qwen2, norm: Norm, gy: &Tensor, var: &Tensor) -> Result<Tensor> {
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
fn normed(m: &Qwen2, norm: Norm, x: &Tensor, var: &Tensor) -> Result<Tensor> {
    f32t(&m.rms_norm(norm, x, Some(var))?, m.device())
}

/// The normed input with a recomputed variance (node forward on a partial sum).
fn normed_fresh(m: &Qwen2, norm: Norm, x: &Tensor) -> Result<Tensor> {
    f32t(&m.rms_norm(norm, x, None)?, m.device())
}

/// IG points per backward pass: the path is processed in chunks of this many points, so memory
/// is bounded by the chunk and cancellation ([`crate::cancel`]) is checked between chunks.
const IG_CHUNK: usize = 16;

/// Path-averaged gradient Σ_b w_b ∂/∂x_b Σ(y(x_b) ⊙ gy) with x_b = α_b·x over the rule's points,
/// in chunks of [`IG_CHUNK`]: x `[1,..]`, `y_of` maps the scaled batch `[b,..]` (a Var) to
/// y `[b,k,e]`, gy `[1,k,e]` → `[1,..]`.
fn ig_path_grad(
    x: &Tensor,
    rule: &IgRule,
    gy: &Tensor,
    y_of: impl Fn(&Tensor) -> Result<Tensor>,
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
        let n = w.len();
        let xs = Var::from_tensor(&Tensor::cat(&xs, 0)?)?;
        let w = Tensor::from_vec(w, n, x.device())?;
        let y = y_of(xs.as_tensor())?;
        let g = path_grad(&xs, &y, &w, gy)?;
        total = Some(match total {
            None => g,
            Some(t) => (t + g)?,
        });
    }
    total.context("the IG rule has no points")
}

/// ∂/∂xs of Σ_b w_b Σ (y_b ⊙ gy), summed over b → `[1,..]`. y `[b,k,e]`, gy `[1,k,e]`.
fn path_grad(xs: &Var, y: &Tensor, weights: &Tensor, gy: &Tensor) -> Result<Tensor> {
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
// node backward (A13)

fn check_req_positions(s: &CachedSample, pos: &[usize], what: &str) -> Result<()> {
    ensure!(!pos.is_empty(), "{what} positions are empty");
    check_positions(pos, s.outputs.seq_len, what)
}

fn output_grad(m: &Qwen2, req: &NodeGradRequest) -> Result<Tensor> {
    let gy = req.output_grad.as_ref().with_context(|| {
        format!(
            "{} node at layer {} has no output gradient (run its downstream nodes first)",
            req.node_type, req.layer
        )
    })?;
    let e = m.config().hidden_size;
    let k = req.pos_ids.len();
    ensure!(
        gy.dims() == [1, k, e],
        "output_grad must be [1,{k},{e}], got {:?}",
        gy.dims()
    );
    f32t(gy, m.device())
}

/// The node backward of A13 on one cached sample.
pub fn node_gradient(m: &Qwen2, s: &CachedSample, req: &NodeGradRequest) -> Result<NodeGrad> {
    let t = req.node_type;
    check_req_positions(s, &req.pos_ids, "pos_ids")?;
    check_req_positions(s, &req.src_pos_ids, "src_pos_ids")?;
    if !t.uses_src_positions() && t != NodeType::Embed {
        ensure!(
            req.src_pos_ids == req.pos_ids,
            "{t}: src_pos_ids must equal pos_ids"
        );
    }
    let rule = req.ig.unwrap_or_else(|| default_rule(t));
    rule.validate()?;
    if let Some(ad) = &req.adaptive {
        ad.validate()?;
    }
    if req.adaptive.is_some() && t != NodeType::LmHead {
        bail!("adaptive IG needs a scalar objective (lm_head node), not {t}");
    }
    match t {
        NodeType::LmHead => lm_head_grad(m, s, req, rule),
        NodeType::Mlp | NodeType::MlpI | NodeType::MlpG => mlp_grad(m, s, req, rule),
        NodeType::AttnQ | NodeType::AttnQns | NodeType::AttnK | NodeType::AttnV => {
            attn_grad(m, s, req, rule)
        }
        NodeType::AttnA => attn_a_grad(m, s, req, rule),
        NodeType::Embed => bail!("the embed node has no inputs to attribute"),
    }
}

fn lm_labels(s: &CachedSample, k: usize) -> Result<(&[u32], &[u32])> {
    let inp = &s.input;
    ensure!(
        inp.labels.len() == k,
        "lm_head: {} positions but the sample has {} labels",
        k,
        inp.labels.len()
    );
    Ok((&inp.labels, &inp.candidate_ids))
}

fn lm_head_grad(
    m: &Qwen2,
    s: &CachedSample,
    req: &NodeGradRequest,
    rule: IgRule,
) -> Result<NodeGrad> {
    let l = m.config().num_hidden_layers;
    ensure!(req.layer == l, "lm_head layer must be {l}");
    let pos = &req.pos_ids;
    let (labels, cands) = lm_labels(s, pos.len())?;
    let x = f32t(&s.outputs.hidden_state(l, Some(pos))?, m.device())?; // [1,k,e], already normed
    let var = s.outputs.final_norm_var(Some(pos))?;
    let f = |xs: &Tensor| m.lm_head_objective(xs, labels, cands);
    // f(0), f(x)
    let ends = f(&Tensor::cat(&[&x.zeros_like()?, &x], 0)?)?.to_vec1::<f32>()?;
    let (f0, fx) = (ends[0] as f64, ends[1] as f64);
    let run = |rule: IgRule| -> Result<(Tensor, Completeness)> {
        let g = lm_head_path_grad(m, &x, labels, cands, &rule)?;
        let sgx = (&g * &x)?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok((g, Completeness::new(fx, f0, sgx, rule)))
    };
    let (mut g, mut c) = run(rule)?;
    let mut converged = None;
    if let Some(ad) = req.adaptive {
        let mut r = rule.resolution().max(1);
        converged = Some(c.delta <= ad.tol);
        while c.delta > ad.tol && r * 2 <= ad.max_resolution {
            r *= 2;
            (g, c) = run(rule.with_resolution(r))?;
            converged = Some(c.delta <= ad.tol);
        }
    }
    let grad = ln_back(m, Norm::Final, &g, &var)?;
    Ok(NodeGrad {
        grad: Some(grad.to_device(&Device::Cpu)?),
        aw: None,
        grad_aw: None,
        completeness: Some(c),
        converged,
        rule: c.rule,
    })
}

/// Path-averaged gradient of the lm_head objective w.r.t. its (normed) input x `[1,k,e]`, in
/// closed form (A4): ∂f/∂z_i = (onehot(label_i) − softmax(z_i + mask))/k and ∂f/∂x = ∂f/∂z·W_lmᵀ.
/// The weighted sum over the IG points is taken on ∂f/∂z, so one `[k,v]×[v,e]` matmul remains
/// (autograd would also form the `[b,e,v]` weight gradient).
fn lm_head_path_grad(
    m: &Qwen2,
    x: &Tensor,
    labels: &[u32],
    cands: &[u32],
    rule: &IgRule,
) -> Result<Tensor> {
    let (_, k, e) = x.dims3()?;
    let v = m.config().vocab_size;
    let dev = x.device();
    let pts = rule.points()?;
    let mut mask = None;
    if !cands.is_empty() {
        let mut mv = vec![-1e4f32; v];
        for &c in cands {
            mv[c as usize] = 0.0;
        }
        mask = Some(Tensor::from_vec(mv, v, dev)?);
    }
    let mut onehot = vec![0f32; k * v];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * v + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (1, k, v), dev)?;
    let mut dz: Option<Tensor> = None; // [k,v]
    for chunk in pts.chunks(IG_CHUNK) {
        crate::cancel::check()?;
        let b = chunk.len();
        let xs: Vec<Tensor> = chunk
            .iter()
            .map(|(a, _)| x.affine(*a, 0.0))
            .collect::<candle_core::Result<_>>()?;
        let mut z = f32t(&m.lm_head(&Tensor::cat(&xs, 0)?)?, dev)?; // [b,k,v]
        if let Some(mask) = &mask {
            z = z.broadcast_add(mask)?;
        }
        let p = softmax_last(&z)?;
        let w: Vec<f32> = chunk.iter().map(|(_, w)| *w as f32).collect();
        let w = Tensor::from_vec(w, (b, 1, 1), dev)?;
        let part = (onehot.broadcast_sub(&p)? / k as f64)?
            .broadcast_mul(&w)?
            .sum(0)?;
        dz = Some(match dz {
            None => part,
            Some(d) => (d + part)?,
        });
    }
    let dz = dz.context("the IG rule has no points")?;
    let wlm = f32t(&m.weights().lm_head_t, dev)?; // [e,v]
    Ok(dz.matmul(&wlm.t()?)?.reshape((1, k, e))?)
}

/// Mid-layer residual (hidden + attention output) at pos `[1,k,e]`.
fn mid_residual(m: &Qwen2, s: &CachedSample, layer: usize, pos: &[usize]) -> Result<Tensor> {
    let h = f32t(&s.outputs.hidden_state(layer, Some(pos))?, m.device())?;
    let a = s.outputs.attn_out(layer, Some(pos))?;
    let ao = f32t(&m.heads_output_sum(layer, &a, None)?, m.device())?;
    Ok((h + ao)?)
}

fn mlp_grad(m: &Qwen2, s: &CachedSample, req: &NodeGradRequest, rule: IgRule) -> Result<NodeGrad> {
    let (l, pos) = (req.layer, &req.pos_ids);
    m.config().check_layer(l)?;
    let gy = output_grad(m, req)?;
    let var = s.outputs.post_attn_norm_var(l, Some(pos))?;
    let x = normed(
        m,
        Norm::PostAttention(l),
        &mid_residual(m, s, l, pos)?,
        &var,
    )?;
    let t = req.node_type;
    let g = ig_path_grad(&x, &rule, &gy, |xs| match t {
        NodeType::Mlp => m.mlp(l, xs, None),
        NodeType::MlpI => m.mlp(l, xs, Some(&x)),
        _ => m.mlp(l, &x, Some(xs)),
    })?;
    let grad = ln_back(m, Norm::PostAttention(l), &g, &var)?;
    plain_grad(grad, rule)
}

fn plain_grad(grad: Tensor, rule: IgRule) -> Result<NodeGrad> {
    Ok(NodeGrad {
        grad: Some(grad.to_device(&Device::Cpu)?),
        aw: None,
        grad_aw: None,
        completeness: None,
        converged: None,
        rule,
    })
}

fn need_head(req_head: Option<usize>, t: NodeType) -> Result<usize> {
    req_head.with_context(|| format!("{t} node needs a head"))
}

fn need_full(s: &CachedSample, t: NodeType) -> Result<()> {
    ensure!(
        s.outputs.has_all_positions(),
        "{t} needs the full-sequence activations, but the sample was captured at selected \
         positions only"
    );
    Ok(())
}

/// (full-sequence normed input `[1,s,e]`, its variance `[1,s,1]`) of a layer's attention.
fn attn_inputs(m: &Qwen2, s: &CachedSample, l: usize) -> Result<(Tensor, Tensor)> {
    let hs = s.outputs.hidden_state(l, None)?;
    let var = s.outputs.input_norm_var(l, None)?;
    Ok((normed(m, Norm::Input(l), &hs, &var)?, var))
}

fn attn_grad(m: &Qwen2, s: &CachedSample, req: &NodeGradRequest, rule: IgRule) -> Result<NodeGrad> {
    let t = req.node_type;
    let (l, pos, src) = (req.layer, &req.pos_ids, &req.src_pos_ids);
    let head = need_head(req.head, t)?;
    need_full(s, t)?;
    let p = head_params(m, l, head)?;
    let gy = output_grad(m, req)?;
    let (xkv, var) = attn_inputs(m, s, l)?;
    let xq = select_rows(&xkv, pos)?;
    let no_sink = if t == NodeType::AttnQns {
        req.sink.into()
    } else {
        NoSink::Off
    };
    let g = match t {
        NodeType::AttnQ | NodeType::AttnQns => ig_path_grad(&xq, &rule, &gy, |xs| {
            let a = head_probs(m, &p, xs, &xkv, pos, no_sink)?;
            head_apply(&p, &a, &xkv)
        })?,
        NodeType::AttnK => {
            let g = ig_path_grad(&xkv, &rule, &gy, |xs| {
                let a = head_probs(m, &p, &xq, xs, pos, no_sink)?;
                head_apply(&p, &a, &xkv)
            })?;
            select_rows(&g, src)?
        }
        _ => {
            let a = head_probs(m, &p, &xq, &xkv, pos, no_sink)?.detach();
            let g = ig_path_grad(&xkv, &rule, &gy, |xs| head_apply(&p, &a, xs))?;
            select_rows(&g, src)?
        }
    };
    let gpos = if t.uses_src_positions() { src } else { pos };
    let var = select_rows(&var, gpos)?;
    let grad = ln_back(m, Norm::Input(l), &g, &var)?;
    plain_grad(grad, rule)
}

fn attn_a_grad(
    m: &Qwen2,
    s: &CachedSample,
    req: &NodeGradRequest,
    rule: IgRule,
) -> Result<NodeGrad> {
    let (l, pos) = (req.layer, &req.pos_ids);
    let head = need_head(req.head, NodeType::AttnA)?;
    need_full(s, NodeType::AttnA)?;
    let p = head_params(m, l, head)?;
    let gy = output_grad(m, req)?;
    let (xkv, _) = attn_inputs(m, s, l)?;
    let xq = select_rows(&xkv, pos)?;
    let aw = head_probs(m, &p, &xq, &xkv, pos, NoSink::Off)?.detach(); // [1,1,k,s]
    // the scaled batch is [b,k,s]
    let g = ig_path_grad(&aw.squeeze(1)?, &rule, &gy, |xs| {
        head_apply(&p, &xs.unsqueeze(1)?, &xkv)
    })?;
    Ok(NodeGrad {
        grad: None,
        aw: Some(aw.squeeze(1)?.to_device(&Device::Cpu)?),
        grad_aw: Some(g.to_device(&Device::Cpu)?),
        completeness: None,
        converged: None,
        rule,
    })
}

// ---------------------------------------------------------------------------------------------
// node forward (A15)

fn check_upstream(m: &Qwen2, u: &Tensor, k: usize, what: &str) -> Result<Tensor> {
    let e = m.config().hidden_size;
    ensure!(
        u.dims() == [1, k, e],
        "{what}: upstream_sum must be [1,{k},{e}], got {:?}",
        u.dims()
    );
    f32t(u, m.device())
}

/// Replaces rows `src` of x `[1,s,e]` by rows of r `[1,k',e]` (the last one wins on repeats).
fn replace_rows(x: &Tensor, src: &[usize], r: &Tensor) -> Result<Tensor> {
    let mut last = std::collections::BTreeMap::new();
    for (i, &p) in src.iter().enumerate() {
        last.insert(p, i);
    }
    let (ps, rows): (Vec<usize>, Vec<usize>) = last.into_iter().unzip();
    let new = select_rows(r, &rows)?;
    let old = select_rows(x, &ps)?;
    Ok(x.index_add(&index_tensor(&ps, x.device())?, &(new - old)?, 1)?)
}

/// The node forward of A15: `[1,k,e]` (lm_head: `[1]`, the mean log-prob of the answers).
pub fn node_forward(m: &Qwen2, s: &CachedSample, req: &NodeForwardRequest) -> Result<Tensor> {
    let t = req.node_type;
    let (l, pos, src) = (req.layer, &req.pos_ids, &req.src_pos_ids);
    check_req_positions(s, pos, "pos_ids")?;
    check_req_positions(s, src, "src_pos_ids")?;
    let k_up = if t.uses_src_positions() {
        src.len()
    } else {
        pos.len()
    };
    let up = match &req.upstream_sum {
        Some(u) => Some(check_upstream(m, u, k_up, t.name())?),
        None => None,
    };
    let out = match t {
        NodeType::Embed => f32t(&s.outputs.hidden_state(0, Some(pos))?, m.device())?,
        NodeType::LmHead => {
            let nl = m.config().num_hidden_layers;
            ensure!(l == nl, "lm_head layer must be {nl}");
            let (labels, cands) = lm_labels(s, pos.len())?;
            // defect 5 fixed: the cached hidden_states[L] is already normed
            let x = match up {
                Some(u) => normed_fresh(m, Norm::Final, &u)?,
                None => f32t(&s.outputs.hidden_state(nl, Some(pos))?, m.device())?,
            };
            m.lm_head_objective(&x, labels, cands)?
        }
        NodeType::Mlp | NodeType::MlpI | NodeType::MlpG => {
            m.config().check_layer(l)?;
            let var = s.outputs.post_attn_norm_var(l, Some(pos))?;
            let x = normed(
                m,
                Norm::PostAttention(l),
                &mid_residual(m, s, l, pos)?,
                &var,
            )?;
            match up {
                None => m.mlp(l, &x, None)?,
                Some(u) => {
                    let un = normed_fresh(m, Norm::PostAttention(l), &u)?;
                    match t {
                        NodeType::Mlp => m.mlp(l, &un, None)?,
                        NodeType::MlpI => m.mlp(l, &un, Some(&x))?,
                        _ => m.mlp(l, &x, Some(&un))?,
                    }
                }
            }
        }
        _ => {
            let head = need_head(req.head, t)?;
            need_full(s, t)?;
            let p = head_params(m, l, head)?;
            let (xkv, _) = attn_inputs(m, s, l)?;
            let mut xq = select_rows(&xkv, pos)?;
            let (mut xk, mut xv) = (xkv.clone(), xkv.clone());
            if let Some(u) = up {
                let un = normed_fresh(m, Norm::Input(l), &u)?;
                match t {
                    NodeType::AttnK => xk = replace_rows(&xk, src, &un)?,
                    NodeType::AttnV => xv = replace_rows(&xv, src, &un)?,
                    _ => xq = un,
                }
            }
            let no_sink = if t == NodeType::AttnQns {
                req.sink.into()
            } else {
                NoSink::Off
            };
            // attn_a uses the cached weights (computed from the cached inputs)
            let a = if t == NodeType::AttnA {
                head_probs(m, &p, &select_rows(&xkv, pos)?, &xkv, pos, NoSink::Off)?
            } else {
                head_probs(m, &p, &xq, &xk, pos, no_sink)?
            };
            head_apply(&p, &a, &xv)?
        }
    };
    Ok(out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

// ---------------------------------------------------------------------------------------------
// residual attribution (A18)

/// A18: `[to−from, H+1, g]` f32 — head n of layer l: Σ_{i,e} head_out\[i,n,e\]·G\[g,i,e\],
/// MLP in column H; head kept iff l < downstream_layer\[g\], MLP iff l < floor(downstream_layer\[g\]).
/// Each gradient uses its own positions. Head scores never materialise per-head outputs: G is
/// projected into each head's d-space once (G·W_oᵀ) and dotted with attn_out.
pub fn attribute_residual(m: &Qwen2, s: &CachedSample, req: &ResidualRequest) -> Result<Tensor> {
    let cfg = m.config();
    let (nl, n, d, e) = (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.head_dim(),
        cfg.hidden_size,
    );
    ensure!(
        !req.grads.is_empty(),
        "attribute_residual needs at least one gradient"
    );
    let from = req.from_layer;
    let to = req.to_layer.unwrap_or_else(|| default_to_layer(&req.grads));
    // to == from (a node at layer 0 sees only the embedding) gives an empty [0,H+1,g]
    ensure!(
        from <= to && to <= nl,
        "layer range {from}..{to} is reversed or out of range (model has {nl} layers)"
    );
    let g = req.grads.len();
    for (i, r) in req.grads.iter().enumerate() {
        check_req_positions(s, &r.pos_ids, "gradient")?;
        ensure!(
            r.grad.dims() == [1, r.pos_ids.len(), e],
            "gradient {i} must be [1,{},{e}], got {:?}",
            r.pos_ids.len(),
            r.grad.dims()
        );
    }
    // group gradients that share positions
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new(); // (pos, grad indices)
    for (i, r) in req.grads.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| *p == r.pos_ids) {
            Some((_, v)) => v.push(i),
            None => groups.push((r.pos_ids.clone(), vec![i])),
        }
    }
    let lcount = to - from;
    let mut out = vec![0f32; lcount * (n + 1) * g];
    let dev = m.device();
    for (pos, idx) in &groups {
        let k = pos.len();
        let gg = idx.len();
        let gs: Vec<Tensor> = idx
            .iter()
            .map(|&i| f32t(&req.grads[i].grad, dev))
            .collect::<Result<_>>()?;
        let gt = Tensor::cat(&gs, 0)?; // [gg,k,e]
        let g2 = gt.reshape((gg * k, e))?;
        for l in from..to {
            let wo = f32t(&m.weights().layers[l].wo_t, dev)?; // [n·d,e]
            let proj = g2.matmul(&wo.t()?)?.reshape((gg, k, n, d))?; // [gg,k,n,d]
            let ao = f32t(&s.outputs.attn_out(l, Some(pos))?, dev)?; // [1,k,n,d]
            let heads = proj.broadcast_mul(&ao)?.sum(3)?.sum(1)?.to_vec2::<f32>()?; // [gg,n]
            let mo = f32t(&s.outputs.mlp_output(l, Some(pos))?, dev)?; // [1,k,e]
            let mlp = gt.broadcast_mul(&mo)?.sum(2)?.sum(1)?.to_vec1::<f32>()?; // [gg]
            for (c, &gi) in idx.iter().enumerate() {
                let dl = req.grads[gi].downstream_layer;
                let base = (l - from) * (n + 1) * g;
                if (l as f64) < dl {
                    for h in 0..n {
                        out[base + h * g + gi] = heads[c][h];
                    }
                }
                if (l as f64) < dl.floor() {
                    out[base + n * g + gi] = mlp[c];
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (lcount, n + 1, g), &Device::Cpu)?)
}
