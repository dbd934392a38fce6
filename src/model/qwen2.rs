//! Our own Qwen2 decoder (candle-core/candle-nn 0.11): a fast plain forward and a forward with
//! activation capture (M1–M3). Component functions for attribution live in `components.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::intervene::LayerEdits;
use super::loader::{LoadOptions, WeightFiles};
use super::ops::{NEG_MASK, causal_softmax_from, linear, rms_apply, rms_variance, swiglu};
use super::outputs::{CaptureSpec, Outputs, store};
use super::weights::{LayerWeights, Weights};

/// A Qwen2 causal LM with the weights in our layout (see [`Weights`]).
pub struct Qwen2 {
    pub(crate) cfg: ModelConfig,
    pub(crate) w: Weights,
    /// RoPE inverse frequencies θ^(−2i/d) `[d/2]` (f32, as HF computes them); the cos/sin
    /// rows are computed for the positions calls need, so nothing is sized from
    /// `max_position_embeddings`.
    inv_freq: Vec<f32>,
    /// CPU cos/sin rows `[n, d/2]` of positions 0..n, grown to the longest prompt seen: the
    /// component calls of the analysis ask for them once per head and sample.
    rope_cache: std::sync::Mutex<Option<(Tensor, Tensor)>>,
    pub(crate) dtype: DType,
    /// The home device: embeddings, final norm, lm_head, and where component results return.
    pub(crate) device: Device,
    /// Device of each decoder layer (the home device unless a device map was given).
    layer_devices: Vec<Device>,
    path: Option<PathBuf>,
    /// The dtype the decoder projections are held in when it differs from `dtype`.
    weights_dtype: Option<DType>,
}

/// Per-layer intermediate results of one decoder layer in the forward.
struct LayerOut {
    /// `[b,s,n,d]` (None when an edited pattern took the component path).
    attn_out: Option<Tensor>,
    mlp_output: Tensor,
    input_var: Tensor,
    post_var: Tensor,
}

/// Each layer's device from the load options' device map (empty without one); the map's first
/// device is the load's device (the home device).
fn layer_devices(opts: &LoadOptions, n_layers: usize, device: &Device) -> Result<Vec<Device>> {
    let Some(spec) = &opts.device_map else {
        return Ok(Vec::new());
    };
    super::config::parse_device_map(spec, n_layers, device)
}

/// The compute dtypes the model runs in.
fn check_compute_dtype(dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        bail!("compute dtype {dtype:?} not supported (f32, f16 or bf16)");
    }
    Ok(())
}

