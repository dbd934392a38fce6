//! V12 `print_cluster_summary`: the printed clustering summary, also returned as a String.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{Context, Result, ensure};
use candle_core::{D, DType, Tensor};

use super::cluster::Metrics;
use super::{HeadKey, head_label};

/// Formats a metric value with 3 decimals (`inf` for ∞).
fn f3(x: f64) -> String {
    if x.is_infinite() {
        "inf".to_string()
    } else {
        format!("{x:.3}")
    }
}

/// Self-attention and token-0 shares of one head's attention weights `[..., i, j]`, as percent:
/// the mean of the diagonal over the last two axes, and the mean of column 0.
fn attention_shares(aw: &Tensor) -> Result<(f64, f64)> {
    let dims = aw.dims();
    ensure!(
        dims.len() >= 2,
        "attention weights need at least 2 dimensions, got {dims:?}"
    );
    let (i, j) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    ensure!(i > 0 && j > 0, "empty attention weights {dims:?}");
    let aw = aw.to_dtype(DType::F32)?;
    let rows = aw.reshape(((), i, j))?; // [b, i, j]
    let diag_len = i.min(j);
    let mut diag = 0.0f64;
    for r in 0..diag_len {
        diag += rows
            .narrow(1, r, 1)?
            .narrow(2, r, 1)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    let b = rows.dim(0)? as f64;
    let self_attn = diag / (b * diag_len as f64);
    let tok0 = rows
        .narrow(D::Minus1, 0, 1)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok((100.0 * self_attn, 100.0 * tok0))
}

/// V12: the clustering summary text.
///
/// ```text
/// CLUSTERING SUMMARY: 3 groups, 22 heads
///   Cohesion (avg intra): 0.179
///   Separation (avg sep): 0.506
///   Sep/Cohesion ratio:   2.82 (higher = better)
/// 📦 GROUP 1 (12 heads) | intra=0.258, sep=0.429
///     Heads: 79-10, 77-54, ...
/// ```
/// The per-group `sep` is `sep_min`. With `aw`, each head gets a line with its mean diagonal
/// ("self-attn") and mean attention to token 0 ("tok0") in percent (diagonal of the last two
/// axes, so it is meaningful for square `[.., s, s]` patterns).
pub fn cluster_summary(
    groups: &BTreeMap<usize, Vec<HeadKey>>,
    metrics: Option<&Metrics>,
    aw: Option<&[(HeadKey, Tensor)]>,
) -> Result<String> {
    let n_heads: usize = groups.values().map(Vec::len).sum();
    let mut s = String::new();
    writeln!(
        s,
        "CLUSTERING SUMMARY: {} groups, {} heads",
        groups.len(),
        n_heads
    )?;
    if let Some(o) = metrics.and_then(|m| m.overall.as_ref()) {
        writeln!(s, "  Cohesion (avg intra): {:.3}", o.avg_cohesion)?;
        writeln!(s, "  Separation (avg sep): {:.3}", o.avg_separation)?;
        writeln!(
            s,
            "  Sep/Cohesion ratio:   {:.2} (higher = better)",
            o.sep_cohesion_ratio
        )?;
    }
    for (cid, heads) in groups {
        write!(s, "📦 GROUP {cid} ({} heads)", heads.len())?;
        if let Some(m) = metrics.and_then(|m| m.clusters.get(cid)) {
            write!(s, " | intra={}, sep={}", f3(m.intra_mean), f3(m.sep_min))?;
        }
        writeln!(s)?;
        let names: Vec<String> = heads.iter().map(|k| head_label(*k)).collect();
        writeln!(s, "    Heads: {}", names.join(", "))?;
        if let Some(aw) = aw {
            for k in heads {
                let t = aw
                    .iter()
                    .find(|(k2, _)| k2 == k)
                    .map(|(_, t)| t)
                    .with_context(|| format!("no attention weights for head {}", head_label(*k)))?;
                let (self_attn, tok0) = attention_shares(t)?;
                writeln!(
                    s,
                    "      {}: self-attn={self_attn:.1}%, tok0={tok0:.1}%",
                    head_label(*k)
                )?;
            }
        }
    }
    Ok(s)
}

/// Prints [`cluster_summary`] to stdout and returns it.
pub fn print_cluster_summary(
    groups: &BTreeMap<usize, Vec<HeadKey>>,
    metrics: Option<&Metrics>,
    aw: Option<&[(HeadKey, Tensor)]>,
) -> Result<String> {
    let s = cluster_summary(groups, metrics, aw)?;
    print!("{s}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::cluster::{ClusterMetrics, OverallMetrics};
    use candle_core::Device;

    #[test]
    fn summary_text() {
        let mut groups = BTreeMap::new();
        groups.insert(1, vec![(79, 10), (77, 54)]);
        groups.insert(2, vec![(74, 21)]);
        let mut clusters = BTreeMap::new();
        clusters.insert(
            1,
            ClusterMetrics {
                n_heads: 2,
                intra_mean: 0.258,
                intra_max: 0.3,
                sep_min: 0.429,
                sep_mean: 0.5,
            },
        );
        clusters.insert(
            2,
            ClusterMetrics {
                n_heads: 1,
                intra_mean: 0.0,
                intra_max: 0.0,
                sep_min: 0.429,
                sep_mean: 0.429,
            },
        );
        let overall = OverallMetrics {
            n_clusters: 2,
            n_heads: 3,
            avg_cohesion: 0.129,
            avg_separation: 0.465,
            sep_cohesion_ratio: 3.6,
        };
        let m = Metrics {
            clusters,
            overall: Some(overall),
        };
        // aw for 79-10: [1, 2, 2] = [[0.25, 0.75], [0.5, 0.5]]: diagonal mean (0.25+0.5)/2 = 37.5%,
        // tok0 mean (0.25+0.5)/2 = 37.5%. 77-54: [[1,0],[0,1]] → 100%, 50%. 74-21: [[0,1],[0,1]] → 50%, 0%.
        let t = |v: [f32; 4]| Tensor::from_vec(v.to_vec(), (1, 2, 2), &Device::Cpu).unwrap();
        let aw = vec![
            ((79, 10), t([0.25, 0.75, 0.5, 0.5])),
            ((77, 54), t([1.0, 0.0, 0.0, 1.0])),
            ((74, 21), t([0.0, 1.0, 0.0, 1.0])),
        ];
        let s = cluster_summary(&groups, Some(&m), Some(&aw)).unwrap();
        let want = "CLUSTERING SUMMARY: 2 groups, 3 heads\n\
                    \x20 Cohesion (avg intra): 0.129\n\
                    \x20 Separation (avg sep): 0.465\n\
                    \x20 Sep/Cohesion ratio:   3.60 (higher = better)\n\
                    📦 GROUP 1 (2 heads) | intra=0.258, sep=0.429\n\
                    \x20   Heads: 79-10, 77-54\n\
                    \x20     79-10: self-attn=37.5%, tok0=37.5%\n\
                    \x20     77-54: self-attn=100.0%, tok0=50.0%\n\
                    📦 GROUP 2 (1 heads) | intra=0.000, sep=0.429\n\
                    \x20   Heads: 74-21\n\
                    \x20     74-21: self-attn=50.0%, tok0=0.0%\n";
        assert_eq!(s, want);
        let plain = cluster_summary(&groups, None, None).unwrap();
        assert_eq!(
            plain,
            "CLUSTERING SUMMARY: 2 groups, 3 heads\n📦 GROUP 1 (2 heads)\n    Heads: 79-10, 77-54\n📦 GROUP 2 (1 heads)\n    Heads: 74-21\n"
        );
        assert!(cluster_summary(&groups, None, Some(&aw[..1])).is_err());
    }
}
