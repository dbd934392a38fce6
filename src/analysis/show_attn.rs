//! V8 `show_attn`: one head's attention over a stretch of the prompt, as rows of per-token values
//! for a colour-by-token viewer ([`crate::vis::tokens`]).
//!
//! Rows: `act` (the non-sink attention mass of every query token), then for each shown answer a
//! one-hot `q->` row at its query position (answer_index − 1), the query's attention row labelled
//! with the answer letter and ✓/✗ from the non-strict head lens of that same answer, and
//! optionally its `aa` row (attention attribution, `aw ⊙ |grad_aw|` row-normalised).
//!
//! Defect 15 fixed: the seed paired the shown (last) answers with the first head-lens entries;
//! here answer i of the sample always gets head-lens entry i.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Tensor};

use super::lens::{check_sample, eval_head_lens, lens_positions, token_text};
use crate::attribution::{Graph, NodeId, SampleRef, attention_attribution, attribute_attn_weights};
use crate::backend::{Backend, HeadSel, SampleKey};
use crate::puzzle::Sample;
use crate::puzzle::sample::DEFAULT_LAST_K;

/// Tokens the default window starts before the `grid` token of the first shown example.
pub const START_BEFORE_GRID: usize = 5;

/// The data of [`show_attn_data`]: `rows[r][t]` is the value of row `r` at `tokens[t]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShowAttn {
    /// `rel_fn` and the model's responses with ✓/✗ (what the seed printed).
    pub header: String,
    /// The prompt's tokens in `start..stop`.
    pub tokens: Vec<String>,
    /// Value rows over `tokens`.
    pub rows: Vec<Vec<f32>>,
    /// One label per row: `act`, `q->`, `<letter>✓|✗`, `aa`.
    pub labels: Vec<String>,
    /// First token position shown.
    pub start: usize,
    /// One past the last token position shown.
    pub stop: usize,
}

/// A21/A22 `aa` rows from A21's output: `aw ⊙ |grad_aw|`, each row divided by its sum over s.
/// aw, grad_aw `[1,k,s]` or `[k,s]` → `[k,s]` f32. (`attribute_attn_weights` in
/// [`crate::attribution`] gives aw and grad_aw; [`attn_attr_rows_for`] calls it.)
pub fn attn_attr_rows(aw: &Tensor, grad_aw: &Tensor) -> Result<Tensor> {
    ensure!(
        aw.dims() == grad_aw.dims(),
        "aw {:?} and grad_aw {:?} differ in shape",
        aw.dims(),
        grad_aw.dims()
    );
    let two_d = |t: &Tensor| -> Result<Tensor> {
        Ok(match t.dims() {
            [1, _, _] => t.squeeze(0)?,
            [_, _] => t.clone(),
            d => anyhow::bail!("attention rows must be [1,k,s] or [k,s], got {d:?}"),
        }
        .to_dtype(DType::F32)?)
    };
    attention_attribution(&two_d(aw)?, &two_d(grad_aw)?, true) // [k,s]
}

/// `aa` rows `[k,s]` of head (layer, head) toward `downstreams` computed through the
/// attribution module ([`attribute_attn_weights`], A21; the downstream nodes' gradients for this
/// sample must exist in `g`), then [`attn_attr_rows`].
pub fn attn_attr_rows_for(
    g: &Graph,
    backend: &dyn Backend,
    r: &SampleRef,
    layer: usize,
    head: usize,
    downstreams: &[NodeId],
) -> Result<Tensor> {
    let (aw, grad) = attribute_attn_weights(g, backend, r, layer, head, downstreams)?;
    attn_attr_rows(&aw, &grad)
}

