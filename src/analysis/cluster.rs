//! Hierarchical clustering of heads (V11) with SciPy's conventions.
//!
//! * The linkage matrix and flat clusters follow SciPy ([`super::linkage`]).
//! * [`cluster_heads`] ties it together and computes the per-cluster and overall metrics.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use candle_core::Tensor;

use super::HeadKey;
use super::distance::{DistanceKind, DistanceMatrix, compute_cosine_matrix, compute_js_matrix};
pub use super::linkage::{
    ClusterMethod, LinkageRow, dendrogram_leaf_order, fcluster_distance, linkage,
};

/// Per-cluster metrics (V11), rounded to 3 decimals.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterMetrics {
    /// Number of heads in the cluster.
    pub n_heads: usize,
    /// Mean pairwise distance within the cluster (0 for a singleton).
    pub intra_mean: f64,
    /// Largest pairwise distance within the cluster (0 for a singleton).
    pub intra_max: f64,
    /// Over members, the minimum of each member's distance to the nearest head outside the
    /// cluster (∞ when there is only one cluster).
    pub sep_min: f64,
    /// Mean over members of that nearest-outside distance (∞ when there is only one cluster).
    pub sep_mean: f64,
}

/// Overall metrics (V11 `_overall`, only with more than one cluster).
#[derive(Clone, Debug, PartialEq)]
pub struct OverallMetrics {
    /// Number of clusters.
    pub n_clusters: usize,
    /// Number of heads.
    pub n_heads: usize,
    /// Mean of the clusters' `intra_mean` (singletons count as 0), rounded to 3 decimals.
    pub avg_cohesion: f64,
    /// Mean of the finite `sep_mean` values, rounded to 3 decimals.
    pub avg_separation: f64,
    /// `avg_separation / max(avg_cohesion, 1e-6)`, rounded to 2 decimals.
    pub sep_cohesion_ratio: f64,
}

/// Metrics of a flat clustering.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Per cluster id (1-based).
    pub clusters: BTreeMap<usize, ClusterMetrics>,
    /// Present only with more than one cluster.
    pub overall: Option<OverallMetrics>,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Computes V11's metrics for cluster ids `ids` (one per row of `dist`).
///
/// Averages are taken over the unrounded per-cluster values; every reported number is rounded
/// at the end (3 decimals, the ratio 2 decimals).
pub fn cluster_metrics(dist: &DistanceMatrix, ids: &[usize]) -> Result<Metrics> {
    let n = dist.n();
    ensure!(ids.len() == n, "{} cluster ids for {n} heads", ids.len());
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &c) in ids.iter().enumerate() {
        members.entry(c).or_default().push(i);
    }
    let single = members.len() == 1;
    let mut clusters = BTreeMap::new();
    let mut raw_intra = Vec::new();
    let mut raw_sep = Vec::new();
    for (&c, m) in &members {
        let mut sum = 0.0;
        let mut max = 0.0f64;
        let mut pairs = 0usize;
        for (x, &i) in m.iter().enumerate() {
            for &j in &m[x + 1..] {
                let d = dist.get(i, j);
                sum += d;
                max = max.max(d);
                pairs += 1;
            }
        }
        let intra_mean = if pairs > 0 { sum / pairs as f64 } else { 0.0 };
        let (sep_min, sep_mean) = if single {
            (f64::INFINITY, f64::INFINITY)
        } else {
            let nearest: Vec<f64> = m
                .iter()
                .map(|&i| {
                    (0..n)
                        .filter(|&j| ids[j] != c)
                        .map(|j| dist.get(i, j))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            let min = nearest.iter().copied().fold(f64::INFINITY, f64::min);
            (min, nearest.iter().sum::<f64>() / nearest.len() as f64)
        };
        raw_intra.push(intra_mean);
        raw_sep.push(sep_mean);
        clusters.insert(
            c,
            ClusterMetrics {
                n_heads: m.len(),
                intra_mean: round_to(intra_mean, 3),
                intra_max: round_to(max, 3),
                sep_min: round_to(sep_min, 3),
                sep_mean: round_to(sep_mean, 3),
            },
        );
    }
    let overall = if single {
        None
    } else {
        let avg_coh = raw_intra.iter().sum::<f64>() / raw_intra.len() as f64;
        let finite: Vec<f64> = raw_sep.iter().copied().filter(|v| v.is_finite()).collect();
        let avg_sep = if finite.is_empty() {
            0.0
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        Some(OverallMetrics {
            n_clusters: members.len(),
            n_heads: n,
            avg_cohesion: round_to(avg_coh, 3),
            avg_separation: round_to(avg_sep, 3),
            sep_cohesion_ratio: round_to(avg_sep / avg_coh.max(1e-6), 2),
        })
    };
    Ok(Metrics { clusters, overall })
}

/// Options of [`cluster_heads`].
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterOptions {
    /// Distance between heads.
    pub kind: DistanceKind,
    /// Flat-cut height; `None` uses [`DistanceKind::default_threshold`] (JS 0.5, cosine 0.3).
    pub threshold: Option<f64>,
    /// Linkage method.
    pub method: ClusterMethod,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            kind: DistanceKind::JensenShannon,
            threshold: None,
            method: ClusterMethod::Average,
        }
    }
}

