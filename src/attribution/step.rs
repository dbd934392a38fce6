//! One attribution step and its parts (A11, A12, A19–A23), plus circuit evaluation (A17).
//! Everything here works through the [`Backend`] trait and never asks which backend it has.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, Device, Tensor};

use super::graph::Graph;
use super::node::{NodeId, NodeType};
use super::pattern::{Pattern, SampleRef};
use super::topk::topk_md;
use crate::backend::Backend;
use crate::ig::{NodeForwardRequest, NodeGradRequest, ResidualGrad, ResidualRequest};

/// The span of lm_head's positions: the token that predicts the answer.
pub const LM_HEAD_SPAN: &str = "A-";

/// (span, pos_ids) shared by all downstreams of `id` for sample `r` (error if they disagree).
fn downstream_positions(g: &Graph, id: NodeId, r: &SampleRef) -> Result<(String, Vec<usize>)> {
    let downs = g.get_downstreams(id);
    if downs.is_empty() {
        bail!(
            "node {id} has no downstream node (add an edge first; add_edges only adds edges with \
             a positive score)"
        );
    }
    let mut agreed: Option<(String, Vec<usize>, NodeId)> = None;
    for d in downs {
        let dn = g.get(d)?;
        let pos = dn.data.src_pos_ids.get(&r.index()).with_context(|| {
            format!(
                "downstream node {d} has no positions for {} (run it first)",
                r.describe()
            )
        })?;
        let span = dn.data.src_span.clone().unwrap_or_default();
        match &agreed {
            None => agreed = Some((span, pos.clone(), d)),
            Some((_, p, first)) if p != pos => bail!(
                "node {id}: its downstreams {first} and {d} want different positions ({p:?} vs \
                 {pos:?}) for {}",
                r.describe()
            ),
            _ => {}
        }
    }
    let (span, pos, _) = agreed.expect("at least one downstream");
    Ok((span, pos))
}

/// A11: sets span/src_span and the sample's pos_ids/src_pos_ids of a node from its downstreams
/// (lm_head: `A-` = answer_indices − 1). attn_v/attn_k take SRC from their `DST->SRC` pattern
/// (SRC = DST or no pattern: the same positions); any span the resolver knows works.
pub fn set_pos_ids(g: &mut Graph, backend: &dyn Backend, id: NodeId, r: &SampleRef) -> Result<()> {
    let node = g.get(id)?;
    let (span, pos) = if id.ty.is_lm_head() {
        let meta = backend.sample_meta(&r.key)?;
        ensure!(
            !meta.answer_indices.is_empty(),
            "{} has no answer positions",
            r.describe()
        );
        let pos = meta.answer_positions().with_context(|| r.describe())?;
        (LM_HEAD_SPAN.to_string(), pos)
    } else {
        downstream_positions(g, id, r)?
    };
    if let Some(old) = &node.data.span
        && *old != span
    {
        bail!("node {id} has span {old:?}, but its downstreams now give {span:?}");
    }
    let (src_span, src_pos) = match (id.ty.uses_src_positions(), &node.data.attn_pattern) {
        (true, Some(p)) => {
            let p = Pattern::parse(p)?;
            if p.src == p.dst {
                (span.clone(), pos.clone())
            } else {
                let sp = g
                    .spans
                    .positions(r, &p.src)
                    .with_context(|| format!("source positions of {id} (pattern {p})"))?;
                (p.src, sp)
            }
        }
        _ => (span.clone(), pos.clone()),
    };
    let i = r.index();
    let d = &mut g.get_mut(id)?.data;
    d.span = Some(span);
    d.src_span = Some(src_span);
    d.pos_ids.insert(i, pos);
    d.src_pos_ids.insert(i, src_pos);
    Ok(())
}

/// A12: output_grad\[index\] = Σ of the downstreams' grad\[index\] (lm_head: none).
pub fn accum_output_grad(g: &mut Graph, id: NodeId, index: usize) -> Result<()> {
    if id.ty.is_lm_head() {
        return Ok(());
    }
    let sum = sum_downstream_grads(g, id, index)?;
    g.get_mut(id)?.data.output_grad.insert(index, sum);
    Ok(())
}

