//! Analysis bindings (spec §5): head clustering (V9–V12) with its plot, attention-pattern
//! labels and scores (V1–V2).

use super::args::{Num, guard, options, usize_list};
use super::puzzle::ScriptSample;
use crate::analysis::{
    ClusterMethod, ClusterOptions, Clustering, DistanceKind, HeadKey, PatternLabels,
    attn_pattern2labels, cluster_heads, cluster_summary, get_ap_scores,
};
use crate::puzzle::sample::DEFAULT_LAST_K;
use crate::script::docs::Registrar;
use crate::script::tensor::Tensor;
use crate::vis::plots::{
    DendrogramOptions, lens_rows, plot_clustering, plot_group_patterns, plot_logit_lens,
};
use anyhow::{Result, anyhow, bail, ensure};
use rhai::{Array, Dynamic, INT, Map};
use std::path::Path;
use std::sync::Arc;

/// A clustering result as a script value.
#[derive(Clone)]
pub struct ScriptClustering(pub Arc<Clustering>);

/// An attention-pattern label matrix as a script value.
#[derive(Clone)]
pub struct ScriptLabels(pub Arc<PatternLabels>);

/// Head data from a script: an array of `[layer, head, Tensor]`.
fn head_data(arr: &Array) -> Result<Vec<(HeadKey, candle_core::Tensor)>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            let item = v
                .read_lock::<Array>()
                .filter(|a| a.len() == 3)
                .ok_or_else(|| anyhow!("data[{k}] must be [layer, head, Tensor]"))?;
            let lh = usize_list(&format!("data[{k}]"), &item[..2].to_vec())?;
            let t = item[2]
                .read_lock::<Tensor>()
                .map(|t| t.0.clone())
                .ok_or_else(|| {
                    anyhow!(
                        "data[{k}][2] is a {}, expected a Tensor",
                        item[2].type_name()
                    )
                })?;
            Ok(((lh[0], lh[1]), t))
        })
        .collect()
}

/// Options of `cluster_heads(data, opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterHeadsOptions {
    /// "js" (Jensen-Shannon) or "cosine".
    #[serde(default)]
    dist: Option<String>,
    #[serde(default, deserialize_with = "super::args::number")]
    threshold: Option<f64>,
    /// SciPy linkage method name.
    #[serde(default)]
    method: Option<String>,
}

