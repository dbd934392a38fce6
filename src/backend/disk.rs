//! The activation store on disk: one safetensors file per cached sample (its captured tensors,
//! with the sample's input, token ids, capture spec and the model's fingerprint as JSON
//! metadata) and an `index.json` per saved dataset. [`super::Local`] saves and reloads whole
//! datasets with it and spills evicted samples to it instead of dropping them.
//!
//! Tensor names: `hidden_states.{l}` `[1,k,e]` (l in 0..=L), `attn_outs.{l}` `[1,k,n,d]`,
//! `mlp_outputs.{l}` `[1,k,e]`, `input_norm_vars.{l}` / `post_attn_norm_vars.{l}` `[1,k,1]`,
//! `final_norm_var` `[1,k,1]`, `logits` `[1,k,v]`, as in [`Outputs`]. Every file is checked
//! against the model and its own description before it is used: a file of another model, a
//! damaged file or a shape that does not match is an error naming the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{CachedSample, SampleInput};
use crate::model::config::{ModelConfig, parse_dtype};
use crate::model::outputs::{CaptureSpec, Outputs};
use crate::model::qwen2::Qwen2;

/// Version of the file layout.
pub const FORMAT: u32 = 1;
/// Safetensors metadata key of a sample file's description.
const META_KEY: &str = "minarc_sample";
/// The index of a saved dataset.
pub const INDEX: &str = "index.json";

/// FNV-1a, 64 bits.
fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// A fingerprint of the model: its config and a sample of its weights (the first, middle and
/// last embedding rows and the final norm), so activations are never read into another model.
pub fn model_fingerprint(model: &Qwen2) -> Result<String> {
    let cfg = model.config();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut h, serde_json::to_string(cfg)?.as_bytes());
    let v = cfg.vocab_size;
    let rows = [0, v / 2, v - 1];
    for (name, rows) in [
        ("model.embed_tokens.weight", Some(&rows[..])),
        ("model.norm.weight", None),
    ] {
        let t = model.weights().by_name(cfg, name, rows)?;
        for x in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            fnv1a(&mut h, &x.to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}

/// What a sample file says about itself.
#[derive(Serialize, Deserialize, Debug)]
struct SampleMeta {
    format: u32,
    model: String,
    dataset: String,
    input: SampleInput,
    token_ids: Vec<u32>,
    capture_layers: Option<Vec<usize>>,
    capture_positions: Option<Vec<usize>>,
    capture_dtype: String,
    capture_logits: bool,
}

/// The index of a saved dataset.
#[derive(Serialize, Deserialize, Debug)]
pub struct Index {
    /// [`FORMAT`].
    pub format: u32,
    /// [`model_fingerprint`] of the model that computed the activations.
    pub model: String,
    /// The dataset's name when it was saved.
    pub dataset: String,
    /// Sample indices, each in `sample-{index}.safetensors`.
    pub samples: Vec<usize>,
}

/// File of sample `index` in a saved dataset's folder.
pub fn sample_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("sample-{index:06}.safetensors"))
}

