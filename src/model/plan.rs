//! `minarc plan`: the memory a model needs — weights (dense or GPTQ), one forward's activations,
//! the capture one sample keeps — and a placement of its layers over one or more devices.
//!
//! Everything is computed from the model's config.json (no weights are read), so a plan for a
//! 72B model runs anywhere. The byte counts follow what minarc allocates:
//! * weights: every matrix and vector in the compute dtype; a packed GPTQ checkpoint (the
//!   default on CUDA, `--gptq packed` elsewhere) keeps its int4/int8 words, scales, zeros and
//!   g_idx resident plus one dequantised layer, a dense one is dequantised on load;
//! * one forward (the largest moment of one decoder layer, inference with capture): the residual,
//!   its norm, q/k/v, the attention scores and probabilities `[n, s, s]` (f32), the head outputs,
//!   the MLP's gate/up/activation `[s, i]`, and the logits `[s, v]` (f32);
//! * the capture of one sample: hidden_states (L+1), attn_outs (L) and mlp_outputs (L) rows of
//!   width e for every stored position in the capture dtype, plus the f32 norm variances.

use super::config::ModelConfig;
use super::gptq::GptqConfig;
use crate::limits::fmt_bytes;
use anyhow::{Context, Result, bail, ensure};
use candle_core::DType;
use serde::Serialize;
use std::path::Path;

/// Built-in config shapes for planning without the checkpoint (config.json values of the
/// published Qwen2.5 models; the GPTQ-Int4 72B pads intermediate_size 29,568 -> 29,696).
pub const SHAPES: [(&str, &str); 4] = [
    (
        "qwen2.5-0.5b",
        r#"{"vocab_size":151936,"hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"tie_word_embeddings":true,"torch_dtype":"bfloat16","max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"hidden_act":"silu"}"#,
    ),
    (
        "qwen2.5-7b",
        r#"{"vocab_size":152064,"hidden_size":3584,"intermediate_size":18944,"num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"tie_word_embeddings":false,"torch_dtype":"bfloat16","max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"hidden_act":"silu"}"#,
    ),
    (
        "qwen2.5-72b",
        r#"{"vocab_size":152064,"hidden_size":8192,"intermediate_size":29568,"num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"tie_word_embeddings":false,"torch_dtype":"bfloat16","max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"hidden_act":"silu"}"#,
    ),
    (
        "qwen2.5-72b-gptq-int4",
        r#"{"vocab_size":152064,"hidden_size":8192,"intermediate_size":29696,"num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"tie_word_embeddings":false,"torch_dtype":"float16","max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"hidden_act":"silu","quantization_config":{"quant_method":"gptq","bits":4,"group_size":128,"desc_act":false,"sym":true}}"#,
    ),
];

/// A device and the bytes minarc may use on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceBudget {
    /// `cpu`, `cuda:0`, …
    pub name: String,
    /// Usable bytes.
    pub bytes: u64,
}

impl DeviceBudget {
    /// Whether this is a CUDA device (GPTQ stays packed there).
    pub fn is_cuda(&self) -> bool {
        self.name.starts_with("cuda")
    }
}

/// Parses `80GiB`, `141G`, `512MiB`, `1.5TB`, `1000000` (bytes). Decimal units (GB) are 10^9,
/// binary units (GiB, and a bare G) 2^30.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected a size like 80GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024f64.powi(2),
        "mb" => 1e6,
        "g" | "gib" => 1024f64.powi(3),
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        u => bail!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"),
    };
    let b = x * mult;
    ensure!(
        b.is_finite() && (1.0..=2f64.powi(60)).contains(&b),
        "{s:?}: a size from 1 byte to 1 EiB"
    );
    Ok(b as u64)
}

