//! Interventions inside the forward: zero, set or add a value at chosen positions of a head's
//! output, an attention pattern, a layer's attention output, an MLP output or the residual
//! stream. A batch of intervention sets runs as one batched forward (one set per batch row);
//! the clean cache of the sample is never touched (nothing here writes to it).
//!
//! Every activation site is a `[b,s,e]` tensor X with a "current value" C at the site (C = X,
//! except for a head: C = that head's o_proj contribution, X = the attention output), so one
//! rule covers them all: X' = X + M ⊙ (V − C) + A, with M the 0/1 mask of the set positions,
//! V the set values (0 for a zero ablation) and A the added values. A pattern edit replaces or
//! shifts rows (query positions) of one head's post-softmax weights `[s,s]`.

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::components::AttnInputs;
use super::ops::{index_tensor, linear, rms_apply, rms_variance};
use super::qwen2::Qwen2;

/// Where an intervention acts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Site {
    /// One head's residual contribution o_proj_h(attn_out\[h\]) `[k,e]`.
    Head {
        /// Layer.
        layer: usize,
        /// Query head.
        head: usize,
    },
    /// One head's post-softmax attention weights, rows = query positions `[k,s]`.
    Pattern {
        /// Layer.
        layer: usize,
        /// Query head.
        head: usize,
    },
    /// A layer's attention output o_proj(attn_out) `[k,e]` (all heads).
    AttnOutput {
        /// Layer.
        layer: usize,
    },
    /// A layer's MLP output `[k,e]`.
    Mlp {
        /// Layer.
        layer: usize,
    },
    /// The residual stream entering `layer` `[k,e]` (layer L = before the final norm).
    Residual {
        /// Layer in 0..=L.
        layer: usize,
    },
}

impl Site {
    /// The site's layer.
    pub fn layer(&self) -> usize {
        match self {
            Site::Head { layer, .. }
            | Site::Pattern { layer, .. }
            | Site::AttnOutput { layer }
            | Site::Mlp { layer }
            | Site::Residual { layer } => *layer,
        }
    }

    /// A short name such as `head 3.2`, `mlp 4`, `resid 0`.
    pub fn describe(&self) -> String {
        match self {
            Site::Head { layer, head } => format!("head {layer}.{head}"),
            Site::Pattern { layer, head } => format!("pattern {layer}.{head}"),
            Site::AttnOutput { layer } => format!("attn {layer}"),
            Site::Mlp { layer } => format!("mlp {layer}"),
            Site::Residual { layer } => format!("resid {layer}"),
        }
    }
}

/// What an intervention does at its positions.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Set the value to 0.
    Zero,
    /// Set the value: f32 `[k, w]` (one row per position) or `[1, w]` / `[w]` (every position).
    Set(Tensor),
    /// Add a value (same shapes as `Set`).
    Add(Tensor),
}

impl Edit {
    /// The kind of the edit, without its value.
    pub fn kind(&self) -> EditKind {
        match self {
            Edit::Zero => EditKind::Zero,
            Edit::Set(_) => EditKind::Set,
            Edit::Add(_) => EditKind::Add,
        }
    }

    /// The value of a `Set` or `Add`.
    pub fn value(&self) -> Option<&Tensor> {
        match self {
            Edit::Zero => None,
            Edit::Set(t) | Edit::Add(t) => Some(t),
        }
    }

    /// Rebuilds an edit from its kind and value (`value` must be given exactly for Set/Add).
    pub fn from_parts(kind: EditKind, value: Option<Tensor>) -> Result<Self> {
        Ok(match (kind, value) {
            (EditKind::Zero, None) => Edit::Zero,
            (EditKind::Set, Some(t)) => Edit::Set(t),
            (EditKind::Add, Some(t)) => Edit::Add(t),
            (EditKind::Zero, Some(_)) => bail!("a zero edit takes no value"),
            (k, None) => bail!("a {k:?} edit needs a value"),
        })
    }
}

/// The kind of an [`Edit`] (its wire form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    /// [`Edit::Zero`].
    Zero,
    /// [`Edit::Set`].
    Set,
    /// [`Edit::Add`].
    Add,
}

