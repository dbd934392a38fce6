//! Distance matrices between heads: cosine (V9) and Jensen–Shannon (V10).
//!
//! Inputs are `(layer, head)`-keyed tensors in a slice; the output keeps the input order.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};

use super::HeadKey;

/// Epsilon added to every attention weight before renormalising (V10).
pub const JS_EPS: f32 = 1e-8;
/// Lower clamp of the L2 norm in the cosine distance (V9).
pub const COSINE_NORM_CLAMP: f32 = 1e-8;

/// Which distance a matrix holds. It fixes the plot's axis label, the heatmap's upper
/// colour limit and the default clustering threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistanceKind {
    /// Jensen–Shannon divergence in nats, range [0, ln 2].
    JensenShannon,
    /// `1 − cos`, range [0, 2].
    Cosine,
}

impl DistanceKind {
    /// Axis label used by the dendrogram: "JS Distance" or "Cosine Distance".
    pub fn axis_label(self) -> &'static str {
        match self {
            DistanceKind::JensenShannon => "JS Distance",
            DistanceKind::Cosine => "Cosine Distance",
        }
    }

    /// The largest value this distance can take (ln 2 for JS, 2 for cosine).
    pub fn max_value(self) -> f64 {
        match self {
            DistanceKind::JensenShannon => std::f64::consts::LN_2,
            DistanceKind::Cosine => 2.0,
        }
    }

    /// Upper colour limit cap of the heatmap (V11): 1 for JS, 2 for cosine.
    pub fn heatmap_cap(self) -> f64 {
        match self {
            DistanceKind::JensenShannon => 1.0,
            DistanceKind::Cosine => 2.0,
        }
    }

    /// Default flat-cut threshold. JS: 0.5 nats, as the notebook used (the seed's 0.8 exceeds
    /// ln 2 ≈ 0.693 and merges everything, defect 11). Cosine: 0.3.
    pub fn default_threshold(self) -> f64 {
        match self {
            DistanceKind::JensenShannon => 0.5,
            DistanceKind::Cosine => 0.3,
        }
    }
}

/// A symmetric distance matrix with a zero diagonal between the heads in `keys` (input order).
#[derive(Clone, Debug, PartialEq)]
pub struct DistanceMatrix {
    /// The heads, in the order they were given.
    pub keys: Vec<HeadKey>,
    /// Row-major `[n, n]` values.
    pub values: Vec<f64>,
    /// Which distance this is.
    pub kind: DistanceKind,
}

impl DistanceMatrix {
    /// Builds a matrix from a full row-major `[n, n]` array, checking that it is square,
    /// finite, non-negative, symmetric (to 1e-9 relative) and zero on the diagonal.
    pub fn from_full(keys: Vec<HeadKey>, values: Vec<f64>, kind: DistanceKind) -> Result<Self> {
        let n = keys.len();
        ensure!(n > 0, "a distance matrix needs at least one head");
        ensure!(
            values.len() == n * n,
            "distance matrix has {} values, expected {n}x{n} = {}",
            values.len(),
            n * n
        );
        for i in 0..n {
            for j in 0..n {
                let v = values[i * n + j];
                ensure!(
                    v.is_finite() && v >= 0.0,
                    "distance [{i},{j}] = {v} is not a finite non-negative number"
                );
                let w = values[j * n + i];
                ensure!(
                    (v - w).abs() <= 1e-9 * v.abs().max(1.0),
                    "distance matrix is not symmetric at [{i},{j}]: {v} vs {w}"
                );
            }
            ensure!(
                values[i * n + i] == 0.0,
                "distance matrix diagonal [{i},{i}] is not 0"
            );
        }
        Ok(Self { keys, values, kind })
    }

    /// Number of heads.
    pub fn n(&self) -> usize {
        self.keys.len()
    }