impl Qwen2 {
    /// Loads a HF folder (config.json + model.safetensors or shards) or a `.gguf` file in compute `dtype` on `device`
    /// with the default [`LoadOptions`] (weights scanned for NaN/inf).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(dir, dtype, device, &LoadOptions::default())
    }

    /// As [`Qwen2::load`] with explicit [`LoadOptions`].
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        check_compute_dtype(dtype)?;
        if super::gguf::is_gguf(dir) {
            return Self::from_gguf(super::gguf::read(dir)?, dtype, device, opts);
        }
        super::ops::tune_allocator();
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let gptq = super::gptq::GptqConfig::of_folder(dir, cfg.quantization_config.as_ref())
            .with_context(|| format!("model {}", dir.display()))?;
        // packed GPTQ: the embeddings and lm_head dense, the layers at bits/8 bytes a weight
        let packed = gptq.as_ref().and(opts.gptq_packed);
        let bytes = match (&gptq, packed) {
            (Some(q), Some(budget)) => {
                let layers = (cfg.num_params() - cfg.vocab_size * cfg.hidden_size * 2) as u128;
                layers * q.bits as u128 / 8
                    + (cfg.vocab_size * cfg.hidden_size * 2 * dtype.size_in_bytes()) as u128
                    + budget as u128
            }
            _ => cfg.num_params() as u128 * dtype.size_in_bytes() as u128,
        };
        crate::limits::check_alloc(
            bytes,
            &format!(
                "loading {} ({} parameters)",
                dir.display(),
                cfg.num_params()
            ),
        )?;
        let files = WeightFiles::open(dir)?.with_options(opts).with_gptq(gptq);
        let layer_devs = layer_devices(opts, cfg.num_hidden_layers, device)?;
        let w = Weights::load_with(&files, &cfg, dtype, device, packed, &layer_devs)
            .with_context(|| format!("loading model weights from {}", dir.display()))?;
        let mut m = Self::from_weights(cfg, w, dtype, device)?;
        m.path = Some(dir.to_path_buf());
        m.weights_dtype = opts.weights_dtype.filter(|w| *w != dtype);
        Ok(m)
    }

    /// Builds a model from a GGUF file read with [`super::gguf::read`] (its tensors are moved
    /// into the model's weights).
    pub fn from_gguf(
        g: super::gguf::GgufModel,
        dtype: DType,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        check_compute_dtype(dtype)?;
        super::ops::tune_allocator();
        let files = WeightFiles::from_tensors(g.path.clone(), g.tensors).with_options(opts);
        let layer_devs = layer_devices(opts, g.config.num_hidden_layers, device)?;
        let w = Weights::load_with(&files, &g.config, dtype, device, None, &layer_devs)
            .with_context(|| format!("loading model weights from {}", g.path.display()))?;
        drop(files);
        let mut m = Self::from_weights(g.config, w, dtype, device)?;
        m.path = Some(g.path);
        m.weights_dtype = opts.weights_dtype.filter(|w| *w != dtype);
        Ok(m)
    }

    /// Builds a model from already loaded weights.
    pub fn from_weights(
        cfg: ModelConfig,
        w: Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let inv_freq = rope_inv_freq(&cfg);
        let layer_devices = (0..w.num_layers())
            .map(|l| w.layer_device(l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            w,
            inv_freq,
            rope_cache: std::sync::Mutex::new(None),
            dtype,
            device: device.clone(),
            layer_devices,
            path: None,
            weights_dtype: None,
        })
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// The weights (pre-transposed layout).
    pub fn weights(&self) -> &Weights {
        &self.w
    }
    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The folder it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// "path, dtype, device" for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} layers, hidden {}, {} heads / {} kv heads), {:?}{} on {:?}",
            self.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<in-memory>".into()),
            self.cfg.num_hidden_layers,
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.num_kv_heads(),
            self.dtype,
            self.weights_dtype
                .map(|w| format!(" (projection weights {w:?})"))
                .unwrap_or_default(),
            self.device.location()
        )
    }

    /// Moves/converts a tensor to the compute device and dtype (no-op when already there).
    pub(crate) fn prep(&self, x: &Tensor) -> Result<Tensor> {
        self.prep_on(x, &self.device)
    }

    /// x on `dev` in the compute dtype.
    pub(crate) fn prep_on(&self, x: &Tensor, dev: &Device) -> Result<Tensor> {
        Ok(x.to_device(dev)?.to_dtype(self.dtype)?)
    }

    /// A component's result back on the home device.
    pub(crate) fn home(&self, x: Tensor) -> Result<Tensor> {
        Ok(x.to_device(&self.device)?)
    }

    /// Device of decoder layer `l` (the home device for an index out of range).
    pub fn layer_device(&self, l: usize) -> &Device {
        self.layer_devices.get(l).unwrap_or(&self.device)
    }

    /// Each decoder layer's device.
    pub fn layer_devices(&self) -> &[Device] {
        &self.layer_devices
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            bail!("empty token sequence");
        }
        if ids.len() > self.cfg.max_position_embeddings {
            bail!(
                "sequence of {} tokens exceeds max_position_embeddings {}",
                ids.len(),
                self.cfg.max_position_embeddings
            );
        }
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            bail!(
                "token id {t} out of range (vocab size {})",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    /// Embeddings `[1,s,e]` of token ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids)?;
        let t = Tensor::new(ids, &self.device)?;
        Ok(self.w.embed.index_select(&t, 0)?.unsqueeze(0)?)
    }

    /// Plain forward (no capture): the final-normed hidden states `[1,s,e]` (HF `model.model`).
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let s = ids.len();
        let mut x = self.embed(ids)?;
        let mut mask = self.causal_mask_off_cpu(s)?;
        for l in 0..self.w.num_layers() {
            crate::cancel::check()?;
            let lw = self.w.layer(l)?;
            (x, mask) = self.to_layer(l, x, mask)?;
            let (h, _) = self.layer_forward(&lw, &x, mask.as_ref())?;
            x = h;
        }
        let x = self.home(x)?;
        let var = rms_variance(&x)?;
        rms_apply(&x, &var, &self.w.final_norm, self.cfg.rms_norm_eps)
    }

    /// Plain forward returning logits `[1,s,v]` at every position (f32).
    pub fn forward_logits(&self, ids: &[u32]) -> Result<Tensor> {
        let h = self.forward(ids)?;
        Ok(linear(&h, &self.w.lm_head_t, None)?.to_dtype(DType::F32)?)
    }

    /// Forward with capture (M2): stores what `spec` selects in an [`Outputs`] on the CPU.
    pub fn forward_capture(&self, ids: &[u32], spec: &CaptureSpec) -> Result<Outputs> {
        let mut out = self.forward_capture_batch(&[ids], std::slice::from_ref(spec))?;
        out.pop().context("a batch of one gave no outputs")
    }

    /// Forward with capture of several sequences in one batch: each is right-padded to the
    /// longest, so under the causal mask a real query only ever sees real keys, and each
    /// sample's [`Outputs`] equal those of its own [`Qwen2::forward_capture`] (up to the
    /// summation order of the batched products). `specs[k]` is sequence k's capture.
    pub fn forward_capture_batch(
        &self,
        seqs: &[&[u32]],
        specs: &[CaptureSpec],
    ) -> Result<Vec<Outputs>> {
        if seqs.is_empty() || seqs.len() != specs.len() {
            bail!(
                "a batched forward needs one capture spec per sequence ({} sequences, {} specs)",
                seqs.len(),
                specs.len()
            );
        }
        let n_layers = self.cfg.num_hidden_layers;
        let b = seqs.len();
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let s_max = lens.iter().copied().max().unwrap_or(0);
        for (ids, spec) in seqs.iter().zip(specs) {
            self.check_ids(ids)?;
            spec.validate(n_layers, ids.len())?;
        }
        if b > 1 {
            // the largest working tensor: the MLP's gate/up activations [b, s, intermediate]
            crate::limits::check_tensor(
                &[
                    b,
                    s_max,
                    self.cfg.intermediate_size.max(self.cfg.hidden_size),
                ],
                self.dtype.size_in_bytes() * 3,
                "a batched forward's MLP activations",
            )?;
        }
        // the padding token: any valid id (its rows are never read)
        let mut flat = Vec::with_capacity(b * s_max);
        for ids in seqs {
            flat.extend_from_slice(ids);
            flat.resize(flat.len() + s_max - ids.len(), 0);
        }
        let ids_t = Tensor::from_vec(flat, (b, s_max), &self.device)?;
        let mut x = self
            .w
            .embed
            .index_select(&ids_t.flatten_all()?, 0)?
            .reshape((b, s_max, self.cfg.hidden_size))?; // [b,s,e]
        let mut outs: Vec<Outputs> = specs
            .iter()
            .zip(&lens)
            .map(|(spec, &s)| Outputs {
                seq_len: s,
                positions: spec.positions.clone(),
                dtype: spec.dtype,
                hidden_states: vec![None; n_layers + 1],
                attn_outs: vec![None; n_layers],
                mlp_outputs: vec![None; n_layers],
                input_norm_vars: vec![None; n_layers],
                post_attn_norm_vars: vec![None; n_layers],
                final_norm_var: None,
                logits: None,
            })
            .collect();
        // each sample's stored rows (None = all), on the home device
        let home_rows: Vec<Option<Tensor>> = specs
            .iter()
            .map(|spec| {
                spec.positions
                    .as_ref()
                    .map(|p| super::ops::index_tensor(p, &self.device))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        // sample k's part of a `[b,s,..]` tensor, with its rows, in `dt` on the CPU
        let take = |t: &Tensor, k: usize, rows: Option<&Tensor>, dt: DType| -> Result<Tensor> {
            if b == 1 {
                return store(t, rows, dt);
            }
            let tk = t.narrow(0, k, 1)?;
            match rows {
                Some(r) => store(&tk, Some(r), dt),
                // a copy, so the sample does not keep the whole batch's tensor alive
                None => {
                    let v = tk.narrow(1, 0, lens[k])?;
                    // a view would share the batch's storage; to_dtype and to_device copy anyway
                    let v = if v.dtype() == dt && v.device().is_cpu() {
                        v.force_contiguous()?
                    } else {
                        v
                    };
                    store(&v, None, dt)
                }
            }
        };
        let mut mask = self.causal_mask_off_cpu(s_max)?;
        for l in 0..self.w.num_layers() {
            crate::cancel::check()?;
            let lw = self.w.layer(l)?;
            (x, mask) = self.to_layer(l, x, mask)?;
            let (h, lo) = self.layer_forward(&lw, &x, mask.as_ref())?;
            for (k, (out, spec)) in outs.iter_mut().zip(specs).enumerate() {
                if !spec.has_layer(l) {
                    continue;
                }
                let rows = match &home_rows[k] {
                    Some(r) if r.device().same_device(x.device()) => Some(r.clone()),
                    Some(r) => Some(r.to_device(x.device())?),
                    None => None,
                };
                let (rows, dt) = (rows.as_ref(), spec.dtype);
                out.hidden_states[l] = Some(take(&x, k, rows, dt)?);
                out.attn_outs[l] = lo
                    .attn_out
                    .as_ref()
                    .map(|a| take(a, k, rows, dt))
                    .transpose()?;
                out.mlp_outputs[l] = Some(take(&lo.mlp_output, k, rows, dt)?);
                out.input_norm_vars[l] = Some(take(&lo.input_var, k, rows, DType::F32)?);
                out.post_attn_norm_vars[l] = Some(take(&lo.post_var, k, rows, DType::F32)?);
            }
            x = h;
        }
        let x = self.home(x)?;
        let var = rms_variance(&x)?;
        let hn = rms_apply(&x, &var, &self.w.final_norm, self.cfg.rms_norm_eps)?;
        for (k, (out, spec)) in outs.iter_mut().zip(specs).enumerate() {
            let rows = home_rows[k].as_ref();
            if spec.has_layer(n_layers) {
                out.hidden_states[n_layers] = Some(take(&hn, k, rows, spec.dtype)?);
                out.final_norm_var = Some(take(&var, k, rows, DType::F32)?);
            }
            if spec.logits {
                let hk = if b == 1 {
                    hn.clone()
                } else {
                    hn.narrow(0, k, 1)?.narrow(1, 0, lens[k])?
                };
                let hsel = match rows {
                    Some(r) => hk.index_select(r, 1)?,
                    None => hk,
                };
                let logits = linear(&hsel, &self.w.lm_head_t, None)?;
                out.logits = Some(store(&logits, None, DType::F32)?);
            }
        }
        Ok(outs)
    }

    /// One decoder layer on x `[b,s,e]` → (x + attn + mlp, captured pieces).
    fn layer_forward(
        &self,
        lw: &LayerWeights,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, LayerOut)> {
        self.layer_core(lw, x, mask, None)
    }

    /// One decoder layer with the interventions of layer `l` (see [`super::intervene`]).
    pub(crate) fn layer_forward_edited(
        &self,
        l: usize,
        lw: &LayerWeights,
        x: &Tensor,
        mask: Option<&Tensor>,
        edits: &LayerEdits,
    ) -> Result<Tensor> {
        Ok(self.layer_core(lw, x, mask, Some((l, edits)))?.0)
    }

    fn layer_core(
        &self,
        lw: &LayerWeights,
        x: &Tensor,
        mask: Option<&Tensor>,
        edits: Option<(usize, &LayerEdits)>,
    ) -> Result<(Tensor, LayerOut)> {
        let eps = self.cfg.rms_norm_eps;
        let input_var = rms_variance(x)?;
        let xn = rms_apply(x, &input_var, &lw.input_norm, eps)?;
        let (attn_out, attn_output) = match edits {
            Some((l, le)) if le.has_pattern() => {
                let (o, w) = self.attn_output_patterned(l, &xn, le)?;
                let o = self.apply_head_edits(l, &o, None, Some((&xn, &w)), le)?;
                (None, o.to_device(x.device())?)
            }
            _ => {
                let attn_out = self.attn_fast(lw, &xn, mask)?; // [b,s,n,d]
                let (b, s, n, d) = attn_out.dims4()?;
                let mut o = linear(&attn_out.reshape((b, s, n * d))?, &lw.wo_t, None)?;
                if let Some((l, le)) = edits {
                    o = self.apply_head_edits(l, &o, Some(&attn_out), None, le)?;
                }
                (Some(attn_out), o)
            }
        };
        let attn_output = match edits {
            Some((_, le)) => self.apply_edits(&attn_output, None, le.attn())?,
            None => attn_output,
        };
        let h_mid = (x + attn_output)?;
        let post_var = rms_variance(&h_mid)?;
        let xn2 = rms_apply(&h_mid, &post_var, &lw.post_norm, eps)?;
        // bf16 weights under a wider compute dtype on the CPU: the input rounded once, gate/up
        // and their SwiGLU product kept in bf16 (the points where linear would round anyway;
        // ops::swiglu does its math in f32), which halves the MLP's elementwise memory traffic
        let wdt = lw.w_gate_t.dtype();
        let xm = if wdt == DType::BF16 && xn2.dtype() != wdt && xn2.device().is_cpu() {
            xn2.to_dtype(wdt)?
        } else {
            xn2
        };
        let gate = linear(&xm, &lw.w_gate_t, None)?;
        let up = linear(&xm, &lw.w_up_t, None)?;
        let act = swiglu(&gate, &up)?;
        let mut mlp_output = linear(&act, &lw.w_down_t, None)?.to_dtype(x.dtype())?;
        if let Some((_, le)) = edits {
            mlp_output = self.apply_edits(&mlp_output, None, le.mlp())?;
        }
        let h = (h_mid + &mlp_output)?;
        Ok((
            h,
            LayerOut {
                attn_out,
                mlp_output,
                input_var,
                post_var,
            },
        ))
    }

    /// Fast causal self-attention (fused rope / softmax; no gradients): xn `[1,s,e]` → `[1,s,n,d]`.
    /// GQA without copying K/V: the g query heads of a group are folded into the row dim.
    /// `mask` is the `[s,s]` causal mask, read only off the CPU (see [`Qwen2::causal_mask_off_cpu`]).
    fn attn_fast(&self, lw: &LayerWeights, xn: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, _) = xn.dims3()?;
        let n = self.cfg.num_attention_heads;
        let kvh = self.cfg.num_kv_heads();
        let d = self.cfg.head_dim();
        let g = n / kvh;
        let all: Vec<usize> = (0..s).collect();
        let (cos, sin) = self.rope_at(&all, xn.device())?;
        // f32 on the CPU: RoPE and the attention in the projections' layout [b, s, heads, d],
        // the attention one fused op with queries in blocks that see only their causal keys
        if xn.device().is_cpu() && self.dtype == DType::F32 {
            let proj = |w: &Tensor, bias: &Tensor, h: usize| -> Result<Tensor> {
                Ok(linear(xn, w, Some(bias))?.reshape((b, s, h, d))?)
            };
            let rope = |t: Tensor| -> Result<Tensor> {
                super::ops::rope_bshd(&t, &cos, &sin)?.context("RoPE: f32 on the CPU expected")
            };
            let q = rope(proj(&lw.wq_t, &lw.bq, n)?)?; // [b,s,n,d]
            let k = rope(proj(&lw.wk_t, &lw.bk, kvh)?)?; // [b,s,kvh,d]
            let v = proj(&lw.wv_t, &lw.bv, kvh)?; // [b,s,kvh,d]
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            return super::ops::causal_attention_cpu(&q, &k, &v, scale, QUERY_BLOCK)?
                .context("attention: f32 on the CPU expected");
        }
        let heads = |t: Tensor, h: usize| -> Result<Tensor> {
            let t = t.reshape((b, s, h, d))?.transpose(1, 2)?.contiguous()?;
            Ok(candle_nn::rotary_emb::rope(&t, &cos, &sin)?)
        };
        let q = heads(linear(xn, &lw.wq_t, Some(&lw.bq))?, n)?; // [b,n,s,d]
        let k = heads(linear(xn, &lw.wk_t, Some(&lw.bk))?, kvh)?; // [b,kvh,s,d]
        let v = linear(xn, &lw.wv_t, Some(&lw.bv))?
            .reshape((b, s, kvh, d))?
            .transpose(1, 2)?
            .contiguous()?; // [b,kvh,s,d]
        // the scale is folded into q; queries go in blocks that only see their causal key
        // prefix (half the work of the full square, and the block stays in cache)
        let q5 = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, kvh, g, s, d))?;
        let mut blocks = Vec::with_capacity(s.div_ceil(QUERY_BLOCK));
        for a in (0..s).step_by(QUERY_BLOCK) {
            let c = QUERY_BLOCK.min(s - a);
            let j = a + c; // keys 0..j
            let qc = q5
                .narrow(3, a, c)?
                .contiguous()?
                .reshape((b, kvh, g * c, d))?;
            let scores = qc
                .matmul(&k.narrow(2, 0, j)?.t()?)? // [b,kvh,g·c,j]
                .to_dtype(DType::F32)?
                .reshape((b, kvh, g, c, j))?;
            // on the CPU one fused masked softmax on all cores; elsewhere the mask and
            // candle's fused softmax
            let w = if scores.device().is_cpu() {
                causal_softmax_from(&scores, a)?
            } else {
                let m = mask
                    .context("the attention off the CPU needs the causal mask")?
                    .narrow(0, a, c)?
                    .narrow(1, 0, j)?;
                candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&m)?)?
            };
            let w = w.to_dtype(self.dtype)?.reshape((b, kvh, g * c, j))?;
            blocks.push(w.matmul(&v.narrow(2, 0, j)?)?.reshape((b, n, c, d))?);
        }
        let o = Tensor::cat(&blocks, 2)?; // [b,n,s,d]
        Ok(o.transpose(1, 2)?.contiguous()?) // [b,s,n,d]
    }

    /// RoPE cos/sin rows `[i, d/2]` for absolute positions.
    pub(crate) fn rope_at(&self, pos: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
        super::ops::check_positions(pos, self.cfg.max_position_embeddings, "RoPE")?;
        let need = pos.iter().max().map_or(0, |&p| p + 1);
        if !dev.is_cpu() || need == 0 {
            return rope_tables(&self.inv_freq, pos, self.dtype, dev);
        }
        let (cos, sin) = {
            let mut cache = self.rope_cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.as_ref() {
                Some((c, s)) if c.dims()[0] >= need => (c.clone(), s.clone()),
                _ => {
                    // grown in powers of two up to the model's limit (positions were checked)
                    let n = need
                        .next_power_of_two()
                        .min(self.cfg.max_position_embeddings)
                        .max(need);
                    let all: Vec<usize> = (0..n).collect();
                    let t = rope_tables(&self.inv_freq, &all, self.dtype, dev)?;
                    *cache = Some(t.clone());
                    t
                }
            }
        };
        if pos.iter().enumerate().all(|(i, &p)| p == i) {
            return Ok((cos.narrow(0, 0, pos.len())?, sin.narrow(0, 0, pos.len())?));
        }
        let idx = super::ops::index_tensor(pos, dev)?;
        Ok((cos.index_select(&idx, 0)?, sin.index_select(&idx, 0)?))
    }

    /// The residual stream and the mask moved to layer `l`'s device (no copy when already there).
    pub(crate) fn to_layer(
        &self,
        l: usize,
        x: Tensor,
        mask: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dev = self.layer_device(l);
        if x.device().same_device(dev) {
            return Ok((x, mask));
        }
        let mask = mask.map(|m| m.to_device(dev)).transpose()?;
        Ok((x.to_device(dev)?, mask))
    }

    /// The additive causal mask `[s,s]` for a forward of `s` positions, or None when every layer
    /// runs on the CPU: the CPU attention masks inside its fused softmax and never reads it
    /// (building it cost ~4 % of a 2.6k-token forward and s² floats).
    pub(crate) fn causal_mask_off_cpu(&self, s: usize) -> Result<Option<Tensor>> {
        let n = self.w.num_layers();
        if (0..n).all(|l| self.layer_device(l).is_cpu()) {
            return Ok(None);
        }
        Ok(Some(causal_mask(s, &self.device)?))
    }
}

