//! Attention-pattern label matrices (V1) and pattern-matching scores (V2).
//!
//! A pattern `"DST->SRC"` pairs, for every QA of the chosen examples, a query position (DST) with
//! the position it is expected to attend to (SRC). The span machinery that turns a span into
//! positions lives in the puzzle module ([`crate::puzzle::Sample::positions`]);
//! [`attn_pattern2labels`] uses it, [`attn_pattern_labels`] takes resolved index pairs.

use anyhow::{Context, Result, ensure};
use candle_core::{D, DType, Device, Tensor};

use crate::puzzle::Sample;

/// Row-normalisation epsilon of the label matrix (V1).
pub const LABEL_EPS: f32 = 1e-9;

/// A label matrix and the DST positions it was built from.
#[derive(Clone, Debug)]
pub struct PatternLabels {
    /// `[s, s]` f32: `labels[dst, src] = 1`, each row divided by (its sum + 1e-9).
    pub labels: Tensor,
    /// The DST position of every (dst, src) pair, in the given order (the seed's `ranges_q`).
    pub ranges_q: Vec<usize>,
}

/// V1 `attn_pattern2labels`: builds the `[s, s]` label matrix from `(dst, src)` position pairs
/// (one per QA, concatenated over examples). Rows are normalised to sum 1 (+1e-9).
pub fn attn_pattern_labels(seq_len: usize, pairs: &[(usize, usize)]) -> Result<PatternLabels> {
    ensure!(seq_len > 0, "sequence length must be positive");
    ensure!(!pairs.is_empty(), "no (dst, src) pairs given");
    let mut m = vec![0f32; seq_len * seq_len];
    for &(dst, src) in pairs {
        ensure!(
            dst < seq_len && src < seq_len,
            "pair (dst {dst}, src {src}) is outside the sequence of {seq_len} tokens"
        );
        m[dst * seq_len + src] = 1.0;
    }
    for row in m.chunks_mut(seq_len) {
        let sum: f32 = row.iter().sum();
        if sum > 0.0 {
            row.iter_mut().for_each(|x| *x /= sum + LABEL_EPS);
        }
    }
    Ok(PatternLabels {
        labels: Tensor::from_vec(m, (seq_len, seq_len), &Device::Cpu)?,
        ranges_q: pairs.iter().map(|p| p.0).collect(),
    })
}

/// Splits a pattern `"DST->SRC"` at its first `->` (`"A-->V"` is DST `A-`, SRC `V`).
pub fn split_pattern(pattern: &str) -> Result<(&str, &str)> {
    let (dst, src) = pattern
        .split_once("->")
        .with_context(|| format!("attention pattern {pattern:?} is not of the form DST->SRC"))?;
    ensure!(
        !dst.is_empty() && !src.is_empty(),
        "attention pattern {pattern:?} has an empty side"
    );
    Ok((dst, src))
}

/// V1 `attn_pattern2labels` on a sample: DST and SRC positions of `pattern` over the last
/// `last_k` train examples, paired per QA, as a `[s, s]` label matrix (`s` = the prompt's tokens).
pub fn attn_pattern2labels(sample: &Sample, pattern: &str, last_k: usize) -> Result<PatternLabels> {
    let pairs = pattern_pairs(sample, pattern, last_k)?;
    let n = sample
        .n_tokens
        .context("the sample has no token positions (built without a tokenizer)")?;
    attn_pattern_labels(n, &pairs)
}

/// The (DST, SRC) token-position pairs of a pattern `"DST->SRC"`, one per QA of the last
/// `last_k` train examples (A9 spans on both sides).
pub fn pattern_pairs(sample: &Sample, pattern: &str, last_k: usize) -> Result<Vec<(usize, usize)>> {
    let (dst, src) = split_pattern(pattern)?;
    let d = sample.positions(dst, last_k)?;
    let s = sample.positions(src, last_k)?;
    ensure!(
        d.len() == s.len(),
        "pattern {pattern:?}: {} DST positions but {} SRC positions",
        d.len(),
        s.len()
    );
    Ok(d.into_iter().zip(s).collect())
}

