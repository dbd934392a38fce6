//! Model-backed lenses (V3, V4, V6, V7): head pattern-matching scores, the logit lens, the head
//! (direct-logit) lens and circuit evaluation by summed node outputs.
//!
//! Everything runs against `&dyn Backend` (local or remote alike) on a sample that was forwarded
//! and cached under `key`; the puzzle record `sample` gives the token positions and answers. The
//! positions evaluated are `pos = answer_indices − 1` (the `A-` span: the token that predicts each
//! answer). Residuals are only ever read and combined into new tensors: cached activations are
//! never modified (defect 16).
//!
//! Shape letters: k selected positions, e hidden, v vocab, s sequence.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};

use super::patterns::{get_ap_scores_rows, pattern_pairs, split_pattern};
use crate::attribution::{NodeId, NodeType};
use crate::backend::{Backend, HeadSel, SampleKey};
use crate::puzzle::Sample;

/// Column names of the logit lens: the residual entering the layer, after adding the attention
/// output, after adding the MLP output.
pub const LENS_COLUMNS: [&str; 3] = ["resid", "attn", "mlp"];

/// One entry of a top-k list: token id, its decoded text and its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TopToken {
    /// Token id.
    pub id: u32,
    /// The decoded token (as the tokenizer decodes it alone).
    pub token: String,
    /// Probability under the full-vocabulary softmax.
    pub prob: f32,
}

/// The result of [`eval_logit_lens`] (V4).
#[derive(Clone, Debug)]
pub struct LogitLens {
    /// First layer evaluated (row 0 of `acc` / `logprobs` / `top`).
    pub from_layer: usize,
    /// `[n_layers][3]`: accuracy (argmax == label, mean over the k positions) per column
    /// (resid, after attn, after mlp; see [`LENS_COLUMNS`]).
    pub acc: Vec<[f64; 3]>,
    /// `[n_layers][3]`: mean full-vocabulary log-prob of the labels, per column.
    pub logprobs: Vec<[f64; 3]>,
    /// `top[layer][column][position]`: the top-k tokens with their probabilities.
    pub top: Vec<[Vec<Vec<TopToken>>; 3]>,
    /// The k positions evaluated (answer_indices − 1).
    pub positions: Vec<usize>,
    /// The answer letters, one per position.
    pub answers: Vec<String>,
}

/// A node whose output a circuit evaluation ([`eval_nodes`]) sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LensNode {
    /// The token embeddings (hidden_states\[0\]).
    Embed,
    /// One attention head's residual contribution; `head == H` is the layer's MLP output.
    Head {
        /// Layer (0..L).
        layer: usize,
        /// Head (0..H; H = the MLP pseudo-head).
        head: usize,
    },
    /// The model's own output: hidden_states\[L\] (already final-normed) through lm_head.
    LmHead,
}

impl LensNode {
    /// An attention head (or the MLP with `head == H`).
    pub fn head(layer: usize, head: usize) -> Self {
        Self::Head { layer, head }
    }
}

impl TryFrom<NodeId> for LensNode {
    type Error = anyhow::Error;
    /// Attribution nodes: lm_head → [`LensNode::LmHead`], embed → [`LensNode::Embed`], MLP types
    /// → the layer's MLP (head H), attention types → their head.
    fn try_from(id: NodeId) -> Result<Self> {
        Ok(match id.ty {
            NodeType::LmHead => Self::LmHead,
            NodeType::Embed => Self::Embed,
            _ => Self::Head {
                layer: id.layer,
                head: id.head.with_context(|| format!("node {id} has no head"))?,
            },
        })
    }
}

/// Pattern-matching scores of one head for one pattern (V3).
#[derive(Clone, Debug, PartialEq)]
pub struct PatternScore {
    /// The `DST->SRC` pattern.
    pub pattern: String,
    /// One score per labelled DST row in ascending position order (V2); for the MLP
    /// pseudo-head one constant (1.0 if SRC == DST else 0.0) per (dst, src) pair.
    pub scores: Vec<f32>,
}

impl PatternScore {
    /// Mean score (0 for an empty list).
    pub fn mean(&self) -> f64 {
        mean_f32(&self.scores)
    }
}

fn mean_f32(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Fraction of `true` entries (0 for an empty slice): the seed's `reduce='mean'`.
pub fn mean_bool(v: &[bool]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().filter(|&&b| b).count() as f64 / v.len() as f64
    }
}