/// Parses `cuda:0=80GiB,cuda:1=80GiB` (or `cpu=64GiB`).
pub fn parse_devices(s: &str) -> Result<Vec<DeviceBudget>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, size) = part
            .split_once('=')
            .with_context(|| format!("device {part:?}: expected NAME=SIZE, e.g. cuda:0=80GiB"))?;
        let name = name.trim();
        ensure!(
            name == "cpu"
                || name
                    .strip_prefix("cuda:")
                    .is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i < 1024)),
            "device {name:?}: expected cpu or cuda:N"
        );
        ensure!(
            !out.iter().any(|d: &DeviceBudget| d.name == name),
            "device {name} is listed twice"
        );
        out.push(DeviceBudget {
            name: name.to_string(),
            bytes: parse_bytes(size)?,
        });
    }
    ensure!(!out.is_empty(), "no devices given");
    ensure!(out.len() <= 64, "at most 64 devices");
    Ok(out)
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Tokens of one sample.
    pub tokens: usize,
    /// Compute dtype of weights and activations.
    pub dtype: DType,
    /// Storage dtype of the capture.
    pub capture_dtype: DType,
    /// Store logits with the capture.
    pub capture_logits: bool,
    /// Devices, in layer order (the first holds the embeddings, the last the final norm and
    /// lm_head).
    pub devices: Vec<DeviceBudget>,
    /// Host memory for the activation store (captures are kept on the host).
    pub host_bytes: u64,
    /// GPTQ kept packed (None: packed when a device is CUDA, as loading does).
    pub gptq_packed: Option<bool>,
}

/// The bytes of one piece of the model.
#[derive(Clone, Debug, Serialize)]
pub struct Part {
    /// `embed_tokens`, `layer 0`, …, `norm + lm_head`.
    pub name: String,
    /// Resident bytes.
    pub bytes: u64,
}

/// Layers placed on one device.
#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    /// The device.
    pub device: String,
    /// Its budget.
    pub budget: u64,
    /// Parts held (by name).
    pub parts: Vec<String>,
    /// Weight bytes held.
    pub weights: u64,
    /// The forward's working set while a layer here runs (+ the dequantisation buffer for GPTQ).
    pub working: u64,
}

/// A plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Parameters (dense count).
    pub params: u64,
    /// Quantisation, if any (`gptq int4, group 128`).
    pub quantization: Option<String>,
    /// Weight bytes in total.
    pub weights: u64,
    /// Per part.
    pub parts: Vec<Part>,
    /// Peak bytes of one forward's activations (one layer at a time, + logits).
    pub forward: u64,
    /// The dequantised layer buffer of a GPTQ model on CUDA (0 otherwise).
    pub dequant_buffer: u64,
    /// Capture of one sample.
    pub capture: u64,
    /// Samples whose capture fits the host memory.
    pub samples_in_host: u64,
    /// Layer placement (None when the model does not fit the devices).
    pub placement: Option<Vec<Placement>>,
    /// Why it does not fit, when it does not.
    pub problem: Option<String>,
}

fn dtype_bytes(d: DType) -> u64 {
    d.size_in_bytes() as u64
}

/// The config of a model folder, a config.json file or a built-in shape name.
pub fn load_config(spec: &str) -> Result<ModelConfig> {
    if let Some((_, json)) = SHAPES.iter().find(|(n, _)| *n == spec) {
        let c: ModelConfig = serde_json::from_str(json).expect("built-in shape");
        c.validate()?;
        return Ok(c);
    }
    let p = Path::new(spec);
    let file = if p.is_dir() {
        p.join("config.json")
    } else {
        p.to_path_buf()
    };
    if !file.is_file() {
        let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
        bail!(
            "{spec:?} is neither a model folder, a config.json nor a built-in shape ({})",
            names.join(", ")
        );
    }
    ModelConfig::from_file(&file)
}

/// Bytes of a GPTQ linear `[in, out]` as stored (packed words, zeros, fp16 scales, g_idx).
fn gptq_linear(q: &GptqConfig, inp: u64, out: u64) -> u64 {
    let bits = q.bits as u64;
    let groups = if q.group_size > 0 {
        inp.div_ceil(q.group_size as u64)
    } else {
        1
    };
    let qweight = inp * out * bits / 8;
    let qzeros = groups * out * bits / 8;
    let scales = groups * out * 2;
    let g_idx = inp * 4;
    qweight + qzeros + scales + g_idx
}

