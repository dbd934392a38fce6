//! GGUF checkpoints (llama.cpp's single-file format) of Llama- and Qwen2-architecture models:
//! the config from the file's metadata, every tensor dequantised (candle's GGUF reader and
//! dequantisation: F32, F16, Q4_0, Q4_1, Q5_x, Q8_0, K-quants) under its Hugging Face name, the
//! q/k row permutation of llama.cpp's converter undone for Llama, and the tokenizer built from
//! the metadata (vocabulary, merges, pre-tokenizer, special tokens, chat template).
//!
//! Errors for what is not supported are one line naming the file and the value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;

/// Whether `path` names a GGUF file (by its `.gguf` extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A GGUF file read into memory: config, dequantised tensors (HF names, f32 on the CPU), the
/// tokenizer and the chat template.
pub struct GgufModel {
    /// The file.
    pub path: PathBuf,
    /// The model config built from the metadata (validated).
    pub config: ModelConfig,
    /// Tensors under their HF names (`model.layers.0.self_attn.q_proj.weight`, …), f32.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer built from the metadata.
    pub tokenizer: tokenizers::Tokenizer,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
}

/// Architectures read from GGUF, with whether llama.cpp permuted their q/k rows.
const ARCHES: [(&str, bool); 2] = [("llama", true), ("qwen2", false)];

struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.md
            .get(key)
            .ok_or_else(|| anyhow!("{}: metadata {key:?} is missing", self.path.display()))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|i| i.max(-1) as u64))
            .map_err(|_| {
                anyhow!(
                    "{}: metadata {key:?} is not an integer",
                    self.path.display()
                )
            })?;
        usize::try_from(n).map_err(|_| anyhow!("{}: {key} = {n} is too large", self.path.display()))
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.md.contains_key(key) {
            self.usize(key)
        } else {
            Ok(default)
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.md.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|_| anyhow!("{}: metadata {key:?} is not a number", self.path.display())),
        }
    }
    fn string(&self, key: &str) -> Result<Option<&String>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_string()
                .map(Some)
                .map_err(|_| anyhow!("{}: metadata {key:?} is not a string", self.path.display())),
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<&String>> {
        self.get(key)?
            .to_vec()
            .map_err(|_| anyhow!("{}: metadata {key:?} is not an array", self.path.display()))?
            .iter()
            .map(|v| {
                v.to_string().map_err(|_| {
                    anyhow!(
                        "{}: metadata {key:?} holds a non-string",
                        self.path.display()
                    )
                })
            })
            .collect()
    }
}

/// HF tensor name of a GGUF tensor name (None: not a tensor of the network).
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (l, part) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{l}.{hf}"))
}