// ---------------------------------------------------------------- checks and positions

/// Checks that `sample` has token positions and answers and that it matches the sample cached
/// under `key` (same token count). Returns the sequence length s.
pub fn check_sample(backend: &dyn Backend, key: &SampleKey, sample: &Sample) -> Result<usize> {
    let n = sample.n_tokens.with_context(|| {
        format!(
            "sample {} has no token positions (built without a tokenizer)",
            sample.index
        )
    })?;
    ensure!(
        !sample.answer_indices.is_empty(),
        "sample {} has no answers",
        sample.index
    );
    ensure!(
        sample.labels.len() == sample.answer_indices.len()
            && sample.answers.len() == sample.answer_indices.len(),
        "sample {}: {} answers, {} labels, {} answer positions",
        sample.index,
        sample.answers.len(),
        sample.labels.len(),
        sample.answer_indices.len()
    );
    let s = backend.seq_len(key).with_context(|| {
        format!(
            "sample {} of dataset {:?} is not cached (forward it first)",
            key.index, key.dataset
        )
    })?;
    ensure!(
        s == n,
        "the puzzle sample has {n} tokens but the cached sample {} of dataset {:?} has {s} \
         (wrong key, or the prompt was tokenized differently)",
        key.index,
        key.dataset
    );
    Ok(s)
}

/// The lens positions `answer_indices − 1` (the `A-` span, one per answer).
pub fn lens_positions(sample: &Sample) -> Result<Vec<usize>> {
    sample
        .answer_indices
        .iter()
        .map(|&a| {
            a.checked_sub(1)
                .with_context(|| format!("answer at position {a} has no preceding token"))
        })
        .collect()
}

fn check_layer(backend: &dyn Backend, layer: usize) -> Result<()> {
    let l = backend.config().num_hidden_layers;
    ensure!(
        layer < l,
        "layer {layer} out of range (the model has {l} layers)"
    );
    Ok(())
}

/// Head in 0..=H (H = the MLP pseudo-head).
fn check_head_or_mlp(backend: &dyn Backend, head: usize) -> Result<()> {
    let h = backend.config().num_attention_heads;
    ensure!(
        head <= h,
        "head {head} out of range (the model has {h} heads; head {h} is the MLP)"
    );
    Ok(())
}

// ---------------------------------------------------------------- logits statistics

/// Statistics of one row of logits.
struct RowStats {
    argmax: u32,
    logprob: f64,
    top: Vec<(u32, f32)>,
}

/// Argmax (first maximum), log-softmax at `label` and the top-k probabilities of one row of
/// logits `[v]`, in one pass plus a top-k scan (log-sum-exp in f64).
fn row_stats(row: &[f32], label: u32, topk: usize) -> Result<RowStats> {
    let v = row.len();
    ensure!(
        (label as usize) < v,
        "label id {label} out of range (vocab size {v})"
    );
    let (mut argmax, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        ensure!(x.is_finite(), "non-finite logit at token {i}");
        if x > max {
            (argmax, max) = (i, x);
        }
    }
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let topk = topk.min(v);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(topk + 1);
    for (i, &x) in row.iter().enumerate() {
        if top.len() == topk && top.last().is_some_and(|t| row[t.0 as usize] >= x) {
            continue;
        }
        let at = top.partition_point(|t| row[t.0 as usize] >= x);
        top.insert(at, (i as u32, x));
        top.truncate(topk);
    }
    Ok(RowStats {
        argmax: argmax as u32,
        logprob: row[label as usize] as f64 - lse,
        top: top
            .into_iter()
            .map(|(i, x)| (i, (x as f64 - lse).exp() as f32))
            .collect(),
    })
}

