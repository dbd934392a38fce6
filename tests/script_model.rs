//! Model bindings from scripts, on a tiny random Qwen2 written to a temp dir: memoised
//! loading, forward into the cache (skipping cached samples), accessors checked against
//! identities of the residual stream.

use minarc::script::Host;
use std::path::Path;
use std::process::Command;

#[path = "common/mod.rs"]
mod common;

/// The tiny fixture model (2 layers, 4 heads / 2 KV heads, hidden 64) written to `dir`.
fn write_tiny_model(dir: &Path) {
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 3, dir, 1).unwrap();
}

use common::{script_host as host, script_prelude as prelude};

fn max_abs_diff(h: &mut Host, a: &str, b: &str, prelude: &str) -> f64 {
    let src = format!("{prelude}\n(({a}) - ({b})).abs().max()");
    h.eval_source("diff.rhai", &src, false)
        .unwrap()
        .as_float()
        .unwrap()
}

#[test]
fn load_model_is_memoised_and_forward_skips_cached_samples() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, buf) = host();
    let src = format!(
        "{}print(rs.map(|r| r.fresh));\n\
         let again = forward(load_model(\"{}/.\"), \"w1\", ds);\n\
         print(again.map(|r| r.fresh));\n\
         print(datasets(model));\n\
         print([model.n_layers, model.n_heads, model.config.hidden_size]);\n",
        prelude(dir.path()),
        dir.path().display()
    );
    let _ = h.eval_source("m.rhai", &src, false).unwrap();
    assert_eq!(
        buf.contents(),
        "[true, true]\n[false, false]\n#{\"w1\": [0, 1]}\n[2, 4, 64]\n"
    );
    assert_eq!(h.state().load_count(), 1);
}

#[test]
fn accessors_reconstruct_the_residual_stream() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, _) = host();
    let pre = prelude(dir.path());
    // Shapes.
    let shapes = h
        .eval_source(
            "s.rhai",
            &format!(
                "{pre}[get_hidden_states(model, r, 0).shape, get_hidden_states(model, r, 1, [3, 5]).shape,\n\
                 get_head_output(model, r, 1, ()).shape, get_attn_weights(model, r, 0, 2, [7]).shape,\n\
                 r.sample.n_tokens]"
            ),
            false,
        )
        .unwrap();
    let shapes = h.display_value(&shapes);
    let s_len: usize = shapes
        .rsplit(", ")
        .next()
        .unwrap()
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert_eq!(
        shapes,
        format!("[[1, {s_len}, 64], [1, 2, 64], [1, {s_len}, 4, 64], [1, 1, {s_len}], {s_len}]")
    );
    // hidden_states[1] = hidden_states[0] + attn_output[0] + mlp_output[0].
    let d = max_abs_diff(
        &mut h,
        "get_hidden_states(model, r, 1)",
        "get_hidden_states(model, r, 0) + get_attn_output(model, r, 0) + get_mlp_output(model, r, 0)",
        &pre,
    );
    assert!(d < 1e-4, "residual reconstruction off by {d}");
    // The per-head outputs sum to the attention output (o_proj has no bias).
    let d = max_abs_diff(
        &mut h,
        "get_head_output(model, r, 1, ()).sum(2)",
        "get_attn_output(model, r, 1)",
        &pre,
    );
    assert!(d < 1e-4, "head sum off by {d}");
    // Head H is the MLP pseudo-head; a list of heads is their sum.
    let d = max_abs_diff(
        &mut h,
        "get_head_output(model, r, 1, 4)",
        "get_mlp_output(model, r, 1)",
        &pre,
    );
    assert!(d < 1e-6, "MLP pseudo-head off by {d}");
    let d = max_abs_diff(
        &mut h,
        "get_head_output(model, r, 0, [0, 2])",
        "get_head_output(model, r, 0, 0) + get_head_output(model, r, 0, 2)",
        &pre,
    );
    assert!(d < 1e-5, "head list sum off by {d}");
    // pos_ids select rows of the full tensors; attention rows are distributions.
    let d = max_abs_diff(
        &mut h,
        "get_mlp_output(model, r, 1, [2, 4])",
        "get_mlp_output(model, r, 1).take(1, [2, 4])",
        &pre,
    );
    assert!(d < 1e-6, "pos_ids selection off by {d}");
    let d = max_abs_diff(
        &mut h,
        "get_attn_weights(model, r, 1, 3, [9, 10]).sum(-1)",
        "ones([1, 2])",
        &pre,
    );
    assert!(d < 1e-5, "attention rows do not sum to 1: {d}");
}

