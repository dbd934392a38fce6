//! Requests and responses of the node backward (A13), node forward (A15) and residual
//! attribution (A18): serde-friendly plain data shared by the local backend and the HTTP wire.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::node_type::NodeType;
use super::rule::{Adaptive, Completeness, IgRule};
use super::wire;
use crate::model::components::NoSink;

/// How attn_qns excludes the attention sink (key 0); see [`NoSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// Key 0 masked before the softmax (weights renormalise over the other keys).
    #[default]
    MaskBeforeSoftmax,
    /// Weight of key 0 zeroed after the softmax (no renormalisation).
    ZeroAfterSoftmax,
}

impl From<SinkMode> for NoSink {
    fn from(m: SinkMode) -> Self {
        match m {
            SinkMode::MaskBeforeSoftmax => NoSink::MaskBeforeSoftmax,
            SinkMode::ZeroAfterSoftmax => NoSink::ZeroAfterSoftmax,
        }
    }
}

/// A node backward (A13/A14/S6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeGradRequest {
    /// Node type (not embed).
    pub node_type: NodeType,
    /// Layer (L for lm_head).
    pub layer: usize,
    /// Head for attention types.
    pub head: Option<usize>,
    /// Output positions (k).
    pub pos_ids: Vec<usize>,
    /// Positions of the attributed input (k'); = pos_ids except attn_k/attn_v.
    pub src_pos_ids: Vec<usize>,
    /// Σ of downstream grads `[1,k,e]` (None for lm_head only).
    #[serde(with = "wire::opt_tensor", default)]
    pub output_grad: Option<Tensor>,
    /// Path rule; None = the type's default (Seed{4}; plain gradient for attn_v / attn_a).
    #[serde(default)]
    pub ig: Option<IgRule>,
    /// lm_head only: raise the resolution until the completeness delta ≤ tol.
    #[serde(default)]
    pub adaptive: Option<Adaptive>,
    /// Sink handling of attn_qns.
    #[serde(default)]
    pub sink: SinkMode,
}

impl NodeGradRequest {
    /// A request with the type's default rule.
    pub fn new(
        node_type: NodeType,
        layer: usize,
        head: Option<usize>,
        pos_ids: Vec<usize>,
        src_pos_ids: Vec<usize>,
        output_grad: Option<Tensor>,
    ) -> Self {
        Self {
            node_type,
            layer,
            head,
            pos_ids,
            src_pos_ids,
            output_grad,
            ig: None,
            adaptive: None,
            sink: SinkMode::default(),
        }
    }
}

/// The default path rule of a node type (A13): plain gradient for attn_v (affine in v) and
/// attn_a, the seed's 4 steps otherwise.
pub fn default_rule(t: NodeType) -> IgRule {
    match t {
        NodeType::AttnV | NodeType::AttnA => IgRule::PLAIN,
        _ => IgRule::default(),
    }
}

/// A node backward's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeGrad {
    /// Residual-space gradient `[1,k',e]` at src_pos_ids (None for attn_a).
    #[serde(with = "wire::opt_tensor", default)]
    pub grad: Option<Tensor>,
    /// attn_a: the head's weights `[1,k,s]`.
    #[serde(with = "wire::opt_tensor", default)]
    pub aw: Option<Tensor>,
    /// attn_a: the gradient w.r.t. the weights `[1,k,s]`.
    #[serde(with = "wire::opt_tensor", default)]
    pub grad_aw: Option<Tensor>,
    /// lm_head: IG completeness of the returned gradient.
    pub completeness: Option<Completeness>,
    /// lm_head with adaptive mode: whether the tolerance was reached.
    pub converged: Option<bool>,
    /// The rule used.
    pub rule: IgRule,
}

/// A node forward (A15).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeForwardRequest {
    /// Node type.
    pub node_type: NodeType,
    /// Layer.
    pub layer: usize,
    /// Head for attention types.
    pub head: Option<usize>,
    /// Output positions (k).
    pub pos_ids: Vec<usize>,
    /// Positions the upstream sum stands for (attn_k/attn_v: k'; others = pos_ids).
    pub src_pos_ids: Vec<usize>,
    /// Replacement residual `[1,k'|k,e]` (None = the cached one).
    #[serde(with = "wire::opt_tensor", default)]
    pub upstream_sum: Option<Tensor>,
    /// Sink handling of attn_qns.
    #[serde(default)]
    pub sink: SinkMode,
}

/// One downstream gradient for residual attribution, at its own positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidualGrad {
    /// Positions of the gradient rows (the node's src_pos_ids).
    pub pos_ids: Vec<usize>,
    /// `[1,k,e]`.
    #[serde(with = "wire::tensor")]
    pub grad: Tensor,
    /// The node's downstream layer (layer, + 0.5 for MLP types).
    pub downstream_layer: f64,
}

/// Residual attribution (A18).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidualRequest {
    /// The g downstream gradients.
    pub grads: Vec<ResidualGrad>,
    /// First layer (default 0).
    pub from_layer: usize,
    /// End layer (exclusive); None = ceil(max downstream layer).
    pub to_layer: Option<usize>,
}

/// The end layer A18 uses by default: ceil of the largest downstream layer (the seed's floor
/// dropped the same-layer heads of MLP nodes, defect 21).
pub fn default_to_layer(grads: &[ResidualGrad]) -> usize {
    grads
        .iter()
        .map(|g| g.downstream_layer)
        .fold(0.0, f64::max)
        .ceil() as usize
}
