//! Analysis of attention heads: distance matrices between heads (V9–V10), hierarchical clustering
//! with SciPy-exact cluster numbering (V11), the printed clustering summary (V12), attention-pattern
//! label matrices and scores (V1–V2) and multi-dimensional top-k (U1).
//!
//! Everything here works on plain data (`candle_core::Tensor`s keyed by `(layer, head)`, index
//! lists, distance matrices), so it does not depend on a loaded model.

pub mod cluster;
pub mod distance;
pub mod patterns;
pub mod summary;
pub mod topk;

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
pub use patterns::{
    PatternLabels, attn_pattern_labels, attn_pattern2labels, get_ap_scores, split_pattern,
};
pub use summary::cluster_summary;
pub use topk::{TopK, topk_md};
