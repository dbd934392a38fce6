//! Node types (A13): which part of the model a node stands for and which of its inputs its
//! integrated gradient attributes.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
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