/// Computes the plan of `cfg` under `o`.
pub fn plan(cfg: &ModelConfig, dir: Option<&Path>, o: &PlanOptions) -> Result<Plan> {
    ensure!(o.tokens >= 1, "--tokens must be at least 1");
    ensure!(
        o.tokens <= cfg.max_position_embeddings,
        "--tokens {} exceeds the model's max_position_embeddings {}",
        o.tokens,
        cfg.max_position_embeddings
    );
    let gptq = match dir {
        Some(d) => GptqConfig::of_folder(d, cfg.quantization_config.as_ref())?,
        None => match &cfg.quantization_config {
            Some(v) if !v.is_null() => {
                let q: GptqConfig = serde_json::from_value(v.clone())
                    .context("malformed GPTQ quantization_config")?;
                q.validate()?;
                Some(q)
            }
            _ => None,
        },
    };
    let (e, i, v, l) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        cfg.vocab_size as u64,
        cfg.num_hidden_layers as u64,
    );
    let (n, d) = (cfg.num_attention_heads as u64, cfg.head_dim() as u64);
    let kv = cfg.num_kv_heads() as u64 * d;
    let s = o.tokens as u64;
    let w = dtype_bytes(o.dtype);
    let cuda = o.devices.iter().any(DeviceBudget::is_cuda);
    let packed = o.gptq_packed.unwrap_or(cuda);
    let bias = if cfg.has_qkv_bias() {
        n * d + 2 * kv
    } else {
        0
    };
    // [in, out] of each linear of a layer
    let linears = [
        (e, n * d),
        (e, kv),
        (e, kv),
        (n * d, e),
        (e, i),
        (e, i),
        (i, e),
    ];
    let dense_layer: u64 = linears.iter().map(|(a, b)| a * b).sum::<u64>() + bias + 2 * e;
    let (layer_bytes, dequant_buffer) = match (&gptq, packed) {
        (Some(q), true) => {
            let packed: u64 = linears.iter().map(|&(a, b)| gptq_linear(q, a, b)).sum();
            (packed + (bias + 2 * e) * 2, dense_layer * w)
        }
        _ => (dense_layer * w, 0),
    };
    let embed = v * e * w;
    let head = e * w
        + if cfg.tie_word_embeddings {
            0
        } else {
            v * e * w
        };
    let mut parts = vec![Part {
        name: "embed_tokens".into(),
        bytes: embed,
    }];
    for k in 0..l {
        parts.push(Part {
            name: format!("layer {k}"),
            bytes: layer_bytes,
        });
    }
    parts.push(Part {
        name: if cfg.tie_word_embeddings {
            "norm (+ tied lm_head)".into()
        } else {
            "norm + lm_head".into()
        },
        bytes: head,
    });
    let weights: u64 = parts.iter().map(|p| p.bytes).sum();
    // One layer's peak: residual, normed input, q, k, v, head outputs, MLP gate/up/act, and
    // the attention scores + probabilities (f32).
    let layer_act =
        (3 * s * e + s * (n * d + 2 * kv) + s * n * d + 3 * s * i) * w + 2 * n * s * s * 4;
    let logits = s * v * 4;
    let forward = layer_act + logits;
    let cd = dtype_bytes(o.capture_dtype);
    let capture = (2 * l + 1) * s * e * cd
        + l * s * n * d * cd
        + (2 * l + 1) * s * 4
        + if o.capture_logits { s * v * 4 } else { 0 };
    let samples_in_host = o.host_bytes / capture.max(1);
    let (placement, problem) = match place(&parts, forward, dequant_buffer, &o.devices) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Plan {
        params: cfg.num_params() as u64,
        quantization: gptq.as_ref().map(|q| {
            format!(
                "gptq int{}, group {}{}{}",
                q.bits,
                q.group_size,
                if q.desc_act { ", desc_act" } else { "" },
                if packed {
                    " (packed, one layer dequantised at a time)"
                } else {
                    " (dequantised on load)"
                }
            )
        }),
        weights,
        parts,
        forward,
        dequant_buffer,
        capture,
        samples_in_host,
        placement,
        problem,
    })
}

