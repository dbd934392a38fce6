//! Attribution bindings beyond one step (spec §3): residual attribution alone (A18),
//! attention-weight attribution of one sample (A21), the embedding's share, node positions
//! (A11), user-defined spans, and the graph's settings (IG rule, adaptive IG, sink mode).

use super::args::{guard, int_array, options, usize_list};
use super::attribution::{ScriptGraph, ScriptNode, node_ids, sample_ref};
use super::model::{Cached, ScriptModel};
use crate::attribution::step::residual_request;
use crate::attribution::{
    Adaptive, IgRule, SinkMode, attribute_attn_weights, embed_attribution, set_pos_ids,
};
use crate::script::docs::Registrar;
use crate::script::state::lock;
use crate::script::tensor::Tensor;
use anyhow::{Context, Result, bail, ensure};
use rhai::{Array, Dynamic, FLOAT, INT, Map};

/// Register the graph operations (domain "attribution").
pub fn register(r: &mut Registrar) {
    register_residual(r);
    register_positions(r);
    register_settings(r);
}

fn nonneg(what: &str, v: INT) -> Result<usize> {
    ensure!(v >= 0, "{what} must be >= 0, got {v}");
    Ok(v as usize)
}

/// Options of `attribute_residual(g, model, r, nodes, opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResidualOptions {
    #[serde(default)]
    from_layer: Option<usize>,
    #[serde(default)]
    to_layer: Option<usize>,
}

/// A18 on the nodes' stored gradients of one sample, optionally over a layer range.
fn residual(
    g: &ScriptGraph,
    m: &ScriptModel,
    c: &Cached,
    nodes: &Array,
    opts: &Map,
) -> Result<Tensor> {
    let ids = node_ids(nodes)?;
    ensure!(
        !ids.is_empty(),
        "attribute_residual needs at least one node"
    );
    let mut req = residual_request(&lock(&g.0), &ids, c.sample.0.index)
        .context("run attribute_step (or backward) on these nodes first")?;
    let o: ResidualOptions = options(opts)?;
    if let Some(f) = o.from_layer {
        req.from_layer = f;
    }
    if o.to_layer.is_some() {
        req.to_layer = o.to_layer;
    }
    Ok(Tensor(
        c.backend(m).attribute_residual(&sample_ref(c).key, &req)?,
    ))
}

fn register_residual(r: &mut Registrar) {
    r.func(
        "attribute_residual",
        "attribute_residual(g: Graph, model: Model, r: Cached, nodes: Array) -> Tensor",
        "A18 alone: attribute the nodes' stored gradients for sample r (from attribute_step) to every head and MLP below them, [L',H+1,g], MLP in column H.",
        |g: ScriptGraph, m: ScriptModel, c: Cached, nodes: Array| {
            guard("attribute_residual", || residual(&g, &m, &c, &nodes, &Map::new()))
        },
    )
    .func(
        "attribute_residual",
        "attribute_residual(g: Graph, model: Model, r: Cached, nodes: Array, opts: Map) -> Tensor",
        "As attribute_residual(g, model, r, nodes) over layers from_layer..to_layer (defaults: 0 and ceil of the largest downstream layer).",
        |g: ScriptGraph, m: ScriptModel, c: Cached, nodes: Array, opts: Map| {
            guard("attribute_residual", || residual(&g, &m, &c, &nodes, &opts))
        },
    )
    .func(
        "attribute_attn_weights",
        "attribute_attn_weights(g: Graph, model: Model, r: Cached, layer: int, head: int, downstreams: Array) -> Map",
        "A21 on one sample: #{aw, grad_aw}, the head's attention weights [1,k,s] at the downstreams' positions and their gradient (run attribute_step on the downstreams first).",
        |g: ScriptGraph, m: ScriptModel, c: Cached, layer: INT, head: INT, downs: Array| {
            guard("attribute_attn_weights", || {
                let (aw, gaw) = attribute_attn_weights(
                    &lock(&g.0),
                    c.backend(&m),
                    &sample_ref(&c),
                    nonneg("layer", layer)?,
                    nonneg("head", head)?,
                    &node_ids(&downs)?,
                )?;
                let mut out = Map::new();
                out.insert("aw".into(), Dynamic::from(Tensor(aw)));
                out.insert("grad_aw".into(), Dynamic::from(Tensor(gaw)));
                Ok(out)
            })
        },
    )
    .func(
        "embed_attribution",
        "embed_attribution(g: Graph, model: Model, r: Cached, nodes: Array) -> Array",
        "The embedding's share of A18, one number per node: heads + MLPs + embedding = grad · residual (run attribute_step first).",
        |g: ScriptGraph, m: ScriptModel, c: Cached, nodes: Array| {
            guard("embed_attribution", || {
                let v = embed_attribution(&lock(&g.0), c.backend(&m), &sample_ref(&c), &node_ids(&nodes)?)?;
                Ok(v.into_iter().map(|x| Dynamic::from_float(x as FLOAT)).collect::<Array>())
            })
        },
    );
}

