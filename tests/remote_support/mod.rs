//! Shared helpers of the remote tests: a tiny random Qwen2 model folder written once per test
//! binary, a local backend on it, and a server on an ephemeral loopback port.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use minarc::model::{Backend, CaptureSpec, Local, SampleInput};
use minarc::remote::{RunningServer, ServeOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Hidden size e, layers L, heads H, kv heads, MLP size of the fixture model.
pub const E: usize = 32;
pub const L: usize = 2;
pub const H: usize = 4;
pub const KVH: usize = 2;
pub const M: usize = 48;

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Writes config.json, model.safetensors (HF names and layouts) and the fixture tokenizer.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    minarc::tokenizer::write_fixture_tokenizer(dir)?;
    let v = minarc::tokenizer::fixture_vocab_size();
    let d = E / H;
    let kv = KVH * d;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": v, "hidden_size": E, "intermediate_size": M,
        "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KVH,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": false, "torch_dtype": "float32", "hidden_act": "silu",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".into(),
        rand_tensor(&mut rng, &[v, E], 1.0, 0.0),
    );
    for l in 0..L {
        let p = format!("model.layers.{l}");
        let mut put = |name: &str, shape: &[usize], scale: f32, offset: f32| {
            let t = rand_tensor(&mut rng, shape, scale, offset);
            w.insert(format!("{p}.{name}"), t);
        };
        put("input_layernorm.weight", &[E], 0.2, 1.0);
        put("self_attn.q_proj.weight", &[E, E], 0.4, 0.0);
        put("self_attn.q_proj.bias", &[E], 0.1, 0.0);
        put("self_attn.k_proj.weight", &[kv, E], 0.4, 0.0);
        put("self_attn.k_proj.bias", &[kv], 0.1, 0.0);
        put("self_attn.v_proj.weight", &[kv, E], 0.3, 0.0);
        put("self_attn.v_proj.bias", &[kv], 0.1, 0.0);
        put("self_attn.o_proj.weight", &[E, E], 0.3, 0.0);
        put("post_attention_layernorm.weight", &[E], 0.2, 1.0);
        put("mlp.gate_proj.weight", &[M, E], 0.3, 0.0);
        put("mlp.up_proj.weight", &[M, E], 0.3, 0.0);
        put("mlp.down_proj.weight", &[E, M], 0.3, 0.0);
    }
    w.insert(
        "model.norm.weight".into(),
        rand_tensor(&mut rng, &[E], 0.2, 1.0),
    );
    w.insert(
        "lm_head.weight".into(),
        rand_tensor(&mut rng, &[v, E], 0.3, 0.0),
    );
    candle_core::safetensors::save(&w, dir.join("model.safetensors"))?;
    Ok(())
}

/// The fixture model folder (written once per test binary).
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("minarc-remote-fixture")
            .tempdir()
            .unwrap()
            .keep();
        write_tiny_model(&dir, 7).unwrap();
        dir
    })
}

/// A fresh local backend on the fixture model.
pub fn local() -> Local {
    Local::load(model_dir(), DType::F32, &Device::Cpu).unwrap()
}

/// Server options for tests: ephemeral loopback port.
pub fn opts() -> ServeOptions {
    ServeOptions {
        port: 0,
        ..ServeOptions::default()
    }
}

/// A server on 127.0.0.1:0 with its own backend on the fixture model.
pub fn server(opts: ServeOptions) -> RunningServer {
    RunningServer::start(local(), opts).unwrap()
}

/// Distinct prompts (different lengths and content).
pub const PROMPTS: [&str; 4] = [
    "What is the color of the cell (1,2)? Answer: B",
    "A grid is represented as a dict of cells; the answer is R",
    "Infer this positional relation function. Answer: G",
    "pack my box with five dozen liquor jugs",
];

/// A sample with no labels.
pub fn input(index: usize, prompt: &str) -> SampleInput {
    SampleInput {
        index,
        prompt: prompt.to_string(),
        ..Default::default()
    }
}

/// Forwards `PROMPTS[i]` as sample i of `dataset` for every i in `indices`.
pub fn forward_all(b: &dyn Backend, dataset: &str, indices: &[usize]) {
    for &i in indices {
        b.forward_sample(dataset, &input(i, PROMPTS[i]), &CaptureSpec::full(), false)
            .unwrap();
    }
}

/// Largest absolute difference; the shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Raw HTTP request (status, body) without the client's error handling.
pub fn raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url).header("Content-Type", content_type);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body)
        }
    };
    let mut resp = resp.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (code, bytes)
}