/// Undoes llama.cpp's q/k row permutation (`permute` in convert_hf_to_gguf.py) of a weight
/// `[rows, in]` or bias `[rows]` with `heads` heads: GGUF rows per head are (d/2 pairs × 2),
/// HF rows are (2 halves × d/2).
pub fn unpermute_qk(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    ensure!(
        rows.is_multiple_of(2 * heads),
        "{rows} rows do not split into {heads} heads of pairs"
    );
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    // [heads, half, 2, rest] → [heads, 2, half, rest]
    Ok(t.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The model config of a GGUF file's metadata.
fn config(
    meta: &Meta,
    arch: &str,
    tied: bool,
    has_bias: bool,
    vocab: usize,
) -> Result<ModelConfig> {
    let k = |s: &str| format!("{arch}.{s}");
    let heads = meta.usize(&k("attention.head_count"))?;
    let e = meta.usize(&k("embedding_length"))?;
    if let Some(t) = meta.string(&k("rope.scaling.type"))?
        && t != "none"
    {
        bail!(
            "{}: rope scaling {t:?} is not supported (only plain RoPE)",
            meta.path.display()
        );
    }
    let cfg = ModelConfig {
        architectures: vec![match arch {
            "qwen2" => "Qwen2ForCausalLM".into(),
            _ => "LlamaForCausalLM".into(),
        }],
        model_type: Some(arch.to_string()),
        vocab_size: vocab,
        hidden_size: e,
        intermediate_size: meta.usize(&k("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(meta.usize_or(&k("attention.head_count_kv"), heads)?),
        rms_norm_eps: meta.f64_or(&k("attention.layer_norm_rms_epsilon"), 1e-6)?,
        rope_theta: meta.f64_or(&k("rope.freq_base"), 10_000.0)?,
        max_position_embeddings: meta.usize_or(&k("context_length"), 4096)?,
        tie_word_embeddings: tied,
        torch_dtype: None,
        hidden_act: "silu".into(),
        use_sliding_window: false,
        sliding_window: None,
        max_window_layers: None,
        bos_token_id: meta
            .md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok()),
        eos_token_id: meta
            .md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok()),
        rope_scaling: None,
        head_dim: None,
        attention_dropout: 0.0,
        initializer_range: None,
        use_cache: None,
        attention_bias: Some(has_bias),
        mlp_bias: None,
        quantization_config: None,
    };
    if let Some(kl) = meta.md.get(&k("attention.key_length")) {
        let kl = kl.to_u32().unwrap_or(0) as usize;
        ensure!(
            kl * heads == e,
            "{}: attention.key_length {kl} differs from embedding_length / head_count = {} (not supported)",
            meta.path.display(),
            e / heads.max(1)
        );
    }
    cfg.validate()
        .with_context(|| format!("unsupported model in {}", meta.path.display()))?;
    Ok(cfg)
}

/// Pre-tokenizer of a llama.cpp `tokenizer.ggml.pre` name, as tokenizer.json JSON.
fn pre_tokenizer(path: &Path, pre: Option<&str>) -> Result<serde_json::Value> {
    use serde_json::json;
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre.unwrap_or("default") {
        // GPT-2's regex (the byte-level pre-tokenizer's own)
        "default" | "gpt2" | "gpt-2" => byte_level,
        // digits split one by one, then GPT-2's regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM;
        // SmolLM's own tokenizer.json: Digits(individual) + ByteLevel)
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        // Qwen2's regex, then bytes
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": crate::tokenizer::QWEN2_PRETOKENIZE_REGEX},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
        other => bail!(
            "{}: tokenizer pre-tokenizer {other:?} is not supported (default, gpt2, smollm or qwen2)",
            path.display()
        ),
    })
}

/// The tokenizer of a GGUF file's metadata (`tokenizer.ggml.model` = gpt2: byte-level BPE).
fn tokenizer(meta: &Meta) -> Result<tokenizers::Tokenizer> {
    use serde_json::json;
    let path = meta.path;
    let model = meta.string("tokenizer.ggml.model")?.map(String::as_str);
    if model != Some("gpt2") {
        bail!(
            "{}: tokenizer model {:?} is not supported (only \"gpt2\", byte-level BPE)",
            path.display(),
            model.unwrap_or("none")
        );
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match meta.md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| anyhow!("{}: token_type is not an array", path.display()))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    ensure!(
        types.len() == tokens.len(),
        "{}: {} token types for {} tokens",
        path.display(),
        types.len(),
        tokens.len()
    );
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert((*t).clone(), json!(i));
    }
    // control (3) and user-defined (4) tokens are added tokens, matched before the model
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(**ty, 3 | 4))
        .map(|(i, (t, ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": *ty == 4, "special": *ty == 3})
        })
        .collect();
    let pre = pre_tokenizer(path, meta.string("tokenizer.ggml.pre")?.map(String::as_str))?;
    let merges: Vec<&str> = merges.iter().map(|s| s.as_str()).collect();
    let j = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    j.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("{}: cannot build the tokenizer: {e}", path.display()))
}

/// Reads a GGUF file: metadata, tensors (dequantised to f32 on the CPU) and tokenizer.
pub fn read(path: &Path) -> Result<GgufModel> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
    ensure!(
        f.metadata()?.is_file(),
        "{} is not a regular file",
        path.display()
    );
    let content = Content::read(&mut f)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let arch = meta
        .string("general.architecture")?
        .ok_or_else(|| {
            anyhow!(
                "{}: metadata general.architecture is missing",
                path.display()
            )
        })?
        .clone();
    let Some(&(_, permuted)) = ARCHES.iter().find(|(a, _)| *a == arch) else {
        bail!(
            "{}: architecture {arch:?} is not supported (llama or qwen2)",
            path.display()
        );
    };
    let tokenizer = tokenizer(&meta)?;
    let vocab = tokenizer.get_vocab_size(true);
    let tied = !content.tensor_infos.contains_key("output.weight");
    let has_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let cfg = config(&meta, &arch, tied, has_bias, vocab)?;
    crate::limits::check_alloc(
        cfg.num_params() as u128 * 4,
        &format!(
            "dequantising {} ({} parameters, f32)",
            path.display(),
            cfg.num_params()
        ),
    )?;
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_kv_heads());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for name in names {
        let Some(hf) = hf_name(name) else {
            continue; // e.g. rope_freqs: not part of the network we compute
        };
        crate::cancel::check()?;
        let info = &content.tensor_infos[name];
        let q = content.tensor(&mut f, name, &Device::Cpu).map_err(|e| {
            anyhow!(
                "{}: tensor {name:?} ({:?}): {e}",
                path.display(),
                info.ggml_dtype
            )
        })?;
        let mut t = q.dequantize(&Device::Cpu).map_err(|e| {
            anyhow!(
                "{}: tensor {name:?} of type {:?} cannot be dequantised: {e}",
                path.display(),
                info.ggml_dtype
            )
        })?;
        if t.dtype() != DType::F32 {
            t = t.to_dtype(DType::F32)?;
        }
        if permuted {
            if name.contains(".attn_q.") {
                t = unpermute_qk(&t, heads)?;
            } else if name.contains(".attn_k.") {
                t = unpermute_qk(&t, kv_heads)?;
            }
        }
        tensors.insert(hf, t);
    }
    let chat_template = meta.string("tokenizer.chat_template")?.cloned();
    Ok(GgufModel {
        path: path.to_path_buf(),
        config: cfg,
        tensors,
        tokenizer,
        chat_template,
    })
}
