//! GPTQ checkpoints (AutoGPTQ / optimum / GPTQModel layout), dequantised on load to the compute
//! dtype. Per quantised linear `p`: `p.qweight` int32 `[in/pack, out]` (pack = 32/bits
//! consecutive input rows per word, lowest bits first), `p.qzeros` int32 `[groups, out/pack]`
//! (pack consecutive output columns per word; the `gptq` v1 format stores zero − 1, `gptq_v2`
//! the zero), `p.scales` f16 `[groups, out]` and `p.g_idx` int32 `[in]` (the group of each input
//! row; permuted with `desc_act`; absent = row / group_size). Then
//! W\[i, o\] = scales\[g_idx\[i\], o\] · (q\[i, o\] − zero\[g_idx\[i\], o\]).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::loader::WeightFiles;

/// The quantisation settings of a GPTQ checkpoint (`quantization_config` in config.json, or
/// `quantize_config.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptqConfig {
    /// Bits per weight: 4 or 8.
    pub bits: u32,
    /// Input rows per group; −1 = one group for all rows.
    pub group_size: i64,
    /// Rows were quantised in order of decreasing activation (g_idx is then a permutation).
    #[serde(default)]
    pub desc_act: bool,
    /// Symmetric quantisation (informational: the zeros are read from the file either way).
    #[serde(default = "yes")]
    pub sym: bool,
    /// `gptq` (v1: zeros stored minus one) or `gptq_v2`.
    #[serde(default = "v1")]
    pub checkpoint_format: String,
    /// `gptq` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_method: Option<String>,
}

fn yes() -> bool {
    true
}

fn v1() -> String {
    "gptq".into()
}

impl GptqConfig {
    /// The GPTQ settings of a model folder: config.json's `quantization_config`, else
    /// `quantize_config.json`; None for a dense checkpoint. Other quantisation methods are an
    /// error naming the method.
    pub fn of_folder(
        dir: &Path,
        quantization_config: Option<&serde_json::Value>,
    ) -> Result<Option<Self>> {
        let value = match quantization_config {
            Some(v) if !v.is_null() => v.clone(),
            _ => {
                let p = dir.join("quantize_config.json");
                if !p.is_file() {
                    return Ok(None);
                }
                let text = crate::limits::read_text_file(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("malformed {}", p.display()))?
            }
        };
        if let Some(m) = value.get("quant_method").and_then(|m| m.as_str())
            && m != "gptq"
        {
            bail!("quantization method {m:?} is not supported (only gptq)");
        }
        let c: GptqConfig =
            serde_json::from_value(value).context("malformed GPTQ quantization_config")?;
        c.validate()?;
        Ok(Some(c))
    }

    /// Checks the settings this reader supports.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            matches!(self.bits, 4 | 8),
            "GPTQ bits = {} is not supported (4 or 8)",
            self.bits
        );
        ensure!(
            self.group_size == -1 || self.group_size > 0,
            "GPTQ group_size = {} must be -1 or positive",
            self.group_size
        );
        ensure!(
            matches!(self.checkpoint_format.as_str(), "gptq" | "gptq_v2"),
            "GPTQ checkpoint_format {:?} is not supported (gptq or gptq_v2)",
            self.checkpoint_format
        );
        Ok(())
    }

    fn pack(&self) -> usize {
        (32 / self.bits) as usize
    }
}