/// V2 `get_ap_scores`: for every labelled row (ascending position order), the attention mass
/// `Σ_j aw[..., row, j] · labels[row, j]` placed on the expected sources.
///
/// `aw` is `[..., s, s]` and must be non-negative; the number of labelled rows must equal the
/// number of DST positions (two QAs sharing a DST row is an error). Output `[..., rows]` (f32).
pub fn get_ap_scores(aw: &Tensor, labels: &PatternLabels) -> Result<Tensor> {
    let dims = aw.dims();
    ensure!(
        dims.len() >= 2,
        "attention weights need at least 2 dimensions [.., s, s], got {dims:?}"
    );
    let (i, j) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let s = labels.labels.dim(0)?;
    ensure!(
        i == s && j == s,
        "attention weights end in [{i}, {j}], labels are [{s}, {s}]"
    );
    let aw = aw.to_dtype(DType::F32)?;
    let min = aw.flatten_all()?.min(0)?.to_scalar::<f32>()?;
    ensure!(
        min >= 0.0,
        "attention weights must be non-negative (min {min})"
    );
    // labelled rows in ascending order
    let row_sums = labels.labels.sum(D::Minus1)?.to_vec1::<f32>()?;
    let rows: Vec<u32> = row_sums
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.0)
        .map(|(r, _)| r as u32)
        .collect();
    ensure!(
        rows.len() == labels.ranges_q.len(),
        "{} labelled rows but {} DST positions (two pairs share a DST row?)",
        rows.len(),
        labels.ranges_q.len()
    );
    let idx = Tensor::from_vec(rows.clone(), rows.len(), aw.device())?;
    // [.., r, s] ⊙ [r, s] summed over s → [.., r]
    let sel = aw.index_select(&idx, dims.len() - 2)?;
    let lab = labels
        .labels
        .to_device(aw.device())?
        .index_select(&idx, 0)?;
    Ok(sel.broadcast_mul(&lab)?.sum(D::Minus1)?)
}

