//! The node backward of A13 on one cached sample: the path-averaged gradient of a node's
//! output (against its downstream gradient) with respect to its attributed input.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};

use super::kernels::*;
use super::node_type::NodeType;
use super::request::*;
use super::rule::{Completeness, IgRule};
use crate::model::components::{KvProj, NoSink, Norm};
use crate::model::ops::softmax_last;
use crate::model::qwen2::Qwen2;
use crate::model::sample::CachedSample;
use crate::model::sample::Objective;

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

/// Where a node backward gets a layer's keys and values ([`Qwen2::kv_projection`] of the
/// layer's full-sequence normed input): a cache keyed by (sample, layer), or [`layer_kv`].
pub type KvSource<'a> = &'a dyn Fn(usize) -> Result<Arc<KvProj>>;

/// Keys and values of layer `l` for a cached sample, computed afresh.
pub fn layer_kv(m: &Qwen2, s: &CachedSample, l: usize) -> Result<KvProj> {
    need_full(s, NodeType::AttnA)?;
    let (xkv, _) = attn_inputs(m, s, l)?;
    m.kv_projection(l, &xkv)
}

/// The node backward of A13 on one cached sample.
pub fn node_gradient(m: &Qwen2, s: &CachedSample, req: &NodeGradRequest) -> Result<NodeGrad> {
    node_gradient_kv(m, s, req, &|l| layer_kv(m, s, l).map(Arc::new))
}

/// [`node_gradient`] with the keys and values of attn_a nodes from `kv` (the same numbers,
/// shared between calls on one sample and layer).
pub fn node_gradient_kv(
    m: &Qwen2,
    s: &CachedSample,
    req: &NodeGradRequest,
    kv: KvSource,
) -> Result<NodeGrad> {
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
        NodeType::AttnA => attn_a_grad(m, s, req, rule, kv),
        NodeType::Embed => bail!("the embed node has no inputs to attribute"),
    }
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
    let (labels, cands, obj) = lm_labels(s, pos.len())?;
    let x = f32t(&s.outputs.hidden_state(l, Some(pos))?, m.device())?; // [1,k,e], already normed
    let var = s.outputs.final_norm_var(Some(pos))?;
    let f = |xs: &Tensor| m.lm_head_objective(xs, labels, cands, obj);
    // f(0), f(x)
    let ends = f(&Tensor::cat(&[&x.zeros_like()?, &x], 0)?)?.to_vec1::<f32>()?;
    let (f0, fx) = (ends[0] as f64, ends[1] as f64);
    let run = |rule: IgRule| -> Result<(Tensor, Completeness)> {
        let g = lm_head_path_grad(m, &x, labels, cands, obj, &rule)?;
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
/// (autograd would also form the `[b,e,v]` weight gradient). A logit difference is linear in z:
/// ∂f/∂z_i = (onehot(label_i) − onehot(foil_i))/k at every point.
fn lm_head_path_grad(
    m: &Qwen2,
    x: &Tensor,
    labels: &[u32],
    cands: &[u32],
    obj: &Objective,
    rule: &IgRule,
) -> Result<Tensor> {
    let (_, k, e) = x.dims3()?;
    let v = m.config().vocab_size;
    let dev = x.device();
    let wlm = f32t(&m.weights().lm_head_t, dev)?; // [e,v]
    if let Objective::LogitDiff { foils } = obj {
        ensure!(
            foils.len() == k && labels.len() == k,
            "logit_diff: {} labels and {} foils for {k} positions",
            labels.len(),
            foils.len()
        );
        let mut dz = vec![0f32; k * v];
        for (i, (&l, &f)) in labels.iter().zip(foils).enumerate() {
            ensure!(
                (l as usize) < v && (f as usize) < v,
                "token id out of range (vocab size {v})"
            );
            dz[i * v + l as usize] += 1.0 / k as f32;
            dz[i * v + f as usize] -= 1.0 / k as f32;
        }
        let dz = Tensor::from_vec(dz, (k, v), dev)?;
        return Ok(dz.matmul(&wlm.t()?)?.reshape((1, k, e))?);
    }
    let cands = if matches!(obj, Objective::FullVocab) {
        &[][..]
    } else {
        cands
    };
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
    let dz = sum_over_ig_chunks(x, rule, |xs, w| {
        let b = w.len();
        let mut z = f32t(&m.lm_head(&xs)?, dev)?; // [b,k,v]
        if let Some(mask) = &mask {
            z = z.broadcast_add(mask)?;
        }
        let p = softmax_last(&z)?;
        let w = Tensor::from_vec(w, (b, 1, 1), dev)?;
        Ok((onehot.broadcast_sub(&p)? / k as f64)?
            .broadcast_mul(&w)?
            .sum(0)?) // [k,v]
    })?;
    Ok(dz.matmul(&wlm.t()?)?.reshape((1, k, e))?)
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

fn attn_grad(m: &Qwen2, s: &CachedSample, req: &NodeGradRequest, rule: IgRule) -> Result<NodeGrad> {
    let t = req.node_type;
    let (l, pos, src) = (req.layer, &req.pos_ids, &req.src_pos_ids);
    let head = need_head(req.head, t)?;
    need_full(s, t)?;
    let hd = Head::new(m, l, head)?;
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
            let a = hd.probs(xs, &xkv, pos, no_sink)?;
            hd.apply(&a, xs, &xkv, pos)
        })?,
        NodeType::AttnK => {
            let g = ig_path_grad(&xkv, &rule, &gy, |xs| {
                let a = hd.probs(&xq, xs, pos, no_sink)?;
                hd.apply(&a, &xq, &xkv, pos)
            })?;
            select_rows(&g, src)?
        }
        _ => {
            // the output is affine in v, so the gradient of the rows src is that of the part
            // Σ_{j∈src} a_pj v_j W_o: only those k' rows (not all s) go through W_v
            let a = hd.probs(&xq, &xkv, pos, no_sink)?.detach(); // [1,1,k,s]
            let a_src = a.index_select(&crate::model::ops::index_tensor(src, a.device())?, 3)?;
            let xv_src = select_rows(&xkv, src)?; // [1,k',e]
            ig_path_grad(&xv_src, &rule, &gy, |xs| hd.apply(&a_src, &xq, xs, pos))?
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
    kv: KvSource,
) -> Result<NodeGrad> {
    let (l, pos) = (req.layer, &req.pos_ids);
    let head = need_head(req.head, NodeType::AttnA)?;
    need_full(s, NodeType::AttnA)?;
    let hd = Head::new(m, l, head)?;
    let gy = output_grad(m, req)?;
    let kv = kv(l)?;
    let xq = attn_query_rows(m, s, l, pos)?; // [1,k,e]
    let aw = hd.probs_kv(&xq, &kv, pos)?.detach(); // [1,1,k,s]
    // The head's output is linear in its weights, so the gradient is the same at every point
    // α·aw of the path: the path sum Σ_b w_b ∂/∂x_b is (Σ_b w_b) times the one VJP.
    crate::cancel::check()?;
    let wsum: f64 = rule.points()?.iter().map(|&(_, w)| w).sum();
    let g = (hd.weights_vjp(&xq, &kv, pos, &gy)?.squeeze(1)? * wsum)?; // [1,k,s]
    Ok(NodeGrad {
        grad: None,
        aw: Some(aw.squeeze(1)?.to_device(&Device::Cpu)?),
        grad_aw: Some(g.to_device(&Device::Cpu)?),
        completeness: None,
        converged: None,
        rule,
    })
}
