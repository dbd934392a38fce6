//! Component functions (M1, A2–A4, A7): RMSNorm with an optional frozen variance, attention of
//! chosen heads with separate q/k/v inputs and optional injected weights, the MLP with separate
//! up/gate inputs, lm_head and its objective, and per-head outputs.
//!
//! All of these are **autograd-safe**: they use composed softmax / log-softmax, a manual RMSNorm
//! and rotate-half RoPE (candle's fused kernels pass no gradient). Inputs are moved to the model's
//! device and dtype; a batch dim of 1 broadcasts against batch b (frozen inputs vs. IG-scaled
//! inputs with b = steps+1).

use anyhow::{Result, bail};
use candle_core::{D, DType, Tensor};

use super::ops::{
    broadcast_batch, expand_batch, index_tensor, linear, rms_apply, rms_variance, rope_rotate_half,
    softmax_last,
};
use super::qwen2::{Qwen2, query_mask};

/// Which RMSNorm of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// input_layernorm of a layer (before attention).
    Input(usize),
    /// post_attention_layernorm of a layer (before the MLP).
    PostAttention(usize),
    /// The final norm (before lm_head).
    Final,
}

/// How attention excludes the attention-sink key (position 0), used for `attn_qns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoSink {
    /// Normal attention.
    #[default]
    Off,
    /// Key 0 gets −∞ before the softmax: the weights renormalise over keys 1..j. A query at
    /// position 0 then attends to nothing (its weight row is all zeros, output zero).
    MaskBeforeSoftmax,
    /// Softmax as usual, then the weight of key 0 is set to 0 (rows then sum to 1 − a_p0,
    /// no renormalisation). Also applies to injected weights.
    ZeroAfterSoftmax,
}

/// Arguments of [`Qwen2::attention`] / [`Qwen2::attention_weights`].
///
/// Shapes: xq `[b|1,i,e]`, xk and xv `[b|1,j,e]` (already input-normed); keys are positions
/// 0..j; `q_pos` holds the absolute positions of the i queries (RoPE + causal mask: key t is
/// allowed iff t ≤ q_pos\[i\]; each q_pos must be < j).
#[derive(Debug, Clone, Copy)]
pub struct AttnInputs<'a> {
    /// Query-side input `[b|1,i,e]`.
    pub xq: &'a Tensor,
    /// Key-side input `[b|1,j,e]`.
    pub xk: &'a Tensor,
    /// Value-side input `[b|1,j,e]`.
    pub xv: &'a Tensor,
    /// Absolute positions of the queries (length i).
    pub q_pos: &'a [usize],
    /// Query heads to compute (None = all). The output is the o_proj of only these heads.
    pub heads: Option<&'a [usize]>,
    /// Post-softmax weights `[b|1,h,i,j]` to use instead of computing them (h = selected heads).
    pub attn_weights: Option<&'a Tensor>,
    /// Sink handling.
    pub no_sink: NoSink,
    /// Keys and values computed beforehand ([`Qwen2::kv_projection`] of the key/value-side
    /// input): used instead of projecting xk and xv, which are then ignored (pass any
    /// `[b|1,·,e]` tensor, e.g. xq). Not for gradients with respect to xk or xv.
    pub kv: Option<&'a KvProj>,
}

/// Keys (after RoPE) and values of every KV head of a layer over key positions 0..j:
/// both `[b,kvh,j,d]` in the compute dtype ([`Qwen2::kv_projection`]).
#[derive(Debug, Clone)]
pub struct KvProj {
    /// Keys after RoPE `[b,kvh,j,d]`.
    pub keys: Tensor,
    /// Values `[b,kvh,j,d]`.
    pub values: Tensor,
}

impl KvProj {
    /// Number of key positions j.
    pub fn len(&self) -> usize {
        self.keys.dims().get(2).copied().unwrap_or(0)
    }

    /// True when there are no key positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the two tensors.
    pub fn bytes(&self) -> usize {
        (self.keys.elem_count() + self.values.elem_count()) * self.keys.dtype().size_in_bytes()
    }
}

