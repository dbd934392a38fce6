//! Qwen2 / Llama weights in the layout this crate computes with: every linear weight is stored
//! **pre-transposed and contiguous** as `[in, out]` (HF stores `[out, in]`), so `x @ w_t`
//! runs on a contiguous right-hand side (2–4× faster at small row counts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::gptq::PackedTensors;
use super::loader::WeightFiles;

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// input_layernorm weight `[e]`.
    pub input_norm: Tensor,
    /// q_proj `[e, n·d]` and bias `[n·d]`.
    pub wq_t: Tensor,
    /// q_proj bias `[n·d]`.
    pub bq: Tensor,
    /// k_proj `[e, kvh·d]`.
    pub wk_t: Tensor,
    /// k_proj bias `[kvh·d]`.
    pub bk: Tensor,
    /// v_proj `[e, kvh·d]`.
    pub wv_t: Tensor,
    /// v_proj bias `[kvh·d]`.
    pub bv: Tensor,
    /// o_proj `[n·d, e]` (no bias). Head h's slice is rows h·d..(h+1)·d.
    pub wo_t: Tensor,
    /// post_attention_layernorm weight `[e]`.
    pub post_norm: Tensor,
    /// gate_proj `[e, m]`.
    pub w_gate_t: Tensor,
    /// up_proj `[e, m]`.
    pub w_up_t: Tensor,
    /// down_proj `[m, e]`.
    pub w_down_t: Tensor,
}

/// All weights of a Qwen2 causal LM.
#[derive(Debug, Clone)]
pub struct Weights {
    /// embed_tokens `[v, e]`.
    pub embed: Tensor,
    /// Decoder layers: dense, or GPTQ-packed and dequantised on use.
    layers: Vec<Layer>,
    /// Final norm weight `[e]`.
    pub final_norm: Tensor,
    /// lm_head as `[e, v]`: a contiguous transposed copy when untied, the (strided) transposed
    /// view of `embed` when tied (no extra memory; same speed at large row counts).
    pub lm_head_t: Tensor,
    /// Dequantised packed layers, least recently used dropped beyond the budget.
    cache: Arc<Mutex<DequantCache>>,
}

/// A decoder layer as held.
#[derive(Debug, Clone)]
enum Layer {
    Dense(Arc<LayerWeights>),
    Packed(Box<PackedLayer>),
}

/// A GPTQ layer kept packed on its device: its seven linears as stored, norms and biases dense.
#[derive(Debug, Clone)]
struct PackedLayer {
    input_norm: Tensor,
    post_norm: Tensor,
    bq: Tensor,
    bk: Tensor,
    bv: Tensor,
    /// q, k, v, o, gate, up, down.
    linears: [PackedTensors; 7],
    dtype: DType,
    device: Device,
}

impl PackedLayer {
    fn dequantize(&self) -> Result<LayerWeights> {
        // expanded on the layer's device (a GPU keeps the int words and expands them there)
        let lin = |k: usize| -> Result<Tensor> {
            Ok(self.linears[k].dequantize_tensors()?.to_dtype(self.dtype)?)
        };
        Ok(LayerWeights {
            input_norm: self.input_norm.clone(),
            wq_t: lin(0)?,
            bq: self.bq.clone(),
            wk_t: lin(1)?,
            bk: self.bk.clone(),
            wv_t: lin(2)?,
            bv: self.bv.clone(),
            wo_t: lin(3)?,
            post_norm: self.post_norm.clone(),
            w_gate_t: lin(4)?,
            w_up_t: lin(5)?,
            w_down_t: lin(6)?,
        })
    }
}

/// Dequantised layers of a packed model: (last use, layer, bytes) by layer index.
#[derive(Debug, Default)]
struct DequantCache {
    budget: usize,
    tick: u64,
    layers: HashMap<usize, (u64, Arc<LayerWeights>, usize)>,
    dequantisations: u64,
}