/// Result of a clustering: what the seed's `cluster_heads` returned, plus the ids and leaf order.
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    /// The distance matrix (keys in input order).
    pub dist: DistanceMatrix,
    /// SciPy linkage matrix.
    pub linkage: Vec<LinkageRow>,
    /// Flat cluster id (1-based, SciPy numbering) per head, in input order.
    pub ids: Vec<usize>,
    /// Cluster id → heads, each list in input order.
    pub groups: BTreeMap<usize, Vec<HeadKey>>,
    /// Per-cluster and overall metrics.
    pub metrics: Metrics,
    /// Dendrogram leaf order (indices into `dist.keys`).
    pub leaf_order: Vec<usize>,
    /// The threshold used.
    pub threshold: f64,
    /// The method used.
    pub method: ClusterMethod,
}

/// Clusters a precomputed distance matrix (V11 without the distance step).
pub fn cluster_distance_matrix(
    dist: DistanceMatrix,
    threshold: Option<f64>,
    method: ClusterMethod,
) -> Result<Clustering> {
    let threshold = threshold.unwrap_or_else(|| dist.kind.default_threshold());
    ensure!(
        threshold.is_finite() && threshold >= 0.0,
        "threshold {threshold} must be a finite non-negative number"
    );
    let n = dist.n();
    let z = linkage(&dist.condensed(), n, method)?;
    let ids = fcluster_distance(&z, n, threshold)?;
    let leaf_order = dendrogram_leaf_order(&z, n)?;
    let mut groups: BTreeMap<usize, Vec<HeadKey>> = BTreeMap::new();
    for (k, &c) in dist.keys.iter().zip(&ids) {
        groups.entry(c).or_default().push(*k);
    }
    let metrics = cluster_metrics(&dist, &ids)?;
    Ok(Clustering {
        dist,
        linkage: z,
        ids,
        groups,
        metrics,
        leaf_order,
        threshold,
        method,
    })
}