#[test]
fn model_functions_check_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, _) = host();
    let pre = prelude(dir.path());
    let cases = [
        ("get_hidden_states(model, r, 99)", "layer 99 out of range"),
        ("get_hidden_states(model, r, -1)", "layer must be >= 0"),
        (
            "get_mlp_output(model, r, 0, [100000])",
            "position 100000 out of range",
        ),
        ("get_head_output(model, r, 0, 17)", "head 17 out of range"),
        (
            "get_attn_weights(model, r, 0, \"x\")",
            "head must be an int",
        ),
        ("forward(model, \"w2\", [1])", "expected a Sample"),
        (
            "load_model(\"/no/such/model\")",
            "cannot resolve model path",
        ),
    ];
    for (src, want) in cases {
        match h.eval_source("e.rhai", &format!("{pre}{src}"), false) {
            Err(e) => assert!(e.message.contains(want), "{src}: {}", e.message),
            Ok(v) => panic!("{src} should fail, got {v:?}"),
        }
    }
}

#[test]
fn init_model_writes_the_fixture_once_and_loads_it_once() {
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("init.rhai");
    std::fs::write(
        &script,
        "let a = init_model(\"tiny\", 5);\n\
         let b = init_model(\"tiny\", 5);\n\
         print(loaded_models().len());\n\
         print(a.n_layers);\n\
         init_model(\"huge\");\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", script.to_str().unwrap()])
        .env("MINARC_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5:1: init_model(): unknown preset \"huge\""),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1));
    let dir = home.path().join("models").join("tiny-s5");
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
}

#[test]
fn scripting_guide_workflow_example_runs() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/scripting.md"
    ))
    .unwrap();
    let section = &guide[guide.find("# Scripting").unwrap()..];
    let block = |needle: &str| {
        section
            .split("```rhai\n")
            .skip(1) // the prose before the first block
            .find(|b| b.contains(needle))
            .and_then(|b| b.split("\n```").next())
            .unwrap_or_else(|| panic!("docs/src/scripting.md example with {needle}"))
            .to_string()
    };
    // The attribution example continues the workflow example (model, ds, rs).
    let example = format!(
        "{}\n{}\nprint(g);\n",
        block("init_model"),
        block("attribute_step")
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("w.rhai"), example).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", "w.rhai"])
        .current_dir(work.path())
        .env("MINARC_HOME", work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("[1, 8, 64]\nCLUSTERING SUMMARY:"),
        "{stdout}"
    );
    assert!(work.path().join("clusters.png").is_file());
}

