//! Attribution identities and graph semantics on a tiny random model: linearity of residual
//! attribution, IG completeness convergence, circuit evaluation reproducing the model's
//! objective, interning/freezing/traversal, add_edges, set_pos_ids, bad inputs.

mod attr_support;

use attr_support::*;
use candle_core::Tensor;
use minarc::attribution::{
    Adaptive, Graph, IgRule, NodeGradRequest, NodeId, NodeType, SampleRef, accum_output_grad,
    add_edges, attribute_attn_weights, attribute_step, embed_attribution, forward,
    get_attn_attrs_on_dataset, get_top_heads, set_pos_ids,
};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::ig::{ResidualGrad, ResidualRequest};

const ANSWERS: [usize; 2] = [6, 10];

fn setup(n: usize) -> (Local, Vec<SampleRef>) {
    let cfg = tiny_cfg();
    let local = local_with_samples(&cfg, 11, 12, &ANSWERS, n);
    let samples = (0..n)
        .map(|i| SampleRef::new(SampleKey::new(DATASET, i), None))
        .collect();
    (local, samples)
}

fn residual_at(local: &Local, r: &SampleRef, id: NodeId, pos: &[usize]) -> Tensor {
    let k = &r.key;
    let l = id.layer;
    if id.ty.is_lm_head() {
        let p = l - 1;
        return (local.hidden_states(k, p, Some(pos)).unwrap()
            + local.attn_output(k, p, Some(pos)).unwrap()
            + local.mlp_output(k, p, Some(pos)).unwrap())
        .unwrap();
    }
    let h = local.hidden_states(k, l, Some(pos)).unwrap();
    if id.ty.is_mlp() {
        (h + local.attn_output(k, l, Some(pos)).unwrap()).unwrap()
    } else {
        h
    }
}

/// heads + MLPs + embedding = grad · residual at the node's layer, per node, including an
/// attn_v node whose gradient sits at other positions than its output (defect 4).
#[test]
fn linearity_identity() {
    let (local, samples) = setup(1);
    let r = &samples[0];
    let mut g = Graph::new(local.config(), 1);
    g.spans.define("K", &r.key, vec![2, 3]).unwrap();
    let lm = g.lm_head_id();
    g.add_node(lm, Some("A-->A-")).unwrap();
    let a0 = attribute_step(&mut g, &local, r, &[lm]).unwrap();
    assert_eq!(a0.dims(), &[2, 5, 1]);
    let q = g.node(1, Some(0), NodeType::AttnQ, Some("A-->A-")).unwrap();
    let v = g.node(1, Some(3), NodeType::AttnV, Some("A-->K")).unwrap();
    let mlp = g.node(1, None, NodeType::Mlp, None).unwrap();
    for id in [q, v, mlp] {
        g.add_edge(id, lm, 1.0).unwrap();
    }
    let nodes = [q, v, mlp];
    let attr = attribute_step(&mut g, &local, r, &nodes).unwrap();
    // ceil(1.5) = 2 layers: the MLP node sees its own layer's heads
    assert_eq!(attr.dims(), &[2, 5, 3]);
    let mut all = vec![lm];
    all.extend(nodes);
    let mut attrs = vec![a0];
    attrs.extend((0..3).map(|c| attr.narrow(2, c, 1).unwrap()));
    let emb = embed_attribution(&g, &local, r, &[lm]).unwrap();
    let emb2 = embed_attribution(&g, &local, r, &nodes).unwrap();
    let embs: Vec<f32> = emb.into_iter().chain(emb2).collect();
    for (i, id) in all.iter().enumerate() {
        let d = &g.get(*id).unwrap().data;
        let pos = &d.src_pos_ids[&0];
        let grad = &d.grad[&0];
        let res = residual_at(&local, r, *id, pos);
        let expect = (grad * res)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = attrs[i].sum_all().unwrap().to_scalar::<f32>().unwrap() + embs[i];
        println!("{id}: Σ attr + embed = {got:.6}, grad·residual = {expect:.6}");
        assert!(
            (got - expect).abs() <= 1e-4 * expect.abs().max(1.0),
            "{id}: {got} vs {expect}"
        );
    }
    assert_eq!(g.get(v).unwrap().data.src_pos_ids[&0], vec![2, 3]);
    // masks: attn node at layer 1 sees no layer-1 head; the MLP node sees its layer's heads but
    // not its own MLP
    let a = attr.to_vec3::<f32>().unwrap();
    assert!(a[1].iter().all(|row| row[0] == 0.0 && row[1] == 0.0));
    assert!(a[1][..4].iter().any(|row| row[2] != 0.0));
    assert_eq!(a[1][4][2], 0.0);
    assert!(a[0][4][2] != 0.0);
}