/// Queries per block in the fast attention (measured: 128 is ~3× faster than the full
/// square at 2.6k tokens on 2 cores; 32–256 are within 10 %).
const QUERY_BLOCK: usize = 128;

/// Additive causal mask `[s,s]` f32: 0 where key t ≤ query p, NEG_MASK elsewhere.
pub(crate) fn causal_mask(s: usize, dev: &Device) -> Result<Tensor> {
    let pos: Vec<usize> = (0..s).collect();
    query_mask(&pos, s, None, dev)
}

/// Additive mask `[i,j]` f32 for queries at absolute `q_pos` over keys 0..j: key t allowed iff
/// t ≤ q_pos\[i\]; `extra_masked_key` (the sink, key 0) is masked too when given.
pub(crate) fn query_mask(
    q_pos: &[usize],
    j: usize,
    extra_masked_key: Option<usize>,
    dev: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; q_pos.len() * j];
    for (r, &p) in q_pos.iter().enumerate() {
        for t in 0..j {
            if t > p || Some(t) == extra_masked_key {
                m[r * j + t] = NEG_MASK;
            }
        }
    }
    Ok(Tensor::from_vec(m, (q_pos.len(), j), dev)?)
}

/// RoPE cos/sin rows `[i, d/2]` of absolute positions: angle p·inv_freq in f32, cos/sin in
/// f32, then cast to `dtype`.
pub(crate) fn rope_tables(
    inv_freq: &[f32],
    pos: &[usize],
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(pos.len() * half);
    let mut sin = Vec::with_capacity(pos.len() * half);
    for &p in pos {
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (pos.len(), half);
    Ok((
        Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    ))
}

/// RoPE inverse frequencies as HF computes them: inv_freq = θ^(−2i/d) in f32; the angle of
/// position p is p·inv_freq (f32), cos/sin in f32, then cast to the compute dtype.
pub(crate) fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim();
    (0..d / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached RoPE rows are the rows computed directly, for runs from 0, arbitrary
    /// positions, after the cache grows, and for no positions.
    #[test]
    fn cached_rope_rows_equal_direct_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = super::super::fixture::Preset::Tiny.config();
        super::super::fixture::write_model(dir.path(), &cfg, 0, 1).unwrap();
        let m = Qwen2::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let same = |pos: &[usize]| {
            let (c, s) = m.rope_at(pos, &Device::Cpu).unwrap();
            let (c0, s0) = rope_tables(&m.inv_freq, pos, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(c.dims(), c0.dims(), "{pos:?}");
            for (a, b) in [(&c, &c0), (&s, &s0)] {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(a, b, "{pos:?}");
            }
        };
        let run: Vec<usize> = (0..5).collect();
        same(&run);
        same(&[4, 1, 3]);
        same(&[37, 0, 36]); // grows the cache
        let long: Vec<usize> = (0..40).collect();
        same(&long);
        same(&[2]);
        same(&[]);
        let too_far = [cfg.max_position_embeddings];
        assert!(m.rope_at(&too_far, &Device::Cpu).is_err());
    }
}