/// An int32 tensor of the checkpoint as host values, with its shape checked.
fn ints(files: &WeightFiles, name: &str, shape: &[usize]) -> Result<Vec<i32>> {
    let (dtype, dims, bytes) = files.raw(name)?;
    ensure!(
        dtype == safetensors::Dtype::I32,
        "tensor {name:?} has dtype {dtype:?}, expected I32"
    );
    ensure!(
        dims == shape,
        "tensor {name:?} has shape {dims:?}, expected {shape:?}"
    );
    Ok(bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// One GPTQ linear as stored: packed words, zeros, scales and the group of every input row,
/// read and checked once ([`read_packed`]); [`PackedLinear::dequantize`] expands it.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// Name prefix (`model.layers.0.self_attn.q_proj`), for errors.
    pub prefix: String,
    in_dim: usize,
    out_dim: usize,
    bits: u32,
    v1: bool,
    /// `[in/pack, out]` words, 32/bits values each (low bits first).
    qweight: Vec<i32>,
    /// `[groups, out/pack]` words.
    qzeros: Vec<i32>,
    /// `[groups, out]`, in the checkpoint's dtype (f16 as stored).
    scales: Tensor,
    /// Group of every input row.
    g_idx: Vec<u32>,
}

impl PackedLinear {
    /// Resident bytes.
    pub fn bytes(&self) -> usize {
        self.qweight.len() * 4
            + self.qzeros.len() * 4
            + self.scales.elem_count() * self.scales.dtype().size_in_bytes()
            + self.g_idx.len() * 4
    }

    /// The packed tensors on `dev` (int words as u32, scales as stored, g_idx as u32), for
    /// [`PackedLinear::dequantize_tensors`] to expand there (an int4 layer stays on the GPU).
    pub fn to_device(&self, dev: &Device) -> Result<PackedTensors> {
        let words = |v: &[i32], rows: usize, cols: usize| -> Result<Tensor> {
            let u: Vec<u32> = v.iter().map(|&x| x as u32).collect();
            Ok(Tensor::from_vec(u, (rows, cols), dev)?)
        };
        let pack = (32 / self.bits) as usize;
        let groups = self.scales.dim(0)?;
        Ok(PackedTensors {
            qweight: words(&self.qweight, self.in_dim / pack, self.out_dim)?,
            qzeros: words(&self.qzeros, groups, self.out_dim / pack)?,
            scales: self.scales.to_device(dev)?,
            g_idx: Tensor::from_vec(self.g_idx.clone(), self.in_dim, dev)?,
            bits: self.bits,
            v1: self.v1,
        })
    }

    /// The dequantised weight in our layout `[in, out]`, f32 on the host:
    /// W\[i,o\] = scales\[g_idx\[i\],o\] · (q\[i,o\] − zero\[g_idx\[i\],o\]).
    pub fn dequantize(&self) -> Result<Tensor> {
        let (in_dim, out_dim, bits) = (self.in_dim, self.out_dim, self.bits);
        let pack = (32 / bits) as usize;
        let mask = (1u32 << bits) - 1;
        let scales = self
            .scales
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let zero = |g: usize, o: usize| -> f32 {
            let word = self.qzeros[g * (out_dim / pack) + o / pack] as u32;
            let z = (word >> (bits as usize * (o % pack))) & mask;
            // v1 stores zero − 1 (a zero of 0 cannot be written in v1)
            if self.v1 { (z + 1) as f32 } else { z as f32 }
        };
        let mut w = vec![0f32; in_dim * out_dim];
        for i in 0..in_dim {
            let g = self.g_idx[i] as usize;
            let shift = bits as usize * (i % pack);
            let row = &self.qweight[(i / pack) * out_dim..(i / pack + 1) * out_dim];
            for o in 0..out_dim {
                let qv = ((row[o] as u32) >> shift) & mask;
                w[i * out_dim + o] = scales[g * out_dim + o] * (qv as f32 - zero(g, o));
            }
        }
        Ok(Tensor::from_vec(w, (in_dim, out_dim), &Device::Cpu)?)
    }
}

/// A GPTQ linear's packed tensors on a device: `qweight` u32 `[in/pack, out]`, `qzeros` u32
/// `[groups, out/pack]`, `scales` `[groups, out]` (as stored), `g_idx` u32 `[in]`.
#[derive(Debug, Clone)]
pub struct PackedTensors {
    qweight: Tensor,
    qzeros: Tensor,
    scales: Tensor,
    g_idx: Tensor,
    bits: u32,
    v1: bool,
}

/// The `bits`-bit fields of u32 words, exactly (through f64: every u32 is an exact f64):
/// field k of w = ⌊w / 2^(bits·k)⌋ − 2^bits · ⌊w / 2^(bits·(k+1))⌋. words `[r, c]` → `[r, c, pack]`
/// f32.
fn unpack_fields(words: &Tensor, bits: u32) -> Result<Tensor> {
    let pack = (32 / bits) as usize;
    let w = words.to_dtype(DType::F64)?;
    let step = 2f64.powi(bits as i32);
    let mut fields = Vec::with_capacity(pack);
    let mut below = w.floor()?; // ⌊w / 2^0⌋
    for k in 0..pack {
        let above = (&w / step.powi(k as i32 + 1))?.floor()?;
        fields.push((&below - (&above * step)?)?);
        below = above;
    }
    Ok(Tensor::stack(&fields, 2)?.to_dtype(DType::F32)?)
}

impl PackedTensors {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        [&self.qweight, &self.qzeros, &self.scales, &self.g_idx]
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// The dequantised weight `[in, out]` f32 on the tensors' device, with tensor operations
    /// (the same numbers as [`PackedLinear::dequantize`], bit for bit).
    pub fn dequantize_tensors(&self) -> Result<Tensor> {
        let (rows, out) = self.qweight.dims2()?;
        let pack = (32 / self.bits) as usize;
        // row i of W is field i % pack of word row i / pack
        let q = unpack_fields(&self.qweight, self.bits)? // [rows, out, pack]
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows * pack, out))?;
        let (groups, zc) = self.qzeros.dims2()?;
        // column o of the zeros is field o % pack of word column o / pack
        let mut z = unpack_fields(&self.qzeros, self.bits)?.reshape((groups, zc * pack))?;
        if self.v1 {
            z = (z + 1.0)?;
        }
        let zg = z.index_select(&self.g_idx, 0)?; // [in, out]
        let sg = self
            .scales
            .to_dtype(DType::F32)?
            .index_select(&self.g_idx, 0)?;
        Ok(sg.mul(&(q - zg)?)?)
    }
}