/// Positions of a node for one sample: its own (`src = false`) or its source positions.
fn node_positions(g: &ScriptGraph, n: &ScriptNode, c: &Cached, src: bool) -> Result<Array> {
    let g = lock(&g.0);
    let d = &g.get(n.0)?.data;
    let map = if src { &d.src_pos_ids } else { &d.pos_ids };
    let pos = map.get(&c.sample.0.index).with_context(|| {
        format!(
            "node {} has no positions for sample {} (run set_pos_ids or attribute_step)",
            n.0, c.sample.0.index
        )
    })?;
    Ok(int_array(pos))
}

fn register_positions(r: &mut Registrar) {
    r.func(
        "set_pos_ids",
        "set_pos_ids(g: Graph, model: Model, r: Cached, node: Node)",
        "A11: set the node's positions for sample r from its downstreams (lm_head: A- = answer_indices - 1); attn_v/attn_k take their source positions from the pattern.",
        |g: ScriptGraph, m: ScriptModel, c: Cached, n: ScriptNode| {
            guard("set_pos_ids", || set_pos_ids(&mut lock(&g.0), c.backend(&m), n.0, &sample_ref(&c)))
        },
    )
    .func(
        "pos_ids",
        "pos_ids(g: Graph, node: Node, r: Cached) -> Array",
        "The node's positions for sample r (set by set_pos_ids / attribute_step).",
        |g: ScriptGraph, n: ScriptNode, c: Cached| guard("pos_ids", || node_positions(&g, &n, &c, false)),
    )
    .func(
        "src_pos_ids",
        "src_pos_ids(g: Graph, node: Node, r: Cached) -> Array",
        "The node's source positions for sample r (the SRC of its pattern for attn_v/attn_k).",
        |g: ScriptGraph, n: ScriptNode, c: Cached| guard("src_pos_ids", || node_positions(&g, &n, &c, true)),
    )
    .func(
        "define_span",
        "define_span(g: Graph, name: String, r: Cached, positions: Array)",
        "A user-defined span for sample r, usable as the SRC of a pattern (\"A-->NAME\"); defining it again replaces it.",
        |g: ScriptGraph, name: &str, c: Cached, pos: Array| {
            guard("define_span", || {
                let pos = usize_list("positions", &pos)?;
                if let Some(n) = c.sample.0.n_tokens {
                    ensure!(
                        pos.iter().all(|&p| p < n),
                        "positions {pos:?} out of range for a prompt of {n} tokens"
                    );
                }
                lock(&g.0).spans.define(name, &sample_ref(&c).key, pos)
            })
        },
    )
    .func(
        "define_span",
        "define_span(g: Graph, name: String, rs: Array, positions: Fn(r) -> Array)",
        "Define a span on every sample of rs with the positions positions(r) returns (e.g. |r| [r.answer_indices[0] - 2]).",
        |ctx: rhai::NativeCallContext, g: ScriptGraph, name: &str, rs: Array, f: rhai::FnPtr| -> super::RResult<()> {
            for item in &rs {
                let c = item.read_lock::<Cached>().map(|c| c.clone()).ok_or_else(|| {
                    format!("define_span(): expected Cached samples, got {}", item.type_name())
                })?;
                let pos: Array = f.call_within_context(&ctx, (item.clone(),))?;
                guard("define_span", || {
                    let pos = usize_list("positions", &pos)?;
                    lock(&g.0).spans.define(name, &sample_ref(&c).key, pos)
                })?;
            }
            Ok(())
        },
    )
    .func(
        "undefine_span",
        "undefine_span(g: Graph, name: String) -> bool",
        "Remove a user-defined span everywhere; true if it existed.",
        |g: ScriptGraph, name: &str| lock(&g.0).spans.undefine(name),
    )
    .func(
        "user_spans",
        "user_spans(g: Graph) -> Array",
        "Names of the user-defined spans.",
        |g: ScriptGraph| lock(&g.0).spans.user_spans().into_iter().map(Dynamic::from).collect::<Array>(),
    )
    .func(
        "completeness",
        "completeness(g: Graph, node: Node, r: Cached) -> Map",
        "IG completeness of an lm_head node on sample r: #{f_x, f_baseline, sum_grad_x, delta, rule, resolution}.",
        |g: ScriptGraph, n: ScriptNode, c: Cached| {
            guard("completeness", || {
                let g = lock(&g.0);
                let comp = g.get(n.0)?.data.completeness.get(&c.sample.0.index).with_context(|| {
                    format!("node {} has no completeness for sample {} (lm_head after attribute_step)", n.0, c.sample.0.index)
                })?;
                let mut m = Map::new();
                m.insert("f_x".into(), Dynamic::from_float(comp.f_x));
                m.insert("f_baseline".into(), Dynamic::from_float(comp.f_baseline));
                m.insert("sum_grad_x".into(), Dynamic::from_float(comp.sum_grad_x));
                m.insert("delta".into(), Dynamic::from_float(comp.delta));
                m.insert("rule".into(), Dynamic::from(rule_name(&comp.rule).to_string()));
                m.insert("resolution".into(), Dynamic::from_int(comp.rule.resolution() as INT));
                Ok(m)
            })
        },
    );
}

