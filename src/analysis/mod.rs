//! Analysis of attention heads: distance matrices between heads (V9–V10), hierarchical clustering
//! with SciPy-exact cluster numbering (V11), the printed clustering summary (V12), attention-pattern
//! label matrices and scores (V1–V2) and multi-dimensional top-k (U1).
//!
//! Those work on plain data (`candle_core::Tensor`s keyed by `(layer, head)`, index lists,
//! distance matrices), so they do not depend on a loaded model. The model-backed analyses run
//! against any [`crate::backend::Backend`]: [`lens`] (head matching scores V3, logit lens V4, head
//! lens V6, circuit evaluation V7) and [`show_attn`] (V8).

pub mod causal;
pub mod cluster;
pub mod distance;
pub mod dla;
pub mod lens;
pub mod linkage;
pub mod patterns;
pub mod show_attn;
pub mod summary;

/// A head identified by `(layer, head)`. The MLP pseudo-head of a layer uses `head = H`.
pub type HeadKey = (usize, usize);

/// Formats a head key as the seed does in plots and summaries: `"l-h"`.
pub fn head_label(key: HeadKey) -> String {
    format!("{}-{}", key.0, key.1)
}

pub use cluster::{
    ClusterMethod, ClusterMetrics, ClusterOptions, Clustering, LinkageRow, Metrics, OverallMetrics,
    cluster_distance_matrix, cluster_heads, dendrogram_leaf_order, fcluster_distance, linkage,
};
pub use distance::{DistanceKind, DistanceMatrix, compute_cosine_matrix, compute_js_matrix};
pub use lens::{
    LENS_COLUMNS, LensNode, LogitLens, PatternScore, TopToken, eval_head_lens, eval_head_lens_both,
    eval_logit_lens, eval_nodes, get_head_matching_scores, mean_bool, render_logit_lens,
};
pub use patterns::{
    PatternLabels, attn_pattern_labels, attn_pattern2labels, get_ap_scores, get_ap_scores_rows,
    pattern_pairs, split_pattern,
};
pub use show_attn::{
    ShowAttn, attn_attr_rows, attn_attr_rows_for, show_attn_ansi, show_attn_data,
    write_show_attn_html,
};
pub use summary::cluster_summary;