/// Reads and checks the packed tensors of linear `prefix` (`model.layers.0.self_attn.q_proj`).
pub fn read_packed(
    files: &WeightFiles,
    q: &GptqConfig,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
) -> Result<PackedLinear> {
    let pack = q.pack();
    let bits = q.bits;
    ensure!(
        in_dim.is_multiple_of(pack) && out_dim.is_multiple_of(pack),
        "{prefix}: in {in_dim} and out {out_dim} must be multiples of {pack} for {bits}-bit GPTQ"
    );
    let qweight = ints(
        files,
        &format!("{prefix}.qweight"),
        &[in_dim / pack, out_dim],
    )?;
    let g_name = format!("{prefix}.g_idx");
    let g_idx: Vec<u32> = if files.contains(&g_name) {
        ints(files, &g_name, &[in_dim])?
            .into_iter()
            .map(|g| u32::try_from(g).with_context(|| format!("{g_name}: negative group {g}")))
            .collect::<Result<_>>()?
    } else {
        let gs = if q.group_size < 0 {
            in_dim
        } else {
            q.group_size as usize
        };
        (0..in_dim).map(|i| (i / gs) as u32).collect()
    };
    let groups = g_idx.iter().copied().max().map_or(0, |m| m as usize + 1);
    let expected_groups = if q.group_size < 0 {
        1
    } else {
        in_dim.div_ceil(q.group_size as usize)
    };
    ensure!(
        groups <= expected_groups,
        "{g_name}: group {} out of range ({expected_groups} groups)",
        groups - 1
    );
    let qzeros = ints(
        files,
        &format!("{prefix}.qzeros"),
        &[expected_groups, out_dim / pack],
    )?;
    let s_name = format!("{prefix}.scales");
    let (s_dtype, _, _) = files.raw(&s_name)?;
    let keep = if s_dtype == safetensors::Dtype::F16 {
        DType::F16
    } else {
        DType::F32
    };
    let scales = files.tensor(&s_name, &[expected_groups, out_dim], keep, &Device::Cpu)?;
    Ok(PackedLinear {
        prefix: prefix.to_string(),
        in_dim,
        out_dim,
        bits,
        v1: q.checkpoint_format == "gptq",
        qweight,
        qzeros,
        scales,
        g_idx,
    })
}

/// The dequantised weight of linear `prefix` in our layout `[in, out]`, f32 on the host.
pub fn dequantize(
    files: &WeightFiles,
    q: &GptqConfig,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
) -> Result<Tensor> {
    read_packed(files, q, prefix, in_dim, out_dim)?.dequantize()
}

/// How [`write_gptq`] quantises a dense checkpoint.
#[derive(Clone, Debug)]
pub struct GptqWriteOptions {
    /// 4 or 8.
    pub bits: u32,
    /// Rows per group, −1 = one group.
    pub group_size: i64,
    /// Symmetric (zero = 2^(bits−1)) or asymmetric (zero from the group's range including 0).
    pub sym: bool,
    /// Assign rows to groups through a permutation (rows by decreasing L2 norm), as desc_act.
    pub desc_act: bool,
    /// `gptq` (v1) or `gptq_v2`.
    pub checkpoint_format: String,
    /// Pad the MLP's intermediate size with zero rows/columns to this size (0: no padding), as
    /// Qwen's 72B GPTQ checkpoint pads 29,568 to 29,696; the config says the padded size.
    pub pad_intermediate: usize,
    /// Write the checkpoint in this many safetensors shards with an index (≤ 1: one file).
    pub shards: usize,
}

