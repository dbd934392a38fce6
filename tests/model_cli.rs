//! The model subcommands through the binary: init-model and bench forward.

use std::process::Command;

fn minarc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(args)
        .output()
        .expect("run minarc")
}

#[test]
fn init_model_writes_a_loadable_folder_and_bench_runs_on_it() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tiny");
    let o = minarc(&[
        "init-model",
        "--preset",
        "tiny",
        "--seed",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--shards",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(cfg["model_type"], "qwen2");
    assert_eq!(cfg["num_key_value_heads"], 2);
    let o = minarc(&[
        "bench",
        "forward",
        "--model",
        out.to_str().unwrap(),
        "--tokens",
        "16",
        "--reps",
        "1",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("capture / plain ratio") && text.contains("GFLOP/s"),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let o = minarc(&[
        "init-model",
        "--preset",
        "huge",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown preset \"huge\""));
    let o = minarc(&[
        "bench", "forward", "--preset", "tiny", "--device", "cuda", "--tokens", "4",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    if !cfg!(feature = "cuda") {
        assert!(err.contains("`cuda` cargo feature"), "{err}");
    }
    let o = minarc(&["bench", "forward", "--preset", "tiny", "--dtype", "f64"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsupported dtype"));
}
