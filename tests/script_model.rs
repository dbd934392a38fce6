//! Model bindings from scripts, on a tiny random Qwen2 written to a temp dir: memoised
//! loading, forward into the cache (skipping cached samples), accessors checked against
//! identities of the residual stream.

use minarc::script::{Host, Output, SharedBuf};
use std::path::Path;
use std::process::Command;

/// The tiny fixture model (2 layers, 4 heads / 2 KV heads, hidden 64) written to `dir`.
fn write_tiny_model(dir: &Path) {
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 3, dir, 1).unwrap();
}

fn host() -> (Host, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

fn prelude(dir: &Path) -> String {
    format!(
        "let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..2\", n_train: 2, Q_train: 2, tokenizer: tokenizer(model)}});\n\
         let rs = forward(model, \"w1\", ds);\n\
         let r = rs[0];\n",
        dir.display()
    )
}

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
fn readme_workflow_example_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Scripting").unwrap()..];
    let example = section
        .split("```rhai\n")
        .find(|b| b.contains("init_model"))
        .and_then(|b| b.split("\n```").next())
        .expect("README workflow example");
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