/// Round-to-nearest GPTQ of one weight in our layout `[in, out]`: the packed tensors and the
/// weight they stand for, computed here directly from the unpacked values.
struct Quantised {
    qweight: Vec<i32>,
    qzeros: Vec<i32>,
    scales: Vec<f32>,
    g_idx: Vec<i32>,
    dense: Vec<f32>,
}

fn quantise(w: &[f32], in_dim: usize, out_dim: usize, o: &GptqWriteOptions) -> Result<Quantised> {
    let pack = (32 / o.bits) as usize;
    let maxq = ((1u32 << o.bits) - 1) as f32;
    ensure!(
        in_dim.is_multiple_of(pack) && out_dim.is_multiple_of(pack),
        "in {in_dim} and out {out_dim} must be multiples of {pack}"
    );
    let gs = if o.group_size < 0 {
        in_dim
    } else {
        o.group_size as usize
    };
    let groups = in_dim.div_ceil(gs);
    // group of each row: by position in the order of decreasing row norm with desc_act
    let mut order: Vec<usize> = (0..in_dim).collect();
    if o.desc_act {
        let norm = |i: usize| -> f32 {
            w[i * out_dim..(i + 1) * out_dim]
                .iter()
                .map(|x| x * x)
                .sum()
        };
        order.sort_by(|&a, &b| norm(b).total_cmp(&norm(a)).then(a.cmp(&b)));
    }
    let mut g_idx = vec![0i32; in_dim];
    for (rank, &i) in order.iter().enumerate() {
        g_idx[i] = (rank / gs) as i32;
    }
    let mut scales = vec![0f32; groups * out_dim];
    let mut zeros = vec![0u32; groups * out_dim];
    for g in 0..groups {
        let rows: Vec<usize> = (0..in_dim).filter(|&i| g_idx[i] as usize == g).collect();
        for c in 0..out_dim {
            let (mut lo, mut hi) = (0f32, 0f32);
            for &i in &rows {
                lo = lo.min(w[i * out_dim + c]);
                hi = hi.max(w[i * out_dim + c]);
            }
            if o.sym {
                hi = hi.max(-lo);
                lo = -hi;
            }
            let mut scale = (hi - lo) / maxq;
            if scale == 0.0 {
                scale = 1.0;
            }
            // half-precision scales, as the checkpoints store them
            let scale = half::f16::from_f32(scale).to_f32();
            let zero = if o.sym {
                (maxq + 1.0) / 2.0
            } else {
                (-lo / scale).round().clamp(0.0, maxq)
            };
            ensure!(
                !(o.checkpoint_format == "gptq" && zero == 0.0),
                "a zero of 0 cannot be written in the gptq v1 format (use gptq_v2)"
            );
            scales[g * out_dim + c] = scale;
            zeros[g * out_dim + c] = zero as u32;
        }
    }
    let mut qweight = vec![0i32; in_dim / pack * out_dim];
    let mut dense = vec![0f32; in_dim * out_dim];
    for i in 0..in_dim {
        let g = g_idx[i] as usize;
        for c in 0..out_dim {
            let (s, z) = (scales[g * out_dim + c], zeros[g * out_dim + c] as f32);
            let q = (w[i * out_dim + c] / s + z).round().clamp(0.0, maxq);
            let word = &mut qweight[(i / pack) * out_dim + c];
            *word = ((*word as u32) | ((q as u32) << (o.bits as usize * (i % pack)))) as i32;
            dense[i * out_dim + c] = s * (q - z);
        }
    }
    let v1 = o.checkpoint_format == "gptq";
    let mut qzeros = vec![0i32; groups * (out_dim / pack)];
    for g in 0..groups {
        for c in 0..out_dim {
            let z = zeros[g * out_dim + c] - u32::from(v1);
            let word = &mut qzeros[g * (out_dim / pack) + c / pack];
            *word = ((*word as u32) | (z << (o.bits as usize * (c % pack)))) as i32;
        }
    }
    Ok(Quantised {
        qweight,
        qzeros,
        scales,
        g_idx,
        dense,
    })
}

