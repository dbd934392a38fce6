//! The attribution tree (levels, labels, pptree printing), map-reduce and export.

mod attr_support;

use std::collections::BTreeMap;

use attr_support::*;
use candle_core::{Device, Tensor};
use minarc::attribution::export::{
    load_safetensors, save_graph_json, save_safetensors, save_tensors_json,
};
use minarc::attribution::tree::TreeNode;
use minarc::attribution::{
    AttrData, AttrTree, Graph, MrOptions, NodeType, SampleRef, TreeOptions, add_edges,
    add_tree_node, attribute_step, mr,
};
use minarc::backend::{Backend, SampleKey};

fn data(nodes: usize) -> AttrData {
    AttrData {
        nodes: Vec::with_capacity(nodes),
        attr: Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
        attn_weights_ds: BTreeMap::new(),
        attn_attrs_ds: BTreeMap::new(),
        top_heads: vec![],
        groups: vec![],
        metrics: BTreeMap::new(),
    }
}

fn tnode(tree: &mut AttrTree, label: &str, parent: Option<usize>) -> usize {
    let i = tree.nodes.len();
    tree.nodes.push(TreeNode {
        label: label.into(),
        data: data(0),
        parent,
        children: vec![],
    });
    if let Some(p) = parent {
        tree.nodes[p].children.push(i);
    }
    i
}

/// The spec's example (A24), drawn by pptree.
#[test]
fn tree_prints_like_pptree() {
    let mut t = AttrTree::default();
    let a = tnode(&mut t, "L80", None);
    let b = tnode(&mut t, "L79,78,76,74 A-->A- x5", Some(a));
    let c = tnode(&mut t, "L78,74 A-->A- x3", Some(b));
    tnode(&mut t, "L64,63,62 V->A- x4", Some(c));
    let want = " L80┐\n    └L79,78,76,74 A-->A- x5┐\n                           └L78,74 A-->A- x3┐\n                                            └L64,63,62 V->A- x4\n";
    assert_eq!(t.render(a), want);
    // two children: the smaller goes up (┌), the larger down (└), the parent gets ┤
    let mut t = AttrTree::default();
    let r = tnode(&mut t, "R", None);
    let x = tnode(&mut t, "X", Some(r));
    tnode(&mut t, "Y", Some(r));
    tnode(&mut t, "Z", Some(x));
    assert_eq!(t.render(r), "  ┌Y\n R┤\n  └X┐\n    └Z\n");
}

#[test]
fn tree_levels_on_a_model() {
    let cfg = tiny_cfg();
    let local = local_with_samples(&cfg, 5, 12, &[6, 10], 2);
    let samples: Vec<SampleRef> = (0..2)
        .map(|i| SampleRef::new(SampleKey::new(DATASET, i), None))
        .collect();
    let mut g = Graph::new(local.config(), 2);
    let lm = g.lm_head_id();
    g.add_node(lm, Some("A-->A-")).unwrap();
    let mut tree = AttrTree::default();
    let opts = TreeOptions {
        top_k: 3,
        ..Default::default()
    };
    let root = add_tree_node(&mut tree, &mut g, &local, &samples, &[lm], None, &opts).unwrap();
    let d = &tree.nodes[root].data;
    assert_eq!(tree.nodes[root].label, "L2");
    assert_eq!(d.attr.dims(), &[2, 5, 1]);
    // mean over samples of attribute_step
    let mut g2 = Graph::new(local.config(), 2);
    g2.add_node(lm, None).unwrap();
    let a0 = attribute_step(&mut g2, &local, &samples[0], &[lm]).unwrap();
    let a1 = attribute_step(&mut g2, &local, &samples[1], &[lm]).unwrap();
    let mean = ((a0 + a1).unwrap() / 2.0).unwrap();
    let diff = (&mean - &d.attr)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6);
    assert!(!d.top_heads.is_empty() && d.top_heads.len() <= 3);
    assert_eq!(d.attn_attrs_ds.len(), d.top_heads.len());
    // next level: the top heads as attn_v nodes with positive edges
    let mut nodes = vec![];
    for &((l, h), _) in &d.top_heads {
        let id = g.node(l, Some(h), NodeType::AttnV, Some("A-->A-")).unwrap();
        if add_edges(&mut g, id, &[lm], &d.attr).unwrap() > 0 {
            nodes.push(id);
        }
    }
    if !nodes.is_empty() {
        let c = add_tree_node(
            &mut tree,
            &mut g,
            &local,
            &samples,
            &nodes,
            Some(root),
            &opts,
        )
        .unwrap();
        assert!(tree.nodes[c].label.contains("A-->A- x"));
        assert!(tree.render(root).contains('└'));
    }
}

