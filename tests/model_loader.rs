//! Checkpoint loading: config validation and weight-file errors name the file and tensor;
//! sharded and single-file checkpoints load identically.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use minarc::model::Qwen2;
use minarc::model::fixture::Preset;

fn load_err(dir: &Path) -> String {
    match Qwen2::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("load unexpectedly succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let d = fixture(Preset::Tiny, 0, 1);
    rewrite_weights(d.path(), |t| {
        t.remove("model.layers.1.self_attn.k_proj.bias");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor \"model.layers.1.self_attn.k_proj.bias\""),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_untied_lm_head_is_an_error() {
    let d = fixture(Preset::Tiny, 0, 1);
    rewrite_weights(d.path(), |t| {
        t.remove("lm_head.weight");
    });
    assert!(load_err(d.path()).contains("lm_head.weight"));
}

#[test]
fn wrong_shape_names_tensor_file_and_shapes() {
    let d = fixture(Preset::Tiny, 0, 1);
    rewrite_weights(d.path(), |t| {
        t.insert(
            "model.layers.0.mlp.up_proj.weight".into(),
            Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight")
            && e.contains("[64, 64]")
            && e.contains("[128, 64]"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn non_float_tensor_is_an_error() {
    let d = fixture(Preset::Tiny, 0, 1);
    rewrite_weights(d.path(), |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.norm.weight") && e.contains("non-float"),
        "{e}"
    );
}

#[test]
fn truncated_file_names_the_file() {
    let d = fixture(Preset::Tiny, 0, 1);
    let path = d.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // a header cut short as well
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(20)
        .unwrap();
    assert!(load_err(d.path()).contains("model.safetensors"));
}

#[test]
fn missing_weights_and_config_files() {
    let d = fixture(Preset::Tiny, 0, 1);
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert!(
        load_err(d.path()).contains("neither model.safetensors nor model.safetensors.index.json")
    );
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert!(load_err(d.path()).contains("config.json"));
}

#[test]
fn unsupported_config_values_are_explained() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("hidden_act", "gelu".into(), "hidden_act"),
        (
            "num_attention_heads",
            5.into(),
            "not divisible by num_attention_heads",
        ),
        (
            "num_key_value_heads",
            3.into(),
            "not divisible by num_key_value_heads",
        ),
        ("use_sliding_window", true.into(), "use_sliding_window"),
        ("torch_dtype", "int8".into(), "torch_dtype"),
        ("model_type", "gemma".into(), "model_type"),
        ("hidden_size", "big".into(), "malformed"),
    ];
    for (key, value, want) in cases {
        let d = fixture(Preset::Tiny, 0, 1);
        edit_config(d.path(), key, value);
        let e = load_err(d.path());
        assert!(e.contains(want) && e.contains("config.json"), "{key}: {e}");
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let single = fixture(Preset::Tiny, 3, 1);
    let sharded = fixture(Preset::Tiny, 3, 3);
    for i in 1..=3 {
        assert!(
            sharded
                .path()
                .join(format!("model-0000{i}-of-00003.safetensors"))
                .exists()
        );
    }
    assert!(!sharded.path().join("model.safetensors").exists());
    let a = load(single.path());
    let b = load(sharded.path());
    let ids = token_ids(a.config(), 11, 1);
    assert_eq!(
        max_diff(
            &a.forward_logits(&ids).unwrap(),
            &b.forward_logits(&ids).unwrap()
        ),
        0.0
    );
    // a different seed really gives different weights
    let c = load(fixture(Preset::Tiny, 4, 1).path());
    assert!(
        max_diff(
            &a.forward_logits(&ids).unwrap(),
            &c.forward_logits(&ids).unwrap()
        ) > 1e-2
    );
    // a shard listed in the index but absent on disk
    std::fs::remove_file(sharded.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(sharded.path());
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
}

#[test]
fn bf16_checkpoint_loads_in_f32() {
    let d = fixture(Preset::Tiny, 0, 1);
    edit_config(d.path(), "torch_dtype", "bfloat16".into());
    let f32_model = load(d.path());
    rewrite_weights(d.path(), |t| {
        for v in t.values_mut() {
            *v = v.to_dtype(DType::BF16).unwrap();
        }
    });
    let m = load(d.path());
    assert_eq!(m.weights().embed.dtype(), DType::F32);
    let ids = token_ids(m.config(), 8, 2);
    let a = m.forward_logits(&ids).unwrap();
    let b = f32_model.forward_logits(&ids).unwrap();
    let rel = max_diff(&a, &b) / max_abs(&b);
    assert!(rel > 0.0 && rel < 0.05, "{rel}");
}