/// One intervention: a site, its positions (None = every position) and the edit.
#[derive(Debug, Clone)]
pub struct Intervention {
    /// Where.
    pub site: Site,
    /// Query/sequence positions (None = all).
    pub positions: Option<Vec<usize>>,
    /// What.
    pub edit: Edit,
}

impl Intervention {
    /// The positions it acts on in a sequence of `s` tokens.
    pub fn resolved_positions(&self, s: usize) -> std::borrow::Cow<'_, [usize]> {
        match &self.positions {
            Some(p) => std::borrow::Cow::Borrowed(p.as_slice()),
            None => std::borrow::Cow::Owned((0..s).collect()),
        }
    }
}

/// What an intervened forward returns for one intervention set.
#[derive(Debug, Clone)]
pub struct IntervenedRun {
    /// Logits `[k,v]` f32 (CPU) at the asked positions.
    pub logits: Tensor,
    /// Residual streams `[1,s,e]` f32 (CPU) for the asked layers: hidden_states\[l\] (the input of
    /// layer l; l = L after the final norm, as in the capture).
    pub hidden_states: Vec<(usize, Tensor)>,
}

/// The edits of one layer for a whole batch: (batch row, intervention).
#[derive(Default)]
pub(crate) struct LayerEdits<'a> {
    pattern: Vec<(usize, &'a Intervention)>,
    head: Vec<(usize, &'a Intervention)>,
    attn: Vec<(usize, &'a Intervention)>,
    mlp: Vec<(usize, &'a Intervention)>,
    resid: Vec<(usize, &'a Intervention)>,
}

impl LayerEdits<'_> {
    pub(crate) fn has_pattern(&self) -> bool {
        !self.pattern.is_empty()
    }
    pub(crate) fn attn(&self) -> &[(usize, &Intervention)] {
        &self.attn
    }
    pub(crate) fn mlp(&self) -> &[(usize, &Intervention)] {
        &self.mlp
    }
}

/// The rows of an edit value as host f32 rows of width `w` (`k` positions, or 1 broadcast row).
fn value_rows(t: &Tensor, k: usize, w: usize, what: &str) -> Result<Vec<Vec<f32>>> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let t = match t.rank() {
        1 => t.unsqueeze(0)?,
        2 => t,
        3 if t.dim(0)? == 1 => t.squeeze(0)?,
        _ => bail!(
            "{what}: value must be [k,{w}], [1,{w}] or [{w}], got {:?}",
            t.dims()
        ),
    };
    let (r, c) = t.dims2()?;
    ensure!(
        c == w && (r == k || r == 1),
        "{what}: value must be [{k},{w}] or [1,{w}], got [{r},{c}]"
    );
    let rows = t.to_vec2::<f32>()?;
    ensure!(
        rows.iter().flatten().all(|x| x.is_finite()),
        "{what}: value has NaN or inf"
    );
    Ok(rows)
}

impl Qwen2 {
    /// Checks one intervention set against a sequence of `s` tokens.
    pub fn check_interventions(&self, s: usize, set: &[Intervention]) -> Result<()> {
        let cfg = &self.cfg;
        for iv in set {
            let what = iv.site.describe();
            match &iv.site {
                Site::Head { layer, head } | Site::Pattern { layer, head } => {
                    cfg.check_layer(*layer)?;
                    cfg.check_heads(&[*head])?;
                }
                Site::AttnOutput { layer } | Site::Mlp { layer } => cfg.check_layer(*layer)?,
                Site::Residual { layer } => ensure!(
                    *layer <= cfg.num_hidden_layers,
                    "{what}: residual layer {layer} out of range 0..={}",
                    cfg.num_hidden_layers
                ),
            }
            if let Some(p) = &iv.positions {
                ensure!(!p.is_empty(), "{what}: empty position list");
                if let Some(&q) = p.iter().find(|&&q| q >= s) {
                    bail!("{what}: position {q} out of range (sequence of {s} tokens)");
                }
            }
            let k = iv.positions.as_ref().map_or(s, Vec::len);
            let w = match iv.site {
                Site::Pattern { .. } => s,
                _ => cfg.hidden_size,
            };
            if let Edit::Set(t) | Edit::Add(t) = &iv.edit {
                value_rows(t, k, w, &what)?;
            }
        }
        Ok(())
    }

    /// Forwards `ids` once per intervention set (as one batch `[b,s,e]`, b = sets.len()) and
    /// returns, per set, the logits at `logit_pos` and the residual streams of `hidden_layers`.
    /// `start` = (l0, the clean residual entering layer l0 `[1,s,e]`) skips the layers below l0:
    /// no set may edit them or ask for their residual.
    pub fn forward_intervened(
        &self,
        ids: &[u32],
        sets: &[Vec<Intervention>],
        logit_pos: &[usize],
        hidden_layers: &[usize],
        start: Option<&(usize, Tensor)>,
    ) -> Result<Vec<IntervenedRun>> {
        let s = ids.len();
        let b = sets.len();
        let nl = self.cfg.num_hidden_layers;
        ensure!(b > 0, "no intervention sets");
        ensure!(!logit_pos.is_empty(), "no logit positions");
        super::ops::check_positions(logit_pos, s, "logit")?;
        if let Some(&l) = hidden_layers.iter().find(|&&l| l > nl) {
            bail!("hidden layer {l} out of range 0..={nl}");
        }
        for set in sets {
            self.check_interventions(s, set)?;
        }
        crate::limits::check_alloc(
            (b * s * self.cfg.hidden_size * 8) as u128 * self.dtype.size_in_bytes() as u128,
            &format!("an intervened forward of {b} sets × {s} tokens"),
        )?;
        let mut layers: Vec<LayerEdits> = (0..=nl).map(|_| LayerEdits::default()).collect();
        for (bi, set) in sets.iter().enumerate() {
            for iv in set {
                let le = &mut layers[iv.site.layer()];
                match iv.site {
                    Site::Pattern { .. } => le.pattern.push((bi, iv)),
                    Site::Head { .. } => le.head.push((bi, iv)),
                    Site::AttnOutput { .. } => le.attn.push((bi, iv)),
                    Site::Mlp { .. } => le.mlp.push((bi, iv)),
                    Site::Residual { .. } => le.resid.push((bi, iv)),
                }
            }
        }
        let l0 = start.map_or(0, |(l, _)| *l);
        if let Some((_, h)) = start {
            ensure!(l0 < nl, "start layer {l0} out of range 0..{nl}");
            ensure!(
                h.dims() == [1, s, self.cfg.hidden_size],
                "start residual is {:?}, expected [1,{s},{}]",
                h.dims(),
                self.cfg.hidden_size
            );
            ensure!(
                sets.iter().flatten().all(|iv| iv.site.layer() >= l0)
                    && hidden_layers.iter().all(|&l| l >= l0),
                "an intervention or a kept residual lies below the start layer {l0}"
            );
        }
        let x0 = match start {
            Some((_, h)) => h.to_dtype(self.dtype)?,
            None => self.embed(ids)?, // [1,s,e]
        };
        let mut x = x0
            .broadcast_as((b, s, self.cfg.hidden_size))?
            .contiguous()?;
        let mut mask = self.causal_mask_off_cpu(s)?;
        let mut hidden: Vec<Vec<(usize, Tensor)>> = vec![Vec::new(); b];
        let keep = |l: usize, x: &Tensor, hidden: &mut Vec<Vec<(usize, Tensor)>>| -> Result<()> {
            if hidden_layers.contains(&l) {
                for (bi, h) in hidden.iter_mut().enumerate() {
                    let t = x.narrow(0, bi, 1)?.to_dtype(DType::F32)?;
                    h.push((l, t.to_device(&Device::Cpu)?));
                }
            }
            Ok(())
        };
        for (l, edits) in layers.iter().enumerate().take(nl).skip(l0) {
            crate::cancel::check()?;
            let lw = self.w.layer(l)?;
            (x, mask) = self.to_layer(l, x, mask)?;
            x = self.apply_edits(&x, None, &edits.resid)?;
            keep(l, &x, &mut hidden)?;
            x = self.layer_forward_edited(l, &lw, &x, mask.as_ref(), edits)?;
        }
        x = self.home(x)?;
        x = self.apply_edits(&x, None, &layers[nl].resid)?;
        let var = rms_variance(&x)?;
        let hn = rms_apply(&x, &var, &self.w.final_norm, self.cfg.rms_norm_eps)?;
        keep(nl, &hn, &mut hidden)?;
        let rows = index_tensor(logit_pos, &self.device)?;
        let logits = linear(&hn.index_select(&rows, 1)?, &self.w.lm_head_t, None)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?; // [b,k,v]
        hidden
            .into_iter()
            .enumerate()
            .map(|(bi, hidden_states)| {
                Ok(IntervenedRun {
                    logits: logits.get(bi)?,
                    hidden_states,
                })
            })
            .collect()
    }

    /// The attention output of layer `l` for x `[b,s,e]` with pattern edits: the weights of
    /// every head through the component attention, edited rows, then o_proj.
    pub(crate) fn attn_output_patterned(
        &self,
        l: usize,
        xn: &Tensor,
        le: &LayerEdits,
    ) -> Result<(Tensor, Tensor)> {
        let (_, s, _) = xn.dims3()?;
        let pos: Vec<usize> = (0..s).collect();
        let a = AttnInputs::new(xn, xn, xn, &pos);
        let mut w = self.attention_weights(l, &a)?; // [b,n,s,s] f32
        let (b, n, _, _) = w.dims4()?;
        crate::limits::check_tensor(&[b, n, s, s], 4, "attention weights of an edited pattern")?;
        for &(bi, iv) in &le.pattern {
            let Site::Pattern { head, .. } = iv.site else {
                continue;
            };
            let cur = w.narrow(0, bi, 1)?.narrow(1, head, 1)?.squeeze(0)?; // [1,s,s]
            let new = edit_rows(&cur, iv, s)?;
            w = w.slice_assign(
                &[bi..bi + 1, head..head + 1, 0..s, 0..s],
                &new.unsqueeze(0)?,
            )?;
        }
        let out = self.attention(l, &a.with_weights(&w))?; // [b,s,e]
        Ok((out, w))
    }

    /// Applies the activation edits of one site kind to x `[b,s,e]`: X + M ⊙ (V − C) + A with
    /// C = `cur` (None: x itself).
    pub(crate) fn apply_edits(
        &self,
        x: &Tensor,
        cur: Option<&Tensor>,
        edits: &[(usize, &Intervention)],
    ) -> Result<Tensor> {
        if edits.is_empty() {
            return Ok(x.clone());
        }
        let (b, s, e) = x.dims3()?;
        let mut m = vec![0f32; b * s];
        let (mut v, mut a): (Option<Vec<f32>>, Option<Vec<f32>>) = (None, None);
        for &(bi, iv) in edits {
            let pos = &*iv.resolved_positions(s);
            let what = iv.site.describe();
            match &iv.edit {
                Edit::Zero => {
                    for &p in pos {
                        m[bi * s + p] = 1.0;
                        if let Some(v) = v.as_mut() {
                            v[(bi * s + p) * e..(bi * s + p + 1) * e].fill(0.0);
                        }
                    }
                }
                Edit::Set(t) => {
                    let rows = value_rows(t, pos.len(), e, &what)?;
                    let v = v.get_or_insert_with(|| vec![0f32; b * s * e]);
                    for (r, &p) in pos.iter().enumerate() {
                        m[bi * s + p] = 1.0;
                        let row = &rows[if rows.len() == 1 { 0 } else { r }];
                        v[(bi * s + p) * e..(bi * s + p + 1) * e].copy_from_slice(row);
                    }
                }
                Edit::Add(t) => {
                    let rows = value_rows(t, pos.len(), e, &what)?;
                    let a = a.get_or_insert_with(|| vec![0f32; b * s * e]);
                    for (r, &p) in pos.iter().enumerate() {
                        let row = &rows[if rows.len() == 1 { 0 } else { r }];
                        for (dst, src) in a[(bi * s + p) * e..(bi * s + p + 1) * e]
                            .iter_mut()
                            .zip(row)
                        {
                            *dst += src;
                        }
                    }
                }
            }
        }
        let dev = x.device();
        let dt = x.dtype();
        let mut out = x.clone();
        if m.iter().any(|&q| q != 0.0) {
            let mt = Tensor::from_vec(m, (b, s, 1), dev)?.to_dtype(dt)?;
            let v = match v {
                Some(v) => Tensor::from_vec(v, (b, s, e), dev)?.to_dtype(dt)?,
                None => x.zeros_like()?,
            };
            out = match cur {
                // C = X: X' = M ⊙ V + (1 − M) ⊙ X, exact at the set positions
                None => (v.broadcast_mul(&mt)? + x.broadcast_mul(&(1.0 - &mt)?)?)?,
                Some(c) => (x + (v - c)?.broadcast_mul(&mt)?)?,
            };
        }
        if let Some(a) = a {
            out = (out + Tensor::from_vec(a, (b, s, e), dev)?.to_dtype(dt)?)?;
        }
        Ok(out)
    }

    /// The head edits of a layer on its attention output `[b,s,e]` (C = each head's own
    /// contribution, from attn_out `[b,s,n,d]` or, with edited patterns, from weights `[b,n,s,s]`).
    pub(crate) fn apply_head_edits(
        &self,
        l: usize,
        attn_output: &Tensor,
        attn_out: Option<&Tensor>,
        patterned: Option<(&Tensor, &Tensor)>,
        le: &LayerEdits,
    ) -> Result<Tensor> {
        let mut heads: Vec<usize> = le
            .head
            .iter()
            .filter_map(|(_, iv)| match iv.site {
                Site::Head { head, .. } => Some(head),
                _ => None,
            })
            .collect();
        heads.sort_unstable();
        heads.dedup();
        let mut out = attn_output.clone();
        for h in heads {
            let contrib = match (attn_out, patterned) {
                (Some(ao), _) => self.head_outputs(l, ao, Some(&[h]))?.squeeze(2)?, // [b,s,e]
                (None, Some((xn, w))) => {
                    let (_, s, _) = xn.dims3()?;
                    let pos: Vec<usize> = (0..s).collect();
                    let wh = w.narrow(1, h, 1)?.contiguous()?;
                    let hs = [h];
                    let a = AttnInputs::new(xn, xn, xn, &pos)
                        .heads(&hs)
                        .with_weights(&wh);
                    self.attention(l, &a)?
                }
                (None, None) => bail!("head edits need the attention output"),
            }
            .to_device(out.device())?;
            let edits: Vec<(usize, &Intervention)> = le
                .head
                .iter()
                .filter(|(_, iv)| matches!(iv.site, Site::Head { head, .. } if head == h))
                .copied()
                .collect();
            out = self.apply_edits(&out, Some(&contrib), &edits)?;
        }
        Ok(out)
    }
}

/// One head's weights `[1,s,s]` with the rows of a pattern edit replaced, zeroed or shifted.
fn edit_rows(cur: &Tensor, iv: &Intervention, s: usize) -> Result<Tensor> {
    let pos = &*iv.resolved_positions(s);
    let mut keep = vec![1f32; s];
    let mut val = vec![0f32; s * s];
    let what = iv.site.describe();
    match &iv.edit {
        Edit::Zero => pos.iter().for_each(|&p| keep[p] = 0.0),
        Edit::Set(t) | Edit::Add(t) => {
            let rows = value_rows(t, pos.len(), s, &what)?;
            for (r, &p) in pos.iter().enumerate() {
                if matches!(iv.edit, Edit::Set(_)) {
                    keep[p] = 0.0;
                }
                let row = &rows[if rows.len() == 1 { 0 } else { r }];
                for (dst, src) in val[p * s..(p + 1) * s].iter_mut().zip(row) {
                    *dst += src;
                }
            }
        }
    }
    let dev = cur.device();
    let keep = Tensor::from_vec(keep, (1, s, 1), dev)?;
    let val = Tensor::from_vec(val, (1, s, s), dev)?;
    Ok(cur.broadcast_mul(&keep)?.add(&val)?)
}