#[test]
fn attribution_bindings_match_the_rust_api() {
    use minarc::attribution::{Graph, NodeType, SampleRef, attribute_step, get_top_heads};
    use minarc::backend::{Backend, Local, SampleKey};
    use minarc::model::{CaptureSpec, SampleInput};
    use minarc::puzzle::{PromptOptions, PuzzleParams};

    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, _) = host();
    let src = format!(
        "let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..2\", tokenizer: tokenizer(model)}});\n\
         let rs = forward(model, \"w1\", ds);\n\
         let g = Graph(model, 2);\n\
         let lm = Node(g, model.n_layers, (), \"lm_head\", \"A-->A-\");\n\
         let a0 = attribute_step(g, model, rs[0], [lm]);\n\
         let mean = mr(rs, |r| attribute_step(g, model, r, [lm]));\n\
         let top = get_top_heads(mean, 3, model.n_heads);\n\
         let up = Node(g, top[0][0], top[0][1], \"attn_v\");\n\
         let added = add_edges(g, up, [lm], mean);\n\
         let attrs = get_attn_attrs_on_dataset(g, model, rs, 1, 2, [lm]);\n\
         let aw = stack(rs.map(|r| get_attn_weights(model, r, 1, 2, r.positions(\"A-\")).select(0, 0)), 0);\n\
         #{{a0: a0.to_array(), mean: mean.to_array(), top: top, added: added,\n\
            n_edges: g.edges.len(), lm_type: lm.type, lm_head: lm.head, circuit: forward(g, rs[0], model),\n\
            aw_diff: (attrs.aw - aw).abs().max(), aa_rows: attrs.aa.sum(-1).to_array(), aw_shape: attrs.aw.shape}}",
        dir.path().display()
    );
    let v = h.eval_source("attr.rhai", &src, false).unwrap();
    let m = v.read_lock::<rhai::Map>().unwrap();

    // The same computation through the Rust API.
    let local = Local::load(
        dir.path(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tok = minarc::tokenizer::load_tokenizer(dir.path()).unwrap();
    let samples = minarc::puzzle::cli::generate(
        &PuzzleParams::default(),
        &PromptOptions::default(),
        0..2,
        Some(&tok),
    )
    .unwrap();
    let mut g = Graph::new(local.config(), 2);
    let lm = g.node(2, None, NodeType::LmHead, Some("A-->A-")).unwrap();
    let mut per_sample = Vec::new();
    for s in &samples {
        let input = SampleInput {
            index: s.index,
            prompt: s.prompt.clone(),
            labels: s.labels.clone(),
            candidate_ids: s.candidate_ids.clone(),
            answer_indices: s.answer_indices.clone(),
            objective: Default::default(),
        };
        local
            .forward_sample("w1", &input, &CaptureSpec::full(), false)
            .unwrap();
        let r = SampleRef::new(
            SampleKey::new("w1", s.index),
            Some(std::sync::Arc::new(s.clone())),
        );
        per_sample.push(attribute_step(&mut g, &local, &r, &[lm]).unwrap());
    }
    let flat = |d: &rhai::Dynamic| -> Vec<f64> {
        fn walk(d: &rhai::Dynamic, out: &mut Vec<f64>) {
            match d.as_float() {
                Ok(x) => out.push(x),
                Err(_) => d
                    .clone()
                    .into_array()
                    .unwrap()
                    .iter()
                    .for_each(|x| walk(x, out)),
            }
        }
        let mut out = Vec::new();
        walk(d, &mut out);
        out
    };
    let rust0: Vec<f32> = per_sample[0].flatten_all().unwrap().to_vec1().unwrap();
    let rust1: Vec<f32> = per_sample[1].flatten_all().unwrap().to_vec1().unwrap();
    let (a0, mean) = (flat(&m["a0"]), flat(&m["mean"]));
    assert_eq!(per_sample[0].dims(), &[2, 5, 1]);
    assert_eq!(a0.len(), rust0.len());
    let d0 = a0
        .iter()
        .zip(&rust0)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(d0 < 1e-6, "attribute_step differs by {d0}");
    // mr is the elementwise mean over samples.
    let dm = mean
        .iter()
        .zip(rust0.iter().zip(&rust1))
        .map(|(m, (a, b))| (m - (*a as f64 + *b as f64) / 2.0).abs())
        .fold(0.0, f64::max);
    assert!(dm < 1e-6, "mr mean differs by {dm}");
    let mean_t = ((&per_sample[0] + &per_sample[1]).unwrap() / 2.0).unwrap();
    let want_top = get_top_heads(&mean_t, 3, 4, false).unwrap();
    let got_top = m["top"].clone().into_array().unwrap();
    assert_eq!(got_top.len(), want_top.len());
    for (g_row, ((l, hd), s)) in got_top.iter().zip(&want_top) {
        let row = g_row.clone().into_array().unwrap();
        assert_eq!(
            (
                row[0].as_int().unwrap() as usize,
                row[1].as_int().unwrap() as usize
            ),
            (*l, *hd)
        );
        assert!((row[2].as_float().unwrap() - *s as f64).abs() < 1e-6);
    }
    // One edge iff the top head's mean score toward lm_head is positive.
    let (l, hd) = want_top[0].0;
    let score = mean_t
        .get(l)
        .unwrap()
        .get(hd)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let want_added = i64::from(score > 0.0);
    assert_eq!(m["added"].as_int().unwrap(), want_added);
    assert_eq!(m["n_edges"].as_int().unwrap(), want_added);
    // A22's weights are the head's attention rows at lm_head's positions (A-); aa rows sum to 1.
    assert!(
        m["aw_diff"].as_float().unwrap() < 1e-6,
        "aw differs by {}",
        m["aw_diff"]
    );
    assert_eq!(
        h.display_value(&m["aw_shape"])
            .split(", ")
            .take(2)
            .collect::<Vec<_>>(),
        ["[2", "8"]
    );
    for row in flat(&m["aa_rows"]) {
        assert!((row - 1.0).abs() < 1e-5, "aa row sums to {row}");
    }
    // Circuit evaluation through the Rust API on the same graph.
    let up = g.node(l, Some(hd), NodeType::AttnV, None).unwrap();
    minarc::attribution::add_edges(&mut g, up, &[lm], &mean_t).unwrap();
    let r0 = SampleRef::new(
        SampleKey::new("w1", 0),
        Some(std::sync::Arc::new(samples[0].clone())),
    );
    let circuit = minarc::attribution::forward(&mut g, &local, &r0, None).unwrap();
    let got = m["circuit"].as_float().unwrap();
    assert!(
        (got - circuit as f64).abs() < 1e-6,
        "circuit {got} vs {circuit}"
    );
    assert!(got.is_finite() && got <= 0.0, "a mean log-prob, got {got}");
    assert_eq!(m["lm_type"].clone().into_string().unwrap(), "lm_head");
    assert!(m["lm_head"].is_unit());
}

#[test]
fn attribution_functions_check_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, _) = host();
    let pre = format!("{}let g = Graph(model, 2);\n", prelude(dir.path()));
    let cases = [
        ("Node(g, 1, 0, \"attn_z\")", "unknown node type"),
        ("Node(g, 1, 9, \"attn_v\")", "head 9 out of range"),
        ("Node(g, 1, (), \"attn_v\")", "needs a head"),
        ("Node(g, 1, 0, \"attn_v\", \"nonsense\")", "DST->SRC"),
        ("attribute_step(g, model, r, [1])", "expected a Node"),
        ("attribute_step(g, model, r, [])", "at least one node"),
        ("Graph(model, 0)", "dataset_size must be positive"),
        ("get_top_heads(zeros([2, 3, 1]), 2, 4)", "H+1"),
    ];
    for (src, want) in cases {
        let e = h
            .eval_source("e.rhai", &format!("{pre}{src}"), false)
            .unwrap_err();
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
}

