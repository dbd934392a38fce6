//! Parity with Hugging Face transformers on the tiny fixture (seed 0). The golden file is made by
//! `scripts/reference/hf_goldens.py` (see its docstring); this test FAILS when it is absent.
//! Targets (f32): max |Δ| ≤ 1e-4 on logits, ≤ 1e-5 on hidden states, attention rows and
//! per-head outputs.

mod common;

use candle_core::IndexOp;
use common::*;
use minarc::model::fixture::Preset;
use minarc::model::{AttnInputs, CaptureSpec, Norm};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_s0.json");

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_hugging_face_transformers_goldens() {
    let text = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| {
        panic!(
            "golden file {GOLDEN} is missing ({e}); generate it with \
             scripts/reference/hf_goldens.py (see the script's docstring) and commit it"
        )
    });
    let g: Value = serde_json::from_str(&text).expect("golden JSON");
    let dir = fixture(Preset::Tiny, 0, 1);
    let m = load(dir.path());

    // the fixture is the one the goldens were made from
    let raw = candle_core::safetensors::load(
        dir.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (name, sum) in g["weight_sums"].as_object().expect("weight_sums") {
        let mine: f64 = vals(&raw[name]).iter().map(|&x| x as f64).sum();
        let want = sum.as_f64().unwrap();
        assert!(
            (mine - want).abs() <= 1e-6 * want.abs().max(1.0) + 1e-3,
            "fixture changed: Σ {name} = {mine}, golden {want} (regenerate the golden)"
        );
    }

    let ids: Vec<u32> = g["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let spec = CaptureSpec {
        logits: true,
        ..CaptureSpec::full()
    };
    let out = m.forward_capture(&ids, &spec).unwrap();

    let mut worst_logits = 0f32;
    for e in g["logits"].as_array().unwrap() {
        let p = e["pos"].as_u64().unwrap() as usize;
        let mine = vals(&out.logits(Some(&[p])).unwrap());
        worst_logits = worst_logits.max(max_abs_diff(&mine, &floats(&e["values"])));
    }
    let mut worst_hidden = 0f32;
    for e in g["hidden_states"].as_array().unwrap() {
        let (l, p) = (
            e["layer"].as_u64().unwrap() as usize,
            e["pos"].as_u64().unwrap() as usize,
        );
        let mine = vals(&out.hidden_state(l, Some(&[p])).unwrap());
        worst_hidden = worst_hidden.max(max_abs_diff(&mine, &floats(&e["values"])));
    }
    let s = ids.len();
    let all_pos: Vec<usize> = (0..s).collect();
    let mut worst_attn = 0f32;
    let mut weights = Vec::new();
    for l in 0..m.config().num_hidden_layers {
        let xn = m
            .rms_norm(Norm::Input(l), &out.hidden_state(l, None).unwrap(), None)
            .unwrap();
        weights.push(
            m.attention_weights(l, &AttnInputs::new(&xn, &xn, &xn, &all_pos))
                .unwrap(),
        );
    }
    for e in g["attentions"].as_array().unwrap() {
        let (l, h, p) = (
            e["layer"].as_u64().unwrap() as usize,
            e["head"].as_u64().unwrap() as usize,
            e["pos"].as_u64().unwrap() as usize,
        );
        let mine = vals(&weights[l].i((0, h, p)).unwrap());
        worst_attn = worst_attn.max(max_abs_diff(&mine, &floats(&e["values"])));
    }
    let mut worst_heads = 0f32;
    for e in g["head_outputs"].as_array().unwrap() {
        let (l, h, p) = (
            e["layer"].as_u64().unwrap() as usize,
            e["head"].as_u64().unwrap() as usize,
            e["pos"].as_u64().unwrap() as usize,
        );
        let a = out.attn_out(l, Some(&[p])).unwrap();
        let mine = vals(&m.head_outputs(l, &a, Some(&[h])).unwrap());
        worst_heads = worst_heads.max(max_abs_diff(&mine, &floats(&e["values"])));
    }
    println!(
        "HF parity max |Δ|: logits {worst_logits:.3e}, hidden {worst_hidden:.3e}, \
         attention {worst_attn:.3e}, head outputs {worst_heads:.3e}"
    );
    assert!(worst_logits <= 1e-4, "logits differ by {worst_logits}");
    assert!(
        worst_hidden <= 1e-5,
        "hidden states differ by {worst_hidden}"
    );
    assert!(worst_attn <= 1e-5, "attention rows differ by {worst_attn}");
    assert!(worst_heads <= 1e-5, "head outputs differ by {worst_heads}");
}