/// Writes a GPTQ checkpoint of the dense model folder `src` into `out`, and its dense twin (the
/// weights the quantised values stand for, f32) into `twin`; tokenizer files are copied to both.
pub fn write_gptq(src: &Path, out: &Path, twin: &Path, o: &GptqWriteOptions) -> Result<()> {
    use std::collections::HashMap;
    let cfg_text = crate::limits::read_text_file(&src.join("config.json"))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg_text)?;
    let raw = candle_core::safetensors::load(src.join(super::loader::SINGLE_FILE), &Device::Cpu)?;
    let inter = cfg["intermediate_size"]
        .as_u64()
        .context("config.json has no intermediate_size")? as usize;
    let pad = o.pad_intermediate;
    ensure!(
        pad == 0 || pad >= inter,
        "pad_intermediate {pad} is below intermediate_size {inter}"
    );
    let mut packed: HashMap<String, Tensor> = HashMap::new();
    let mut dense: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in &raw {
        let quantised = name.starts_with("model.layers.")
            && name.ends_with(".weight")
            && (name.contains("_proj."));
        if !quantised {
            packed.insert(name.clone(), t.clone());
            dense.insert(name.clone(), t.clone());
            continue;
        }
        // zero padding of the MLP: gate/up get zero output rows, down zero input columns
        let (gate_up, down) = (
            name.contains("mlp.gate_proj") || name.contains("mlp.up_proj"),
            name.contains("mlp.down_proj"),
        );
        let padded = if pad > inter && (gate_up || down) {
            let (r, c) = t.dims2()?;
            let dim = usize::from(down);
            let extra = if down {
                (r, pad - inter)
            } else {
                (pad - inter, c)
            };
            Tensor::cat(&[t, &Tensor::zeros(extra, t.dtype(), &Device::Cpu)?], dim)?
        } else {
            t.clone()
        };
        let t = &padded;
        let (out_dim, in_dim) = t.dims2()?;
        let w = t
            .to_dtype(DType::F32)?
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let q = quantise(&w, in_dim, out_dim, o).with_context(|| format!("quantising {name}"))?;
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let pack = (32 / o.bits) as usize;
        let groups = q.scales.len() / out_dim;
        packed.insert(
            format!("{prefix}.qweight"),
            Tensor::from_vec(q.qweight, (in_dim / pack, out_dim), &Device::Cpu)?,
        );
        packed.insert(
            format!("{prefix}.qzeros"),
            Tensor::from_vec(q.qzeros, (groups, out_dim / pack), &Device::Cpu)?,
        );
        packed.insert(
            format!("{prefix}.scales"),
            Tensor::from_vec(q.scales, (groups, out_dim), &Device::Cpu)?.to_dtype(DType::F16)?,
        );
        packed.insert(
            format!("{prefix}.g_idx"),
            Tensor::from_vec(q.g_idx, in_dim, &Device::Cpu)?,
        );
        // HF layout [out, in], the padding cut off again: the twin is the unpadded model
        let mut d = Tensor::from_vec(q.dense, (in_dim, out_dim), &Device::Cpu)?
            .t()?
            .contiguous()?;
        if pad > inter && gate_up {
            d = d.narrow(0, 0, inter)?.contiguous()?;
        } else if pad > inter && down {
            d = d.narrow(1, 0, inter)?.contiguous()?;
        }
        dense.insert(name.clone(), d);
    }
    for (dir, tensors, shards) in [(out, &packed, o.shards.max(1)), (twin, &dense, 1)] {
        std::fs::create_dir_all(dir)?;
        let mut named: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        super::fixture::write_weights(dir, &named, shards)?;
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), dir.join(f))?;
            }
        }
    }
    std::fs::write(twin.join("config.json"), cfg.to_string())?;
    if pad > inter {
        cfg["intermediate_size"] = serde_json::json!(pad);
    }
    cfg["quantization_config"] = serde_json::json!({
        "quant_method": "gptq", "bits": o.bits, "group_size": o.group_size, "desc_act": o.desc_act,
        "sym": o.sym, "checkpoint_format": o.checkpoint_format});
    std::fs::write(out.join("config.json"), cfg.to_string())?;
    Ok(())
}