#[test]
fn ig_completeness_converges_on_lm_head() {
    let (local, samples) = setup(1);
    let key = &samples[0].key;
    let pos: Vec<usize> = ANSWERS.iter().map(|a| a - 1).collect();
    let l = local.config().num_hidden_layers;
    let delta = |rule: IgRule| {
        let mut req =
            NodeGradRequest::new(NodeType::LmHead, l, None, pos.clone(), pos.clone(), None);
        req.ig = Some(rule);
        local
            .node_gradient(key, &req)
            .unwrap()
            .completeness
            .unwrap()
            .delta
    };
    let seed: Vec<f64> = [1, 2, 4, 8, 16, 32, 64]
        .iter()
        .map(|&s| delta(IgRule::Seed { steps: s }))
        .collect();
    let mid: Vec<f64> = [1, 2, 4, 8, 16]
        .iter()
        .map(|&n| delta(IgRule::RiemannMidpoint { n }))
        .collect();
    let gl: Vec<f64> = [1, 2, 4, 8]
        .iter()
        .map(|&n| delta(IgRule::GaussLegendre { n }))
        .collect();
    println!(
        "seed steps 1..64: {seed:.4?}\nmidpoint n 1..16: {mid:.4?}\ngauss-legendre n 1,2,4,8: {gl:?}"
    );
    assert!(
        seed[6] < seed[2] && seed[2] < seed[0],
        "seed deltas must shrink: {seed:?}"
    );
    assert!(seed[6] < 0.02, "{seed:?}");
    assert!(mid[4] < mid[0] && mid[4] < 0.01, "{mid:?}");
    assert!(gl[3] < 1e-3, "{gl:?}");
    // adaptive mode reaches the tolerance and says so
    let mut req = NodeGradRequest::new(NodeType::LmHead, l, None, pos.clone(), pos.clone(), None);
    req.adaptive = Some(Adaptive {
        tol: 0.01,
        max_resolution: 256,
    });
    let res = local.node_gradient(key, &req).unwrap();
    assert_eq!(res.converged, Some(true));
    assert!(res.completeness.unwrap().delta <= 0.01);
    // ... or says it could not
    req.adaptive = Some(Adaptive {
        tol: 1e-9,
        max_resolution: 8,
    });
    let res = local.node_gradient(key, &req).unwrap();
    assert_eq!(res.converged, Some(false));
    assert_eq!(res.rule, IgRule::Seed { steps: 8 });
}

/// Every head (through its queries), every MLP and the embedding kept: the circuit reproduces
/// the model's objective computed from its plain logits.
#[test]
fn graph_forward_reproduces_objective() {
    let (local, samples) = setup(2);
    let cfg = local.config().clone();
    let (mut g, lm, layers) = attr_support::full_circuit(&cfg, 2);
    let model = local.model();
    for r in &samples {
        let got = forward(&mut g, &local, r, None).unwrap() as f64;
        // the model's own objective from plain logits, in f64
        let s = local.sample(&r.key).unwrap();
        let logits = model
            .forward_logits(&s.token_ids)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let mut expect = 0.0;
        for (&a, &lab) in ANSWERS.iter().zip(&s.input.labels) {
            let row = &logits[0][a - 1];
            let z: Vec<f64> = (0..row.len())
                .map(|t| {
                    row[t] as f64
                        + if s.input.candidate_ids.contains(&(t as u32)) {
                            0.0
                        } else {
                            -1e4
                        }
                })
                .collect();
            let mx = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            expect += z[lab as usize] - lse;
        }
        expect /= ANSWERS.len() as f64;
        println!("sample {}: circuit {got:.6}, model {expect:.6}", r.index());
        assert!((got - expect).abs() < 1e-4, "{got} vs {expect}");
    }
    // dropping the MLPs' contributions changes the objective
    let heads_only: Vec<NodeId> = layers.iter().flat_map(|(h, _)| h.clone()).collect();
    for (_, mlp) in &layers {
        g.remove_edge(*mlp, lm);
    }
    let full = forward(&mut g, &local, &samples[0], None).unwrap();
    let _ = heads_only;
    let cached = forward(&mut Graph::new(&cfg, 2), &local, &samples[0], None);
    assert!(cached.is_err(), "a graph without lm_head must be an error");
    let mut only = Graph::new(&cfg, 2);
    only.add_node(lm, None).unwrap();
    let direct = forward(&mut only, &local, &samples[0], None).unwrap();
    println!(
        "without MLP→lm_head edges: {full:.6}; lm_head alone (cached, no double norm): {direct:.6}"
    );
    assert!((full - direct).abs() > 1e-4);
}