    /// The distance between heads `i` and `j` (indices into `keys`).
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.values[i * self.n() + j]
    }

    /// The condensed upper triangle (row-major, `i < j`), as SciPy's `squareform` gives it.
    pub fn condensed(&self) -> Vec<f64> {
        let n = self.n();
        let mut out = Vec::with_capacity(n * (n.saturating_sub(1)) / 2);
        for i in 0..n {
            for j in i + 1..n {
                out.push(self.get(i, j));
            }
        }
        out
    }

    /// The matrix as an f32 tensor `[n, n]`.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let n = self.n();
        let v: Vec<f32> = self.values.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(v, (n, n), &Device::Cpu)?)
    }
}

/// Flattens a tensor to a host `Vec<f32>`.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?)
}

fn check_nonempty(data: &[(HeadKey, Tensor)]) -> Result<()> {
    ensure!(!data.is_empty(), "no heads given");
    for (i, (k, _)) in data.iter().enumerate() {
        if data[..i].iter().any(|(k2, _)| k2 == k) {
            bail!("head {}-{} is given twice", k.0, k.1);
        }
    }
    Ok(())
}

/// V9: cosine distance `1 − cos(a, b)` between the flattened tensors of every pair of heads.
///
/// Each tensor is flattened to f32 and L2-normalised with its norm clamped at ≥ 1e-8 (so an
/// all-zero tensor has cosine 0 to everything, distance 1). The diagonal is zeroed and the
/// matrix symmetrised. All tensors must have the same number of elements. Range [0, 2].
pub fn compute_cosine_matrix(data: &[(HeadKey, Tensor)]) -> Result<DistanceMatrix> {
    check_nonempty(data)?;
    let n = data.len();
    let numel = data[0].1.elem_count();
    let mut rows = Vec::with_capacity(n);
    for (key, t) in data {
        ensure!(
            t.elem_count() == numel,
            "head {}-{} has {} elements, head {}-{} has {numel}",
            key.0,
            key.1,
            t.elem_count(),
            data[0].0.0,
            data[0].0.1
        );
        // [e] flattened and normalised
        let t = t
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let norm = t
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?
            .max(COSINE_NORM_CLAMP);
        ensure!(
            norm.is_finite(),
            "head {}-{} has non-finite values",
            key.0,
            key.1
        );
        rows.push((t / norm as f64)?);
    }
    // x: [n, e]; cos = x xᵀ: [n, n]
    let x = Tensor::stack(&rows, 0)?;
    let cos = x.matmul(&x.t()?)?.to_vec2::<f32>()?;
    let mut values = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let c = 0.5 * (cos[i][j] as f64 + cos[j][i] as f64);
            let d = (1.0 - c).clamp(0.0, 2.0);
            values[i * n + j] = d;
            values[j * n + i] = d;
        }
    }
    Ok(DistanceMatrix {
        keys: data.iter().map(|(k, _)| *k).collect(),
        values,
        kind: DistanceKind::Cosine,
    })
}

/// One head's attention rows after `+1e-8` and renormalisation over the last axis.
struct Distributions {
    /// `[rows, s]` row-major probabilities.
    p: Vec<f32>,
    /// `Σ p ln p` summed over all rows (f64 accumulation).
    neg_entropy: f64,
}

fn distributions(key: HeadKey, t: &Tensor) -> Result<Distributions> {
    let s = *t.dims().last().with_context(|| {
        format!(
            "head {}-{}: a 0-dimensional tensor has no distribution axis",
            key.0, key.1
        )
    })?;
    ensure!(s > 0, "head {}-{}: the last axis is empty", key.0, key.1);
    let mut p = host_f32(t)?;
    // one pass that vectorizes (no early exit), then the first offender for the message
    let ok = |x: &f32| x.is_finite() & (*x >= 0.0);
    if !p.iter().fold(true, |all, x| all & ok(x)) {
        let x = p.iter().find(|x| !ok(x)).copied().unwrap_or(f32::NAN);
        bail!(
            "head {}-{}: attention weight {x} is negative or not finite",
            key.0,
            key.1
        );
    }
    let neg_entropy = p
        .chunks_mut(s)
        .map(|row| crate::model::kernels::js_normalize(row, JS_EPS))
        .sum();
    Ok(Distributions { p, neg_entropy })
}

