//! Node identity and payload (A10): a node is `(layer, head, type)`; its payload holds the
//! attention pattern, spans, per-sample positions and per-sample gradients.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What part of the model a node stands for, and which of its inputs is attributed (A13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    /// The objective: final norm + lm_head + masked mean log-prob of the answers (layer L).
    LmHead,
    /// The MLP, with its up and gate inputs scaled together.
    Mlp,
    /// The MLP through its up input (xi) only.
    MlpI,
    /// The MLP through its gate input (xg) only.
    MlpG,
    /// One attention head through its queries.
    AttnQ,
    /// One attention head through its keys (all key positions scaled).
    AttnK,
    /// One attention head through its values.
    AttnV,
    /// One attention head through its post-softmax weights (gradient w.r.t. the weights).
    AttnA,
    /// As `AttnQ`, with the attention sink (key 0) excluded.
    AttnQns,
    /// The token embeddings (hidden_states\[0\]); a leaf for circuit evaluation (layer 0).
    Embed,
}

impl NodeType {
    /// All node types, in declaration order.
    pub const ALL: [NodeType; 10] = [
        Self::LmHead,
        Self::Mlp,
        Self::MlpI,
        Self::MlpG,
        Self::AttnQ,
        Self::AttnK,
        Self::AttnV,
        Self::AttnA,
        Self::AttnQns,
        Self::Embed,
    ];

    /// The seed's name (`lm_head`, `mlp_i`, `attn_qns`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::LmHead => "lm_head",
            Self::Mlp => "mlp",
            Self::MlpI => "mlp_i",
            Self::MlpG => "mlp_g",
            Self::AttnQ => "attn_q",
            Self::AttnK => "attn_k",
            Self::AttnV => "attn_v",
            Self::AttnA => "attn_a",
            Self::AttnQns => "attn_qns",
            Self::Embed => "embed",
        }
    }
    /// mlp, mlp_i, mlp_g.
    pub fn is_mlp(self) -> bool {
        matches!(self, Self::Mlp | Self::MlpI | Self::MlpG)
    }
    /// attn_q, attn_k, attn_v, attn_a, attn_qns.
    pub fn is_attn(self) -> bool {
        matches!(
            self,
            Self::AttnQ | Self::AttnK | Self::AttnV | Self::AttnA | Self::AttnQns
        )
    }
    /// lm_head.
    pub fn is_lm_head(self) -> bool {
        self == Self::LmHead
    }
    /// attn_k and attn_v: the attributed input (and the gradient) sits at the source positions.
    pub fn uses_src_positions(self) -> bool {
        matches!(self, Self::AttnK | Self::AttnV)
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NodeType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown node type {s:?} (lm_head, mlp, mlp_i, mlp_g, attn_q, attn_k, attn_v, \
                     attn_a, attn_qns, embed)"
                )
            })
    }
}

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
    pub completeness: BTreeMap<usize, super::ig::Completeness>,
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