/// Greedy placement in layer order: each device takes parts while its weights plus the working
/// set (one forward's activations + the dequantisation buffer) fit its budget.
fn place(
    parts: &[Part],
    forward: u64,
    dequant: u64,
    devices: &[DeviceBudget],
) -> Result<Vec<Placement>> {
    let working = forward + dequant;
    let mut out: Vec<Placement> = Vec::new();
    let mut k = 0;
    for dev in devices {
        if k == parts.len() {
            break;
        }
        if dev.bytes <= working {
            continue;
        }
        let room = dev.bytes - working;
        let mut p = Placement {
            device: dev.name.clone(),
            budget: dev.bytes,
            parts: Vec::new(),
            weights: 0,
            working,
        };
        while k < parts.len() && p.weights + parts[k].bytes <= room {
            p.weights += parts[k].bytes;
            p.parts.push(parts[k].name.clone());
            k += 1;
        }
        if !p.parts.is_empty() {
            out.push(p);
        }
    }
    if k < parts.len() {
        let total: u64 = parts.iter().map(|p| p.bytes).sum();
        let budget: u64 = devices.iter().map(|d| d.bytes).sum();
        bail!(
            "does not fit: {} of weights + {} working set per device, {} on {} device(s); {} and later parts have no room",
            fmt_bytes(total as u128),
            fmt_bytes(working as u128),
            fmt_bytes(budget as u128),
            devices.len(),
            parts[k].name
        );
    }
    Ok(out)
}

/// Contiguous runs of layer parts as `layers 0-39`.
fn summarize(parts: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    let flush = |run: &mut Option<(usize, usize)>, out: &mut Vec<String>| {
        if let Some((a, b)) = run.take() {
            out.push(if a == b {
                format!("layer {a}")
            } else {
                format!("layers {a}-{b}")
            });
        }
    };
    for p in parts {
        match p
            .strip_prefix("layer ")
            .and_then(|k| k.parse::<usize>().ok())
        {
            Some(k) => {
                run = match run {
                    Some((a, b)) if b + 1 == k => Some((a, k)),
                    _ => {
                        flush(&mut run, &mut out);
                        Some((k, k))
                    }
                }
            }
            None => {
                flush(&mut run, &mut out);
                out.push(p.clone());
            }
        }
    }
    flush(&mut run, &mut out);
    out.join(", ")
}

