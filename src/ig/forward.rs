//! The node forward of A15 on one cached sample: a node's output from (optionally) replaced
//! upstream inputs.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

use super::kernels::*;
use super::node_type::NodeType;
use super::request::*;
use crate::model::components::{NoSink, Norm};
use crate::model::ops::index_tensor;
use crate::model::qwen2::Qwen2;
use crate::model::sample::CachedSample;

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
            let (labels, cands, obj) = lm_labels(s, pos.len())?;
            // defect 5 fixed: the cached hidden_states[L] is already normed
            let x = match up {
                Some(u) => normed_fresh(m, Norm::Final, &u)?,
                None => f32t(&s.outputs.hidden_state(nl, Some(pos))?, m.device())?,
            };
            m.lm_head_objective(&x, labels, cands, obj)?
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
            let hd = Head::new(m, l, head)?;
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
                hd.probs(&select_rows(&xkv, pos)?, &xkv, pos, NoSink::Off)?
            } else {
                hd.probs(&xq, &xk, pos, no_sink)?
            };
            hd.apply(&a, &xq, &xv, pos)?
        }
    };
    Ok(out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}