/// Writes one sample (atomically: a temporary file renamed into place).
pub fn write_sample(path: &Path, model: &str, dataset: &str, s: &CachedSample) -> Result<()> {
    let o = &s.outputs;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, t: &Option<Tensor>| {
        if let Some(t) = t {
            tensors.push((name, t.clone()));
        }
    };
    for (l, t) in o.hidden_states.iter().enumerate() {
        put(format!("hidden_states.{l}"), t);
    }
    for (l, t) in o.attn_outs.iter().enumerate() {
        put(format!("attn_outs.{l}"), t);
    }
    for (l, t) in o.mlp_outputs.iter().enumerate() {
        put(format!("mlp_outputs.{l}"), t);
    }
    for (l, t) in o.input_norm_vars.iter().enumerate() {
        put(format!("input_norm_vars.{l}"), t);
    }
    for (l, t) in o.post_attn_norm_vars.iter().enumerate() {
        put(format!("post_attn_norm_vars.{l}"), t);
    }
    put("final_norm_var".into(), &o.final_norm_var);
    put("logits".into(), &o.logits);
    let meta = SampleMeta {
        format: FORMAT,
        model: model.to_string(),
        dataset: dataset.to_string(),
        input: s.input.clone(),
        token_ids: s.token_ids.clone(),
        capture_layers: s.capture.layers.clone(),
        capture_positions: s.capture.positions.clone(),
        capture_dtype: s.capture.dtype.as_str().to_string(),
        capture_logits: s.capture.logits,
    };
    let mut md = HashMap::new();
    md.insert(META_KEY.to_string(), serde_json::to_string(&meta)?);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(data, Some(md), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A safetensors file written with a JSON description under `key` in its metadata, mapped
/// read-only (refused over `max_bytes` or beyond the memory available now), and that description.
/// `what` names the kind of file in errors ("activation file").
pub fn open_described(
    path: &Path,
    key: &str,
    what: &str,
    max_bytes: u64,
) -> Result<(memmap2::Mmap, String)> {
    let ctx = || format!("reading {what} {}", path.display());
    let file = std::fs::File::open(path).with_context(ctx)?;
    let len = file.metadata().with_context(ctx)?.len();
    ensure!(
        len <= max_bytes,
        "{}: {} is over the limit of {} for a {what}",
        path.display(),
        crate::limits::fmt_bytes(len as u128),
        crate::limits::fmt_bytes(max_bytes as u128)
    );
    crate::limits::check_alloc(len as u128, what).with_context(ctx)?;
    // SAFETY: mapped read-only; minarc does not modify these files while it reads them.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(ctx)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&mmap)
        .map_err(|e| anyhow!("{e}"))
        .with_context(ctx)?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .ok_or_else(|| anyhow!("no {key} description: not a minarc {what}"))
        .with_context(ctx)?
        .clone();
    Ok((mmap, text))
}

/// Reads a sample written by [`write_sample`] for the model `cfg` with fingerprint `model`;
/// returns the dataset name it was saved under and the sample.
pub fn read_sample(path: &Path, cfg: &ModelConfig, model: &str) -> Result<(String, CachedSample)> {
    let ctx = || format!("reading saved activations {}", path.display());
    let (mmap, text) = open_described(path, META_KEY, "activation file", u64::MAX)?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow!("{e}"))
        .with_context(ctx)?;
    let meta: SampleMeta = serde_json::from_str(&text).with_context(ctx)?;
    ensure!(
        meta.format == FORMAT,
        "{}: format {} (this minarc reads {FORMAT})",
        path.display(),
        meta.format
    );
    ensure!(
        meta.model == model,
        "{}: computed by another model (fingerprint {}, this model {model})",
        path.display(),
        meta.model
    );
    let outputs = build_outputs(&st, &meta, cfg).with_context(ctx)?;
    let capture = CaptureSpec {
        layers: meta.capture_layers,
        positions: meta.capture_positions,
        dtype: parse_dtype(&meta.capture_dtype)?,
        logits: meta.capture_logits,
    };
    Ok((
        meta.dataset,
        CachedSample {
            input: meta.input,
            token_ids: meta.token_ids,
            outputs,
            capture,
        },
    ))
}

/// The Outputs of a file, every tensor's presence, dtype and shape checked against the capture
/// spec it describes and the model.
fn build_outputs(
    st: &safetensors::SafeTensors,
    meta: &SampleMeta,
    cfg: &ModelConfig,
) -> Result<Outputs> {
    let nl = cfg.num_hidden_layers;
    let s = meta.token_ids.len();
    ensure!(s >= 1, "no tokens");
    ensure!(
        s <= cfg.max_position_embeddings,
        "{s} tokens exceed max_position_embeddings"
    );
    let spec = CaptureSpec {
        layers: meta.capture_layers.clone(),
        positions: meta.capture_positions.clone(),
        dtype: parse_dtype(&meta.capture_dtype)?,
        logits: meta.capture_logits,
    };
    spec.validate(nl, s)?;
    let k = spec.positions.as_ref().map_or(s, Vec::len);
    let (e, v) = (cfg.hidden_size, cfg.vocab_size);
    let (n, d) = (cfg.num_attention_heads, cfg.head_dim());
    let get = |name: &str, want: bool, shape: &[usize], dtype: DType| -> Result<Option<Tensor>> {
        let view = st.tensor(name);
        match (want, view) {
            (false, Err(_)) => Ok(None),
            (false, Ok(_)) => bail!("tensor {name} is not part of the capture it describes"),
            (true, Err(_)) => bail!("tensor {name} is missing"),
            (true, Ok(view)) => {
                ensure!(
                    view.shape() == shape,
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    view.shape()
                );
                let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)?;
                ensure!(
                    t.dtype() == dtype,
                    "tensor {name} is {:?}, expected {dtype:?}",
                    t.dtype()
                );
                Ok(Some(t))
            }
        }
    };
    let dt = spec.dtype;
    let mut o = Outputs {
        seq_len: s,
        positions: spec.positions.clone(),
        dtype: dt,
        hidden_states: Vec::with_capacity(nl + 1),
        attn_outs: Vec::with_capacity(nl),
        mlp_outputs: Vec::with_capacity(nl),
        input_norm_vars: Vec::with_capacity(nl),
        post_attn_norm_vars: Vec::with_capacity(nl),
        final_norm_var: None,
        logits: None,
    };
    for l in 0..nl {
        let w = spec.has_layer(l);
        o.hidden_states
            .push(get(&format!("hidden_states.{l}"), w, &[1, k, e], dt)?);
        o.attn_outs
            .push(get(&format!("attn_outs.{l}"), w, &[1, k, n, d], dt)?);
        o.mlp_outputs
            .push(get(&format!("mlp_outputs.{l}"), w, &[1, k, e], dt)?);
        o.input_norm_vars.push(get(
            &format!("input_norm_vars.{l}"),
            w,
            &[1, k, 1],
            DType::F32,
        )?);
        o.post_attn_norm_vars.push(get(
            &format!("post_attn_norm_vars.{l}"),
            w,
            &[1, k, 1],
            DType::F32,
        )?);
    }
    let w = spec.has_layer(nl);
    o.hidden_states
        .push(get(&format!("hidden_states.{nl}"), w, &[1, k, e], dt)?);
    o.final_norm_var = get("final_norm_var", w, &[1, k, 1], DType::F32)?;
    o.logits = get("logits", spec.logits, &[1, k, v], DType::F32)?;
    Ok(o)
}

/// Writes a dataset's index (after its sample files).
pub fn write_index(dir: &Path, index: &Index) -> Result<()> {
    let path = dir.join(INDEX);
    let tmp = dir.join(format!("{INDEX}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(index)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a dataset's index.
pub fn read_index(dir: &Path) -> Result<Index> {
    let path = dir.join(INDEX);
    let text = crate::limits::read_text_file(&path).with_context(|| {
        format!(
            "{} has no readable {INDEX}: not a folder written by save_activations",
            dir.display()
        )
    })?;
    let index: Index =
        serde_json::from_str(&text).with_context(|| format!("malformed {}", path.display()))?;
    ensure!(
        index.format == FORMAT,
        "{}: format {} (this minarc reads {FORMAT})",
        path.display(),
        index.format
    );
    crate::limits::COUNT
        .check(index.samples.len(), "saved samples")
        .map_err(|e| anyhow!("{e}"))?;
    Ok(index)
}

/// The spill file of an evicted sample: the dataset name hashed (any text is a valid name).
pub fn spill_path(dir: &Path, dataset: &str, index: usize) -> PathBuf {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut h, dataset.as_bytes());
    dir.join(format!("{h:016x}-{index:06}.safetensors"))
}