impl<'a> AttnInputs<'a> {
    /// All heads, computed weights, no sink exclusion.
    pub fn new(xq: &'a Tensor, xk: &'a Tensor, xv: &'a Tensor, q_pos: &'a [usize]) -> Self {
        Self {
            xq,
            xk,
            xv,
            q_pos,
            heads: None,
            attn_weights: None,
            no_sink: NoSink::Off,
            kv: None,
        }
    }
    /// Restricts to the given query heads.
    pub fn heads(mut self, heads: &'a [usize]) -> Self {
        self.heads = Some(heads);
        self
    }
    /// Uses these post-softmax weights `[b|1,h,i,j]`: column t weighs row t of xv, whatever
    /// position that row holds (so xv may be a subset of the positions).
    pub fn with_weights(mut self, w: &'a Tensor) -> Self {
        self.attn_weights = Some(w);
        self
    }
    /// Sets the sink handling.
    pub fn no_sink(mut self, no_sink: NoSink) -> Self {
        self.no_sink = no_sink;
        self
    }
    /// Uses keys and values computed beforehand (see [`AttnInputs::kv`]).
    pub fn with_kv(mut self, kv: &'a KvProj) -> Self {
        self.kv = Some(kv);
        self
    }
}

/// Checked shapes of an attention call.
struct AttnShape {
    heads: Vec<usize>,
    all_heads: bool,
    i: usize,
    j: usize,
}

impl Qwen2 {
    fn norm_weight(&self, norm: Norm) -> Result<Tensor> {
        Ok(match norm {
            Norm::Input(l) => {
                self.cfg.check_layer(l)?;
                self.w.layer(l)?.input_norm.clone()
            }
            Norm::PostAttention(l) => {
                self.cfg.check_layer(l)?;
                self.w.layer(l)?.post_norm.clone()
            }
            Norm::Final => self.w.final_norm.clone(),
        })
    }

    fn check_hidden(&self, x: &Tensor, what: &str) -> Result<(usize, usize)> {
        let dims = x.dims();
        if dims.len() != 3 || dims[2] != self.cfg.hidden_size {
            bail!(
                "{what} must be [b,k,{}], got {:?}",
                self.cfg.hidden_size,
                dims
            );
        }
        Ok((dims[0], dims[1]))
    }

    /// y = w ⊙ x / sqrt(var + eps). x `[b,k,e]` → `[b,k,e]`. With `variance` given (`[1|b,k,1]`
    /// f32) the scale is frozen (M1): the gradient then flows only through the x in the numerator
    /// (the linearised backward of A5).
    pub fn rms_norm(&self, norm: Norm, x: &Tensor, variance: Option<&Tensor>) -> Result<Tensor> {
        let w = self.norm_weight(norm)?;
        let (_, k) = self.check_hidden(x, "rms_norm input")?;
        let x = self.prep_on(x, w.device())?;
        let var = match variance {
            Some(v) => {
                let vd = v.dims();
                if vd.len() != 3 || vd[1] != k || vd[2] != 1 {
                    bail!("variance must be [1|b,{k},1], got {vd:?}");
                }
                broadcast_batch(&[("x", &x), ("variance", v)])?;
                v.to_device(x.device())?.to_dtype(DType::F32)?
            }
            None => rms_variance(&x)?,
        };
        self.home(rms_apply(&x, &var, &w, self.cfg.rms_norm_eps)?)
    }

    fn resolve_heads(&self, heads: Option<&[usize]>) -> Result<(Vec<usize>, bool)> {
        let n = self.cfg.num_attention_heads;
        match heads {
            None => Ok(((0..n).collect(), true)),
            Some(hs) => {
                if hs.is_empty() {
                    bail!("empty head list");
                }
                self.cfg.check_heads(hs)?;
                let mut seen = vec![false; n];
                for &h in hs {
                    if std::mem::replace(&mut seen[h], true) {
                        bail!("head {h} listed twice");
                    }
                }
                let all = hs.len() == n && hs.iter().enumerate().all(|(a, &b)| a == b);
                Ok((hs.to_vec(), all))
            }
        }
    }