/// The tokens of `prompt` as the backend's tokenizer splits it (the text each token covers).
fn prompt_tokens(backend: &dyn Backend, prompt: &str) -> Result<Vec<String>> {
    let tok = backend.tokenizer();
    let enc = tok
        .encode(prompt, false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    Ok(enc
        .get_offsets()
        .iter()
        .zip(enc.get_ids())
        .map(|(&(a, b), &id)| {
            prompt
                .get(a..b)
                .map(str::to_string)
                .unwrap_or_else(|| token_text(tok, id))
        })
        .collect())
}

/// Indices (into the sample's answer list) of the answers shown: the last `q_train · last_k`.
pub fn shown_answers(n_answers: usize, q_train: usize, last_k: usize) -> Result<Range<usize>> {
    ensure!(
        (1..=DEFAULT_LAST_K).contains(&last_k),
        "last_k={last_k} is out of range: the sample's answers cover the last {DEFAULT_LAST_K} \
         train examples"
    );
    let n = q_train * last_k;
    ensure!(
        n > 0 && n <= n_answers,
        "showing {n} answers (Q_train {q_train} × last_k {last_k}) but the sample has {n_answers}"
    );
    Ok(n_answers - n..n_answers)
}

/// Inputs of [`assemble`], all resolved to positions and values.
struct Parts<'a> {
    /// `start..stop`.
    window: Range<usize>,
    /// Attention rows by query position: `aw_row(q)` → `[s]`.
    aw: &'a dyn Fn(usize) -> Result<Vec<f32>>,
    /// All answers' letters, query positions and head-lens verdicts (same order).
    answers: &'a [String],
    queries: &'a [usize],
    correct: &'a [bool],
    /// Which answers to show.
    shown: Range<usize>,
    /// `aa` rows `[n_shown][s]` for the shown answers, in order.
    aa: Option<Vec<Vec<f32>>>,
}

/// Builds the rows and labels (pure; defect 15's pairing lives here).
fn assemble(p: Parts) -> Result<(Vec<Vec<f32>>, Vec<String>)> {
    ensure!(
        p.answers.len() == p.queries.len() && p.correct.len() == p.queries.len(),
        "{} answers, {} queries, {} head-lens entries",
        p.answers.len(),
        p.queries.len(),
        p.correct.len()
    );
    let w = p.window.clone();
    let mut act = Vec::with_capacity(w.len());
    for t in w.clone() {
        // non-sink mass: Σ_{j ≥ 1} aw[t, j]
        act.push(((p.aw)(t)?[1..]).iter().sum::<f32>());
    }
    let mut rows = vec![act];
    let mut labels = vec!["act".to_string()];
    for (n, i) in p.shown.clone().enumerate() {
        let q = p.queries[i];
        let mut one_hot = vec![0f32; w.len()];
        if w.contains(&q) {
            one_hot[q - w.start] = 1.0;
        }
        rows.push(one_hot);
        labels.push("q->".into());
        rows.push((p.aw)(q)?[w.clone()].to_vec());
        let mark = if p.correct[i] { '✓' } else { '✗' };
        labels.push(format!("{}{mark}", p.answers[i]));
        if let Some(aa) = &p.aa {
            rows.push(aa[n][w.clone()].to_vec());
            labels.push("aa".into());
        }
    }
    Ok((rows, labels))
}

/// V8 `show_attn` data for head (layer, head) on the cached sample `key` (puzzle record
/// `sample`). Shows the last `Q_train · last_k` answers (last_k ∈ 1..=2). `aa`: optional
/// attention-attribution rows `[k',s]` or `[1,k',s]` (k' ≥ the shown answers; the last rows are
/// used, as the seed takes the last rows of A21), e.g. from [`attn_attr_rows`] /
/// [`attn_attr_rows_for`]. Window: `start` defaults to 5 tokens before the `grid` token of the
/// first shown example's grid, `stop` to the end of the prompt.
#[allow(clippy::too_many_arguments)]
pub fn show_attn_data(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    layer: usize,
    head: usize,
    aa: Option<&Tensor>,
    last_k: usize,
    start: Option<usize>,
    stop: Option<usize>,
) -> Result<ShowAttn> {
    let s = check_sample(backend, key, sample)?;
    let cfg = backend.config();
    ensure!(
        layer < cfg.num_hidden_layers,
        "layer {layer} out of range (the model has {} layers)",
        cfg.num_hidden_layers
    );
    ensure!(
        head < cfg.num_attention_heads,
        "head {head} out of range: show_attn needs an attention head (the model has {})",
        cfg.num_attention_heads
    );
    let n_ans = sample.answer_indices.len();
    // a custom prompt shows every answer, from the prompt's first token unless start is given
    let custom = sample.puzzle.is_none();
    let shown = if custom {
        ensure!(n_ans > 0, "the sample has no answers to show");
        0..n_ans
    } else {
        shown_answers(n_ans, sample.params.puzzle.q_train, last_k)?
    };
    let start = match start {
        Some(v) => v,
        None if custom => 0,
        None => {
            let ex = sample
                .last_examples(last_k)?
                .first()
                .context("no example")?;
            let grid = ex
                .input_ranges
                .as_ref()
                .and_then(|g| g.prefix.token)
                .context("the example's grid has no token position")?;
            grid.saturating_sub(START_BEFORE_GRID)
        }
    };
    let stop = stop.unwrap_or(s);
    ensure!(
        start < stop && stop <= s,
        "token window {start}..{stop} is empty or past the prompt's {s} tokens"
    );
    let tokens = prompt_tokens(backend, &sample.prompt)?;
    ensure!(
        tokens.len() == s,
        "the prompt splits into {} tokens but the cached sample has {s}",
        tokens.len()
    );
    let queries = lens_positions(sample)?;
    // attention of every window token plus the shown queries outside the window
    let mut pos: Vec<usize> = (start..stop).collect();
    pos.extend(
        queries[shown.clone()]
            .iter()
            .filter(|q| !(start..stop).contains(q)),
    );
    pos.sort_unstable();
    pos.dedup();
    let aw = backend
        .attn_weights(key, layer, &HeadSel::One(head), Some(&pos))
        .with_context(|| format!("attention weights of {layer}-{head}"))?; // [1,k,s]
    ensure!(
        aw.dims() == [1, pos.len(), s],
        "attention weights have shape {:?}, expected [1,{},{s}]",
        aw.dims(),
        pos.len()
    );
    let aw = aw.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let aw_row = |q: usize| -> Result<Vec<f32>> {
        let i = pos.binary_search(&q).ok().context("query not computed")?;
        Ok(aw[i].clone())
    };
    let aa_rows = aa.map(|t| aa_tail(t, shown.len(), s)).transpose()?;
    let correct = eval_head_lens(backend, key, sample, layer, head, false)?;
    let (rows, labels) = assemble(Parts {
        window: start..stop,
        aw: &aw_row,
        answers: &sample.answers,
        queries: &queries,
        correct: &correct,
        shown,
        aa: aa_rows,
    })?;
    Ok(ShowAttn {
        header: header(backend, key, sample, &queries)?,
        tokens: tokens[start..stop].to_vec(),
        rows,
        labels,
        start,
        stop,
    })
}

