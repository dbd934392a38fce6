//! Node identity and payload (A10): a node is `(layer, head, type)`; its payload holds the
//! attention pattern, spans, per-sample positions and per-sample gradients.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use crate::ig::NodeType;

/// Node identity: equality and hashing use only (layer, head, type) — never the pattern (A10).
///
/// Conventions: lm_head has layer = L and head None; MLP types have head = Some(H) (the MLP
/// pseudo-head, its column in attribution tensors); attention types have Some(h < H); embed has
/// layer 0 and head None.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// Layer (L for lm_head).
    pub layer: usize,
    /// Head (H for MLP types, None for lm_head and embed).
    pub head: Option<usize>,
    /// Node type.
    #[serde(rename = "type")]
    pub ty: NodeType,
}

impl NodeId {
    /// Builds and validates an id against a model with `num_layers` layers and `num_heads` heads.
    /// For MLP types `head` may be None or Some(H); for lm_head/embed it must be None.
    pub fn new(
        layer: usize,
        head: Option<usize>,
        ty: NodeType,
        num_layers: usize,
        num_heads: usize,
    ) -> Result<Self> {
        let head = match ty {
            NodeType::LmHead => {
                if layer != num_layers {
                    bail!("lm_head node must have layer {num_layers} (L), got {layer}");
                }
                if head.is_some() {
                    bail!("lm_head node takes no head");
                }
                None
            }
            NodeType::Embed => {
                if layer != 0 || head.is_some() {
                    bail!("embed node must have layer 0 and no head");
                }
                None
            }
            t if t.is_mlp() => {
                if layer >= num_layers {
                    bail!("{t} node layer {layer} out of range (model has {num_layers} layers)");
                }
                match head {
                    None => Some(num_heads),
                    Some(h) if h == num_heads => Some(h),
                    Some(h) => bail!("{t} node head must be {num_heads} (H) or none, got {h}"),
                }
            }
            t => {
                if layer >= num_layers {
                    bail!("{t} node layer {layer} out of range (model has {num_layers} layers)");
                }
                match head {
                    Some(h) if h < num_heads => Some(h),
                    Some(h) => {
                        bail!("{t} node head {h} out of range (model has {num_heads} heads)")
                    }
                    None => bail!("{t} node needs a head"),
                }
            }
        };
        Ok(Self { layer, head, ty })
    }

    /// The layer a downstream node "sits at" for residual masks (A18): layer + 0.5 for MLP types.
    pub fn downstream_layer(&self) -> f64 {
        if self.ty.is_mlp() {
            self.layer as f64 + 0.5
        } else {
            self.layer as f64
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.head {
            Some(h) => write!(f, "{}-{} {}", self.layer, h, self.ty),
            None => write!(f, "{} {}", self.layer, self.ty),
        }
    }
}

/// A node's mutable payload (A10). Per-sample data is keyed by the sample index (r.index).
#[derive(Debug, Clone, Default)]
pub struct NodeData {
    /// The `DST->SRC` attention pattern (not part of identity).
    pub attn_pattern: Option<String>,
    /// Span of the node's output positions (DST).
    pub span: Option<String>,
    /// Span of the attributed input's positions (SRC; = span except for attn_v/attn_k).
    pub src_span: Option<String>,
    /// Output positions per sample.
    pub pos_ids: BTreeMap<usize, Vec<usize>>,
    /// Positions of the attributed input (and of `grad`) per sample.
    pub src_pos_ids: BTreeMap<usize, Vec<usize>>,
    /// Σ of the downstream grads per sample `[1,k,e]` (A12).
    pub output_grad: BTreeMap<usize, Tensor>,
    /// The residual-space gradient per sample `[1,k',e]` at `src_pos_ids` (A13).
    pub grad: BTreeMap<usize, Tensor>,
    /// lm_head: IG completeness of the last backward per sample.
    pub completeness: BTreeMap<usize, crate::ig::Completeness>,
}

/// A node: identity, payload and whether it is frozen (an edge endpoint).
#[derive(Debug, Clone)]
pub struct Node {
    /// Identity.
    pub id: NodeId,
    /// Payload.
    pub data: NodeData,
    pub(crate) frozen: bool,
}

impl Node {
    /// A fresh node with an optional pattern.
    pub fn new(id: NodeId, attn_pattern: Option<&str>) -> Self {
        Self {
            id,
            data: NodeData {
                attn_pattern: attn_pattern.map(str::to_string),
                ..Default::default()
            },
            frozen: false,
        }
    }
    /// Whether the node is an edge endpoint (its identity can no longer change).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }
}