fn sum_downstream_grads(g: &Graph, id: NodeId, index: usize) -> Result<Tensor> {
    let downs = g.get_downstreams(id);
    ensure!(!downs.is_empty(), "node {id} has no downstream node");
    let mut sum: Option<Tensor> = None;
    for d in downs {
        let gd = g.get(d)?.data.grad.get(&index).with_context(|| {
            format!("downstream node {d} has no gradient for sample {index} (run it first)")
        })?;
        sum = Some(match sum {
            None => gd.clone(),
            Some(s) => {
                ensure!(
                    s.dims() == gd.dims(),
                    "downstream gradients of {id} differ in shape: {:?} vs {:?}",
                    s.dims(),
                    gd.dims()
                );
                (s + gd)?
            }
        });
    }
    Ok(sum.expect("at least one downstream"))
}

fn grad_request(g: &Graph, id: NodeId, index: usize) -> Result<NodeGradRequest> {
    let d = &g.get(id)?.data;
    let pos = d
        .pos_ids
        .get(&index)
        .with_context(|| format!("node {id} has no positions for sample {index}"))?;
    let mut req = NodeGradRequest::new(
        id.ty,
        id.layer,
        id.head,
        pos.clone(),
        d.src_pos_ids
            .get(&index)
            .cloned()
            .unwrap_or_else(|| pos.clone()),
        d.output_grad.get(&index).cloned(),
    );
    req.ig = g.ig_rule;
    req.sink = g.sink;
    if id.ty.is_lm_head() {
        req.adaptive = g.adaptive;
    }
    Ok(req)
}

/// A13: runs the node's backward for sample `r` and stores grad\[index\] (lm_head: also the
/// completeness). attn_a nodes have no residual gradient: use [`attribute_attn_weights`].
pub fn backward(g: &mut Graph, backend: &dyn Backend, id: NodeId, r: &SampleRef) -> Result<()> {
    if id.ty == NodeType::AttnA {
        bail!("attn_a nodes have no residual gradient; use attribute_attn_weights");
    }
    let req = grad_request(g, id, r.index())?;
    let res = backend
        .node_gradient(&r.key, &req)
        .with_context(|| format!("backward of {id} on {}", r.describe()))?;
    let grad = res.grad.context("backend returned no gradient")?;
    let d = &mut g.get_mut(id)?.data;
    d.grad.insert(r.index(), grad);
    if let Some(c) = res.completeness {
        d.completeness.insert(r.index(), c);
    }
    if res.converged == Some(false) {
        eprintln!(
            "warning: {id} on {}: IG completeness delta {:.3} still above tolerance at resolution {}",
            r.describe(),
            res.completeness.map(|c| c.delta).unwrap_or(f64::NAN),
            res.rule.resolution()
        );
    }
    Ok(())
}

/// A19: for each node set_pos_ids, accum_output_grad and backward, then attribute the nodes'
/// gradients (each at its own positions) to every head and MLP below: `[L',H+1,g]`
/// (L' = ceil(max downstream layer), MLP in column H).
pub fn attribute_step(
    g: &mut Graph,
    backend: &dyn Backend,
    r: &SampleRef,
    nodes: &[NodeId],
) -> Result<Tensor> {
    ensure!(!nodes.is_empty(), "attribute_step needs at least one node");
    for &id in nodes {
        set_pos_ids(g, backend, id, r)?;
        accum_output_grad(g, id, r.index())?;
        backward(g, backend, id, r)?;
    }
    let req = residual_request(g, nodes, r.index())?;
    backend.attribute_residual(&r.key, &req)
}

