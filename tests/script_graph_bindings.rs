//! Attribution, lens and vis bindings beyond one step, on the tiny fixture: residual attribution
//! alone, the embedding's share (heads + MLPs + embedding = Σ grad·x of lm_head), attention-weight
//! attribution against the model's own attention weights, user spans, IG settings, capture
//! options, tensor files, graph views, and clear errors for bad input.

use minarc::script::{Host, Output, SharedBuf};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("minarc-graph-bindings")
            .tempdir()
            .unwrap()
            .keep();
        minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 2, &dir, 1)
            .unwrap();
        dir
    })
}

fn host() -> (Host, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

fn prelude() -> String {
    format!(
        "let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..2\", n_train: 2, Q_train: 2, tokenizer: tokenizer(model)}});\n\
         let rs = forward(model, \"w\", ds);\n\
         let r = rs[0];\n\
         let g = Graph(model, rs.len());\n\
         let lm = Node(g, model.n_layers, (), \"lm_head\", \"A-->A-\");\n",
        model_dir().display()
    )
}

fn eval_f64(h: &mut Host, body: &str) -> f64 {
    let src = format!("{}{body}", prelude());
    let v = h
        .eval_source("t.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{e}"));
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap()
}

fn eval_err(h: &mut Host, body: &str) -> String {
    let src = format!("{}{body}", prelude());
    match h.eval_source("t.rhai", &src, false) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn heads_mlps_and_embedding_sum_to_lm_heads_grad_times_input() {
    let (mut h, _) = host();
    // Plain gradient, then Gauss-Legendre: both must satisfy the identity (the residual at L is
    // the embedding plus every head and MLP output; the frozen-variance norm is linear).
    for rule in [
        "set_ig_rule(g, \"seed\", 0);",
        "set_ig_rule(g, \"gauss\", 6);",
    ] {
        let rel = eval_f64(
            &mut h,
            &format!(
                "{rule}\nlet a = attribute_step(g, model, r, [lm]);\n\
                 let e = embed_attribution(g, model, r, [lm]);\n\
                 let c = completeness(g, lm, r);\n\
                 ((a.sum() + e[0]) - c.sum_grad_x).abs() / c.sum_grad_x.abs()"
            ),
        );
        assert!(rel < 1e-4, "{rule}: relative mismatch {rel}");
    }
}

#[test]
fn attribute_residual_alone_matches_the_step_and_splits_by_layer() {
    let (mut h, _) = host();
    let d = eval_f64(
        &mut h,
        "let a = attribute_step(g, model, r, [lm]);\n\
         let b = attribute_residual(g, model, r, [lm]);\n\
         let lo = attribute_residual(g, model, r, [lm], #{from_layer: 0, to_layer: 1});\n\
         let hi = attribute_residual(g, model, r, [lm], #{from_layer: 1, to_layer: 2});\n\
         (a - b).abs().max() + (cat([lo, hi], 0) - a).abs().max()",
    );
    assert!(d < 1e-6, "{d}");
    let e = eval_err(&mut h, "attribute_residual(g, model, rs[1], [lm])");
    assert!(e.contains("attribute_step"), "{e}");
}

#[test]
fn attention_weight_attribution_uses_the_models_attention() {
    let (mut h, _) = host();
    let d = eval_f64(
        &mut h,
        "attribute_step(g, model, r, [lm]);\n\
         let x = attribute_attn_weights(g, model, r, 1, 2, [lm]);\n\
         let w = get_attn_weights(model, r, 1, 2, pos_ids(g, lm, r));\n\
         (x.aw - w).abs().max() + (x.aw.sum(2) - 1.0).abs().max() + (if x.grad_aw.shape == x.aw.shape { 0.0 } else { 1.0 })",
    );
    assert!(d < 1e-5, "{d}");
}

#[test]
fn user_spans_give_attn_v_its_source_positions() {
    let (mut h, buf) = host();
    let _ = eval_f64(
        &mut h,
        "define_span(g, \"K\", rs, |r| [3, 5]);\n\
         let a = mr(rs, |r| attribute_step(g, model, r, [lm]));\n\
         let v = Node(g, 1, 0, \"attn_v\", \"A-->K\");\n\
         g.edges.len();\n\
         add_edges(g, v, [lm], a.abs() + 1.0);\n\
         attribute_step(g, model, r, [v]);\n\
         print(src_pos_ids(g, v, r));\n\
         print(pos_ids(g, v, r) == pos_ids(g, lm, r));\n\
         print(user_spans(g));\n\
         print(undefine_span(g, \"K\"));\n\
         0",
    );
    assert_eq!(buf.contents(), "[3, 5]\ntrue\n[\"K\"]\ntrue\n");
    let e = eval_err(&mut h, "define_span(g, \"K\", r, [1, 100000])");
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn ig_settings_are_applied_and_adaptive_reaches_its_tolerance() {
    let (mut h, buf) = host();
    let _ = eval_f64(
        &mut h,
        "set_ig_rule(g, \"midpoint\", 3);\n\
         set_sink(g, \"zero\");\n\
         print(graph_settings(g));\n\
         attribute_step(g, model, r, [lm]);\n\
         let c = completeness(g, lm, r);\n\
         print([c.rule, c.resolution]);\n\
         let d = (c.sum_grad_x - (c.f_x - c.f_baseline)).abs() / (c.f_x - c.f_baseline).abs();\n\
         print((d - c.delta).abs() < 1e-9);\n\
         set_ig_rule(g, \"default\");\n\
         set_adaptive(g, 0.001, 64);\n\
         attribute_step(g, model, rs[1], [lm]);\n\
         let c = completeness(g, lm, rs[1]);\n\
         print(c.delta <= 0.001 || c.resolution == 64);\n\
         set_adaptive(g, false);\n\
         print(graph_settings(g).adaptive_tol == ());\n\
         0",
    );
    let out = buf.contents();
    assert!(
        out.contains("ig_n: 3") || out.contains("\"ig_n\": 3"),
        "{out}"
    );
    assert!(out.contains("midpoint") && out.contains("zero"), "{out}");
    assert!(
        out.contains("[\"midpoint\", 3]\ntrue\ntrue\ntrue\n"),
        "{out}"
    );
    for (body, needle) in [
        ("set_ig_rule(g, \"simpson\", 4)", "unknown IG rule"),
        ("set_ig_rule(g, \"gauss\", 0)", "n >= 1"),
        ("set_adaptive(g, -1.0, 8)", "tol"),
        ("set_sink(g, \"drop\")", "unknown sink mode"),
    ] {
        let e = eval_err(&mut h, body);
        assert!(e.contains(needle), "{body}: {e}");
    }
}

#[test]
fn capture_options_store_only_what_was_asked() {
    let (mut h, _) = host();
    let d = eval_f64(
        &mut h,
        "let cs = forward(model, \"cap\", ds, #{positions: \"A-\", layers: [0, 2], logits: true});\n\
         let p = cs[0].positions(\"A-\");\n\
         let a = get_hidden_states(model, cs[0], 0, p);\n\
         let b = get_hidden_states(model, r, 0, p);\n\
         let la = get_logits(model, cs[0], p);\n\
         let lb = get_logits(model, r, p);\n\
         (a - b).abs().max() + (la - lb).abs().max()",
    );
    assert!(d < 1e-5, "{d}");
    let e = eval_err(
        &mut h,
        "let cs = forward(model, \"cap2\", ds, #{layers: [0]});\nget_hidden_states(model, cs[0], 1)",
    );
    assert!(e.contains("get_hidden_states"), "{e}");
    let e = eval_err(&mut h, "forward(model, \"x\", ds, #{colour: 1})");
    assert!(e.contains("unknown option"), "{e}");
    let e = eval_err(&mut h, "forward(model, \"x\", ds, #{dtype: \"f64\"})");
    assert!(e.contains("dtype"), "{e}");
}

#[test]
fn a_batched_forward_caches_what_one_at_a_time_does() {
    let (mut h, _) = host();
    // ds has 2 samples of different lengths: one batch of 2, right-padded
    let d = eval_f64(
        &mut h,
        "let ds4 = gen_dataset(#{seeds: \"0..4\", n_train: 2, Q_train: 2, tokenizer: tokenizer(model)});\n\
         let one = forward(model, \"one\", ds4);\n\
         let bat = forward(model, \"bat\", ds4, #{batch: 3, positions: \"A-\", logits: true});\n\
         let m = 0.0;\n\
         for k in 0..4 {\n\
           let p = bat[k].positions(\"A-\");\n\
           for l in [0, 1, model.n_layers] {\n\
             m = max(m, (get_hidden_states(model, bat[k], l, p) - get_hidden_states(model, one[k], l, p)).abs().max());\n\
           }\n\
           m = max(m, (get_logits(model, bat[k], p) - get_logits(model, one[k], p)).abs().max());\n\
         }\n\
         m",
    );
    assert!(d < 1e-5, "{d}");
    // a sample listed twice is forwarded once, as before batching
    let n = eval_f64(
        &mut h,
        "let twice = forward(model, \"twice\", [ds[0], ds[1], ds[0]], #{batch: 4});\n\
         twice.filter(|c| c.fresh).len()",
    );
    assert_eq!(n, 2.0);
    for bad in ["0", "-1", "100000"] {
        let e = eval_err(
            &mut h,
            &format!("forward(model, \"x\", ds, #{{batch: {bad}}})"),
        );
        assert!(e.contains("batch"), "{bad}: {e}");
    }
}

#[test]
fn weights_dtype_loads_a_separate_model_that_tracks_f32() {
    let (mut h, _) = host();
    let d = eval_f64(
        &mut h,
        &format!(
            "let mw = load_model(\"{0}\", #{{weights_dtype: \"bf16\"}});\n\
             let same = load_model(\"{0}\", #{{weights_dtype: \"f32\"}});\n\
             if loaded_models().len() != 2 {{ throw `${{loaded_models().len()}} models` }}\n\
             let rw = forward(mw, \"w16\", ds);\n\
             let a = get_hidden_states(mw, rw[0], model.n_layers);\n\
             let b = get_hidden_states(model, r, model.n_layers);\n\
             (a - b).abs().max() / b.abs().max()",
            model_dir().display()
        ),
    );
    assert!(d > 0.0 && d < 0.05, "{d}");
    let e = eval_err(
        &mut h,
        &format!(
            "load_model(\"{}\", #{{weights_dtype: \"int3\"}})",
            model_dir().display()
        ),
    );
    assert!(e.contains("int3"), "{e}");
}

#[test]
fn load_model_options_are_memoised_per_dtype() {
    let (mut h, _) = host();
    let n = eval_f64(
        &mut h,
        &format!(
            "let m2 = load_model(\"{0}\", #{{dtype: \"bf16\"}});\n\
             let m3 = load_model(\"{0}\", #{{dtype: \"bf16\", device: \"cpu\"}});\n\
             loaded_models().len()",
            model_dir().display()
        ),
    );
    assert_eq!(n, 2.0);
    let e = eval_err(&mut h, "load_model(\"/nonexistent\", #{device: \"tpu\"})");
    assert!(e.contains("load_model"), "{e}");
}

#[test]
fn tensors_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = host();
    let p = dir.path().join("a.safetensors");
    let q = dir.path().join("sub/b.safetensors");
    let d = eval_f64(
        &mut h,
        &format!(
            "let t = from_array([[1.5, -2.0], [3.0, 4.25]]);\n\
             save_tensor(t, \"{0}\");\n\
             save_tensors(#{{x: t, y: t * 2.0}}, \"{1}\");\n\
             let m = load_tensors(\"{1}\");\n\
             (load_tensor(\"{0}\") - t).abs().max() + (load_tensor(\"{1}\", \"y\") - m.x * 2.0).abs().max()",
            p.display(),
            q.display()
        ),
    );
    assert_eq!(d, 0.0);
    let e = eval_err(&mut h, &format!("load_tensor(\"{}\")", q.display()));
    assert!(e.contains("2 tensors"), "{e}");
    let e = eval_err(&mut h, &format!("load_tensor(\"{}\", \"z\")", q.display()));
    assert!(e.contains("no tensor"), "{e}");
}

#[test]
fn graph_views_export_html_dot_json_and_merge_by_gqa_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, buf) = host();
    let _ = eval_f64(
        &mut h,
        &format!(
            "let a = attribute_step(g, model, r, [lm]);\n\
             let ones = a.abs() + 1.0;\n\
             for hd in 0..model.n_heads {{ add_edges(g, Node(g, 1, hd, \"attn_v\", \"A-->A-\"), [lm], ones); }}\n\
             visualize_graph(g, \"{0}/g.html\");\n\
             visualize_graph(g, \"{0}/g.dot\");\n\
             visualize_graph(g, \"{0}/g.json\");\n\
             let v = merge_gqa_groups(g, model);\n\
             print([graph_view(g).n_nodes, v.n_nodes, v.n_edges]);\n\
             print(v.log);\n\
             visualize_graph(v, \"{0}/m.html\", #{{title: \"merged\", gqa_layout: [4, 2]}});\n\
             0",
            dir.path().display()
        ),
    );
    let out = buf.contents();
    // 4 attn_v heads of layer 1 in 2 KV groups + lm_head: 5 nodes, merged into 2 + 1.
    assert!(out.starts_with("[5, 3, 2]\n"), "{out}");
    assert_eq!(out.matches("MERGE").count(), 2, "{out}");
    let html = std::fs::read_to_string(dir.path().join("g.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
    let dot = std::fs::read_to_string(dir.path().join("g.dot")).unwrap();
    assert!(
        dot.starts_with("digraph") && dot.matches(" -> ").count() == 4,
        "{dot}"
    );
    let json = minarc::vis::graph::read_json(&dir.path().join("g.json")).unwrap();
    assert_eq!((json.nodes.len(), json.edges.len()), (5, 4));
    assert!(dir.path().join("m.html").exists());
    let e = eval_err(&mut h, "visualize_graph(g, \"x.pdf\")");
    assert!(e.contains("unknown graph file type"), "{e}");
}

#[test]
fn save_graph_json_renders_with_minarc_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = host();
    let json = dir.path().join("g.json");
    let _ = eval_f64(
        &mut h,
        &format!(
            "let a = attribute_step(g, model, r, [lm]);\n\
             add_edges(g, Node(g, 1, 0, \"attn_v\", \"A-->A-\"), [lm], a.abs() + 1.0);\n\
             save_graph(g, \"{}\");\n0",
            json.display()
        ),
    );
    let v = minarc::vis::graph::read_json(&json).unwrap();
    assert_eq!(v.edges.len(), 1);
    assert_eq!(v.edges[0].from, "1-0-attn_v");
    assert_eq!(v.edges[0].to, "2-None-lm_head");
}