/// V2 on selected rows, without materialising the `[s,s]` label matrix: `aw` `[r,s]` holds the
/// attention rows at positions `rows`, and the result equals [`get_ap_scores`] on the full
/// matrix with the labels of `pairs` (ascending DST order; each DST row has exactly one source,
/// so its label is 1/(1+ε)).
pub fn get_ap_scores_rows(
    aw: &Tensor,
    rows: &[usize],
    pairs: &[(usize, usize)],
) -> Result<Vec<f32>> {
    let (r, s) = aw.dims2()?;
    ensure!(
        r == rows.len(),
        "{r} attention rows for {} positions",
        rows.len()
    );
    ensure!(!pairs.is_empty(), "no (dst, src) pairs given");
    let aw = aw.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    ensure!(
        aw.iter().flatten().all(|&x| x >= 0.0),
        "attention weights must be non-negative"
    );
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable();
    ensure!(
        sorted.windows(2).all(|w| w[0].0 != w[1].0),
        "{} DST positions share rows (two pairs share a DST row?)",
        pairs.len()
    );
    sorted
        .iter()
        .map(|&(dst, src)| {
            ensure!(
                src < s,
                "source {src} is outside the sequence of {s} tokens"
            );
            let i = rows
                .iter()
                .position(|&p| p == dst)
                .with_context(|| format!("no attention row for DST position {dst}"))?;
            Ok(aw[i][src] / (1.0 + LABEL_EPS))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_hand() {
        // s = 4; QA pairs 3 → 1 and 2 → 0; then 3 → 1 and 3 → 2 sharing a DST row.
        let l = attn_pattern_labels(4, &[(3, 1), (2, 0)]).unwrap();
        let m = l.labels.to_vec2::<f32>().unwrap();
        assert_eq!(m[0], vec![0.0; 4]);
        assert!((m[2][0] - 1.0).abs() < 1e-6);
        assert!((m[3][1] - 1.0).abs() < 1e-6);
        assert_eq!(l.ranges_q, vec![3, 2]);
        let l = attn_pattern_labels(4, &[(3, 1), (3, 2)]).unwrap();
        let m = l.labels.to_vec2::<f32>().unwrap();
        assert!((m[3][1] - 0.5).abs() < 1e-6 && (m[3][2] - 0.5).abs() < 1e-6);
        assert!(attn_pattern_labels(4, &[(4, 0)]).is_err());
        assert!(attn_pattern_labels(4, &[]).is_err());
    }

    #[test]
    fn scores_by_hand() {
        // Two samples of a 3-token causal pattern; pairs: row 2 → src 0, row 1 → src 1.
        let aw = Tensor::from_vec(
            vec![
                1.0f32, 0.0, 0.0, /**/ 0.3, 0.7, 0.0, /**/ 0.6, 0.1, 0.3, //
                1.0, 0.0, 0.0, /**/ 0.9, 0.1, 0.0, /**/ 0.2, 0.2, 0.6,
            ],
            (2, 3, 3),
            &Device::Cpu,
        )
        .unwrap();
        let l = attn_pattern_labels(3, &[(2, 0), (1, 1)]).unwrap();
        let s = get_ap_scores(&aw, &l).unwrap().to_vec2::<f32>().unwrap();
        // rows in ascending order: row 1 (src 1) then row 2 (src 0)
        assert!(
            (s[0][0] - 0.7).abs() < 1e-6 && (s[0][1] - 0.6).abs() < 1e-6,
            "{s:?}"
        );
        assert!(
            (s[1][0] - 0.1).abs() < 1e-6 && (s[1][1] - 0.2).abs() < 1e-6,
            "{s:?}"
        );
    }

    #[test]
    fn labels_from_a_sample() {
        use crate::puzzle::prompt::PromptOptions;
        use crate::puzzle::{PuzzleParams, gen_puzzle};
        let tok = crate::tokenizer::fixture_tokenizer().unwrap();
        let p = gen_puzzle(&PuzzleParams::default()).unwrap();
        let s = Sample::build(0, p, &PromptOptions::default(), Some(&tok)).unwrap();
        let l = attn_pattern2labels(&s, "A-->V", 2).unwrap();
        let n = s.n_tokens.unwrap();
        assert_eq!(l.labels.dims(), &[n, n]);
        let dst = s.positions("A-", 2).unwrap();
        let src = s.positions("V", 2).unwrap();
        assert_eq!(l.ranges_q, dst);
        let m = l.labels.to_vec2::<f32>().unwrap();
        for (d, v) in dst.iter().zip(&src) {
            let row_sum: f32 = m[*d].iter().sum();
            assert!((row_sum - 1.0).abs() < 1e-6);
            assert!(m[*d][*v] > 0.0);
        }
        assert_eq!(split_pattern("A-->A-").unwrap(), ("A-", "A-"));
        assert_eq!(split_pattern("V->A-").unwrap(), ("V", "A-"));
        assert!(split_pattern("A-").is_err());
        assert!(attn_pattern2labels(&s, "A-->K", 2).is_err());
    }

    #[test]
    fn scores_reject_bad_input() {
        let l = attn_pattern_labels(3, &[(2, 0), (2, 1)]).unwrap();
        let aw = Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(
            get_ap_scores(&aw, &l)
                .unwrap_err()
                .to_string()
                .contains("share")
        );
        let l = attn_pattern_labels(3, &[(2, 0)]).unwrap();
        let neg = Tensor::from_vec(vec![-1.0f32; 9], (3, 3), &Device::Cpu).unwrap();
        assert!(
            get_ap_scores(&neg, &l)
                .unwrap_err()
                .to_string()
                .contains("non-negative")
        );
        let wrong = Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(get_ap_scores(&wrong, &l).is_err());
    }

    #[test]
    fn row_scores_equal_dense_scores() {
        // a non-negative [s,s] matrix with distinct entries; pairs in arbitrary order
        let s = 9;
        let full: Vec<f32> = (0..s * s)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let aw = Tensor::from_vec(full.clone(), (s, s), &Device::Cpu).unwrap();
        let pairs = [(7, 2), (3, 3), (8, 0), (5, 4)];
        let dense = get_ap_scores(&aw, &attn_pattern_labels(s, &pairs).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let rows = [3, 5, 7, 8];
        let idx = Tensor::new(&[3u32, 5, 7, 8], &Device::Cpu).unwrap();
        let sel = aw.index_select(&idx, 0).unwrap();
        let sparse = get_ap_scores_rows(&sel, &rows, &pairs).unwrap();
        assert_eq!(dense.len(), sparse.len());
        for (a, b) in dense.iter().zip(&sparse) {
            assert!((a - b).abs() < 1e-7, "{dense:?} vs {sparse:?}");
        }
        // by hand: ascending DST order 3, 5, 7, 8
        let want = [
            full[3 * s + 3],
            full[5 * s + 4],
            full[7 * s + 2],
            full[8 * s],
        ];
        for (a, b) in sparse.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // shared DST rows and missing rows are errors
        assert!(get_ap_scores_rows(&sel, &rows, &[(3, 1), (3, 2)]).is_err());
        assert!(get_ap_scores_rows(&sel, &rows, &[(4, 1)]).is_err());
    }
}