fn layer_bytes(lw: &LayerWeights) -> usize {
    [
        &lw.wq_t,
        &lw.wk_t,
        &lw.wv_t,
        &lw.wo_t,
        &lw.w_gate_t,
        &lw.w_up_t,
        &lw.w_down_t,
    ]
    .iter()
    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
    .sum()
}

fn linear_t(
    files: &WeightFiles,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let prefix = name.strip_suffix(".weight").unwrap_or(name);
    if let Some(q) = files.gptq()
        && files.contains(&format!("{prefix}.qweight"))
    {
        // GPTQ: dequantised straight into our [in, out] layout
        let w = super::gptq::dequantize(files, q, prefix, in_dim, out_dim)?;
        return Ok(w.to_dtype(dtype)?.to_device(dev)?);
    }
    // HF layout [out, in] -> ours [in, out], contiguous.
    let w = files.tensor(name, &[out_dim, in_dim], dtype, dev)?;
    Ok(w.t()?.contiguous()?)
}

impl Weights {
    /// Weights from dense tensors in our layout (tests, hand-built models).
    pub fn new(
        embed: Tensor,
        layers: Vec<LayerWeights>,
        final_norm: Tensor,
        lm_head_t: Tensor,
    ) -> Self {
        Self {
            embed,
            layers: layers
                .into_iter()
                .map(|l| Layer::Dense(Arc::new(l)))
                .collect(),
            final_norm,
            lm_head_t,
            cache: Arc::default(),
        }
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `l`'s weights: held, or (a packed GPTQ layer) dequantised now or taken from
    /// the cache of dequantised layers.
    pub fn layer(&self, l: usize) -> Result<Arc<LayerWeights>> {
        let layer = self.layers.get(l).ok_or_else(|| {
            anyhow!(
                "layer {l} out of range (the model has {} layers)",
                self.layers.len()
            )
        })?;
        let p = match layer {
            Layer::Dense(w) => return Ok(w.clone()),
            Layer::Packed(p) => p,
        };
        let mut c = self
            .cache
            .lock()
            .map_err(|_| anyhow!("dequantised-layer cache lock poisoned"))?;
        c.tick += 1;
        let tick = c.tick;
        if let Some(e) = c.layers.get_mut(&l) {
            e.0 = tick;
            return Ok(e.1.clone());
        }
        let w = Arc::new(p.dequantize()?);
        let bytes = layer_bytes(&w);
        c.dequantisations += 1;
        c.layers.insert(l, (tick, w.clone(), bytes));
        // drop the least recently used beyond the budget (never the layer just made)
        let mut used: usize = c.layers.values().map(|e| e.2).sum();
        while used > c.budget {
            let Some((&victim, _)) = c
                .layers
                .iter()
                .filter(|(k, _)| **k != l)
                .min_by_key(|(_, e)| e.0)
            else {
                break;
            };
            used -= c.layers.remove(&victim).map_or(0, |e| e.2);
        }
        Ok(w)
    }

    /// Device of decoder layer `l`'s weights.
    pub fn layer_device(&self, l: usize) -> Result<Device> {
        match self.layers.get(l) {
            Some(Layer::Dense(w)) => Ok(w.wq_t.device().clone()),
            Some(Layer::Packed(p)) => Ok(p.device.clone()),
            None => Err(anyhow!("layer {l} out of range")),
        }
    }

    /// Whether the decoder layers are kept GPTQ-packed (dequantised on use).
    pub fn is_packed(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, Layer::Packed(_)))
    }

    /// (bytes of the packed layers, bytes of dequantised layers held, dequantisations so far).
    pub fn packed_stats(&self) -> (usize, usize, u64) {
        let packed = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::Packed(p) => p.linears.iter().map(PackedTensors::bytes).sum(),
                Layer::Dense(_) => 0,
            })
            .sum();
        let (held, n) = self
            .cache
            .lock()
            .map(|c| (c.layers.values().map(|e| e.2).sum(), c.dequantisations))
            .unwrap_or((0, 0));
        (packed, held, n)
    }

    /// Loads all weights with HF names (`model.layers.{l}.self_attn.q_proj.weight`, …),
    /// converting to `dtype` on `dev`. A missing `lm_head.weight` with tied embeddings uses the
    /// embedding; with untied embeddings it is an error.
    pub fn load(
        files: &WeightFiles,
        cfg: &ModelConfig,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        Self::load_with(files, cfg, dtype, dev, None, &[])
    }

    /// [`Weights::load`]; with `packed = Some(budget)` a GPTQ checkpoint's decoder layers stay
    /// packed and are dequantised one layer at a time when used, keeping up to `budget` bytes of
    /// dequantised layers (at least the one in use). `layer_devs` (empty: every layer on
    /// `dev`) puts decoder layer l on `layer_devs[l]`; embeddings, final norm and lm_head stay on
    /// `dev`.
    pub fn load_with(
        files: &WeightFiles,
        cfg: &ModelConfig,
        dtype: DType,
        home: &Device,
        packed: Option<usize>,
        layer_devs: &[Device],
    ) -> Result<Self> {
        anyhow::ensure!(
            layer_devs.is_empty() || layer_devs.len() == cfg.num_hidden_layers,
            "a device map of {} layers for a model of {}",
            layer_devs.len(),
            cfg.num_hidden_layers
        );
        let dev = home;
        // the decoder layers' projections may be held narrower than the compute dtype
        let wdt = files.weights_dtype().unwrap_or(dtype);
        let e = cfg.hidden_size;
        let m = cfg.intermediate_size;
        let nd = cfg.num_attention_heads * cfg.head_dim();
        let kvd = cfg.num_kv_heads() * cfg.head_dim();
        let v = cfg.vocab_size;
        let embed = files.tensor("model.embed_tokens.weight", &[v, e], dtype, dev)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let dev = layer_devs.get(l).unwrap_or(home);
            let p = format!("model.layers.{l}");
            let vec = |name: &str, n: usize| files.tensor(&format!("{p}.{name}"), &[n], dtype, dev);
            let lin = |name: &str, o: usize, i: usize| {
                linear_t(files, &format!("{p}.{name}.weight"), o, i, wdt, dev)
            };
            // Llama-style checkpoints have no q/k/v biases: a zero bias adds exactly nothing
            let bias = |name: &str, n: usize| {
                if cfg.has_qkv_bias() {
                    vec(name, n)
                } else {
                    Ok(Tensor::zeros(n, dtype, dev)?)
                }
            };
            if let (Some(q), Some(_)) = (files.gptq(), packed)
                && files.contains(&format!("{p}.self_attn.q_proj.qweight"))
            {
                let pk = |name: &str, o: usize, i: usize| {
                    super::gptq::read_packed(files, q, &format!("{p}.{name}"), i, o)?.to_device(dev)
                };
                layers.push(Layer::Packed(Box::new(PackedLayer {
                    input_norm: vec("input_layernorm.weight", e)?,
                    post_norm: vec("post_attention_layernorm.weight", e)?,
                    bq: bias("self_attn.q_proj.bias", nd)?,
                    bk: bias("self_attn.k_proj.bias", kvd)?,
                    bv: bias("self_attn.v_proj.bias", kvd)?,
                    linears: [
                        pk("self_attn.q_proj", nd, e)?,
                        pk("self_attn.k_proj", kvd, e)?,
                        pk("self_attn.v_proj", kvd, e)?,
                        pk("self_attn.o_proj", e, nd)?,
                        pk("mlp.gate_proj", m, e)?,
                        pk("mlp.up_proj", m, e)?,
                        pk("mlp.down_proj", e, m)?,
                    ],
                    dtype,
                    device: dev.clone(),
                })));
                continue;
            }
            layers.push(Layer::Dense(Arc::new(LayerWeights {
                input_norm: vec("input_layernorm.weight", e)?,
                wq_t: lin("self_attn.q_proj", nd, e)?,
                bq: bias("self_attn.q_proj.bias", nd)?,
                wk_t: lin("self_attn.k_proj", kvd, e)?,
                bk: bias("self_attn.k_proj.bias", kvd)?,
                wv_t: lin("self_attn.v_proj", kvd, e)?,
                bv: bias("self_attn.v_proj.bias", kvd)?,
                wo_t: lin("self_attn.o_proj", e, nd)?,
                post_norm: vec("post_attention_layernorm.weight", e)?,
                w_gate_t: lin("mlp.gate_proj", m, e)?,
                w_up_t: lin("mlp.up_proj", m, e)?,
                w_down_t: lin("mlp.down_proj", e, m)?,
            })));
        }
        let final_norm = files.tensor("model.norm.weight", &[e], dtype, dev)?;
        let lm_head_t = if cfg.tie_word_embeddings {
            embed.t()?
        } else {
            linear_t(files, "lm_head.weight", v, e, dtype, dev)?
        };
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head_t,
            cache: Arc::new(Mutex::new(DequantCache {
                budget: packed.unwrap_or(0),
                ..Default::default()
            })),
        })
    }
}

