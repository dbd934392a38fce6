//! Shared test helpers: a tiny random Qwen2 built in memory, a cached sample, finite differences.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
#[allow(unused_imports)] // not every test binary reads it
pub use common::{full_circuit, vals};
use minarc::backend::Local;
use minarc::model::{CaptureSpec, LayerWeights, ModelConfig, Qwen2, SampleInput, Weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const DATASET: &str = "t";

pub fn config(layers: usize, e: usize, n: usize, kvh: usize, m: usize, v: usize) -> ModelConfig {
    config_max_pos(layers, e, n, kvh, m, v, 128)
}

pub fn config_max_pos(
    layers: usize,
    e: usize,
    n: usize,
    kvh: usize,
    m: usize,
    v: usize,
    max_pos: usize,
) -> ModelConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": v, "hidden_size": e, "intermediate_size": m,
        "num_hidden_layers": layers, "num_attention_heads": n, "num_key_value_heads": kvh,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": max_pos,
        "model_type": "qwen2"
    }))
    .unwrap()
}

pub struct Rand(ChaCha8Rng);
impl Rand {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
    pub fn normal(&mut self) -> f32 {
        let u1: f64 = self.0.random::<f64>().max(1e-12);
        let u2: f64 = self.0.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }
    pub fn tensor(&mut self, shape: &[usize], mean: f32, std: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(self.vec(n, mean, std), shape, &Device::Cpu).unwrap()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        self.0.random_range(0..n)
    }
}

/// Random weights in our `[in,out]` layout: linear N(0, 1/fan_in), embeddings N(0,1),
/// biases N(0, 0.1²), norms 1 + N(0, 0.1²).
pub fn random_model(cfg: &ModelConfig, seed: u64) -> Qwen2 {
    let mut r = Rand::new(seed);
    let (e, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let nd = cfg.num_attention_heads * cfg.head_dim();
    let kvd = cfg.num_kv_heads() * cfg.head_dim();
    let inv = |n: usize| 1.0 / (n as f32).sqrt();
    let layers = (0..cfg.num_hidden_layers)
        .map(|_| LayerWeights {
            input_norm: r.tensor(&[e], 1.0, 0.1),
            wq_t: r.tensor(&[e, nd], 0.0, inv(e)),
            bq: r.tensor(&[nd], 0.0, 0.1),
            wk_t: r.tensor(&[e, kvd], 0.0, inv(e)),
            bk: r.tensor(&[kvd], 0.0, 0.1),
            wv_t: r.tensor(&[e, kvd], 0.0, inv(e)),
            bv: r.tensor(&[kvd], 0.0, 0.1),
            wo_t: r.tensor(&[nd, e], 0.0, inv(nd)),
            post_norm: r.tensor(&[e], 1.0, 0.1),
            w_gate_t: r.tensor(&[e, m], 0.0, inv(e)),
            w_up_t: r.tensor(&[e, m], 0.0, inv(e)),
            w_down_t: r.tensor(&[m, e], 0.0, inv(m)),
        })
        .collect();
    let w = Weights::new(
        r.tensor(&[v, e], 0.0, 1.0),
        layers,
        r.tensor(&[e], 1.0, 0.1),
        r.tensor(&[e, v], 0.0, inv(e)),
    );
    Qwen2::from_weights(cfg.clone(), w, DType::F32, &Device::Cpu).unwrap()
}

/// The tiny test model: 2 layers, hidden 16, 4 heads / 2 KV heads, vocab 40.
pub fn tiny_cfg() -> ModelConfig {
    config(2, 16, 4, 2, 32, 40)
}

/// A Local backend with one (or more) cached samples of `s` random tokens; answers at
/// `answer_indices`, labels = the tokens there, candidates = the labels plus a few others.
pub fn local_with_samples(
    cfg: &ModelConfig,
    seed: u64,
    s: usize,
    answers: &[usize],
    n: usize,
) -> Local {
    let model = random_model(cfg, seed);
    let tok = minarc::tokenizer::fixture_tokenizer().unwrap();
    let local = Local::new(model, tok);
    let mut r = Rand::new(seed + 1000);
    for index in 0..n {
        let ids: Vec<u32> = (0..s).map(|_| r.below(cfg.vocab_size as u32)).collect();
        let labels: Vec<u32> = answers.iter().map(|&a| ids[a]).collect();
        let mut cands = labels.clone();
        for c in [1u32, 3, 5, 7] {
            if !cands.contains(&c) {
                cands.push(c);
            }
        }
        let input = SampleInput {
            index,
            prompt: String::new(),
            labels,
            candidate_ids: cands,
            answer_indices: answers.to_vec(),
            objective: Default::default(),
        };
        local
            .forward_ids(DATASET, &input, &ids, &CaptureSpec::full(), true)
            .unwrap();
    }
    local
}

/// Central finite differences of a scalar function of x (all entries), step h, in f64.
pub fn fd_grad(x: &Tensor, h: f64, f: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let base = vals(x);
    let shape = x.dims().to_vec();
    (0..base.len())
        .map(|i| {
            let mut p = base.clone();
            p[i] += h as f32;
            let fp = f(&Tensor::from_vec(p.clone(), shape.as_slice(), &Device::Cpu).unwrap());
            p[i] = base[i] - h as f32;
            let fm = f(&Tensor::from_vec(p, shape.as_slice(), &Device::Cpu).unwrap());
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// max |a − b| and max |b|.
pub fn max_diff(a: &[f32], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max);
    (d, b.iter().map(|y| y.abs()).fold(0.0, f64::max))
}
