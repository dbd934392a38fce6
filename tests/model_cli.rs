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

/// `minarc plan` on a fixture folder agrees with what exists: its weight bytes with the
/// safetensors on disk (f32), its capture bytes with a real forward's capture of that length.
#[test]
fn plan_matches_the_checkpoint_and_a_real_capture() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("small");
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Small, 1, &dir, 1).unwrap();
    let o = minarc(&[
        "plan",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        "37",
        "--dtype",
        "f32",
        "--logits",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // weights: the data bytes of every tensor in the checkpoint
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let on_disk: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
    assert_eq!(p["weights"].as_u64().unwrap() as usize, on_disk);
    // capture: a forward of 37 tokens with full capture and logits
    let m = minarc::model::Qwen2::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let ids: Vec<u32> = (0..37).map(|k| (k * 7 % 50) as u32).collect();
    let spec = minarc::model::CaptureSpec {
        logits: true,
        ..minarc::model::CaptureSpec::full()
    };
    let out = m.forward_capture(&ids, &spec).unwrap();
    assert_eq!(p["capture"].as_u64().unwrap() as usize, out.bytes());
    // and the text form names the placement
    let o = minarc(&[
        "plan",
        "--model",
        "qwen2.5-72b-gptq-int4",
        "--devices",
        "cuda:0=80GiB",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("cuda:0") && text.contains("layers 0-79"),
        "{text}"
    );
    for (args, says) in [
        (vec!["plan", "--model", "nope"], "built-in shape"),
        (
            vec!["plan", "--model", "qwen2.5-7b", "--devices", "cuda:0"],
            "NAME=SIZE",
        ),
        (
            vec!["plan", "--model", "qwen2.5-7b", "--tokens", "999999"],
            "max_position_embeddings",
        ),
        (
            vec!["plan", "--model", "qwen2.5-7b", "--host-memory", "12XB"],
            "unknown unit",
        ),
    ] {
        let o = minarc(&args);
        assert!(!o.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(says) && !e.contains("panicked"), "{args:?}: {e}");
    }
}