/// Rows of logits `[1,r,v]` as `r` vectors.
fn logit_rows(logits: &Tensor, r: usize) -> Result<Vec<Vec<f32>>> {
    let d = logits.dims();
    ensure!(
        d.len() == 3 && d[0] == 1 && d[1] == r,
        "expected logits [1,{r},v], got {d:?}"
    );
    Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// The text of one token as the tokenizer decodes it alone (its id in angle brackets if it
/// cannot be decoded).
pub fn token_text(tok: &tokenizers::Tokenizer, id: u32) -> String {
    tok.decode(&[id], false)
        .ok()
        .or_else(|| tok.id_to_token(id))
        .unwrap_or_else(|| format!("<{id}>"))
}

// ---------------------------------------------------------------- V4 logit lens

/// V4 `eval_logit_lens`: for every layer l in `from_layer..to_layer` (default to_layer = L) and
/// the positions pos = answer_indices − 1, the residual `res = hidden_states[l][pos]`, then
/// `res + attn_output_l`, then `+ mlp_output_l`, each read through `lm_head(final_norm(·))` with
/// the norm recomputed ([`Backend::lens_logits`]). Records the accuracy (argmax == label, mean
/// over positions), the mean full-vocabulary log-prob of the labels and the top-k tokens.
///
/// The "mlp" column of layer l equals the "resid" column of layer l + 1, and the "mlp" column of
/// the last layer is the model's own output.
pub fn eval_logit_lens(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    from_layer: usize,
    to_layer: Option<usize>,
    topk: usize,
) -> Result<LogitLens> {
    check_sample(backend, key, sample)?;
    let nl = backend.config().num_hidden_layers;
    let to_layer = to_layer.unwrap_or(nl);
    ensure!(
        from_layer < to_layer && to_layer <= nl,
        "layer range {from_layer}..{to_layer} is empty or past the model's {nl} layers"
    );
    ensure!(topk > 0, "topk must be at least 1");
    let pos = lens_positions(sample)?;
    let k = pos.len();
    let tok = backend.tokenizer();
    let mut lens = LogitLens {
        from_layer,
        acc: Vec::new(),
        logprobs: Vec::new(),
        top: Vec::new(),
        positions: pos.clone(),
        answers: sample.answers.clone(),
    };
    for l in from_layer..to_layer {
        let ctx = || format!("logit lens at layer {l}");
        let res = backend
            .hidden_states(key, l, Some(&pos))
            .with_context(ctx)?; // [1,k,e]
        let attn = backend.attn_output(key, l, Some(&pos)).with_context(ctx)?; // [1,k,e]
        let mlp = backend.mlp_output(key, l, Some(&pos)).with_context(ctx)?; // [1,k,e]
        let after_attn = (&res + &attn)?; // new tensors: the cache is never touched
        let after_mlp = (&after_attn + &mlp)?;
        let x = Tensor::cat(&[&res, &after_attn, &after_mlp], 1)?; // [1,3k,e]
        let rows = logit_rows(&backend.lens_logits(&x).with_context(ctx)?, 3 * k)?; // 3k × [v]
        let mut acc = [0.0; 3];
        let mut lp = [0.0; 3];
        let mut top: [Vec<Vec<TopToken>>; 3] = Default::default();
        for c in 0..3 {
            for (p, &label) in sample.labels.iter().enumerate() {
                let st = row_stats(&rows[c * k + p], label, topk).with_context(ctx)?;
                acc[c] += (st.argmax == label) as u8 as f64 / k as f64;
                lp[c] += st.logprob / k as f64;
                top[c].push(
                    st.top
                        .into_iter()
                        .map(|(id, prob)| TopToken {
                            id,
                            token: token_text(tok, id),
                            prob,
                        })
                        .collect(),
                );
            }
        }
        lens.acc.push(acc);
        lens.logprobs.push(lp);
        lens.top.push(top);
    }
    Ok(lens)
}

/// The verbose text of the logit lens: per layer and column the accuracy and mean log-prob,
/// then per position (with its answer) the top-k tokens with integer percentages.
pub fn render_logit_lens(lens: &LogitLens) -> String {
    let mut s = String::new();
    for (i, top) in lens.top.iter().enumerate() {
        let l = lens.from_layer + i;
        for (c, name) in LENS_COLUMNS.iter().enumerate() {
            let _ = writeln!(
                s,
                "layer {l:>3} {name:<5} acc {:.3} logprob {:.3}",
                lens.acc[i][c], lens.logprobs[i][c]
            );
            for (p, toks) in top[c].iter().enumerate() {
                let list: Vec<String> = toks
                    .iter()
                    .map(|t| format!("{:?} {}%", t.token, (t.prob * 100.0).round() as i64))
                    .collect();
                let _ = writeln!(
                    s,
                    "    pos {} ({}): {}",
                    lens.positions[p],
                    lens.answers.get(p).map(String::as_str).unwrap_or("?"),
                    list.join(", ")
                );
            }
        }
    }
    s
}

// ---------------------------------------------------------------- V6 head lens

/// V6 `eval_head_lens`: the output of head `head` of `layer` (head == H: the MLP) at
/// pos = answer_indices − 1 read through `lm_head(final_norm(·))` (fresh norm), one bool per
/// answer. `strict`: argmax == label id; otherwise the argmax token decoded, trimmed and
/// lower-cased equals the answer letter lower-cased. Use [`mean_bool`] for the seed's mean.
pub fn eval_head_lens(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    layer: usize,
    head: usize,
    strict: bool,
) -> Result<Vec<bool>> {
    let (loose, strict_hits) = eval_head_lens_both(backend, key, sample, layer, head)?;
    Ok(if strict { strict_hits } else { loose })
}

/// Both readings of [`eval_head_lens`] (loose, strict) from one projection through lm_head —
/// the projection streams the whole `[e, v]` matrix for a few rows, so it is the cost.
pub fn eval_head_lens_both(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    layer: usize,
    head: usize,
) -> Result<(Vec<bool>, Vec<bool>)> {
    check_sample(backend, key, sample)?;
    check_layer(backend, layer)?;
    check_head_or_mlp(backend, head)?;
    let pos = lens_positions(sample)?;
    let out = backend
        .head_output(key, layer, &HeadSel::One(head), Some(&pos))
        .with_context(|| format!("head lens of {layer}-{head}"))?; // [1,k,e]
    let rows = logit_rows(&backend.lens_logits(&out)?, pos.len())?;
    let tok = backend.tokenizer();
    let mut loose = Vec::with_capacity(rows.len());
    let mut strict = Vec::with_capacity(rows.len());
    for (row, (&label, answer)) in rows.iter().zip(sample.labels.iter().zip(&sample.answers)) {
        let st = row_stats(row, label, 1)?;
        strict.push(st.argmax == label);
        loose
            .push(token_text(tok, st.argmax).trim().to_lowercase() == answer.trim().to_lowercase());
    }
    Ok((loose, strict))
}

// ---------------------------------------------------------------- V7 circuit evaluation

/// V7 `eval_nodes`: the accuracy (argmax == label, mean over pos = answer_indices − 1) of
/// `lm_head(final_norm(Σ node outputs))`. A single [`LensNode::LmHead`] is the model itself
/// (hidden_states\[L\] through lm_head, no second norm). Heads of one layer are fetched together;
/// duplicates are an error.
pub fn eval_nodes(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    nodes: &[LensNode],
) -> Result<f64> {
    check_sample(backend, key, sample)?;
    ensure!(!nodes.is_empty(), "eval_nodes needs at least one node");
    let pos = lens_positions(sample)?;
    let k = pos.len();
    let logits = if nodes.contains(&LensNode::LmHead) {
        ensure!(
            nodes.len() == 1,
            "an lm_head node stands for the whole model and cannot be combined with other nodes"
        );
        backend.logits(key, Some(&pos))?
    } else {
        backend.lens_logits(&sum_nodes(backend, key, nodes, &pos)?)?
    };
    let rows = logit_rows(&logits, k)?;
    let mut correct = 0usize;
    for (row, &label) in rows.iter().zip(&sample.labels) {
        correct += (row_stats(row, label, 1)?.argmax == label) as usize;
    }
    Ok(correct as f64 / k as f64)
}

/// Σ of the nodes' outputs at `pos` `[1,k,e]` (one backend call per layer for heads, one for the
/// MLP, one for the embeddings).
fn sum_nodes(
    backend: &dyn Backend,
    key: &SampleKey,
    nodes: &[LensNode],
    pos: &[usize],
) -> Result<Tensor> {
    let nh = backend.config().num_attention_heads;
    let mut embed = false;
    let mut by_layer: BTreeMap<usize, (Vec<usize>, bool)> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        ensure!(
            !nodes[..i].contains(n),
            "node {n:?} is listed twice (its output would be counted twice)"
        );
        match *n {
            LensNode::Embed => embed = true,
            LensNode::Head { layer, head } => {
                check_layer(backend, layer)?;
                check_head_or_mlp(backend, head)?;
                let e = by_layer.entry(layer).or_default();
                if head == nh {
                    e.1 = true;
                } else {
                    e.0.push(head);
                }
            }
            LensNode::LmHead => bail!("lm_head cannot be summed with other nodes"),
        }
    }
    let mut parts: Vec<Tensor> = Vec::new();
    if embed {
        parts.push(backend.hidden_states(key, 0, Some(pos))?);
    }
    for (layer, (heads, mlp)) in by_layer {
        if !heads.is_empty() {
            parts.push(backend.head_output(key, layer, &HeadSel::Many(heads), Some(pos))?);
        }
        if mlp {
            parts.push(backend.mlp_output(key, layer, Some(pos))?);
        }
    }
    let mut sum = parts[0].clone();
    for p in &parts[1..] {
        sum = (sum + p)?;
    }
    Ok(sum)
}