fn rule_name(r: &IgRule) -> &'static str {
    match r {
        IgRule::Seed { .. } => "seed",
        IgRule::GaussLegendre { .. } => "gauss",
        IgRule::RiemannMidpoint { .. } => "midpoint",
    }
}

/// Parse an IG rule name and resolution.
fn parse_rule(name: &str, n: INT) -> Result<IgRule> {
    let n = nonneg("n", n)?;
    let rule = match name.to_ascii_lowercase().as_str() {
        "seed" => IgRule::Seed { steps: n },
        "gauss" | "gauss_legendre" => IgRule::GaussLegendre { n },
        "midpoint" | "riemann_midpoint" => IgRule::RiemannMidpoint { n },
        other => bail!("unknown IG rule {other:?} (seed, gauss, midpoint)"),
    };
    rule.validate()?;
    Ok(rule)
}

fn register_settings(r: &mut Registrar) {
    r.func(
        "set_ig_rule",
        "set_ig_rule(g: Graph, rule: String, n: int)",
        "Integrated-gradient rule for every node of g: \"seed\" (n+1 equally weighted points 0..1, n = 0 the plain gradient), \"gauss\" (Gauss-Legendre, n nodes) or \"midpoint\" (Riemann midpoint, n points).",
        |g: ScriptGraph, rule: &str, n: INT| {
            guard("set_ig_rule", || {
                lock(&g.0).ig_rule = Some(parse_rule(rule, n)?);
                Ok(())
            })
        },
    )
    .func(
        "set_ig_rule",
        "set_ig_rule(g: Graph, rule: String)",
        "\"default\": back to each node type's default rule (seed with 4 steps; the plain gradient for attn_v and attn_a).",
        |g: ScriptGraph, rule: &str| {
            guard("set_ig_rule", || {
                ensure!(rule == "default", "set_ig_rule(g, rule) takes \"default\"; give n for {rule:?}");
                lock(&g.0).ig_rule = None;
                Ok(())
            })
        },
    )
    .func(
        "set_adaptive",
        "set_adaptive(g: Graph, tol: float, max_resolution: int)",
        "Adaptive IG for lm_head: double the resolution until the completeness delta is <= tol or the resolution would exceed max_resolution (warns then).",
        |g: ScriptGraph, tol: FLOAT, max: INT| {
            guard("set_adaptive", || {
                let ad = Adaptive { tol, max_resolution: nonneg("max_resolution", max)? };
                ad.validate()?;
                lock(&g.0).adaptive = Some(ad);
                Ok(())
            })
        },
    )
    .func(
        "set_adaptive",
        "set_adaptive(g: Graph, on: bool)",
        "true: adaptive IG with the defaults (tol 0.05, max resolution 256); false: off.",
        |g: ScriptGraph, on: bool| {
            lock(&g.0).adaptive = on.then(Adaptive::default);
        },
    )
    .func(
        "set_sink",
        "set_sink(g: Graph, mode: String)",
        "How attn_qns excludes the attention sink (key 0): \"mask\" (masked before the softmax, default) or \"zero\" (zeroed after it, no renormalisation).",
        |g: ScriptGraph, mode: &str| {
            guard("set_sink", || {
                lock(&g.0).sink = match mode {
                    "mask" | "mask_before_softmax" => SinkMode::MaskBeforeSoftmax,
                    "zero" | "zero_after_softmax" => SinkMode::ZeroAfterSoftmax,
                    other => bail!("unknown sink mode {other:?} (mask, zero)"),
                };
                Ok(())
            })
        },
    )
    .func(
        "graph_settings",
        "graph_settings(g: Graph) -> Map",
        "The graph's settings: #{ig_rule, ig_n, adaptive_tol, adaptive_max, sink} (() where unset).",
        |g: ScriptGraph| {
            let g = lock(&g.0);
            let mut m = Map::new();
            let (rule, n) = g.ig_rule.map_or((Dynamic::UNIT, Dynamic::UNIT), |r| {
                (Dynamic::from(rule_name(&r).to_string()), Dynamic::from_int(r.resolution() as INT))
            });
            m.insert("ig_rule".into(), rule);
            m.insert("ig_n".into(), n);
            let (tol, max) = g.adaptive.map_or((Dynamic::UNIT, Dynamic::UNIT), |a| {
                (Dynamic::from_float(a.tol), Dynamic::from_int(a.max_resolution as INT))
            });
            m.insert("adaptive_tol".into(), tol);
            m.insert("adaptive_max".into(), max);
            let sink = match g.sink {
                SinkMode::MaskBeforeSoftmax => "mask",
                SinkMode::ZeroAfterSoftmax => "zero",
            };
            m.insert("sink".into(), Dynamic::from(sink.to_string()));
            m
        },
    );
}
