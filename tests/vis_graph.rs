//! GQA merge, layout, HTML/DOT/JSON exports of the graph view, checked against hand-worked cases.

use std::collections::BTreeMap;

use minarc::vis::GqaConfig;
use minarc::vis::graph::{
    GraphView, ViewEdge, ViewNode, from_json, merge_gqa_groups, render_dot, to_json,
};
use minarc::vis::html::{HtmlOptions, render_html};
use minarc::vis::layout::{count_crossings, gqa_layout, minimize_crossings};
use rand::{Rng, SeedableRng};

fn edge(from: &ViewNode, to: &ViewNode, score: f32) -> ViewEdge {
    ViewEdge {
        from: from.id.clone(),
        to: to.id.clone(),
        score,
    }
}

/// H = 16 heads in 2 KV groups (8 per group).
fn sample() -> GraphView {
    let lm = ViewNode::new(80, None, "lm_head", Some("A-->A-"));
    let v10 = ViewNode::new(79, Some(10), "attn_v", Some("A-->A-"));
    let v11 = ViewNode::new(79, Some(11), "attn_v", Some("A-->A-"));
    let q13 = ViewNode::new(63, Some(13), "attn_q", Some("A-->V"));
    let q9 = ViewNode::new(63, Some(9), "attn_q", Some("A-->V"));
    let q5 = ViewNode::new(62, Some(5), "attn_q", Some("A-->V"));
    let v3 = ViewNode::new(62, Some(3), "attn_v", Some("A-->QV"));
    let mlp = ViewNode::new(62, Some(16), "mlp", None);
    let lonely = ViewNode::new(70, Some(2), "attn_k", None);
    let edges = vec![
        edge(&v10, &lm, 0.1216),
        edge(&v11, &lm, 0.0507),
        edge(&q13, &v10, 0.010),
        edge(&q13, &v11, 0.004),
        edge(&q9, &v10, -0.002),
        edge(&q5, &q13, 0.003),
        edge(&v3, &q9, 0.006),
        edge(&v3, &v11, 0.001),
        edge(&mlp, &v10, 0.005),
    ];
    GraphView {
        nodes: vec![lm, v10, v11, q13, q9, q5, v3, mlp, lonely],
        edges,
    }
}

#[test]
fn merge_gqa_groups_by_hand() {
    let (merged, log) = merge_gqa_groups(&sample(), 16, 2).unwrap();
    // strengths (Σ|outgoing|): 79-10 .1216, 79-11 .0507, 63-13 .014, 63-9 .002, 62-5 .003, 62-3 .007
    let want_log = "L79-G1: MERGE H[10,11] (attn_v, A-->A-) total_strength=0.1723\n\
                    L63-G1: MERGE H[9,13] (attn_q, A-->V) total_strength=0.0160\n\
                    L62-G0: CONFLICT - pick H3 (attn_v, A-->QV) strength=0.0070\n\
                    \x20   discard H5 (attn_q, A-->V) strength=0.0030\n";
    assert_eq!(log, want_log);
    let ids: Vec<&str> = merged.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "80-None-lm_head",
            "79-1-attn_v",
            "63-1-attn_q",
            "62-0-attn_v",
            "62-16-mlp"
        ]
    );
    assert_eq!(merged.nodes[1].heads, Some(vec![10, 11]));
    assert_eq!(merged.nodes[2].heads, Some(vec![9, 13]));
    assert_eq!(merged.nodes[3].heads, Some(vec![3]));
    assert_eq!(merged.nodes[3].pattern.as_deref(), Some("A-->QV"));
    assert_eq!(merged.nodes[4].heads, None);
    assert_eq!(merged.nodes[1].title(), "79-[10,11] attn_v\nA-->A-");
    assert_eq!(merged.nodes[4].title(), "62-mlp");
    assert_eq!(merged.nodes[0].title(), "lm_head");
    let want = [
        ("79-1-attn_v", "80-None-lm_head", 0.1723f32),
        ("63-1-attn_q", "79-1-attn_v", 0.012), // 0.010 + 0.004 − 0.002
        ("62-0-attn_v", "63-1-attn_q", 0.006),
        ("62-0-attn_v", "79-1-attn_v", 0.001),
        ("62-16-mlp", "79-1-attn_v", 0.005),
    ];
    assert_eq!(merged.edges.len(), want.len());
    for (e, (f, t, s)) in merged.edges.iter().zip(want) {
        assert_eq!((e.from.as_str(), e.to.as_str()), (f, t));
        assert!((e.score - s).abs() < 1e-6, "{e:?}");
    }
    // bad inputs
    assert!(merge_gqa_groups(&sample(), 16, 3).is_err());
    assert!(
        merge_gqa_groups(&sample(), 8, 2)
            .unwrap_err()
            .to_string()
            .contains("head")
    );
    let mut bad = sample();
    bad.edges.push(ViewEdge {
        from: "nope".into(),
        to: "80-None-lm_head".into(),
        score: 1.0,
    });
    assert!(merge_gqa_groups(&bad, 16, 2).is_err());
}