/// V10: Jensen–Shannon distance (in nats) between the attention weights of every pair of heads.
///
/// Each `aw` is `[..., s]` (typically `[N, k, s]`), all with the same shape, non-negative. For each
/// pair, `p = aw_i + 1e-8` and `q = aw_j + 1e-8` are renormalised over the last axis,
/// `m = (p + q) / 2`, and `JS = (KL(p‖m) + KL(q‖m)) / 2` where each KL is summed over the last
/// axis and averaged over all other axes. Range [0, ln 2].
///
/// Speed: `KL(p‖m) + KL(q‖m) = Σ p ln p + Σ q ln q − Σ (p+q) ln m`; the first two sums are computed
/// once per head, so each pair costs one logarithm per element (accumulated in f64, in 8
/// partial sums, by `model::kernels::js_cross_sum`).
pub fn compute_js_matrix(data: &[(HeadKey, Tensor)]) -> Result<DistanceMatrix> {
    check_nonempty(data)?;
    let n = data.len();
    let shape = data[0].1.dims().to_vec();
    let mut dists = Vec::with_capacity(n);
    for (key, t) in data {
        ensure!(
            t.dims() == shape.as_slice(),
            "head {}-{} has attention shape {:?}, head {}-{} has {:?}",
            key.0,
            key.1,
            t.dims(),
            data[0].0.0,
            data[0].0.1,
            shape
        );
        dists.push(distributions(*key, t)?);
    }
    let s = *shape.last().unwrap_or(&1);
    let rows = (dists[0].p.len() / s.max(1)).max(1) as f64;
    // the pairs on all cores (each pair's sum runs in the same order as on one)
    use rayon::prelude::*;
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect();
    let js: Vec<f64> = pairs
        .par_iter()
        .map(|&(i, j)| {
            // Σ (p+q) ln m, vectorized (8 partial sums in f64, a logarithm within 1 ulp)
            let cross = crate::model::kernels::js_cross_sum(&dists[i].p, &dists[j].p);
            let js = 0.5 * (dists[i].neg_entropy + dists[j].neg_entropy - cross) / rows;
            js.clamp(0.0, std::f64::consts::LN_2)
        })
        .collect();
    let mut values = vec![0.0f64; n * n];
    for (&(i, j), &d) in pairs.iter().zip(&js) {
        values[i * n + j] = d;
        values[j * n + i] = d;
    }
    Ok(DistanceMatrix {
        keys: data.iter().map(|(k, _)| *k).collect(),
        values,
        kind: DistanceKind::JensenShannon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    /// Direct definition, written independently of the implementation's entropy trick.
    fn js_direct(p: &[f64], q: &[f64]) -> f64 {
        let norm = |v: &[f64]| {
            let w: Vec<f64> = v.iter().map(|x| x + 1e-8).collect();
            let s: f64 = w.iter().sum();
            w.into_iter().map(|x| x / s).collect::<Vec<_>>()
        };
        let (p, q) = (norm(p), norm(q));
        let mut kl_p = 0.0;
        let mut kl_q = 0.0;
        for k in 0..p.len() {
            let m = 0.5 * (p[k] + q[k]);
            kl_p += p[k] * (p[k] / m).ln();
            kl_q += q[k] * (q[k] / m).ln();
        }
        0.5 * (kl_p + kl_q)
    }

    #[test]
    fn js_hand_computed_pair() {
        // p = [0.5, 0.5], q = [0.25, 0.75], m = [0.375, 0.625]:
        // KL(p‖m) = 0.5 ln(4/3) + 0.5 ln(0.8) = 0.0322692
        // KL(q‖m) = 0.25 ln(2/3) + 0.75 ln(1.2) = 0.0353749   → JS = 0.0338221
        let d = compute_js_matrix(&[
            ((0, 0), t(&[0.5, 0.5], &[1, 1, 2])),
            ((0, 1), t(&[0.25, 0.75], &[1, 1, 2])),
        ])
        .unwrap();
        assert!((d.get(0, 1) - 0.0338221).abs() < 1e-6, "{}", d.get(0, 1));
        assert_eq!(d.get(1, 0), d.get(0, 1));
        assert_eq!(d.get(0, 0), 0.0);
        assert_eq!(d.kind, DistanceKind::JensenShannon);
    }

    #[test]
    fn js_disjoint_supports_reach_ln2() {
        // [1,0] vs [0,1]: only the 1e-8 epsilon keeps the logs finite; JS = ln 2 − O(1e-7).
        let d = compute_js_matrix(&[
            ((0, 0), t(&[1.0, 0.0], &[1, 2])),
            ((0, 1), t(&[0.0, 1.0], &[1, 2])),
        ])
        .unwrap();
        let expected = js_direct(&[1.0, 0.0], &[0.0, 1.0]);
        assert!((expected - std::f64::consts::LN_2).abs() < 1e-6);
        assert!(
            (d.get(0, 1) - expected).abs() < 1e-6,
            "{} vs {expected}",
            d.get(0, 1)
        );
    }

    #[test]
    fn js_renormalises_and_averages_over_leading_axes() {
        // Head A: two rows [2,2] (→ [.5,.5]) and [1,3] (→ [.25,.75]).
        // Head B: rows [1,3] and [1,3]. Row JS: js(.5/.5, .25/.75) and 0, averaged → half.
        let a = t(&[2.0, 2.0, 1.0, 3.0], &[2, 1, 2]);
        let b = t(&[1.0, 3.0, 1.0, 3.0], &[2, 1, 2]);
        let c = t(&[0.1, 0.9, 0.7, 0.3], &[2, 1, 2]);
        let d = compute_js_matrix(&[((3, 1), a), ((2, 5), b), ((4, 0), c)]).unwrap();
        assert_eq!(d.keys, vec![(3, 1), (2, 5), (4, 0)]);
        let e01 = 0.5 * js_direct(&[0.5, 0.5], &[0.25, 0.75]);
        assert!((d.get(0, 1) - e01).abs() < 1e-6);
        assert!((d.get(0, 1) - 0.0338221 / 2.0).abs() < 1e-6);
        let e02 =
            0.5 * (js_direct(&[0.5, 0.5], &[0.1, 0.9]) + js_direct(&[0.25, 0.75], &[0.7, 0.3]));
        let e12 =
            0.5 * (js_direct(&[0.25, 0.75], &[0.1, 0.9]) + js_direct(&[0.25, 0.75], &[0.7, 0.3]));
        assert!((d.get(0, 2) - e02).abs() < 1e-6);
        assert!((d.get(2, 1) - e12).abs() < 1e-6);
    }

    #[test]
    fn js_long_rows_match_the_direct_definition() {
        // rows long enough for the vectorized kernels (8 lanes and a remainder), peaked and flat
        let s = 2643;
        let row = |seed: usize, peak: usize| -> Vec<f32> {
            (0..s)
                .map(|k| {
                    let base = ((k * seed) % 97) as f32 / 97.0;
                    if k == peak { 50.0 } else { base * base }
                })
                .collect()
        };
        let (a, b) = ([row(31, 5), row(7, 900)], [row(53, 5), row(11, 2600)]);
        let d = compute_js_matrix(&[
            ((0, 0), t(&[a[0].clone(), a[1].clone()].concat(), &[2, s])),
            ((0, 1), t(&[b[0].clone(), b[1].clone()].concat(), &[2, s])),
        ])
        .unwrap();
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let want = 0.5 * (js_direct(&f(&a[0]), &f(&b[0])) + js_direct(&f(&a[1]), &f(&b[1])));
        assert!(
            (d.get(0, 1) - want).abs() <= 1e-7 * want,
            "{} vs {want}",
            d.get(0, 1)
        );
    }

    #[test]
    fn js_rejects_bad_input() {
        assert!(compute_js_matrix(&[]).is_err());
        let err = compute_js_matrix(&[
            ((0, 0), t(&[0.5, 0.5], &[1, 2])),
            ((0, 1), t(&[0.2, 0.3, 0.5], &[1, 3])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
        let err = compute_js_matrix(&[
            ((0, 0), t(&[0.5, 0.5], &[1, 2])),
            ((0, 1), t(&[-0.5, 1.5], &[1, 2])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = compute_js_matrix(&[
            ((0, 0), t(&[0.5, 0.5], &[1, 2])),
            ((0, 1), t(&[f32::NAN, 1.5], &[1, 2])),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("NaN is negative or not finite"),
            "{err}"
        );
        let err = compute_js_matrix(&[
            ((0, 0), t(&[0.5, 0.5], &[1, 2])),
            ((0, 0), t(&[0.5, 0.5], &[1, 2])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn cosine_hand_computed() {
        // a = [1,0], b = [0,2], c = [1,1], z = [-3,0], o = [0,0]
        let data = vec![
            ((0, 0), t(&[1.0, 0.0], &[2])),
            ((0, 1), t(&[0.0, 2.0], &[1, 2])),
            ((1, 0), t(&[1.0, 1.0], &[2, 1])),
            ((1, 1), t(&[-3.0, 0.0], &[2])),
            ((2, 0), t(&[0.0, 0.0], &[2])),
        ];
        let d = compute_cosine_matrix(&data).unwrap();
        let r = 1.0 - 1.0 / 2f64.sqrt();
        let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
        assert!(close(d.get(0, 1), 1.0));
        assert!(close(d.get(0, 2), r));
        assert!(close(d.get(1, 2), r));
        assert!(close(d.get(0, 3), 2.0));
        assert!(close(d.get(2, 3), 1.0 + 1.0 / 2f64.sqrt()));
        // zero vector: norm clamped, cos = 0 → distance 1
        assert!(close(d.get(4, 0), 1.0));
        for i in 0..5 {
            assert_eq!(d.get(i, i), 0.0);
        }
        assert_eq!(d.kind, DistanceKind::Cosine);
    }

    #[test]
    fn cosine_rejects_mismatched_sizes() {
        let err = compute_cosine_matrix(&[
            ((0, 0), t(&[1.0, 0.0], &[2])),
            ((0, 1), t(&[1.0, 0.0, 0.0], &[3])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("elements"), "{err}");
    }

    #[test]
    fn from_full_validates() {
        let ok = DistanceMatrix::from_full(
            vec![(0, 0), (0, 1)],
            vec![0.0, 0.3, 0.3, 0.0],
            DistanceKind::Cosine,
        )
        .unwrap();
        assert_eq!(ok.condensed(), vec![0.3]);
        assert!(
            DistanceMatrix::from_full(
                vec![(0, 0), (0, 1)],
                vec![0.0, 0.3, 0.2, 0.0],
                DistanceKind::Cosine
            )
            .is_err()
        );
        assert!(
            DistanceMatrix::from_full(
                vec![(0, 0), (0, 1)],
                vec![0.1, 0.3, 0.3, 0.0],
                DistanceKind::Cosine
            )
            .is_err()
        );
        assert!(
            DistanceMatrix::from_full(
                vec![(0, 0), (0, 1)],
                vec![0.0, f64::NAN, f64::NAN, 0.0],
                DistanceKind::Cosine
            )
            .is_err()
        );
        assert!(
            DistanceMatrix::from_full(vec![(0, 0)], vec![0.0, 0.0], DistanceKind::Cosine).is_err()
        );
    }
}