    fn attn_shape(&self, layer: usize, a: &AttnInputs) -> Result<AttnShape> {
        self.cfg.check_layer(layer)?;
        let (heads, all_heads) = self.resolve_heads(a.heads)?;
        let (_, i) = self.check_hidden(a.xq, "xq")?;
        let j = match a.kv {
            Some(kv) => {
                let (kvh, d) = (self.cfg.num_kv_heads(), self.cfg.head_dim());
                let (kd, vd) = (kv.keys.dims(), kv.values.dims());
                if kd.len() != 4 || kd[1] != kvh || kd[3] != d || vd != kd {
                    bail!(
                        "given keys/values must both be [b|1,{kvh},j,{d}], got {kd:?} and {vd:?}"
                    );
                }
                kd[2]
            }
            None => {
                let (_, j) = self.check_hidden(a.xk, "xk")?;
                let (_, jv) = self.check_hidden(a.xv, "xv")?;
                if jv != j {
                    bail!("xk has {j} positions but xv has {jv}");
                }
                j
            }
        };
        if a.q_pos.len() != i {
            bail!(
                "q_pos has {} entries but xq has {i} positions",
                a.q_pos.len()
            );
        }
        // keys are positions 0..j when the weights are computed (causal mask, RoPE); given
        // weights name their keys by column, so any subset of positions may be passed
        if a.attn_weights.is_none()
            && let Some(&p) = a.q_pos.iter().find(|&&p| p >= j)
        {
            bail!("query position {p} out of range: keys cover positions 0..{j}");
        }
        match a.kv {
            Some(kv) => broadcast_batch(&[("xq", a.xq), ("keys", &kv.keys)])?,
            None => broadcast_batch(&[("xq", a.xq), ("xk", a.xk), ("xv", a.xv)])?,
        };
        Ok(AttnShape {
            heads,
            all_heads,
            i,
            j,
        })
    }

    /// Column indices (into q_proj output / o_proj input) of the given heads' d-slices.
    fn head_cols(&self, heads: &[usize]) -> Vec<usize> {
        let d = self.cfg.head_dim();
        heads.iter().flat_map(|&h| h * d..(h + 1) * d).collect()
    }

    /// Projects x `[b,t,e]` with the key or value weights of the KV groups used by `heads`,
    /// then expands groups to heads: → `[b,h,t,d]` (RoPE applied for keys, positions 0..t).
    fn kv_heads(&self, layer: usize, x: &Tensor, sh: &AttnShape, is_key: bool) -> Result<Tensor> {
        let mut groups: Vec<usize> = sh.heads.iter().map(|&h| self.cfg.kv_group(h)).collect();
        groups.sort_unstable();
        groups.dedup();
        let y = self.kv_groups(layer, x, &groups, is_key)?;
        self.groups_to_heads(&y, &groups, sh)
    }

    /// The keys or values of the sorted KV `groups` of x `[b,t,e]` → `[b,G,t,d]` (RoPE applied
    /// for keys, positions 0..t).
    fn kv_groups(
        &self,
        layer: usize,
        x: &Tensor,
        groups: &[usize],
        is_key: bool,
    ) -> Result<Tensor> {
        let lw = self.w.layer(layer)?;
        let d = self.cfg.head_dim();
        let (w, bias) = if is_key {
            (&lw.wk_t, &lw.bk)
        } else {
            (&lw.wv_t, &lw.bv)
        };
        let all_groups = groups.len() == self.cfg.num_kv_heads();
        let y = if all_groups {
            linear(x, w, Some(bias))?
        } else {
            let idx = index_tensor(
                &groups
                    .iter()
                    .flat_map(|&g| g * d..(g + 1) * d)
                    .collect::<Vec<_>>(),
                w.device(),
            )?;
            linear(
                x,
                &w.index_select(&idx, 1)?,
                Some(&bias.index_select(&idx, 0)?),
            )?
        };
        let (b, t, _) = y.dims3()?;
        let mut y = y
            .reshape((b, t, groups.len(), d))?
            .transpose(1, 2)?
            .contiguous()?; // [b,G,t,d]
        if is_key {
            let pos: Vec<usize> = (0..t).collect();
            let (cos, sin) = self.rope_at(&pos, y.device())?;
            y = rope_rotate_half(&y, &cos, &sin)?;
        }
        Ok(y)
    }