#[test]
fn a_remote_model_answers_like_the_local_one() {
    use minarc::remote::{RunningServer, ServeOptions};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let local = minarc::backend::Local::load(
        dir.path(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let server = RunningServer::start(
        local,
        ServeOptions {
            port: 0,
            ..ServeOptions::default()
        },
    )
    .unwrap();
    let (mut h, _) = host();
    let src = format!(
        "let remote = connect(\"{}\");\n\
         let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..1\", tokenizer: tokenizer(model)}});\n\
         let a = forward(remote, \"w1\", ds)[0];\n\
         let b = forward(model, \"w1\", ds)[0];\n\
         let pos = a.positions(\"A-\");\n\
         [(get_hidden_states(remote, a, 2, pos) - get_hidden_states(model, b, 2, pos)).abs().max(),\n\
          (get_attn_weights(remote, a, 1, 2, pos) - get_attn_weights(model, b, 1, 2, pos)).abs().max(),\n\
          connect(\"{}/\").n_layers]",
        server.url(),
        dir.path().display(),
        server.url()
    );
    let v = h
        .eval_source("remote.rhai", &src, false)
        .unwrap()
        .into_array()
        .unwrap();
    assert!(
        v[0].as_float().unwrap() < 1e-5,
        "hidden states differ by {}",
        v[0]
    );
    assert!(
        v[1].as_float().unwrap() < 1e-5,
        "attention weights differ by {}",
        v[1]
    );
    assert_eq!(v[2].as_int().unwrap(), 2);
    let e = h
        .eval_source("bad.rhai", "connect(\"https://example.invalid\")", false)
        .unwrap_err();
    assert!(e.message.contains("http://"), "{}", e.message);
    server.shutdown().unwrap();
}

#[test]
fn attribution_tree_levels_hold_the_mean_attribution_and_top_heads() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path());
    let (mut h, _) = host();
    let src = format!(
        "{}let rs = forward(model, \"w1\", ds);\n\
         let tree = AttrTree();\n\
         let g = Graph(model, 2);\n\
         let lm = Node(g, model.n_layers, (), \"lm_head\", \"A-->A-\");\n\
         let root = add_tnode(tree, g, model, rs, [lm]);\n\
         let g2 = Graph(model, 2);\n\
         let lm2 = Node(g2, model.n_layers, (), \"lm_head\", \"A-->A-\");\n\
         let attr = mr(rs, |r| attribute_step(g2, model, r, [lm2]));\n\
         let top = tree_top_heads(tree, root);\n\
         let v = Node(g, top[0][0], top[0][1], \"attn_v\", \"A-->A-\");\n\
         add_edges(g, v, [lm], tree_attr(tree, root));\n\
         let child = add_tnode(tree, g, model, rs, [v], root, #{{top_k: 2, attn_data: false}});\n\
         #{{diff: (tree_attr(tree, root) - attr).abs().max(), top: top, want: get_top_heads(attr, 30, model.n_heads),\n\
            keys: tree_attn_attrs(tree, root).map(|x| [x[0], x[1]]), child: child,\n\
            child_top: tree_top_heads(tree, child).len(), child_aa: tree_attn_attrs(tree, child).len(),\n\
            drawn: print_tree(tree)}}",
        prelude(dir.path())
    );
    let v = h.eval_source("tree.rhai", &src, false).unwrap();
    let m = v.read_lock::<rhai::Map>().unwrap();
    assert!(
        m["diff"].as_float().unwrap() < 1e-6,
        "tree attr differs by {}",
        m["diff"]
    );
    assert_eq!(h.display_value(&m["top"]), h.display_value(&m["want"]));
    let top_keys: Vec<String> = m["top"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r = r.clone().into_array().unwrap();
            format!("[{}, {}]", r[0], r[1])
        })
        .collect();
    let mut keys: Vec<String> = m["keys"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|k| h.display_value(k))
        .collect();
    let mut want_keys = top_keys.clone();
    keys.sort();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    assert_eq!(m["child"].as_int().unwrap(), 1);
    assert!(m["child_top"].as_int().unwrap() <= 2);
    assert_eq!(m["child_aa"].as_int().unwrap(), 0);
    let drawn = m["drawn"].clone().into_string().unwrap();
    assert!(
        drawn.contains("L2") && drawn.contains("A-->A- x1"),
        "{drawn}"
    );
    let e = h
        .eval_source("bad.rhai", "let t = AttrTree(); tree_attr(t, 0)", false)
        .unwrap_err();
    assert!(
        e.message.contains("tree node 0 does not exist"),
        "{}",
        e.message
    );
}

#[test]
fn readme_example_runs() {
    let (_, dir) = common::run_markdown_example("README.md");
    let html = std::fs::read_to_string(dir.path().join("graph.html")).unwrap();
    assert!(
        html.contains("<html") && !html.contains("http://"),
        "not a self-contained page"
    );
}