impl Plan {
    /// The plan as text.
    pub fn render(&self, cfg: &ModelConfig, o: &PlanOptions) -> String {
        let b = |x: u64| fmt_bytes(x as u128);
        let mut t = String::new();
        t += &format!(
            "model: {} layers, hidden {}, {} heads / {} kv heads, intermediate {}, vocab {}; {:.2}B parameters{}\n",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.intermediate_size,
            cfg.vocab_size,
            self.params as f64 / 1e9,
            self.quantization
                .as_ref()
                .map(|q| format!("; {q}"))
                .unwrap_or_default()
        );
        t += &format!(
            "weights ({}): {}  (per decoder layer {}, embeddings {}, final norm + lm_head {})\n",
            o.dtype.as_str(),
            b(self.weights),
            b(self.parts[1].bytes),
            b(self.parts[0].bytes),
            b(self.parts[self.parts.len() - 1].bytes)
        );
        if self.dequant_buffer > 0 {
            t += &format!("dequantised layer buffer: {}\n", b(self.dequant_buffer));
        }
        t += &format!(
            "one forward, {} tokens: {} working set (one layer + logits)\n",
            o.tokens,
            b(self.forward)
        );
        t += &format!(
            "capture per sample ({}{}): {}; {} samples fit {} of host memory\n",
            o.capture_dtype.as_str(),
            if o.capture_logits {
                ", with logits"
            } else {
                ""
            },
            b(self.capture),
            self.samples_in_host,
            b(o.host_bytes)
        );
        match (&self.placement, &self.problem) {
            (Some(p), _) => {
                t += "placement:\n";
                for d in p {
                    t += &format!(
                        "  {:<8} {} weights + {} working of {}: {}\n",
                        d.device,
                        b(d.weights),
                        b(d.working),
                        b(d.budget),
                        summarize(&d.parts)
                    );
                }
            }
            (None, Some(why)) => t += &format!("placement: {why}\n"),
            (None, None) => {}
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(devices: &str) -> PlanOptions {
        PlanOptions {
            tokens: 600,
            dtype: DType::BF16,
            capture_dtype: DType::F32,
            capture_logits: false,
            devices: parse_devices(devices).unwrap(),
            host_bytes: 64 << 30,
            gptq_packed: None,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("80GiB").unwrap(), 80 << 30);
        assert_eq!(parse_bytes("80G").unwrap(), 80 << 30);
        assert_eq!(parse_bytes("141GB").unwrap(), 141_000_000_000);
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("12").unwrap(), 12);
        for bad in ["", "GiB", "-1G", "1Q", "0", "1e30"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!(parse_devices("cuda:0=80GiB,cuda:0=80GiB").is_err());
        assert!(parse_devices("gpu0=80GiB").is_err());
        assert!(parse_devices("cuda:0").is_err());
    }

    #[test]
    fn qwen05b_by_hand() {
        let cfg = load_config("qwen2.5-0.5b").unwrap();
        let p = plan(&cfg, None, &opts("cpu=64GiB")).unwrap();
        // 494,032,768 parameters (the published count), 2 bytes each in bf16
        assert_eq!(p.params, 494_032_768);
        assert_eq!(p.weights, 2 * 494_032_768);
        // capture: 49 rows of 896 (hidden_states 25 + mlp 24) + 24 attn_outs of 14*64, f32,
        // plus 49 f32 variances, per token
        assert_eq!(p.capture, 600 * ((49 * 896 + 24 * 896) * 4 + 49 * 4));
        assert_eq!(p.placement.unwrap().len(), 1);
    }

    #[test]
    fn gptq_72b_fits_one_80g_gpu_packed_but_not_dense() {
        let cfg = load_config("qwen2.5-72b-gptq-int4").unwrap();
        let p = plan(&cfg, None, &opts("cuda:0=80GiB")).unwrap();
        assert!(p.problem.is_none(), "{:?}", p.problem);
        let gib = p.weights as f64 / (1u64 << 30) as f64;
        assert!((38.0..45.0).contains(&gib), "{gib} GiB");
        assert!(p.dequant_buffer > 0);
        let dense = load_config("qwen2.5-72b").unwrap();
        let p = plan(&dense, None, &opts("cuda:0=80GiB")).unwrap();
        assert!(p.problem.as_ref().unwrap().contains("does not fit"));
        // two 80 GB devices hold the bf16 model, layers split in order
        let p = plan(&dense, None, &opts("cuda:0=80GiB,cuda:1=80GiB")).unwrap();
        let pl = p.placement.unwrap();
        assert_eq!(pl.len(), 2);
        assert_eq!(pl[0].parts[0], "embed_tokens");
        assert_eq!(pl[1].parts.last().unwrap(), "norm + lm_head");
        assert_eq!(
            pl[0].parts.len() + pl[1].parts.len(),
            cfg.num_hidden_layers + 2
        );
        assert!(pl.iter().all(|d| d.weights + d.working <= d.budget));
    }

    #[test]
    fn placement_summary_names_layer_runs() {
        let parts: Vec<String> = [
            "embed_tokens",
            "layer 0",
            "layer 1",
            "layer 2",
            "norm + lm_head",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            summarize(&parts),
            "embed_tokens, layers 0-2, norm + lm_head"
        );
    }
}