    /// `[b,G,t,d]` of the sorted KV `groups` → `[b,h,t,d]`, one slice per selected head.
    fn groups_to_heads(&self, y: &Tensor, groups: &[usize], sh: &AttnShape) -> Result<Tensor> {
        let slots: Vec<usize> = sh
            .heads
            .iter()
            .map(|&h| groups.binary_search(&self.cfg.kv_group(h)).unwrap_or(0))
            .collect();
        if slots.len() == groups.len() && slots.iter().enumerate().all(|(a, &b)| a == b) {
            return Ok(y.clone());
        }
        Ok(y.index_select(&index_tensor(&slots, y.device())?, 1)?)
    }

    /// The selected heads' keys (`is_key`) or values `[b,h,j,d]`: from `a.kv` when given, else
    /// projected from xk / xv.
    fn heads_kv(
        &self,
        layer: usize,
        a: &AttnInputs,
        sh: &AttnShape,
        is_key: bool,
    ) -> Result<Tensor> {
        let dev = self.layer_device(layer);
        match a.kv {
            Some(kv) => {
                let all: Vec<usize> = (0..self.cfg.num_kv_heads()).collect();
                let y = if is_key { &kv.keys } else { &kv.values };
                self.groups_to_heads(&y.to_device(dev)?.to_dtype(self.dtype)?, &all, sh)
            }
            None => {
                let x = self.prep_on(if is_key { a.xk } else { a.xv }, dev)?;
                self.kv_heads(layer, &x, sh, is_key)
            }
        }
    }

    /// Keys (after RoPE) and values of every KV head of `layer` for the input-normed x
    /// `[b,j,e]` (positions 0..j): what [`AttnInputs::with_kv`] takes, so that calls on the same
    /// keys share one projection.
    pub fn kv_projection(&self, layer: usize, x: &Tensor) -> Result<KvProj> {
        self.cfg.check_layer(layer)?;
        self.check_hidden(x, "x")?;
        let x = self.prep_on(x, self.layer_device(layer))?;
        let all: Vec<usize> = (0..self.cfg.num_kv_heads()).collect();
        Ok(KvProj {
            keys: self.kv_groups(layer, &x, &all, true)?,
            values: self.kv_groups(layer, &x, &all, false)?,
        })
    }

    /// Computed post-softmax weights `[b,h,i,j]` f32.
    fn attn_probs(&self, layer: usize, a: &AttnInputs, sh: &AttnShape) -> Result<Tensor> {
        let lw = self.w.layer(layer)?;
        let d = self.cfg.head_dim();
        let h = sh.heads.len();
        let dev = lw.wq_t.device();
        let xq = self.prep_on(a.xq, dev)?;
        let q = if sh.all_heads {
            linear(&xq, &lw.wq_t, Some(&lw.bq))?
        } else {
            let idx = index_tensor(&self.head_cols(&sh.heads), dev)?;
            linear(
                &xq,
                &lw.wq_t.index_select(&idx, 1)?,
                Some(&lw.bq.index_select(&idx, 0)?),
            )?
        };
        let bq = q.dim(0)?;
        let q = q.reshape((bq, sh.i, h, d))?.transpose(1, 2)?.contiguous()?; // [bq,h,i,d]
        let (cos, sin) = self.rope_at(a.q_pos, dev)?;
        let q = rope_rotate_half(&q, &cos, &sin)?;
        let k = self.heads_kv(layer, a, sh, true)?; // [bk,h,j,d]
        let b = q.dim(0)?.max(k.dim(0)?);
        let q = expand_batch(&q, b)?;
        let k = expand_batch(&k, b)?;
        let scale = 1.0 / (d as f64).sqrt();
        // the product reads kᵀ through its strides: no transposed copy of the keys
        let scores = (q.matmul(&k.transpose(2, 3)?)? * scale)?.to_dtype(DType::F32)?;
        let sink = (a.no_sink == NoSink::MaskBeforeSoftmax).then_some(0);
        let mask = query_mask(a.q_pos, sh.j, sink, dev)?; // [i,j]
        let mut w = softmax_last(&scores.broadcast_add(&mask)?)?;
        match a.no_sink {
            NoSink::Off => {}
            NoSink::MaskBeforeSoftmax => {
                // Rows with every key masked (query at position 0) would be uniform: zero them.
                let keep = mask.ge(0f32)?.to_dtype(DType::F32)?;
                w = w.broadcast_mul(&keep)?;
            }
            NoSink::ZeroAfterSoftmax => w = zero_sink(&w)?,
        }
        Ok(w)
    }

