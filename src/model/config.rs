//! `ModelConfig`: the Qwen2 hyper-parameters read from a Hugging Face `config.json`.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::DType;
use serde::{Deserialize, Serialize};

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_max_pos() -> usize {
    32_768
}
fn default_eps() -> f64 {
    1e-6
}

/// Largest accepted `vocab_size` (2^24; real vocabularies are below 2^18).
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest accepted `hidden_size`.
pub const MAX_HIDDEN: usize = 1 << 16;
/// Largest accepted `intermediate_size`.
pub const MAX_INTERMEDIATE: usize = 1 << 20;
/// Largest accepted `num_hidden_layers`.
pub const MAX_LAYERS: usize = 1024;
/// Largest accepted `num_attention_heads` / `num_key_value_heads`.
pub const MAX_HEADS: usize = 1024;
/// Largest accepted `max_position_embeddings` (2^24 positions).
pub const MAX_POSITIONS: usize = 1 << 24;
/// Accepted `rms_norm_eps` (inclusive).
pub const RMS_EPS_RANGE: (f64, f64) = (1e-12, 1e-2);
/// Accepted `rope_theta` (inclusive).
pub const ROPE_THETA_RANGE: (f64, f64) = (1.0, 1e12);

/// Qwen2 configuration, deserialised from (and serialisable to) a HF `config.json`.
///
/// Unknown keys are ignored. `num_key_value_heads` defaults to `num_attention_heads`.
/// Call [`ModelConfig::validate`] (done by [`ModelConfig::from_file`]) before use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `["Qwen2ForCausalLM"]` in files we write.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `qwen2` (also when absent), `llama`, or `mistral` without a sliding window.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Vocabulary size v (rows of the embedding).
    pub vocab_size: usize,
    /// Hidden size e.
    pub hidden_size: usize,
    /// MLP intermediate size.
    pub intermediate_size: usize,
    /// Number of decoder layers L.
    pub num_hidden_layers: usize,
    /// Number of query heads H (= n).
    pub num_attention_heads: usize,
    /// Number of key/value heads KVH (GQA groups).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest supported position (RoPE table length).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Storage dtype of the checkpoint: float32, float16 or bfloat16.
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Only `silu` is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Must be false (sliding-window attention is not supported).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Present in Qwen2 configs; unused while `use_sliding_window` is false.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Present in Qwen2 configs; unused while `use_sliding_window` is false.
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Must be null/absent (no RoPE scaling support).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Optional explicit head dim; must equal hidden_size / num_attention_heads when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Attention dropout (ignored at inference; kept for round-tripping).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Initializer range (ignored; kept for round-tripping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initializer_range: Option<f64>,
    /// KV-cache flag (ignored; kept for round-tripping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_cache: Option<bool>,
    /// Whether q/k/v projections have biases (Llama's `attention_bias`; absent: true for
    /// Qwen2, false for Llama and Mistral).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Llama's `mlp_bias`: must be false when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// A quantised checkpoint's settings (GPTQ is read, see [`super::gptq`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Reads and validates `config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::limits::read_text_file(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let cfg: ModelConfig = serde_json::from_str(&text)
            .with_context(|| format!("malformed model config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("unsupported model config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks every value this implementation depends on.
    pub fn validate(&self) -> Result<()> {
        if let Some(mt) = &self.model_type
            && !matches!(mt.as_str(), "qwen2" | "llama" | "mistral")
        {
            bail!("model_type {mt:?} is not supported (qwen2, llama or mistral)");
        }
        if self.model_type.as_deref() == Some("mistral") && self.sliding_window.is_some() {
            bail!(
                "model_type \"mistral\" with sliding_window {:?} is not supported (only without a sliding window)",
                self.sliding_window
            );
        }
        if self.mlp_bias == Some(true) {
            bail!("mlp_bias = true is not supported");
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            (
                "intermediate_size",
                self.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads(), MAX_HEADS),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ] {
            if v > max {
                bail!("{name} = {v} is out of range (at most {max})");
            }
        }
        if self.hidden_act != "silu" {
            bail!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            bail!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head dim {} must be even for RoPE", self.head_dim());
        }
        if let Some(hd) = self.head_dim
            && hd * self.num_attention_heads != self.hidden_size
        {
            bail!(
                "head_dim {hd} != hidden_size / num_attention_heads = {}",
                self.hidden_size / self.num_attention_heads
            );
        }
        if self.use_sliding_window {
            bail!("use_sliding_window = true is not supported");
        }
        if let Some(v) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            bail!("rope_scaling {v} is not supported (only plain RoPE)");
        }
        if !(RMS_EPS_RANGE.0..=RMS_EPS_RANGE.1).contains(&self.rms_norm_eps) {
            bail!(
                "rms_norm_eps = {} is out of range ({:e}..={:e}; real models use 1e-6 or 1e-5)",
                self.rms_norm_eps,
                RMS_EPS_RANGE.0,
                RMS_EPS_RANGE.1
            );
        }
        if !(ROPE_THETA_RANGE.0..=ROPE_THETA_RANGE.1).contains(&self.rope_theta) {
            bail!(
                "rope_theta = {} is out of range ({:e}..={:e})",
                self.rope_theta,
                ROPE_THETA_RANGE.0,
                ROPE_THETA_RANGE.1
            );
        }
        self.storage_dtype()?;
        Ok(())
    }

    /// Whether the q/k/v projections have biases (see `attention_bias`).
    pub fn has_qkv_bias(&self) -> bool {
        let qwen = matches!(self.model_type.as_deref(), None | Some("qwen2"));
        self.attention_bias.unwrap_or(qwen)
    }

    /// Number of key/value heads (KVH).
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head dim d = hidden_size / num_attention_heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Query heads per KV group, H / KVH.
    pub fn heads_per_group(&self) -> usize {
        self.num_attention_heads / self.num_kv_heads()
    }

    /// KV group used by query head `h`: h / (H / KVH).
    pub fn kv_group(&self, head: usize) -> usize {
        head / self.heads_per_group()
    }

    /// The checkpoint's storage dtype from `torch_dtype` (absent = f32).
    pub fn storage_dtype(&self) -> Result<DType> {
        match self.torch_dtype.as_deref() {
            None | Some("float32") => Ok(DType::F32),
            Some("float16") => Ok(DType::F16),
            Some("bfloat16") => Ok(DType::BF16),
            Some(other) => {
                bail!("torch_dtype {other:?} is not supported (float32, float16 or bfloat16)")
            }
        }
    }

    /// Parameters in matmuls per token (q,k,v,o, MLP, lm_head) — the FLOP base of a forward.
    pub fn matmul_params(&self) -> usize {
        let e = self.hidden_size;
        let kv = self.num_kv_heads() * self.head_dim();
        let per_layer = e * e * 2 + e * kv * 2 + 3 * e * self.intermediate_size;
        per_layer * self.num_hidden_layers + e * self.vocab_size
    }

    /// Total parameter count (embeddings, norms and biases included; tied lm_head counted once).
    pub fn num_params(&self) -> usize {
        let e = self.hidden_size;
        let kv = self.num_kv_heads() * self.head_dim();
        let bias = if self.has_qkv_bias() { e + 2 * kv } else { 0 };
        let per_layer = e * e * 2 + e * kv * 2 + 3 * e * self.intermediate_size + bias + 2 * e;
        let lm = if self.tie_word_embeddings {
            0
        } else {
            e * self.vocab_size
        };
        per_layer * self.num_hidden_layers + e * self.vocab_size + e + lm
    }

    /// Checks a layer index in 0..L.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.num_hidden_layers {
            bail!(
                "layer {layer} out of range (model has {} layers)",
                self.num_hidden_layers
            );
        }
        Ok(())
    }

    /// Checks head indices in 0..H.
    pub fn check_heads(&self, heads: &[usize]) -> Result<()> {
        if let Some(&h) = heads.iter().find(|&&h| h >= self.num_attention_heads) {
            bail!(
                "head {h} out of range (model has {} heads)",
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

/// Parses a compute dtype name: f32/float32, f16/float16, bf16/bfloat16.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => bail!("unsupported dtype {other:?} (f32, f16 or bf16)"),
    }
}

/// Parses a device name: `cpu`, `cuda` or `cuda:N` (CUDA needs the `cuda` cargo feature).
pub fn parse_device(name: &str) -> Result<candle_core::Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "cuda" => 0,
        _ => match name.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .with_context(|| format!("bad CUDA ordinal in device {name:?}"))?,
            None => bail!("unknown device {name:?} (cpu, cuda or cuda:N)"),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!("device {name:?} needs minarc built with the `cuda` cargo feature");
    }
    candle_core::Device::new_cuda(ordinal).with_context(|| format!("cannot open device {name:?}"))
}