fn cluster_options(map: &Map) -> Result<ClusterOptions> {
    let opts: ClusterHeadsOptions = options(map)?;
    let mut o = ClusterOptions::default();
    if let Some(d) = opts.dist {
        o.kind = match d.to_ascii_lowercase().as_str() {
            "js" | "jensen_shannon" => DistanceKind::JensenShannon,
            "cosine" | "cos" => DistanceKind::Cosine,
            other => bail!("unknown dist {other:?} (expected \"js\" or \"cosine\")"),
        };
    }
    if opts.threshold.is_some() {
        o.threshold = opts.threshold;
    }
    if let Some(m) = opts.method {
        o.method = m.parse::<ClusterMethod>()?;
    }
    Ok(o)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DendrogramKeys {
    #[serde(default)]
    figsize: Option<[Num; 2]>,
    #[serde(default)]
    width_ratios: Option<[Num; 2]>,
    #[serde(default, deserialize_with = "super::args::number")]
    dpi: Option<f64>,
    #[serde(default, deserialize_with = "super::args::number")]
    bar_height: Option<f64>,
    #[serde(default, deserialize_with = "super::args::number")]
    leaf_font_size: Option<f64>,
    #[serde(default)]
    strengths: Option<Vec<Num>>,
}

fn dendrogram_options(map: &Map) -> Result<DendrogramOptions> {
    let k: DendrogramKeys = options(map)?;
    let mut o = DendrogramOptions::default();
    let pair = |[a, b]: [Num; 2]| (a.0, b.0);
    if let Some(v) = k.figsize {
        o.figsize = pair(v);
    }
    if let Some(v) = k.width_ratios {
        o.width_ratios = pair(v);
    }
    if let Some(v) = k.dpi {
        o.dpi = v;
    }
    if let Some(v) = k.bar_height {
        o.bar_height = v;
    }
    if let Some(v) = k.leaf_font_size {
        o.leaf_font_size = v;
    }
    if let Some(v) = k.strengths {
        o.strengths = Some(v.into_iter().map(|n| n.0).collect());
    }
    Ok(o)
}

fn head_pair(k: &HeadKey) -> Dynamic {
    Dynamic::from_array(vec![
        Dynamic::from_int(k.0 as INT),
        Dynamic::from_int(k.1 as INT),
    ])
}

fn groups_map(c: &Clustering) -> Map {
    c.groups
        .iter()
        .map(|(id, heads)| {
            (
                id.to_string().into(),
                Dynamic::from_array(heads.iter().map(head_pair).collect()),
            )
        })
        .collect()
}

fn metrics_map(c: &Clustering) -> Map {
    let mut clusters = Map::new();
    for (id, m) in &c.metrics.clusters {
        let mut e = Map::new();
        e.insert("n_heads".into(), Dynamic::from_int(m.n_heads as INT));
        e.insert("intra_mean".into(), Dynamic::from_float(m.intra_mean));
        e.insert("intra_max".into(), Dynamic::from_float(m.intra_max));
        e.insert("sep_min".into(), Dynamic::from_float(m.sep_min));
        e.insert("sep_mean".into(), Dynamic::from_float(m.sep_mean));
        clusters.insert(id.to_string().into(), Dynamic::from_map(e));
    }
    let mut out = Map::new();
    out.insert("clusters".into(), Dynamic::from_map(clusters));
    let overall = c.metrics.overall.as_ref().map_or(Dynamic::UNIT, |o| {
        let mut e = Map::new();
        e.insert("n_clusters".into(), Dynamic::from_int(o.n_clusters as INT));
        e.insert("n_heads".into(), Dynamic::from_int(o.n_heads as INT));
        e.insert("avg_cohesion".into(), Dynamic::from_float(o.avg_cohesion));
        e.insert(
            "avg_separation".into(),
            Dynamic::from_float(o.avg_separation),
        );
        e.insert(
            "sep_cohesion_ratio".into(),
            Dynamic::from_float(o.sep_cohesion_ratio),
        );
        Dynamic::from_map(e)
    });
    out.insert("overall".into(), overall);
    out
}

/// Register the analysis domain.
pub fn register(r: &mut Registrar) {
    r.type_named::<ScriptClustering>(
        "Clustering",
        "A hierarchical clustering of heads (cluster_heads).",
    )
    .type_named::<ScriptLabels>(
        "PatternLabels",
        "An attention-pattern label matrix [s, s] with its DST positions.",
    );
    register_clustering(r);
    register_patterns(r);
    register_plots(r);
}

/// Resolution of the bitmap plots.
pub(crate) const PLOT_DPI: f64 = 150.0;

fn register_plots(r: &mut Registrar) {
    r.func(
        "plot_group_patterns",
        "plot_group_patterns(c: Clustering, aw: Array, path: String, last_n_pos: int)",
        "One panel per cluster with the group's mean attention pattern over the last last_n_pos key positions (V13); aw is [[layer, head, Tensor [N,k,s]], ...].",
        |c: &mut ScriptClustering, aw: Array, path: &str, last_n_pos: INT| {
            guard("plot_group_patterns", || {
                ensure!(last_n_pos > 0, "last_n_pos must be positive, got {last_n_pos}");
                plot_group_patterns(&c.0.groups, &head_data(&aw)?, last_n_pos as usize, Path::new(path), PLOT_DPI)
            })
        },
    )
    .func(
        "plot_logit_lens",
        "plot_logit_lens(matrix: Tensor, from_layer: int, y_desc: String, path: String)",
        "Grouped bars per layer (resid, attn, mlp) from a [n_layers, 3] tensor (V5), written to path.",
        |m: Tensor, from_layer: INT, y_desc: &str, path: &str| {
            guard("plot_logit_lens", || {
                ensure!(from_layer >= 0, "from_layer must be >= 0, got {from_layer}");
                plot_logit_lens(&lens_rows(&m.0)?, from_layer as usize, y_desc, Path::new(path), PLOT_DPI)
            })
        },
    );
}

fn register_clustering(r: &mut Registrar) {
    r.func(
        "cluster_heads",
        "cluster_heads(data: Array) -> Clustering",
        "Cluster heads (V11) from [[layer, head, Tensor], ...]: Jensen-Shannon distance over attention weights [N,k,s], average linkage, cut at 0.5.",
        |data: Array| {
            guard("cluster_heads", || {
                Ok(ScriptClustering(Arc::new(cluster_heads(&head_data(&data)?, &ClusterOptions::default())?)))
            })
        },
    )
    .func(
        "cluster_heads",
        "cluster_heads(data: Array, opts: Map) -> Clustering",
        "Cluster heads with options: dist (\"js\" or \"cosine\"), threshold (default 0.5 JS, 0.3 cosine), method (average, single, complete, ward, weighted).",
        |data: Array, opts: Map| {
            guard("cluster_heads", || {
                Ok(ScriptClustering(Arc::new(cluster_heads(&head_data(&data)?, &cluster_options(&opts)?)?)))
            })
        },
    )
    .getter("ids", "c.ids -> Array", "Flat cluster id (1-based, SciPy numbering) per head, in input order.", |c: &mut ScriptClustering| {
        c.0.ids.iter().map(|&i| Dynamic::from_int(i as INT)).collect::<Array>()
    })
    .getter("groups", "c.groups -> Map", "Cluster id -> array of [layer, head].", |c: &mut ScriptClustering| groups_map(&c.0))
    .getter("metrics", "c.metrics -> Map", "Per-cluster metrics (clusters) and overall cohesion/separation (overall, or () with one cluster).", |c: &mut ScriptClustering| {
        metrics_map(&c.0)
    })
    .getter("threshold", "c.threshold -> float", "The cut height used.", |c: &mut ScriptClustering| c.0.threshold)
    .getter("leaf_order", "c.leaf_order -> Array", "Dendrogram leaf order (indices into the input).", |c: &mut ScriptClustering| {
        c.0.leaf_order.iter().map(|&i| Dynamic::from_int(i as INT)).collect::<Array>()
    })
    .func("cluster_summary", "cluster_summary(c: Clustering) -> String", "The printed clustering summary (V12): groups, heads, cohesion and separation.", |c: &mut ScriptClustering| {
        guard("cluster_summary", || cluster_summary(&c.0.groups, Some(&c.0.metrics), None))
    })
    .func(
        "cluster_summary",
        "cluster_summary(c: Clustering, aw: Array) -> String",
        "The summary with per-head self-attention and token-0 shares from [[layer, head, Tensor], ...].",
        |c: &mut ScriptClustering, aw: Array| {
            guard("cluster_summary", || {
                let aw = head_data(&aw)?;
                cluster_summary(&c.0.groups, Some(&c.0.metrics), Some(&aw))
            })
        },
    )
    .func("to_string", "to_string(c: Clustering) -> String", "The clustering summary.", |c: &mut ScriptClustering| {
        cluster_summary(&c.0.groups, Some(&c.0.metrics), None).unwrap_or_else(|e| e.to_string())
    })
    .func("to_debug", "to_debug(c: Clustering) -> String", "The clustering summary.", |c: &mut ScriptClustering| {
        cluster_summary(&c.0.groups, Some(&c.0.metrics), None).unwrap_or_else(|e| e.to_string())
    })
    .func(
        "plot_clustering",
        "plot_clustering(c: Clustering, path: String)",
        "Dendrogram with the cut line plus the reordered distance heatmap (V11), written to path (.png or .svg).",
        |c: &mut ScriptClustering, path: &str| {
            guard("plot_clustering", || plot_clustering(&c.0, Path::new(path), &DendrogramOptions::default()))
        },
    )
    .func(
        "plot_clustering",
        "plot_clustering(c: Clustering, path: String, opts: Map)",
        "The clustering figure with options: figsize [w, h] inches, dpi, width_ratios [a, b], bar_height, leaf_font_size, strengths (one per head).",
        |c: &mut ScriptClustering, path: &str, opts: Map| {
            guard("plot_clustering", || {
                let o = dendrogram_options(&opts)?;
                if let Some(s) = &o.strengths {
                    ensure!(s.len() == c.0.ids.len(), "strengths has {} values for {} heads", s.len(), c.0.ids.len());
                }
                plot_clustering(&c.0, Path::new(path), &o)
            })
        },
    );
}

fn register_patterns(r: &mut Registrar) {
    r.func(
        "attn_pattern2labels",
        "attn_pattern2labels(sample: Sample, pattern: String) -> PatternLabels",
        "Label matrix [s, s] of a DST->SRC pattern (e.g. \"A-->V\") over the last 2 train examples (V1).",
        |s: ScriptSample, pattern: &str| {
            guard("attn_pattern2labels", || {
                Ok(ScriptLabels(Arc::new(attn_pattern2labels(&s.0, pattern, DEFAULT_LAST_K)?)))
            })
        },
    )
    .getter("labels", "l.labels -> Tensor", "The [s, s] label matrix (rows sum to 1 where labelled).", |l: &mut ScriptLabels| {
        Tensor(l.0.labels.clone())
    })
    .getter("ranges_q", "l.ranges_q -> Array", "The DST position of every pair.", |l: &mut ScriptLabels| {
        l.0.ranges_q.iter().map(|&i| Dynamic::from_int(i as INT)).collect::<Array>()
    })
    .func(
        "get_ap_scores",
        "get_ap_scores(aw: Tensor, labels: PatternLabels) -> Tensor",
        "Attention mass on the expected sources for every labelled row (V2): aw [..., s, s] -> [..., rows].",
        |aw: Tensor, l: ScriptLabels| guard("get_ap_scores", || Ok(Tensor(get_ap_scores(&aw.0, &l.0)?))),
    );
}