#[test]
fn graph_semantics() {
    let cfg = tiny_cfg();
    let mut g = Graph::new(&cfg, 3);
    let lm = g.lm_head_id();
    assert!(g.add_node(lm, Some("A-->A-")).unwrap());
    assert!(!g.add_node(lm, None).unwrap());
    // interning: same (layer, head, type) → same node; pattern filled only if unset
    let a = g.node(1, Some(2), NodeType::AttnV, None).unwrap();
    let b = g.node(1, Some(2), NodeType::AttnV, Some("A-->V")).unwrap();
    assert_eq!(a, b);
    assert_eq!(g.nodes().len(), 2);
    g.node(1, Some(2), NodeType::AttnV, Some("A-->QV")).unwrap();
    assert_eq!(
        g.get(a).unwrap().data.attn_pattern.as_deref(),
        Some("A-->V")
    );
    // identity can change until the node is an edge endpoint
    let c = g.node(0, Some(1), NodeType::AttnQ, None).unwrap();
    let c2 = g.id(0, Some(0), NodeType::AttnQ).unwrap();
    g.set_node_id(c, c2).unwrap();
    g.add_edge(a, lm, 0.5).unwrap();
    g.add_edge(c2, a, 0.25).unwrap();
    assert!(g.get(a).unwrap().is_frozen());
    assert!(
        g.set_node_id(a, g.id(1, Some(3), NodeType::AttnV).unwrap())
            .is_err()
    );
    // an upstream is added by add_edge; a missing downstream is an error
    let m0 = g.id(0, None, NodeType::Mlp).unwrap();
    g.add_edge(m0, a, 0.1).unwrap();
    assert!(g.contains(m0));
    let missing = g.id(0, Some(3), NodeType::AttnK).unwrap();
    assert!(g.add_edge(m0, missing, 1.0).is_err());
    // traversal
    assert_eq!(g.get_downstreams(a), vec![lm]);
    assert_eq!(g.get_upstreams(a), vec![c2, m0]);
    let order = g.topological_sort().unwrap();
    assert_eq!(order, vec![c2, m0, a, lm]);
    let reach = g.get_reachable(&[m0]).unwrap();
    assert_eq!(reach.into_iter().collect::<Vec<_>>(), {
        let mut v = vec![m0, a, lm];
        v.sort();
        v
    });
    // remove_node refuses a node that is some edge's downstream
    assert!(g.remove_node(a).is_err());
    g.remove_node(m0).unwrap();
    assert_eq!(g.get_upstreams(a), vec![c2]);
    assert!(g.remove_edge(c2, a));
    assert!(!g.remove_edge(c2, a));
    // JSON view
    let v = minarc::attribution::export::graph_to_json(&g).unwrap();
    assert_eq!(v["nodes"][1]["type"], "attn_v");
    assert_eq!(v["edges"][0]["score"], 0.5);
    // bad identities
    assert!(g.id(2, Some(0), NodeType::AttnQ).is_err());
    assert!(g.id(0, Some(4), NodeType::AttnQ).is_err());
    assert!(g.id(0, None, NodeType::AttnQ).is_err());
    assert!(g.id(1, None, NodeType::LmHead).is_err());
    assert!(g.id(0, Some(3), NodeType::Mlp).is_err());
    assert_eq!(g.id(0, None, NodeType::Mlp).unwrap().head, Some(4));
    assert!("attn_x".parse::<NodeType>().is_err());
    assert!(
        g.node(0, Some(0), NodeType::AttnQ, Some("nonsense"))
            .is_err()
    );
}