    fn checked_weights(
        &self,
        layer: usize,
        w: &Tensor,
        sh: &AttnShape,
        no_sink: NoSink,
    ) -> Result<Tensor> {
        let dims = w.dims();
        let h = sh.heads.len();
        if dims.len() != 4 || dims[1] != h || dims[2] != sh.i || dims[3] != sh.j {
            bail!(
                "attn_weights must be [b|1,{h},{},{}], got {dims:?}",
                sh.i,
                sh.j
            );
        }
        let w = w
            .to_device(self.layer_device(layer))?
            .to_dtype(DType::F32)?;
        match no_sink {
            NoSink::Off => Ok(w),
            NoSink::ZeroAfterSoftmax => zero_sink(&w),
            NoSink::MaskBeforeSoftmax => bail!(
                "no_sink MaskBeforeSoftmax cannot apply to injected attention weights \
                 (use ZeroAfterSoftmax or pass weights computed with the mask)"
            ),
        }
    }

    /// Post-softmax attention weights of the selected heads, `[b,h,i,j]` f32 (same arguments as
    /// [`Qwen2::attention`]; injected weights are returned after the no_sink treatment).
    pub fn attention_weights(&self, layer: usize, a: &AttnInputs) -> Result<Tensor> {
        let sh = self.attn_shape(layer, a)?;
        self.home(match a.attn_weights {
            Some(w) => self.checked_weights(layer, w, &sh, a.no_sink)?,
            None => self.attn_probs(layer, a, &sh)?,
        })
    }

    /// Attention of `layer` restricted to `a.heads` (None = all): Σ over those heads of
    /// o_proj_h(Σ_t a_ht · v_ht). xq `[b|1,i,e]`, xk/xv `[b|1,j,e]` → `[b,i,e]` (compute dtype).
    pub fn attention(&self, layer: usize, a: &AttnInputs) -> Result<Tensor> {
        let sh = self.attn_shape(layer, a)?;
        let w = match a.attn_weights {
            Some(w) => {
                broadcast_batch(&[("xq", a.xq), ("xv", a.xv), ("attn_weights", w)])?;
                self.checked_weights(layer, w, &sh, a.no_sink)?
            }
            None => self.attn_probs(layer, a, &sh)?,
        }
        .to_dtype(self.dtype)?; // [bw,h,i,j]
        let dev = self.layer_device(layer);
        let v = self.heads_kv(layer, a, &sh, false)?; // [bv,h,j,d]
        let b = w.dim(0)?.max(v.dim(0)?).max(a.xq.dim(0)?);
        let o = expand_batch(&w, b)?.matmul(&expand_batch(&v, b)?)?; // [b,h,i,d]
        let h = sh.heads.len();
        let d = self.cfg.head_dim();
        let o = o.transpose(1, 2)?.reshape((b, sh.i, h * d))?; // [b,i,h·d]
        let lw = self.w.layer(layer)?;
        self.home(if sh.all_heads {
            linear(&o, &lw.wo_t, None)?
        } else {
            let idx = index_tensor(&self.head_cols(&sh.heads), dev)?;
            linear(&o, &lw.wo_t.index_select(&idx, 0)?, None)?
        })
    }