/// The A18 request for `nodes`' stored gradients of sample `index`.
pub fn residual_request(g: &Graph, nodes: &[NodeId], index: usize) -> Result<ResidualRequest> {
    let grads =
        nodes
            .iter()
            .map(|&id| {
                let d = &g.get(id)?.data;
                Ok(ResidualGrad {
                    pos_ids: d.src_pos_ids.get(&index).cloned().with_context(|| {
                        format!("node {id} has no positions for sample {index}")
                    })?,
                    grad: d
                        .grad
                        .get(&index)
                        .cloned()
                        .with_context(|| format!("node {id} has no gradient for sample {index}"))?,
                    downstream_layer: id.downstream_layer(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
    Ok(ResidualRequest {
        grads,
        from_layer: 0,
        to_layer: None,
    })
}

/// The embedding's share of A18: `[g]` with Σ_{i,e} hidden_states\[0\]\[i,e\]·G\[g,i,e\] (every node
/// sees the embedding). With it, heads + MLPs + embedding sum to grad·residual (linearity).
pub fn embed_attribution(
    g: &Graph,
    backend: &dyn Backend,
    r: &SampleRef,
    nodes: &[NodeId],
) -> Result<Vec<f32>> {
    let req = residual_request(g, nodes, r.index())?;
    req.grads
        .iter()
        .map(|rg| {
            let h0 = backend.hidden_states(&r.key, 0, Some(&rg.pos_ids))?;
            Ok((h0 * &rg.grad)?.sum_all()?.to_scalar::<f32>()?)
        })
        .collect()
}

/// A20: adds an edge upstream → downstreams\[i\] with score attr\[upstream.layer, upstream.head, i\]
/// for every i whose score is > 0. Returns the number of edges added.
pub fn add_edges(
    g: &mut Graph,
    upstream: NodeId,
    downstreams: &[NodeId],
    attr: &Tensor,
) -> Result<usize> {
    let (lc, hc, gc) = attr.dims3().context("attr must be [L',H+1,g]")?;
    ensure!(
        gc == downstreams.len(),
        "attr has {gc} columns for {} downstream nodes",
        downstreams.len()
    );
    let head = upstream
        .head
        .with_context(|| format!("{upstream} has no column in an attribution tensor"))?;
    ensure!(
        upstream.layer < lc && head < hc,
        "{upstream} is outside the attribution tensor [{lc},{hc},{gc}]"
    );
    let scores = attr.get(upstream.layer)?.get(head)?.to_vec1::<f32>()?;
    let mut added = 0;
    for (&d, &s) in downstreams.iter().zip(&scores) {
        if s > 0.0 {
            g.add_edge(upstream, d, s as f64)?;
            added += 1;
        }
    }
    Ok(added)
}

/// A21: attention weights and their gradient for head (layer, head) toward `downstreams`
/// (their grads for this sample must exist): `(aw [1,k,s], grad_aw [1,k,s])`. Uses a temporary
/// attn_a node that never enters the graph.
pub fn attribute_attn_weights(
    g: &Graph,
    backend: &dyn Backend,
    r: &SampleRef,
    layer: usize,
    head: usize,
    downstreams: &[NodeId],
) -> Result<(Tensor, Tensor)> {
    let id = g.id(layer, Some(head), NodeType::AttnA)?;
    ensure!(!downstreams.is_empty(), "attn_a needs downstream nodes");
    let i = r.index();
    let mut pos: Option<Vec<usize>> = None;
    let mut sum: Option<Tensor> = None;
    for &d in downstreams {
        let dn = g.get(d)?;
        let p = dn.data.src_pos_ids.get(&i).with_context(|| {
            format!(
                "downstream node {d} has no positions for {} (run it first)",
                r.describe()
            )
        })?;
        match &pos {
            None => pos = Some(p.clone()),
            Some(q) if q != p => bail!(
                "downstreams of {id} want different positions ({q:?} vs {p:?}) for {}",
                r.describe()
            ),
            _ => {}
        }
        let gd = dn.data.grad.get(&i).with_context(|| {
            format!(
                "downstream node {d} has no gradient for {} (run it first)",
                r.describe()
            )
        })?;
        sum = Some(match sum {
            None => gd.clone(),
            Some(s) => (s + gd)?,
        });
    }
    let pos = pos.expect("non-empty");
    let mut req = NodeGradRequest::new(id.ty, layer, Some(head), pos.clone(), pos, sum);
    req.ig = g.ig_rule;
    let res = backend
        .node_gradient(&r.key, &req)
        .with_context(|| format!("attention-weight attribution of {id} on {}", r.describe()))?;
    Ok((
        res.aw.context("backend returned no weights")?,
        res.grad_aw.context("backend returned no weight gradient")?,
    ))
}

/// A22: over samples, `aw [N,k,s]` and `aa = aw ⊙ |grad_aw|` (each row divided by its sum over s
/// when `normalize`). All samples must have the same k and s.
pub fn get_attn_attrs_on_dataset(
    g: &Graph,
    backend: &dyn Backend,
    samples: &[SampleRef],
    layer: usize,
    head: usize,
    downstreams: &[NodeId],
    normalize: bool,
) -> Result<(Tensor, Tensor)> {
    ensure!(!samples.is_empty(), "no samples");
    let mut aws = Vec::new();
    let mut ags = Vec::new();
    for r in samples {
        let (aw, ag) = attribute_attn_weights(g, backend, r, layer, head, downstreams)?;
        if let Some(first) = aws.first() {
            let first: &Tensor = first;
            ensure!(
                first.dims() == aw.dims(),
                "{} has attention shape {:?}, but the first sample has {:?} (samples must share \
                 positions count and sequence length)",
                r.describe(),
                aw.dims(),
                first.dims()
            );
        }
        aws.push(aw);
        ags.push(ag);
    }
    let aw = Tensor::cat(&aws, 0)?;
    let ag = Tensor::cat(&ags, 0)?;
    let aa = attention_attribution(&aw, &ag, normalize)?;
    Ok((aw, aa))
}

/// A22's attention attribution `aa = aw ⊙ |grad_aw|` (any shape `[.., s]`); with `normalize`
/// each row is divided by its sum over s (all-zero rows stay zero).
pub fn attention_attribution(aw: &Tensor, grad_aw: &Tensor, normalize: bool) -> Result<Tensor> {
    let aa = (aw * grad_aw.abs()?)?;
    if !normalize {
        return Ok(aa);
    }
    let s = aa.sum_keepdim(D::Minus1)?;
    let s = s.maximum(&s.ones_like()?.affine(1e-30, 0.0)?)?;
    Ok(aa.broadcast_div(&s)?)
}

/// A23: the top heads of `attr [L',H+1,g]`: scan topk_md(attr) entries in order, drop the MLP
/// column (h ≥ H), keep the first occurrence of each (l, h), valued Σ_g |attr\[l,h,:\]|.
/// The seed scans only the top k entries, so it may return fewer than k heads (defect 20);
/// `until_k` keeps scanning until k heads are found (or the tensor is exhausted).
pub fn get_top_heads(
    attr: &Tensor,
    k: usize,
    num_heads: usize,
    until_k: bool,
) -> Result<Vec<((usize, usize), f32)>> {
    let (_, hc, _) = attr.dims3().context("attr must be [L',H+1,g]")?;
    ensure!(
        hc == num_heads + 1,
        "attr has {hc} head columns, expected H+1 = {}",
        num_heads + 1
    );
    let scan = if until_k { attr.elem_count() } else { k };
    let top = topk_md(attr, scan, false)?;
    let sums = attr.abs()?.sum(2)?.to_vec2::<f32>()?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for idx in &top.indices {
        let (l, h) = (idx[0], idx[1]);
        if h >= num_heads || !seen.insert((l, h)) {
            continue;
        }
        out.push(((l, h), sums[l][h]));
        if out.len() == k {
            break;
        }
    }
    Ok(out)
}

/// How [`rank_heads`] orders heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRanking {
    /// By magnitude Σ_g |attr[l,h,g]|, largest first: heads that push the objective down rank
    /// as high as heads that push it up.
    Abs,
    /// By the signed score Σ_g attr[l,h,g], largest first.
    Signed,
    /// The seed's A23 order ([`get_top_heads`] with until_k): top-k of the signed entries.
    Seed,
}

impl std::str::FromStr for HeadRanking {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "abs" => Ok(Self::Abs),
            "signed" => Ok(Self::Signed),
            "seed" => Ok(Self::Seed),
            other => anyhow::bail!("unknown head ranking {other:?} (abs, signed, seed)"),
        }
    }
}

/// One ranked head of [`rank_heads`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadScore {
    /// Layer.
    pub layer: usize,
    /// Query head.
    pub head: usize,
    /// Signed score Σ_g attr[l,h,g] over the downstream nodes g.
    pub score: f32,
    /// Magnitude Σ_g |attr[l,h,g]| (the seed's A23 value).
    pub abs: f32,
}

/// The top `k` heads (MLP column dropped) of attr `[L',H+1,g]` in the order `by`, each with its
/// signed score and its magnitude. [`HeadRanking::Abs`] and [`HeadRanking::Signed`] consider
/// every head (NaN scores last, ties in (layer, head) order); [`HeadRanking::Seed`] is A23.
pub fn rank_heads(
    attr: &Tensor,
    k: usize,
    num_heads: usize,
    by: HeadRanking,
) -> Result<Vec<HeadScore>> {
    let (_, hc, _) = attr.dims3().context("attr must be [L',H+1,g]")?;
    ensure!(
        hc == num_heads + 1,
        "attr has {hc} head columns, expected H+1 = {}",
        num_heads + 1
    );
    let attr = attr.to_dtype(candle_core::DType::F32)?;
    let sums = attr.sum(2)?.to_vec2::<f32>()?;
    let abs = attr.abs()?.sum(2)?.to_vec2::<f32>()?;
    let score = |l: usize, h: usize| HeadScore {
        layer: l,
        head: h,
        score: sums[l][h],
        abs: abs[l][h],
    };
    if by == HeadRanking::Seed {
        return Ok(get_top_heads(&attr, k, num_heads, true)?
            .into_iter()
            .map(|((l, h), _)| score(l, h))
            .collect());
    }
    let mut all: Vec<HeadScore> = (0..sums.len())
        .flat_map(|l| (0..num_heads).map(move |h| (l, h)))
        .map(|(l, h)| score(l, h))
        .collect();
    let key = |s: &HeadScore| {
        let v = if by == HeadRanking::Abs {
            s.abs
        } else {
            s.score
        };
        if v.is_nan() { f32::NEG_INFINITY } else { v }
    };
    // stable: equal keys keep (layer, head) order
    all.sort_by(|a, b| key(b).total_cmp(&key(a)));
    all.truncate(k);
    Ok(all)
}

/// Nodes with a path to an lm_head node (lm_head nodes included).
fn feeding_lm_head(g: &Graph) -> BTreeSet<NodeId> {
    let mut seen: BTreeSet<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|id| id.ty.is_lm_head())
        .collect();
    let mut stack: Vec<NodeId> = seen.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for u in g.get_upstreams(id) {
            if seen.insert(u) {
                stack.push(u);
            }
        }
    }
    seen
}

