//! Residual attribution (A18): a downstream gradient times each head's and MLP's output in
//! the residual stream.

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor};

use super::kernels::*;
use super::request::*;
use crate::model::qwen2::Qwen2;
use crate::model::sample::CachedSample;

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
        let gflat_t = gt.reshape((gg, k * e))?.t()?; // [k·e,gg]
        for l in from..to {
            // each head's output at the k positions, then its dot with every gradient:
            // k·n·d·e + n·k·e·gg multiply-adds (projecting the gradients through W_o instead
            // would cost gg·k·e·n·d, gg times more)
            let wo = f32t(&m.weights().layer(l)?.wo_t, dev)?.reshape((n, d, e))?; // [n,d,e]
            let ao = f32t(&s.outputs.attn_out(l, Some(pos))?, dev)?; // [1,k,n,d]
            let ao = ao.squeeze(0)?.transpose(0, 1)?.contiguous()?; // [n,k,d]
            let head_out = ao.matmul(&wo)?; // [n,k,e]
            let heads = head_out
                .reshape((n, k * e))?
                .matmul(&gflat_t)?
                .t()?
                .to_vec2::<f32>()?; // [gg,n]
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