#[test]
fn lens_bindings_agree_with_the_models_own_output() {
    let (mut h, _) = host();
    // The last layer's mlp column of the logit lens is the model itself (V4), and eval_nodes of
    // ["lm_head"] is the same accuracy (V7); summing the embedding, every head and every MLP
    // reconstructs the residual, so its accuracy matches too.
    let d = eval_f64(
        &mut h,
        "let lens = eval_logit_lens(model, r);\n\
         let own = eval_nodes(model, r, [\"lm_head\"]);\n\
         let parts = [\"embed\"];\n\
         for l in 0..model.n_layers { for hd in 0..=model.n_heads { parts.push([l, hd]); } }\n\
         let all = eval_nodes(model, r, parts);\n\
         let acc = lens.acc[model.n_layers - 1][2];\n\
         (acc - own).abs() + (all - own).abs() + (lens.acc[1][0] - lens.acc[0][2]).abs()",
    );
    assert!(d < 1e-9, "{d}");
    let e = eval_err(&mut h, "eval_head_lens(model, r, 5, 0)");
    assert!(e.contains("layer"), "{e}");
    let e = eval_err(
        &mut h,
        "get_head_matching_scores(model, r, [\"A-->V\"], 0, 9)",
    );
    assert!(e.contains("head"), "{e}");
}