// ---------------------------------------------------------------- V3 head matching scores

/// V3 `get_head_matching_scores`: how much head (layer, head) attends as each `DST->SRC` pattern
/// expects, over the QAs of the last `last_k` train examples. For an attention head: V2
/// ([`get_ap_scores`](super::patterns::get_ap_scores)) with the V1 labels, computed on the
/// labelled query rows only ([`get_ap_scores_rows`]: no `[s,s]` matrices). For the MLP pseudo-head
/// (head == H): 1.0 per pair if SRC == DST, else 0.0.
pub fn get_head_matching_scores(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    patterns: &[&str],
    layer: usize,
    head: usize,
    last_k: usize,
) -> Result<Vec<PatternScore>> {
    ensure!(!patterns.is_empty(), "no patterns given");
    let s = check_sample(backend, key, sample)?;
    check_layer(backend, layer)?;
    check_head_or_mlp(backend, head)?;
    if head == backend.config().num_attention_heads {
        return patterns
            .iter()
            .map(|p| {
                let (dst, src) = split_pattern(p)?;
                let n = sample.positions(dst, last_k)?.len();
                sample.positions(src, last_k)?; // the spans must exist
                let v = if dst == src { 1.0 } else { 0.0 };
                Ok(PatternScore {
                    pattern: p.to_string(),
                    scores: vec![v; n],
                })
            })
            .collect();
    }
    let pairs: Vec<Vec<(usize, usize)>> = patterns
        .iter()
        .map(|p| pattern_pairs(sample, p, last_k))
        .collect::<Result<_>>()?;
    let mut rows: Vec<usize> = pairs.iter().flatten().map(|&(dst, _)| dst).collect();
    rows.sort_unstable();
    rows.dedup();
    let aw = backend
        .attn_weights(key, layer, &HeadSel::One(head), Some(&rows))
        .with_context(|| format!("attention weights of {layer}-{head}"))?; // [1,r,s]
    ensure!(
        aw.dims() == [1, rows.len(), s],
        "attention weights have shape {:?}, expected [1,{},{s}]",
        aw.dims(),
        rows.len()
    );
    let aw = aw.squeeze(0)?; // [r,s]: only the labelled rows, no [s,s] matrices
    patterns
        .iter()
        .zip(&pairs)
        .map(|(p, pp)| {
            Ok(PatternScore {
                pattern: p.to_string(),
                scores: get_ap_scores_rows(&aw, &rows, pp)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_stats_by_hand() {
        // logits [1, 3, 0, 2]: softmax = e^x / Σ e^x
        let row = [1.0f32, 3.0, 0.0, 2.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        let st = row_stats(&row, 0, 2).unwrap();
        assert_eq!(st.argmax, 1);
        assert!((st.logprob - (1.0 - z.ln())).abs() < 1e-9);
        assert_eq!(st.top.len(), 2);
        assert_eq!((st.top[0].0, st.top[1].0), (1, 3));
        assert!((st.top[0].1 as f64 - 3f64.exp() / z).abs() < 1e-6);
        assert!((st.top[1].1 as f64 - 2f64.exp() / z).abs() < 1e-6);
        // topk larger than v keeps everything, sorted
        let st = row_stats(&row, 2, 10).unwrap();
        let ids: Vec<u32> = st.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 0, 2]);
        assert!(row_stats(&row, 4, 1).is_err());
        assert!(row_stats(&[f32::NAN, 1.0], 0, 1).is_err());
    }

    #[test]
    fn means() {
        assert_eq!(mean_bool(&[true, false, true, true]), 0.75);
        assert_eq!(mean_bool(&[]), 0.0);
        let p = PatternScore {
            pattern: "A-->V".into(),
            scores: vec![0.5, 0.25],
        };
        assert!((p.mean() - 0.375).abs() < 1e-12);
    }
}