/// The last `n` rows of `aa` (`[k',s]` or `[1,k',s]`).
fn aa_tail(aa: &Tensor, n: usize, s: usize) -> Result<Vec<Vec<f32>>> {
    let t = match aa.dims() {
        [1, _, _] => aa.squeeze(0)?,
        [_, _] => aa.clone(),
        d => anyhow::bail!("aa rows must be [k,s] or [1,k,s], got {d:?}"),
    };
    let (k, cols) = t.dims2()?;
    ensure!(
        cols == s,
        "aa rows have {cols} columns but the prompt has {s} tokens"
    );
    ensure!(
        k >= n,
        "aa has {k} rows but {n} answers are shown (it needs one row per shown answer)"
    );
    Ok(t.narrow(0, k - n, n)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}

/// `rel_fn: …` and the model's responses (argmax at each answer's query) with ✓/✗.
fn header(
    backend: &dyn Backend,
    key: &SampleKey,
    sample: &Sample,
    queries: &[usize],
) -> Result<String> {
    let logits = backend.logits(key, Some(queries))?.squeeze(0)?; // [k,v]
    let pred = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let tok = backend.tokenizer();
    let responses: Vec<String> = pred
        .iter()
        .zip(&sample.labels)
        .map(|(&p, &l)| {
            let mark = if p == l { '✓' } else { '✗' };
            format!("{}{mark}", token_text(tok, p).trim())
        })
        .collect();
    Ok(format!(
        "rel_fn: {}\nresponses: {}",
        sample.rel_fn,
        responses.join(" ")
    ))
}

/// Terminal view: the header, then [`crate::vis::tokens::render_tokens_term`] of the rows
/// (colours only on a terminal without `NO_COLOR`).
pub fn show_attn_ansi(v: &ShowAttn) -> Result<String> {
    let body = crate::vis::tokens::render_tokens_term(&v.tokens, &v.rows, &v.labels)?;
    Ok(format!("{}\n{body}", v.header))
}

/// HTML page of the rows ([`crate::vis::tokens::write_tokens_html`]); the title defaults to the
/// first header line.
pub fn write_show_attn_html(v: &ShowAttn, path: &Path, title: Option<&str>) -> Result<()> {
    let t = title.unwrap_or_else(|| v.header.lines().next().unwrap_or("show_attn"));
    crate::vis::tokens::write_tokens_html(path, &v.tokens, &v.rows, &v.labels, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 answers over 2 examples (Q_train 4); the head lens is right on example 1 and wrong on
    /// example 2. With last_k = 1 the shown answers are 4..8 and must all be ✗ (the seed's
    /// defect 15 paired them with entries 0..4 and marked them ✓).
    #[test]
    fn labels_pair_each_answer_with_its_own_head_lens_entry() {
        let s = 30;
        let answers: Vec<String> = "BRGYKBRG".chars().map(|c| c.to_string()).collect();
        let queries: Vec<usize> = (0..8).map(|i| 2 + 3 * i).collect();
        let correct = [true, true, true, true, false, false, false, false];
        // aw row of query q: all mass on key q/2 (key 0 gets the rest for odd q)
        let aw = |q: usize| -> Result<Vec<f32>> {
            let mut r = vec![0f32; s];
            r[q / 2] += 0.75;
            r[0] += 0.25;
            Ok(r)
        };
        let shown = shown_answers(8, 4, 1).unwrap();
        assert_eq!(shown, 4..8);
        let aa: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32; s]).collect();
        let (rows, labels) = assemble(Parts {
            window: 10..s,
            aw: &aw,
            answers: &answers,
            queries: &queries,
            correct: &correct,
            shown,
            aa: Some(aa),
        })
        .unwrap();
        assert_eq!(
            labels,
            vec![
                "act", "q->", "K✗", "aa", "q->", "B✗", "aa", "q->", "R✗", "aa", "q->", "G✗", "aa"
            ]
        );
        // act = 1 − aw[t, 0] over the window (t/2 > 0 here)
        for (c, t) in (10..s).enumerate() {
            assert!((rows[0][c] - 0.75).abs() < 1e-6, "t={t}");
        }
        for (n, i) in (4..8).enumerate() {
            let q = queries[i];
            let one_hot = &rows[1 + 3 * n];
            assert_eq!(one_hot.iter().sum::<f32>(), 1.0);
            assert_eq!(one_hot[q - 10], 1.0);
            let att = &rows[2 + 3 * n];
            let want = aw(q).unwrap()[10..].to_vec();
            assert_eq!(att, &want);
            assert_eq!(rows[3 + 3 * n], vec![n as f32; s - 10]);
        }
        // last_k = 2 shows everything, with the ✓ of example 1
        let (_, labels) = assemble(Parts {
            window: 0..s,
            aw: &aw,
            answers: &answers,
            queries: &queries,
            correct: &correct,
            shown: shown_answers(8, 4, 2).unwrap(),
            aa: None,
        })
        .unwrap();
        let marks: Vec<&String> = labels.iter().skip(2).step_by(2).collect();
        assert_eq!(marks, vec!["B✓", "R✓", "G✓", "Y✓", "K✗", "B✗", "R✗", "G✗"]);
        assert!(shown_answers(8, 4, 3).is_err());
        assert!(shown_answers(8, 4, 0).is_err());
        assert!(shown_answers(6, 4, 2).is_err());
    }

    #[test]
    fn aa_rows_by_hand() {
        let aw = Tensor::from_vec(
            vec![0.5f32, 0.5, 0.0, 0.2, 0.3, 0.5],
            (1, 2, 3),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let g = Tensor::from_vec(
            vec![1.0f32, -3.0, 7.0, 0.0, 2.0, -2.0],
            (1, 2, 3),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let aa = attn_attr_rows(&aw, &g).unwrap().to_vec2::<f32>().unwrap();
        // row 0: [0.5, 1.5, 0] / 2; row 1: [0, 0.6, 1.0] / 1.6
        let want = [[0.25, 0.75, 0.0], [0.0, 0.375, 0.625]];
        for r in 0..2 {
            for c in 0..3 {
                assert!((aa[r][c] - want[r][c]).abs() < 1e-6, "{aa:?}");
            }
        }
        let bad = Tensor::zeros((2, 2, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(attn_attr_rows(&bad, &bad).is_err());
        assert!(attn_attr_rows(&aw, &bad).is_err());
        let tail = aa_tail(
            &Tensor::from_vec(
                (0..12).map(|x| x as f32).collect::<Vec<_>>(),
                (4, 3),
                &candle_core::Device::Cpu,
            )
            .unwrap(),
            2,
            3,
        )
        .unwrap();
        assert_eq!(tail, vec![vec![6.0, 7.0, 8.0], vec![9.0, 10.0, 11.0]]);
        let t43 = Tensor::zeros((4, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(aa_tail(&t43, 5, 3).is_err());
        assert!(aa_tail(&t43, 2, 4).is_err());
    }
}