#[test]
fn mr_means_and_names_failing_samples() {
    let samples: Vec<SampleRef> = (0..3)
        .map(|i| SampleRef::new(SampleKey::new("d", i), None))
        .collect();
    let m: f64 = mr(&samples, &MrOptions::default(), |r| Ok(r.index() as f64)).unwrap();
    assert_eq!(m, 1.0);
    let t: Tensor = mr(&samples, &MrOptions::default(), |r| {
        Ok(Tensor::new(&[r.index() as f32, 2.0], &Device::Cpu)?)
    })
    .unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    let err = mr(&samples, &MrOptions::default(), |r| {
        if r.index() == 2 {
            anyhow::bail!("boom")
        } else {
            Ok(1.0f64)
        }
    })
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("sample 2 of dataset \"d\""),
        "{err:#}"
    );
    let stop = || true;
    let opts = MrOptions {
        interrupt: Some(&stop),
        ..Default::default()
    };
    assert!(mr(&samples, &opts, |_| Ok(1.0f64)).is_err());
    assert!(mr(&[], &MrOptions::default(), |_| Ok(1.0f64)).is_err());
}

#[test]
fn export_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::new(&[[1.0f32, -2.0], [3.5, 0.25]], &Device::Cpu).unwrap();
    let p = dir.path().join("attr.safetensors");
    save_safetensors(&[("attr", &t)], &p).unwrap();
    let back = load_safetensors(&p).unwrap();
    assert_eq!(
        back["attr"].to_vec2::<f32>().unwrap(),
        t.to_vec2::<f32>().unwrap()
    );
    let j = dir.path().join("attr.json");
    save_tensors_json(&[("attr", &t)], &j).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(v["attr"]["shape"], serde_json::json!([2, 2]));
    assert_eq!(v["attr"]["data"][1], -2.0);
    let cfg = tiny_cfg();
    let mut g = Graph::new(&cfg, 1);
    let lm = g.lm_head_id();
    g.add_node(lm, None).unwrap();
    let q = g.node(1, Some(1), NodeType::AttnQ, Some("A-->V")).unwrap();
    g.add_edge(q, lm, 0.75).unwrap();
    let gp = dir.path().join("graph.json");
    save_graph_json(&g, &gp).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gp).unwrap()).unwrap();
    assert_eq!(
        v["nodes"][1],
        serde_json::json!({"layer": 1, "head": 1, "type": "attn_q", "attn_pattern": "A-->V", "span": null, "src_span": null})
    );
    assert_eq!(v["edges"][0]["upstream"]["type"], "attn_q");
    assert_eq!(v["edges"][0]["score"], 0.75);
    assert!(save_safetensors(&[("x", &t)], &dir.path().join("no/such/dir/x.st")).is_err());
    // request structs travel as JSON
    let req = minarc::attribution::NodeGradRequest::new(
        NodeType::AttnV,
        1,
        Some(0),
        vec![3],
        vec![1, 2],
        Some(Tensor::ones((1, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap()),
    );
    let s = serde_json::to_string(&req).unwrap();
    let back: minarc::attribution::NodeGradRequest = serde_json::from_str(&s).unwrap();
    assert_eq!(back.src_pos_ids, vec![1, 2]);
    assert_eq!(back.output_grad.unwrap().dims(), &[1, 1, 2]);
}
