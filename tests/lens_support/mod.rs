//! Shared helpers of the lens tests: the `tiny` fixture model (written once per test binary),
//! puzzle samples forwarded into a local backend, and the final norm + lm_head computed by hand
//! from the checkpoint.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::model::{CaptureSpec, SampleInput};
use minarc::puzzle::{PromptOptions, PuzzleParams, Sample, gen_puzzle};

#[path = "../common/mod.rs"]
mod common;

#[allow(unused_imports)] // not every test binary reads them
pub use common::{TINY_H as H, TINY_L as L};
/// Dataset name of the cached samples.
pub const DATASET: &str = "lens";

/// The fixture model folder (written once per test binary).
pub fn model_dir() -> &'static Path {
    common::tiny_model_dir()
}

/// A fresh local backend on the fixture model.
pub fn local() -> Local {
    Local::load(model_dir(), DType::F32, &Device::Cpu).unwrap()
}

/// A puzzle sample (Q_train 4, answers over the last 2 of `n_train` examples), tokenized with
/// the backend's tokenizer.
pub fn puzzle_sample(b: &dyn Backend, index: usize, seed: u64, n_train: usize) -> Sample {
    let params = PuzzleParams {
        n_train,
        seed,
        ..Default::default()
    };
    Sample::build(
        index,
        gen_puzzle(&params).unwrap(),
        &PromptOptions::default(),
        Some(b.tokenizer()),
    )
    .unwrap()
}

/// Forwards `sample` (full capture) under (DATASET, sample.index) and returns its key.
pub fn cache(b: &dyn Backend, sample: &Sample) -> SampleKey {
    let input = SampleInput {
        index: sample.index,
        prompt: sample.prompt.clone(),
        labels: sample.labels.clone(),
        candidate_ids: sample.candidate_ids.clone(),
        answer_indices: sample.answer_indices.clone(),
        objective: Default::default(),
    };
    let n = b
        .forward_sample(DATASET, &input, &CaptureSpec::full(), true)
        .unwrap();
    assert_eq!(Some(n), sample.n_tokens);
    SampleKey::new(DATASET, sample.index)
}

/// The checkpoint's final norm weight `[e]` and lm_head weight `[v,e]`.
pub fn head_weights() -> (Tensor, Tensor) {
    let w = candle_core::safetensors::load(model_dir().join("model.safetensors"), &Device::Cpu)
        .unwrap();
    (
        w["model.norm.weight"].to_dtype(DType::F32).unwrap(),
        w["lm_head.weight"].to_dtype(DType::F32).unwrap(),
    )
}

/// By hand: `(w ⊙ x / sqrt(mean(x²) + eps)) · W_lmᵀ` for x `[1,k,e]` → `[1,k,v]`.
pub fn hand_lens(x: &Tensor) -> Tensor {
    let (norm_w, lm_w) = head_weights();
    let eps = 1e-6;
    let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let y = x
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&norm_w)
        .unwrap();
    y.squeeze(0)
        .unwrap()
        .matmul(&lm_w.t().unwrap())
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Per-row argmax of `[1,k,v]`.
pub fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.squeeze(0)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

#[allow(unused_imports)] // not every test binary reads it
pub use common::max_abs_diff;