/// Sets the positions for sample `r` of every node that feeds an lm_head node, from lm_head
/// down (reverse topological order), so that the circuit can be evaluated.
pub fn set_all_pos_ids(g: &mut Graph, backend: &dyn Backend, r: &SampleRef) -> Result<()> {
    let feeding = feeding_lm_head(g);
    let order = g.topological_sort()?;
    for id in order.into_iter().rev().filter(|id| feeding.contains(id)) {
        set_pos_ids(g, backend, id, r)?;
    }
    Ok(())
}

/// A17: circuit evaluation. Each node computes its forward (A15) from the sum of its processed
/// upstreams' outputs (leaves: the cached inputs), in topological order; with `leaf_nodes` only
/// nodes reachable from them are processed. Returns lm_head's objective (the mean log-prob of
/// the answers when only the graph's paths feed the residual). Positions are (re)set first;
/// nodes with no path to lm_head are skipped.
pub fn forward(
    g: &mut Graph,
    backend: &dyn Backend,
    r: &SampleRef,
    leaf_nodes: Option<&[NodeId]>,
) -> Result<f32> {
    set_all_pos_ids(g, backend, r)?;
    let feeding = feeding_lm_head(g);
    let order: Vec<NodeId> = g
        .topological_sort()?
        .into_iter()
        .filter(|id| feeding.contains(id))
        .collect();
    let keep = match leaf_nodes {
        Some(l) => Some(g.get_reachable(l)?),
        None => None,
    };
    let leaves: BTreeSet<NodeId> = match leaf_nodes {
        Some(l) => l.iter().copied().collect(),
        None => order
            .iter()
            .copied()
            .filter(|&id| g.get_upstreams(id).is_empty())
            .collect(),
    };
    let i = r.index();
    let mut outs: BTreeMap<NodeId, Tensor> = BTreeMap::new();
    for id in order {
        if keep.as_ref().is_some_and(|k| !k.contains(&id)) {
            continue;
        }
        let upstream_sum = if leaves.contains(&id) {
            None
        } else {
            let mut sum: Option<Tensor> = None;
            for u in g.get_upstreams(id) {
                if let Some(o) = outs.get(&u) {
                    sum = Some(match sum {
                        None => o.clone(),
                        Some(s) => (s + o)?,
                    });
                }
            }
            sum
        };
        let d = &g.get(id)?.data;
        let req = NodeForwardRequest {
            node_type: id.ty,
            layer: id.layer,
            head: id.head,
            pos_ids: d.pos_ids[&i].clone(),
            src_pos_ids: d.src_pos_ids[&i].clone(),
            upstream_sum,
            sink: g.sink,
        };
        let out = backend
            .node_forward(&r.key, &req)
            .with_context(|| format!("forward of {id} on {}", r.describe()))?;
        if id.ty.is_lm_head() {
            return Ok(out
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?[0]);
        }
        outs.insert(id, out);
    }
    bail!("the graph has no (reachable) lm_head node")
}