fn nodes_and_edges(layers: &[(usize, &str)], edges: &[(&str, &str)]) -> GraphView {
    GraphView {
        nodes: layers
            .iter()
            .map(|(l, id)| ViewNode {
                id: id.to_string(),
                layer: *l,
                head: Some(0),
                heads: None,
                node_type: "attn_v".into(),
                pattern: None,
            })
            .collect(),
        edges: edges
            .iter()
            .map(|(f, t)| ViewEdge {
                from: f.to_string(),
                to: t.to_string(),
                score: 1.0,
            })
            .collect(),
    }
}

#[test]
fn barycentre_removes_an_adjacent_crossing() {
    // layer 0: a b; layer 1: c d; edges a→d, b→c cross once.
    let g = nodes_and_edges(
        &[(0, "a"), (0, "b"), (1, "c"), (1, "d")],
        &[("a", "d"), ("b", "c")],
    );
    let l = minimize_crossings(&g, 20).unwrap();
    assert_eq!(
        (l.crossings_before, l.crossings_after, l.iterations),
        (Some(1), Some(0), 1)
    );
    // down sweep: a ↦ x(d) = 1, b ↦ x(c) = 0 → b a. Placement: layer 0 centred on (0+1)/2 → b 0, a 1.
    let want: BTreeMap<String, f64> = [("a", 1.0), ("b", 0.0), ("c", 0.0), ("d", 1.0)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(l.x, want);
}

#[test]
fn crossings_of_long_edges_count() {
    // layers 0: a b, 1: m (no edges), 2: c d; a→d and b→c both span layer 1 and cross there.
    // Counting only adjacent sorted layers (the seed) sees 0 crossings.
    let g = nodes_and_edges(
        &[(0, "a"), (0, "b"), (1, "m"), (2, "c"), (2, "d")],
        &[("a", "d"), ("b", "c")],
    );
    let initial: BTreeMap<String, f64> =
        [("a", 0.0), ("b", 1.0), ("m", 0.0), ("c", 0.0), ("d", 1.0)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
    assert_eq!(count_crossings(&g, &initial), 1);
    let l = minimize_crossings(&g, 20).unwrap();
    // Dummies dA (a→d) and dB (b→c) sit in layer 1 after m: m dA dB. Initially the segments
    // dA→d (1→1) and dB→c (2→0) cross. Down sweep: layer 1 keys m 0, dA x(d) = 1, dB x(c) = 0
    // → m dB dA; layer 0 keys a 2, b 1 → b a. Up sweep keeps it; 0 crossings.
    assert_eq!(
        (l.crossings_before, l.crossings_after, l.iterations),
        (Some(1), Some(0), 1)
    );
    // Placement: layer 0 centred on (1 + 2)/2 → b 1, a 2. Layer 1: m keeps 0, dB (b 1, c 0) → 0.5,
    // dA (a 2, d 1) → 1.5, centre 2/3 → m −1/3, dB 2/3, dA 5/3. Layer 2: c → 2/3, d → 5/3.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(l.x["b"], 1.0) && close(l.x["a"], 2.0));
    assert!(close(l.x["m"], -1.0 / 3.0));
    assert!(close(l.x["c"], 2.0 / 3.0) && close(l.x["d"], 5.0 / 3.0));
    assert_eq!(l.routes.len(), 2);
    assert_eq!(l.routes[&0].len(), 1);
    assert_eq!(l.routes[&0][0].0, 1);
    assert!(close(l.routes[&0][0].1, 5.0 / 3.0) && close(l.routes[&1][0].1, 2.0 / 3.0));
    // Edges sharing an endpoint never cross: a→c, a→d.
    let g = nodes_and_edges(&[(0, "a"), (2, "c"), (2, "d")], &[("a", "d"), ("a", "c")]);
    assert_eq!(
        minimize_crossings(&g, 20).unwrap().crossings_before,
        Some(0)
    );
}

#[test]
fn unavoidable_crossing_stops_without_change() {
    // K2,2: one crossing in every order. The sweep does not improve → keep the initial order.
    let g = nodes_and_edges(
        &[(0, "a"), (0, "b"), (1, "c"), (1, "d")],
        &[("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")],
    );
    let l = minimize_crossings(&g, 20).unwrap();
    assert_eq!(
        (l.crossings_before, l.crossings_after, l.iterations),
        (Some(1), Some(1), 0)
    );
    assert_eq!(
        (l.ranks["a"], l.ranks["b"], l.ranks["c"], l.ranks["d"]),
        (0, 1, 0, 1)
    );
}

#[test]
fn layout_never_worse_than_the_initial_order() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..200 {
        let n_layers = rng.random_range(2..6);
        let mut nodes = Vec::new();
        for l in 0..n_layers {
            for k in 0..rng.random_range(1..5) {
                nodes.push((l, format!("{l}-{k}")));
            }
        }
        let mut edges = Vec::new();
        for _ in 0..rng.random_range(1..14) {
            let a = &nodes[rng.random_range(0..nodes.len())];
            let b = &nodes[rng.random_range(0..nodes.len())];
            if a.0 < b.0 {
                edges.push((a.1.clone(), b.1.clone()));
            }
        }
        let layers: Vec<(usize, &str)> = nodes.iter().map(|(l, s)| (*l, s.as_str())).collect();
        let e: Vec<(&str, &str)> = edges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let g = nodes_and_edges(&layers, &e);
        let l = minimize_crossings(&g, 20).unwrap();
        assert!(l.crossings_after <= l.crossings_before);
        // one route point per intermediate layer present in the graph
        for (i, (a, b)) in edges.iter().enumerate() {
            let (la, lb) = (
                a.split('-').next().unwrap().parse::<usize>().unwrap(),
                b.split('-').next().unwrap().parse::<usize>().unwrap(),
            );
            assert_eq!(l.routes[&i].len(), lb - la - 1);
        }
    }
}

#[test]
fn gqa_layout_positions() {
    let (merged, _) = merge_gqa_groups(&sample(), 16, 2).unwrap();
    let cfg = GqaConfig {
        num_attention_heads: 16,
        num_key_value_heads: 2,
    };
    let l = gqa_layout(&merged, &cfg).unwrap();
    // hpg 8, width 10: virtual group g at 10g + 4; MLP at 2·10 + 5; lm_head at 2·10/2.
    assert_eq!(l.x["79-1-attn_v"], 14.0);
    assert_eq!(l.x["62-0-attn_v"], 4.0);
    assert_eq!(l.x["62-16-mlp"], 25.0);
    assert_eq!(l.x["80-None-lm_head"], 10.0);
    let real = gqa_layout(&sample(), &cfg).unwrap();
    assert_eq!(real.x["63-13-attn_q"], 15.0); // group 1, position 5
}

#[test]
fn html_is_self_contained_and_complete() {
    let (merged, _) = merge_gqa_groups(&sample(), 16, 2).unwrap();
    for reduce in [true, false] {
        let opts = HtmlOptions {
            reduce_crossings: reduce,
            gqa: Some(GqaConfig {
                num_attention_heads: 16,
                num_key_value_heads: 2,
            }),
            ..Default::default()
        };
        let html = render_html(&merged, &opts).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script src") && !html.contains("<link"));
        for n in &merged.nodes {
            assert!(html.contains(&format!(r#"data-id="{}""#, n.id)), "{}", n.id);
        }
        for e in &merged.edges {
            assert!(
                html.contains(&format!(
                    r#"data-from="{}" data-to="{}" data-score="{}""#,
                    e.from, e.to, e.score
                )),
                "{e:?}"
            );
        }
        assert_eq!(
            html.matches(r#"<g class="node""#).count(),
            merged.nodes.len()
        );
        assert_eq!(
            html.matches(r#"<path class="edge""#).count(),
            merged.edges.len()
        );
        // colours by type, including mlp (defect 10)
        assert!(html.contains(r##"fill="#16a085""##) && html.contains(r##"fill="#e74c3c""##));
        assert!(html.contains("79-[10,11] attn_v&#10;A--&gt;A-"));
    }
    // the unmerged graph drops its edge-less node
    let html = render_html(&sample(), &HtmlOptions::default()).unwrap();
    assert!(!html.contains("70-2-attn_k"));
    assert!(html.contains(r##"fill="#9b59b6""##));
    // GQA layout without a config is an error
    assert!(
        render_html(
            &sample(),
            &HtmlOptions {
                reduce_crossings: false,
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn every_type_has_a_colour() {
    use minarc::vis::graph::type_color;
    for t in [
        "attn_v", "attn_q", "attn_k", "attn_a", "attn_qns", "mlp", "mlp_i", "mlp_g", "lm_head",
    ] {
        assert_ne!(type_color(t), "#95a5a6", "{t}");
    }
    assert_eq!(type_color("something"), "#95a5a6");
}

#[test]
fn dot_and_json_exports() {
    let (merged, _) = merge_gqa_groups(&sample(), 16, 2).unwrap();
    let l = minimize_crossings(&merged, 20).unwrap();
    let dot = render_dot(&merged, Some(&l)).unwrap();
    assert!(dot.starts_with("digraph minarc {"));
    for n in &merged.nodes {
        assert!(
            dot.contains(&format!("    \"{}\" [label=", n.id)),
            "{}",
            n.id
        );
    }
    for e in &merged.edges {
        assert!(
            dot.contains(&format!("  \"{}\" -> \"{}\" [", e.from, e.to)),
            "{e:?}"
        );
    }
    assert_eq!(dot.matches(" -> ").count(), merged.edges.len());
    assert!(dot.contains("subgraph layer_62 { rank=same;"));
    let json = to_json(&merged).unwrap();
    assert_eq!(from_json(&json).unwrap(), merged);
    assert!(from_json("{\"nodes\": 3}").is_err());
    let mut dup = merged.clone();
    dup.nodes.push(dup.nodes[0].clone());
    assert!(to_json(&dup).is_err());
}

#[test]
fn graph_command_renders_json() {
    use minarc::vis::cli::{GraphArgs, run};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("g.json");
    std::fs::write(&input, to_json(&sample()).unwrap()).unwrap();
    let args = GraphArgs {
        json: input.clone(),
        html: dir.path().join("g.html"),
        dot: Some(dir.path().join("g.dot")),
        out_json: Some(dir.path().join("m.json")),
        heads: Some(16),
        kv_heads: Some(2),
        merge_gqa: true,
        gqa_layout: false,
        node_size: 6.0,
        title: "t".into(),
    };
    run(&args).unwrap();
    let merged = from_json(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(merged, merge_gqa_groups(&sample(), 16, 2).unwrap().0);
    assert!(
        std::fs::read_to_string(dir.path().join("g.html"))
            .unwrap()
            .contains(r#"data-id="79-1-attn_v""#)
    );
    assert!(
        std::fs::read_to_string(dir.path().join("g.dot"))
            .unwrap()
            .contains("\"79-1-attn_v\" -> \"80-None-lm_head\"")
    );
    let no_cfg = GraphArgs {
        heads: None,
        kv_heads: None,
        ..args
    };
    assert!(run(&no_cfg).is_err());
}