    /// The vector–Jacobian product of [`Qwen2::attention`] with respect to its attention
    /// weights: gw\[b,h,i,j\] = Σ_e gy\[b,i,e\] · (v_hj W_o,h)\[e\] = (gy W_o,hᵀ)\[b,h,i,:\] · v\[b,h,j,:\].
    /// The output is linear in the weights, so this is its exact gradient at any weights: no
    /// forward pass, no autograd. Same arguments as `attention` (xq gives the query count; the
    /// weights themselves are not needed and `a.attn_weights` is ignored); `ZeroAfterSoftmax`
    /// zeroes column 0, whose weight `attention` discards. gy `[b|1,i,e]` → `[b,h,i,j]` f32.
    pub fn attention_weights_vjp(
        &self,
        layer: usize,
        a: &AttnInputs,
        gy: &Tensor,
    ) -> Result<Tensor> {
        let sh = self.attn_shape(layer, a)?;
        let (_, ig) = self.check_hidden(gy, "gy")?;
        if ig != sh.i {
            bail!("gy has {ig} positions but xq has {}", sh.i);
        }
        match a.kv {
            Some(kv) => broadcast_batch(&[("values", &kv.values), ("gy", gy)])?,
            None => broadcast_batch(&[("xv", a.xv), ("gy", gy)])?,
        };
        if a.no_sink == NoSink::MaskBeforeSoftmax {
            bail!("no_sink MaskBeforeSoftmax does not apply to given attention weights");
        }
        let (h, d) = (sh.heads.len(), self.cfg.head_dim());
        let dev = self.layer_device(layer);
        let v = self.heads_kv(layer, a, &sh, false)?; // [bv,h,j,d]
        let lw = self.w.layer(layer)?;
        let wo = if sh.all_heads {
            lw.wo_t.clone()
        } else {
            let idx = index_tensor(&self.head_cols(&sh.heads), dev)?;
            lw.wo_t.index_select(&idx, 0)?
        }; // [h·d, e]
        let wo = wo.to_dtype(self.dtype)?.t()?.contiguous()?; // [e, h·d]
        let gy = self.prep_on(gy, dev)?;
        let bg = gy.dim(0)?;
        let gh = linear(&gy, &wo, None)? // [bg,i,h·d]
            .reshape((bg, sh.i, h, d))?
            .transpose(1, 2)?
            .contiguous()?; // [bg,h,i,d]
        let b = bg.max(v.dim(0)?);
        let vt = expand_batch(&v, b)?.transpose(2, 3)?; // [b,h,d,j], read through its strides
        let gw = expand_batch(&gh, b)?.matmul(&vt)?.to_dtype(DType::F32)?; // [b,h,i,j]
        self.home(match a.no_sink {
            NoSink::ZeroAfterSoftmax => zero_sink(&gw)?,
            _ => gw,
        })
    }

    /// down( silu(gate(xg)) ⊙ up(xi) ); xg defaults to xi. xi, xg `[b|1,k,e]` → `[b,k,e]`.
    pub fn mlp(&self, layer: usize, xi: &Tensor, xg: Option<&Tensor>) -> Result<Tensor> {
        self.cfg.check_layer(layer)?;
        let (_, k) = self.check_hidden(xi, "xi")?;
        let lw = self.w.layer(layer)?;
        let dev = lw.w_up_t.device();
        let xi = self.prep_on(xi, dev)?;
        let up = linear(&xi, &lw.w_up_t, None)?;
        let gate = match xg {
            None => linear(&xi, &lw.w_gate_t, None)?,
            Some(xg) => {
                let (_, kg) = self.check_hidden(xg, "xg")?;
                if kg != k {
                    bail!("xg has {kg} positions but xi has {k}");
                }
                broadcast_batch(&[("xi", &xi), ("xg", xg)])?;
                linear(&self.prep_on(xg, dev)?, &lw.w_gate_t, None)?
            }
        };
        self.home(linear(
            &super::ops::swiglu(&gate, &up)?,
            &lw.w_down_t,
            None,
        )?)
    }