impl Weights {
    /// A weight by its Hugging Face name in HF layout (`[out, in]` for linear weights), f32, or
    /// only the given rows of dim 0 (`rows`: e.g. the unembedding rows of a few tokens).
    pub fn by_name(&self, cfg: &ModelConfig, name: &str, rows: Option<&[usize]>) -> Result<Tensor> {
        use anyhow::{anyhow, bail, ensure};
        let unknown = || {
            anyhow!(
                "no weight {name:?} (names as in Hugging Face checkpoints: model.embed_tokens.weight, \
                 lm_head.weight, model.norm.weight, model.layers.{{l}}.self_attn.q_proj.weight, …)"
            )
        };
        let t: Tensor = match name {
            "model.embed_tokens.weight" => self.embed.clone(),
            "lm_head.weight" => self.lm_head_t.t()?,
            "model.norm.weight" => self.final_norm.clone(),
            _ => {
                let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
                let (l, part) = rest.split_once('.').ok_or_else(unknown)?;
                let l: usize = l.parse().map_err(|_| unknown())?;
                ensure!(
                    l < self.layers.len(),
                    "weight {name:?}: layer {l} out of range (model has {} layers)",
                    self.layers.len()
                );
                let lw = self.layer(l)?;
                let bias = |b: &Tensor| -> Result<Tensor> {
                    if !cfg.has_qkv_bias() {
                        bail!("weight {name:?}: this model has no q/k/v biases");
                    }
                    Ok(b.clone())
                };
                match part {
                    "input_layernorm.weight" => lw.input_norm.clone(),
                    "post_attention_layernorm.weight" => lw.post_norm.clone(),
                    "self_attn.q_proj.weight" => lw.wq_t.t()?,
                    "self_attn.k_proj.weight" => lw.wk_t.t()?,
                    "self_attn.v_proj.weight" => lw.wv_t.t()?,
                    "self_attn.o_proj.weight" => lw.wo_t.t()?,
                    "self_attn.q_proj.bias" => bias(&lw.bq)?,
                    "self_attn.k_proj.bias" => bias(&lw.bk)?,
                    "self_attn.v_proj.bias" => bias(&lw.bv)?,
                    "mlp.gate_proj.weight" => lw.w_gate_t.t()?,
                    "mlp.up_proj.weight" => lw.w_up_t.t()?,
                    "mlp.down_proj.weight" => lw.w_down_t.t()?,
                    _ => return Err(unknown()),
                }
            }
        };
        let t = match rows {
            None => t,
            Some(r) => {
                let n = t.dim(0)?;
                if let Some(&bad) = r.iter().find(|&&i| i >= n) {
                    bail!("weight {name:?}: row {bad} out of range ({n} rows)");
                }
                // rows of a transposed view: select columns of the stored [in, out] layout
                if t.is_contiguous() {
                    t.index_select(&super::ops::index_tensor(r, t.device())?, 0)?
                } else {
                    t.t()?
                        .index_select(&super::ops::index_tensor(r, t.device())?, 1)?
                        .t()?
                }
            }
        };
        Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}