#[test]
fn add_edges_only_positive_and_top_heads() {
    let cfg = tiny_cfg();
    let mut g = Graph::new(&cfg, 1);
    let lm = g.lm_head_id();
    g.add_node(lm, None).unwrap();
    let q = g.node(1, Some(0), NodeType::AttnQ, None).unwrap();
    g.add_edge(q, lm, 1.0).unwrap();
    // attr [2,5,2]: head (0,1) positive for lm, negative for q
    let mut v = vec![0f32; 2 * 5 * 2];
    let at = |l: usize, h: usize, g: usize| (l * 5 + h) * 2 + g;
    v[at(0, 1, 0)] = 0.3;
    v[at(0, 1, 1)] = -0.2;
    v[at(0, 4, 0)] = 0.9; // MLP column
    v[at(1, 2, 1)] = -0.5;
    let attr = Tensor::from_vec(v, (2, 5, 2), &candle_core::Device::Cpu).unwrap();
    let up = g.id(0, Some(1), NodeType::AttnV).unwrap();
    assert_eq!(add_edges(&mut g, up, &[lm, q], &attr).unwrap(), 1);
    assert_eq!(g.edge_score(up, lm), Some(0.3f32 as f64));
    assert_eq!(g.edge_score(up, q), None);
    let neg = g.id(1, Some(2), NodeType::AttnQ).unwrap();
    assert_eq!(add_edges(&mut g, neg, &[lm, q], &attr).unwrap(), 0);
    assert!(!g.contains(neg));
    assert!(add_edges(&mut g, up, &[lm], &attr).is_err());
    // top heads: signed top-k, MLP dropped, value Σ|attr[l,h,:]|
    let top = get_top_heads(&attr, 2, 4, false).unwrap();
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0].0, (0, 1));
    assert!((top[0].1 - 0.5).abs() < 1e-6);
    let top = get_top_heads(&attr, 2, 4, true).unwrap();
    assert_eq!(top.len(), 2);
}

#[test]
fn set_pos_ids_rules_and_errors() {
    let (local, samples) = setup(1);
    let r = &samples[0];
    let mut g = Graph::new(local.config(), 1);
    let lm = g.lm_head_id();
    g.add_node(lm, None).unwrap();
    set_pos_ids(&mut g, &local, lm, r).unwrap();
    assert_eq!(g.get(lm).unwrap().data.pos_ids[&0], vec![5, 9]);
    // no downstream
    let q = g.node(1, Some(0), NodeType::AttnQ, None).unwrap();
    assert!(set_pos_ids(&mut g, &local, q, r).is_err());
    g.add_edge(q, lm, 1.0).unwrap();
    set_pos_ids(&mut g, &local, q, r).unwrap();
    // missing grads
    assert!(accum_output_grad(&mut g, q, 0).is_err());
    // attn_k with a user span as SRC
    g.spans.define("X", &r.key, vec![1, 4]).unwrap();
    let k = g.node(0, Some(1), NodeType::AttnK, Some("A-->X")).unwrap();
    g.add_edge(k, q, 1.0).unwrap();
    set_pos_ids(&mut g, &local, k, r).unwrap();
    let d = &g.get(k).unwrap().data;
    assert_eq!(
        (d.pos_ids[&0].clone(), d.src_pos_ids[&0].clone()),
        (vec![5, 9], vec![1, 4])
    );
    assert_eq!(d.src_span.as_deref(), Some("X"));
    // downstreams that disagree: k's src positions differ from lm's
    let m0 = g.node(0, None, NodeType::Mlp, None).unwrap();
    g.add_edge(m0, lm, 1.0).unwrap();
    g.add_edge(m0, k, 1.0).unwrap();
    let err = set_pos_ids(&mut g, &local, m0, r).unwrap_err();
    assert!(
        format!("{err:#}").contains("different positions"),
        "{err:#}"
    );
    // an unknown span without a puzzle record
    let v = g.node(0, Some(2), NodeType::AttnV, Some("A-->V")).unwrap();
    g.add_edge(v, lm, 1.0).unwrap();
    assert!(set_pos_ids(&mut g, &local, v, r).is_err());
}