/// Whether a device spec is a layer map (`cuda:0,cuda:1` or `cuda:0=0-39,…`), not one device.
pub fn is_device_map(spec: &str) -> bool {
    spec.contains(',') || spec.contains('=')
}

/// Resolves a device or a layer device map for a model of `n_layers` decoder layers:
/// `cpu`, `cuda:1` (one device: no map); `cuda:0,cuda:1` (the layers split in order into
/// near-equal contiguous runs); `cuda:0=0-39,cuda:1=40-79` (explicit ranges covering every
/// layer once). The first named device is the home device (embeddings, final norm, lm_head):
/// pass it already opened as `home` ([`home_device`]). Returns each layer's device (empty
/// without a map). Each name is opened once.
pub fn parse_device_map(
    spec: &str,
    n_layers: usize,
    home: &candle_core::Device,
) -> Result<Vec<candle_core::Device>> {
    if !is_device_map(spec) {
        return Ok(Vec::new());
    }
    let parts = map_entries(spec)?;
    let first = entry_name(parts[0]);
    let named = |n: &str| {
        n == "cpu"
            || n == "cuda"
            || n.strip_prefix("cuda:")
                .is_some_and(|i| i.parse::<usize>().is_ok())
    };
    ensure!(
        named(&first),
        "unknown device {first:?} (cpu, cuda or cuda:N) in device map {spec:?}"
    );
    let mut opened: Vec<(String, candle_core::Device)> = vec![(first, home.clone())];
    let mut open = |name: &str| -> Result<candle_core::Device> {
        let key = name.trim().to_ascii_lowercase();
        if let Some((_, d)) = opened.iter().find(|(n, _)| *n == key) {
            return Ok(d.clone());
        }
        let d = parse_device(&key)?;
        opened.push((key, d.clone()));
        Ok(d)
    };
    let mut layers: Vec<Option<candle_core::Device>> = vec![None; n_layers];
    let explicit = parts.iter().all(|p| p.contains('='));
    ensure!(
        explicit || parts.iter().all(|p| !p.contains('=')),
        "device map {spec:?}: give every entry a layer range (cuda:0=0-39) or none"
    );
    for (k, part) in parts.iter().enumerate() {
        let (name, range) = match part.split_once('=') {
            Some((n, r)) => {
                let (a, b) = r
                    .split_once('-')
                    .map_or((r, r), |(a, b)| (a.trim(), b.trim()));
                let a: usize = a
                    .trim()
                    .parse()
                    .with_context(|| format!("device map entry {part:?}: bad layer {a:?}"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .with_context(|| format!("device map entry {part:?}: bad layer {b:?}"))?;
                ensure!(
                    a <= b && b < n_layers,
                    "device map entry {part:?}: layers {a}-{b} outside 0..{n_layers}"
                );
                (n, a..b + 1)
            }
            None => {
                let at = |i: usize| i * n_layers / parts.len();
                (*part, at(k)..at(k + 1))
            }
        };
        let dev = open(name)?;
        for l in range {
            ensure!(
                layers[l].is_none(),
                "device map {spec:?}: layer {l} is placed twice"
            );
            layers[l] = Some(dev.clone());
        }
    }
    let missing: Vec<usize> = (0..n_layers).filter(|&l| layers[l].is_none()).collect();
    ensure!(
        missing.is_empty(),
        "device map {spec:?}: layers {missing:?} have no device"
    );
    Ok(layers.into_iter().map(|d| d.expect("checked")).collect())
}

fn map_entries(spec: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    ensure!(
        !parts.is_empty() && parts.len() <= 64,
        "device map {spec:?}: 1 to 64 entries"
    );
    Ok(parts)
}

fn entry_name(part: &str) -> String {
    part.split('=')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The home device of a device or a device map (its first device), opened.
pub fn home_device(spec: &str) -> Result<candle_core::Device> {
    if !is_device_map(spec) {
        return parse_device(spec);
    }
    parse_device(&entry_name(map_entries(spec)?[0]))
}

#[cfg(test)]
mod device_map_tests {
    use super::*;

    fn map(spec: &str, n: usize) -> Result<Vec<candle_core::Device>> {
        parse_device_map(spec, n, &candle_core::Device::Cpu)
    }

    #[test]
    fn device_maps_cover_every_layer_once() {
        assert!(map("cpu", 4).unwrap().is_empty());
        assert_eq!(map("cpu,cpu", 5).unwrap().len(), 5);
        assert_eq!(map("cpu=0-2,cpu=3-4", 5).unwrap().len(), 5);
        assert_eq!(map("cpu=0-0, cpu=1", 2).unwrap().len(), 2);
        for (bad, says) in [
            ("cpu=0-2,cpu=2-4", "placed twice"),
            ("cpu=0-1,cpu=3-4", "have no device"),
            ("cpu=0-9", "outside"),
            ("cpu=0-2,cpu", "every entry"),
            ("cpu=x-2", "bad layer"),
            ("gpu,cpu", "unknown device"),
        ] {
            let e = format!("{:#}", map(bad, 5).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        // the even split: 5 layers over 2 devices = 0-1 / 2-4
        assert!(is_device_map("cuda:0,cuda:1") && !is_device_map("cuda:1"));
        assert!(matches!(
            home_device("cpu,cpu"),
            Ok(candle_core::Device::Cpu)
        ));
    }
}