/// V11 `cluster_heads`: distance matrix (JS over attention weights `[N, k, s]`, or cosine over
/// any tensors), linkage, SciPy-numbered flat clusters and metrics. Plotting is separate
/// (`minarc::vis::plots::plot_clustering`); the printed summary is
/// [`super::summary::cluster_summary`].
pub fn cluster_heads(data: &[(HeadKey, Tensor)], opts: &ClusterOptions) -> Result<Clustering> {
    let dist = match opts.kind {
        DistanceKind::JensenShannon => compute_js_matrix(data)?,
        DistanceKind::Cosine => compute_cosine_matrix(data)?,
    };
    cluster_distance_matrix(dist, opts.threshold, opts.method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: usize, b: usize, height: f64, size: usize) -> LinkageRow {
        LinkageRow { a, b, height, size }
    }

    fn assert_linkage(got: &[LinkageRow], want: &[LinkageRow]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(
                (g.a, g.b, g.size),
                (w.a, w.b, w.size),
                "{got:?} vs {want:?}"
            );
            assert!((g.height - w.height).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    /// Five heads: A = {0,1} (d 1), B = {2,3} (d 1.23456), head 4 at 5 from B, everything else 8.
    /// Average linkage, by hand:
    ///   (0,1)@1 → 5;  (2,3)@1.23456 → 6;  d(4, 6) = (5+5)/2 = 5 → (4,6)@5 → 7;
    ///   d(5, 7) = mean of six 8s = 8 → (5,7)@8.
    /// Dendrogram order: 0 1 | 4 | 2 3 (leaf 4 is the left child of 7).
    fn five() -> DistanceMatrix {
        let n = 5;
        let mut v = vec![8.0; n * n];
        for i in 0..n {
            v[i * n + i] = 0.0;
        }
        let mut set = |i: usize, j: usize, d: f64| {
            v[i * n + j] = d;
            v[j * n + i] = d;
        };
        set(0, 1, 1.0);
        set(2, 3, 1.23456);
        set(4, 2, 5.0);
        set(4, 3, 5.0);
        let keys = vec![(79, 10), (77, 54), (64, 12), (63, 61), (74, 21)];
        DistanceMatrix::from_full(keys, v, DistanceKind::JensenShannon).unwrap()
    }

    #[test]
    fn average_linkage_and_scipy_numbering_differs_from_leaf_order() {
        let d = five();
        let z = linkage(&d.condensed(), 5, ClusterMethod::Average).unwrap();
        assert_linkage(
            &z,
            &[
                row(0, 1, 1.0, 2),
                row(2, 3, 1.23456, 2),
                row(4, 6, 5.0, 3),
                row(5, 7, 8.0, 5),
            ],
        );
        assert_eq!(dendrogram_leaf_order(&z, 5).unwrap(), vec![0, 1, 4, 2, 3]);
        // Threshold 2: the walk enters 5 (id 1), then 7 (above), then 6 (id 2); leaf 4 is handled
        // after 7's non-leaf child, so it gets id 3 although it sits between groups 1 and 2.
        assert_eq!(fcluster_distance(&z, 5, 2.0).unwrap(), vec![1, 1, 2, 2, 3]);
        // Threshold equal to a merge height is inclusive (≤).
        assert_eq!(fcluster_distance(&z, 5, 5.0).unwrap(), vec![1, 1, 2, 2, 2]);
        assert_eq!(fcluster_distance(&z, 5, 8.0).unwrap(), vec![1, 1, 1, 1, 1]);
        // Below every merge: singletons in walk order: 0,1 (under 5), then 2,3 (under 6, the
        // non-leaf child of 7), and only then 7's leaf child 4.
        assert_eq!(fcluster_distance(&z, 5, 0.5).unwrap(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn clustering_groups_and_metrics_by_hand() {
        let c = cluster_distance_matrix(five(), Some(2.0), ClusterMethod::Average).unwrap();
        assert_eq!(c.groups[&1], vec![(79, 10), (77, 54)]);
        assert_eq!(c.groups[&2], vec![(64, 12), (63, 61)]);
        assert_eq!(c.groups[&3], vec![(74, 21)]);
        let m = &c.metrics.clusters;
        // cluster 1: one pair at 1; nearest outside for both members is 8.
        assert_eq!(
            m[&1],
            ClusterMetrics {
                n_heads: 2,
                intra_mean: 1.0,
                intra_max: 1.0,
                sep_min: 8.0,
                sep_mean: 8.0
            }
        );
        // cluster 2: one pair at 1.23456 → 1.235; nearest outside is head 4 at 5.
        assert_eq!(
            m[&2],
            ClusterMetrics {
                n_heads: 2,
                intra_mean: 1.235,
                intra_max: 1.235,
                sep_min: 5.0,
                sep_mean: 5.0
            }
        );
        // singleton: intra 0; nearest outside 5.
        assert_eq!(
            m[&3],
            ClusterMetrics {
                n_heads: 1,
                intra_mean: 0.0,
                intra_max: 0.0,
                sep_min: 5.0,
                sep_mean: 5.0
            }
        );
        // overall: cohesion (1 + 1.23456 + 0)/3 = 0.74485 → 0.745; separation (8+5+5)/3 = 6;
        // ratio 6 / 0.74485 = 8.0553 → 8.06
        let o = c.metrics.overall.as_ref().unwrap();
        assert_eq!((o.n_clusters, o.n_heads), (3, 5));
        assert_eq!(o.avg_cohesion, 0.745);
        assert_eq!(o.avg_separation, 6.0);
        assert_eq!(o.sep_cohesion_ratio, 8.06);
        assert_eq!(c.leaf_order, vec![0, 1, 4, 2, 3]);
    }

    #[test]
    fn single_cluster_has_infinite_separation_and_no_overall() {
        let c = cluster_distance_matrix(five(), Some(10.0), ClusterMethod::Average).unwrap();
        assert_eq!(c.groups.len(), 1);
        let m = &c.metrics.clusters[&1];
        assert!(m.sep_min.is_infinite() && m.sep_mean.is_infinite());
        // all 10 pairs: 1 + 1.23456 + 5 + 5 + 6·8 = 60.23456 → mean 6.023456 → 6.023; max 8
        assert_eq!(m.intra_mean, 6.023);
        assert_eq!(m.intra_max, 8.0);
        assert!(c.metrics.overall.is_none());
    }

    /// Points on a line at 0, 1, 3, 7: d01=1 d02=3 d03=7 d12=2 d13=6 d23=4.
    fn line4() -> Vec<f64> {
        vec![1.0, 3.0, 7.0, 2.0, 6.0, 4.0]
    }

    #[test]
    fn single_complete_average_ward_by_hand() {
        // single: (0,1)@1; {01}–2 = min(3,2) = 2; then 3 at min(7,6,4) = 4.
        let z = linkage(&line4(), 4, ClusterMethod::Single).unwrap();
        assert_linkage(
            &z,
            &[row(0, 1, 1.0, 2), row(2, 4, 2.0, 3), row(3, 5, 4.0, 4)],
        );
        // complete: {01}–2 = max(3,2) = 3 (< d23 = 4); then max(7,6,4) = 7.
        let z = linkage(&line4(), 4, ClusterMethod::Complete).unwrap();
        assert_linkage(
            &z,
            &[row(0, 1, 1.0, 2), row(2, 4, 3.0, 3), row(3, 5, 7.0, 4)],
        );
        // average: {01}–2 = 2.5; then (7+6+4)/3.
        let z = linkage(&line4(), 4, ClusterMethod::Average).unwrap();
        assert_linkage(
            &z,
            &[
                row(0, 1, 1.0, 2),
                row(2, 4, 2.5, 3),
                row(3, 5, 17.0 / 3.0, 4),
            ],
        );
        // ward on Euclidean points = sqrt(2 na nb / (na+nb)) · |centroid gap|:
        // {0,1} vs {3}: sqrt(4/3)·2.5; {0,1,3} vs {7}: sqrt(6/4)·(7 − 4/3).
        let z = linkage(&line4(), 4, ClusterMethod::Ward).unwrap();
        assert_linkage(
            &z,
            &[
                row(0, 1, 1.0, 2),
                row(2, 4, (4.0f64 / 3.0).sqrt() * 2.5, 3),
                row(3, 5, 1.5f64.sqrt() * (7.0 - 4.0 / 3.0), 4),
            ],
        );
        // weighted: {01}–2 = (3+2)/2 = 2.5; {012}–3 = ((7+6)/2 + 4)/2 = 5.25.
        let z = linkage(&line4(), 4, ClusterMethod::Weighted).unwrap();
        assert_linkage(
            &z,
            &[row(0, 1, 1.0, 2), row(2, 4, 2.5, 3), row(3, 5, 5.25, 4)],
        );
        // ids at a cut of 3 with complete linkage: {0,1,2} then singleton 3. Walk: root (3,5)
        // is above, non-leaf child 5 ≤ 3 gets id 1, then leaf 3 gets id 2.
        let z = linkage(&line4(), 4, ClusterMethod::Complete).unwrap();
        assert_eq!(fcluster_distance(&z, 4, 3.0).unwrap(), vec![1, 1, 1, 2]);
        assert_eq!(dendrogram_leaf_order(&z, 4).unwrap(), vec![3, 2, 0, 1]);
    }

    #[test]
    fn numbering_visits_left_subtree_first() {
        // Hand-written linkage: n = 4, rows (2,3)@1 → 4, (0,1)@2 → 5, (4,5)@9 → 6.
        // Left child of the root is 4 = {2,3}: it gets id 1 although its leaves have larger indices.
        let z = vec![row(2, 3, 1.0, 2), row(0, 1, 2.0, 2), row(4, 5, 9.0, 4)];
        assert_eq!(fcluster_distance(&z, 4, 3.0).unwrap(), vec![2, 2, 1, 1]);
        assert_eq!(dendrogram_leaf_order(&z, 4).unwrap(), vec![2, 3, 0, 1]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(linkage(&[1.0, 2.0], 3, ClusterMethod::Average).is_err());
        assert!(linkage(&[1.0, f64::NAN, 2.0], 3, ClusterMethod::Average).is_err());
        assert!(linkage(&[], 0, ClusterMethod::Average).is_err());
        assert!(fcluster_distance(&[row(0, 5, 1.0, 2)], 2, 1.0).is_err());
        assert!("median".parse::<ClusterMethod>().is_err());
        assert_eq!(
            "Ward".parse::<ClusterMethod>().unwrap(),
            ClusterMethod::Ward
        );
        assert!(cluster_distance_matrix(five(), Some(-1.0), ClusterMethod::Average).is_err());
    }

    #[test]
    fn one_head_is_one_cluster() {
        let d = DistanceMatrix::from_full(vec![(3, 4)], vec![0.0], DistanceKind::Cosine).unwrap();
        let c = cluster_distance_matrix(d, None, ClusterMethod::Average).unwrap();
        assert_eq!(c.ids, vec![1]);
        assert!(c.linkage.is_empty());
        assert_eq!(c.threshold, 0.3);
    }

    #[test]
    fn cluster_heads_end_to_end_on_attention() {
        use candle_core::{Device, Tensor};
        // Two heads attend to token 0, two to token 2, one uniformly: JS ≈ 0 within pairs.
        let t = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, 1, 3), &Device::Cpu).unwrap();
        let data = vec![
            ((5, 0), t([1.0, 0.0, 0.0])),
            ((5, 1), t([0.0, 0.0, 1.0])),
            ((6, 0), t([0.98, 0.01, 0.01])),
            ((6, 1), t([0.02, 0.02, 0.96])),
        ];
        let c = cluster_heads(&data, &ClusterOptions::default()).unwrap();
        assert_eq!(c.threshold, 0.5);
        // Linkage: (0,2) merges first (smaller JS than (1,3)), so it is cluster 5 and the left
        // child of the root; the root is above 0.5, so the walk numbers {0,2} = 1 then {1,3} = 2.
        assert_eq!(c.ids, vec![1, 2, 1, 2]);
        assert_eq!(c.groups[&1], vec![(5, 0), (6, 0)]);
        assert_eq!(c.groups[&2], vec![(5, 1), (6, 1)]);
    }
}