#[test]
fn attention_weight_attribution_on_dataset() {
    let (local, samples) = setup(2);
    let mut g = Graph::new(local.config(), 2);
    let lm = g.lm_head_id();
    g.add_node(lm, None).unwrap();
    for r in &samples {
        attribute_step(&mut g, &local, r, &[lm]).unwrap();
    }
    let (aw, ag) = attribute_attn_weights(&g, &local, &samples[0], 1, 2, &[lm]).unwrap();
    assert_eq!(aw.dims(), &[1, 2, 12]);
    assert_eq!(ag.dims(), &[1, 2, 12]);
    let (aw, aa) = get_attn_attrs_on_dataset(&g, &local, &samples, 1, 2, &[lm], true).unwrap();
    assert_eq!(aw.dims(), &[2, 2, 12]);
    // rows of aa sum to 1; aa is zero where aw is zero (causal mask)
    for row in aa
        .sum(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
    {
        assert!((row - 1.0).abs() < 1e-5);
    }
    let a = aa.to_vec3::<f32>().unwrap();
    assert_eq!(a[0][0][11], 0.0);
    assert!(
        g.get_downstreams(lm).is_empty() && g.nodes().len() == 1,
        "temporary attn_a left in the graph"
    );
    // bad inputs
    assert!(attribute_attn_weights(&g, &local, &samples[0], 1, 9, &[lm]).is_err());
    assert!(attribute_attn_weights(&g, &local, &samples[0], 5, 0, &[lm]).is_err());
}

#[test]
fn bad_backend_requests_are_errors() {
    let (local, samples) = setup(1);
    let key = &samples[0].key;
    let e = local.config().hidden_size;
    let gy = Tensor::zeros(
        (1, 2, e),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let req = |t, l, h: Option<usize>, pos: Vec<usize>, og: Option<Tensor>| {
        NodeGradRequest::new(t, l, h, pos.clone(), pos, og)
    };
    assert!(
        local
            .node_gradient(
                key,
                &req(NodeType::AttnQ, 1, Some(0), vec![5, 99], Some(gy.clone()))
            )
            .is_err()
    );
    assert!(
        local
            .node_gradient(
                key,
                &req(NodeType::AttnQ, 1, Some(7), vec![5, 9], Some(gy.clone()))
            )
            .is_err()
    );
    assert!(
        local
            .node_gradient(
                key,
                &req(NodeType::AttnQ, 3, Some(0), vec![5, 9], Some(gy.clone()))
            )
            .is_err()
    );
    assert!(
        local
            .node_gradient(key, &req(NodeType::Mlp, 1, None, vec![5, 9], None))
            .is_err()
    );
    assert!(
        local
            .node_gradient(key, &req(NodeType::Mlp, 1, None, vec![5], Some(gy.clone())))
            .is_err()
    );
    assert!(
        local
            .node_gradient(key, &req(NodeType::LmHead, 2, None, vec![5], None))
            .is_err()
    );
    assert!(
        local
            .node_gradient(
                &SampleKey::new("nope", 0),
                &req(NodeType::LmHead, 2, None, vec![5, 9], None)
            )
            .is_err()
    );
    let rr = ResidualRequest {
        grads: vec![ResidualGrad {
            pos_ids: vec![5, 9],
            grad: gy.clone(),
            downstream_layer: 1.0,
        }],
        from_layer: 2,
        to_layer: Some(1),
    };
    assert!(local.attribute_residual(key, &rr).is_err());
    let rr = ResidualRequest {
        grads: vec![ResidualGrad {
            pos_ids: vec![5],
            grad: gy,
            downstream_layer: 1.0,
        }],
        from_layer: 0,
        to_layer: None,
    };
    assert!(local.attribute_residual(key, &rr).is_err());
}

#[test]
fn rank_heads_orders_by_magnitude_signed_score_or_the_seed_rule() {
    use minarc::attribution::{HeadRanking, rank_heads};
    // [L=2, H+1=3, g=2]: head scores Σ_g: (0,0) = -5, (0,1) = 1, (1,0) = 3, (1,1) = 0.5 (entries
    // 2 and -1.5: |.| sum 3.5); the MLP column (h = 2) holds the largest values and is dropped.
    let v: Vec<f32> = vec![
        -2.0, -3.0, 0.5, 0.5, 9.0, 9.0, //
        1.0, 2.0, 2.0, -1.5, 8.0, 8.0,
    ];
    let attr = candle_core::Tensor::from_vec(v, (2, 3, 2), &candle_core::Device::Cpu).unwrap();
    let order = |by| -> Vec<(usize, usize, f32, f32)> {
        rank_heads(&attr, 4, 2, by)
            .unwrap()
            .into_iter()
            .map(|s| (s.layer, s.head, s.score, s.abs))
            .collect()
    };
    assert_eq!(
        order(HeadRanking::Abs),
        vec![
            (0, 0, -5.0, 5.0),
            (1, 1, 0.5, 3.5),
            (1, 0, 3.0, 3.0),
            (0, 1, 1.0, 1.0)
        ]
    );
    assert_eq!(
        order(HeadRanking::Signed),
        vec![
            (1, 0, 3.0, 3.0),
            (0, 1, 1.0, 1.0),
            (1, 1, 0.5, 3.5),
            (0, 0, -5.0, 5.0)
        ]
    );
    // the seed's rule: top signed entries (2.0 at (1,0,1) and (1,1,0), then 1.0, 0.5 ...)
    let seed = order(HeadRanking::Seed);
    assert_eq!((seed[0].0, seed[0].1), (1, 0));
    assert_eq!((seed[1].0, seed[1].1), (1, 1));
    assert_eq!(seed.len(), 4);
    assert_eq!(rank_heads(&attr, 2, 2, HeadRanking::Abs).unwrap().len(), 2);
}

/// A graph saved as JSON reloads as a graph: the same view (nodes, patterns, spans, edges and
/// scores, in order), frozen endpoints, the same traversal; bad JSON is refused.
#[test]
fn a_saved_graph_reloads_as_a_graph() {
    use minarc::attribution::graph::GraphView;
    let cfg = tiny_cfg();
    let mut g = Graph::new(&cfg, 3);
    let lm = g.lm_head_id();
    g.add_node(lm, Some("A-->A-")).unwrap();
    let a = g.node(1, Some(2), NodeType::AttnV, Some("A-->V")).unwrap();
    let q = g.node(0, Some(1), NodeType::AttnQ, None).unwrap();
    let m0 = g.id(0, None, NodeType::Mlp).unwrap();
    g.add_edge(a, lm, 0.5).unwrap();
    g.add_edge(q, a, -0.25).unwrap();
    g.add_edge(m0, a, 1e-7).unwrap();
    g.get_mut(a).unwrap().data.span = Some("A-".into());
    g.get_mut(a).unwrap().data.src_span = Some("V".into());
    let json = serde_json::to_string(&g.to_view()).unwrap();
    let view: GraphView = serde_json::from_str(&json).unwrap();
    let h = Graph::from_view(&cfg, &view, 3).unwrap();
    assert_eq!(h.to_view(), g.to_view());
    assert_eq!(h.topological_sort().unwrap(), g.topological_sort().unwrap());
    assert!(h.get(a).unwrap().is_frozen());
    assert_eq!(h.edge_score(m0, a), Some(1e-7));
    // another model's shape, a duplicate edge, an edge from a node not listed, a bad pattern
    let mut other = cfg.clone();
    other.num_hidden_layers += 1;
    let e = Graph::from_view(&other, &view, 3).unwrap_err().to_string();
    assert!(e.contains("layers"), "{e}");
    let mut dup = view.clone();
    dup.edges.push(dup.edges[0].clone());
    let e = format!("{:#}", Graph::from_view(&cfg, &dup, 3).unwrap_err());
    assert!(e.contains("appears twice"), "{e}");
    let mut stray = view.clone();
    stray.nodes.retain(|n| n.id != q);
    let e = format!("{:#}", Graph::from_view(&cfg, &stray, 3).unwrap_err());
    assert!(e.contains("not among the nodes"), "{e}");
    let mut bad = view.clone();
    bad.nodes[1].attn_pattern = Some("nonsense".into());
    assert!(Graph::from_view(&cfg, &bad, 3).is_err());
    let mut nan = view.clone();
    nan.edges[0].score = f64::NAN;
    assert!(Graph::from_view(&cfg, &nan, 3).is_err());
}