    /// x `[b,k,e]` (already final-normed) → logits `[b,k,v]` (compute dtype).
    pub fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        self.check_hidden(x, "lm_head input")?;
        linear(&self.prep(x)?, &self.w.lm_head_t, None)
    }

    /// The lm_head objective of a sample (see [`super::sample::Objective`]); the default is
    /// A2–A4: per example, the mean over the k positions of log-softmax(logits + mask)\[label\],
    /// where mask = −1e4 everywhere except 0 at `candidate_ids` (empty list = no mask).
    /// x `[b,k,e]` (final-normed), `labels.len() == k` → `[b]` f32. Autograd-safe.
    pub fn lm_head_objective(
        &self,
        x: &Tensor,
        labels: &[u32],
        candidate_ids: &[u32],
        objective: &super::sample::Objective,
    ) -> Result<Tensor> {
        let (_, k) = self.check_hidden(x, "lm_head input")?;
        if labels.len() != k {
            bail!("{} labels for {k} positions", labels.len());
        }
        let logits = self.lm_head(x)?.to_dtype(DType::F32)?; // [b,k,v]
        super::ops::objective_value(&logits, labels, candidate_ids, objective)
    }

    fn check_attn_out(&self, attn_out: &Tensor) -> Result<(usize, usize)> {
        let n = self.cfg.num_attention_heads;
        let d = self.cfg.head_dim();
        let dims = attn_out.dims();
        if dims.len() != 4 || dims[2] != n || dims[3] != d {
            bail!("attn_out must be [b,k,{n},{d}], got {dims:?}");
        }
        Ok((dims[0], dims[1]))
    }

    /// Per-head outputs from each head's slice of o_proj: attn_out `[b,k,n,d]` → `[b,k,h,e]`
    /// (h = selected heads, None = all), one batched matmul `[h,b·k,d]×[h,d,e]`.
    pub fn head_outputs(
        &self,
        layer: usize,
        attn_out: &Tensor,
        heads: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.cfg.check_layer(layer)?;
        let (b, k) = self.check_attn_out(attn_out)?;
        let (heads, all) = self.resolve_heads(heads)?;
        let (n, d, e) = (
            self.cfg.num_attention_heads,
            self.cfg.head_dim(),
            self.cfg.hidden_size,
        );
        let h = heads.len();
        let dev = self.layer_device(layer);
        let mut a = self.prep_on(attn_out, dev)?;
        // in the compute dtype (the weights may be held narrower, see LoadOptions::weights_dtype)
        let mut wo = self
            .w
            .layer(layer)?
            .wo_t
            .to_dtype(self.dtype)?
            .reshape((n, d, e))?;
        if !all {
            let idx = index_tensor(&heads, dev)?;
            a = a.index_select(&idx, 2)?;
            wo = wo.index_select(&idx, 0)?;
        }
        let a = a
            .permute((2, 0, 1, 3))?
            .reshape((h, b * k, d))?
            .contiguous()?; // [h,b·k,d]
        let y = a.matmul(&wo)?; // [h,b·k,e]
        self.home(
            y.reshape((h, b, k, e))?
                .permute((1, 2, 0, 3))?
                .contiguous()?,
        )
    }

    /// Sum of the selected heads' outputs: attn_out `[b,k,n,d]` → `[b,k,e]` (the o_proj of only
    /// those heads' slices; with all heads this is the attention block's output).
    pub fn heads_output_sum(
        &self,
        layer: usize,
        attn_out: &Tensor,
        heads: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.cfg.check_layer(layer)?;
        let (b, k) = self.check_attn_out(attn_out)?;
        let (heads, all) = self.resolve_heads(heads)?;
        let d = self.cfg.head_dim();
        let dev = self.layer_device(layer);
        let a = self.prep_on(attn_out, dev)?;
        let lw = self.w.layer(layer)?;
        let wo = &lw.wo_t;
        if all {
            return self.home(linear(&a.reshape((b, k, heads.len() * d))?, wo, None)?);
        }
        let idx = index_tensor(&heads, dev)?;
        let a = a.index_select(&idx, 2)?.reshape((b, k, heads.len() * d))?;
        let cols = index_tensor(&self.head_cols(&heads), dev)?;
        self.home(linear(&a, &wo.index_select(&cols, 0)?, None)?)
    }
}

/// Zeroes the weight of key 0: w `[b,h,i,j]` → same shape.
fn zero_sink(w: &Tensor) -> Result<Tensor> {
    let j = w.dim(D::Minus1)?;
    let mut keep = vec![1f32; j];
    keep[0] = 0.0;
    let keep = Tensor::from_vec(keep, j, w.device())?.to_dtype(w.dtype())?;
    Ok(w.broadcast_mul(&keep)?)
}
