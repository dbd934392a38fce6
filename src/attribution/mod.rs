//! Attribution (spec §3, A1–A24; U1–U2): which heads and MLPs drive the answer, and through
//! which of their inputs.
//!
//! * [`node`] — node identity `(layer, head, type)` and payload;
//! * [`graph`] — the host-owned graph: interning, freezing, edges, traversal, JSON view;
//! * [`pattern`] — `DST->SRC` patterns, built-in and user-defined spans, [`SampleRef`];
//! * integrated gradients (rules, node kernels, request types) live in [`crate::ig`], below the
//!   [`crate::backend::Backend`] trait this module works through;
//! * [`step`] — set_pos_ids, accum_output_grad, attribute_step, add_edges, attention-weight
//!   attribution, top heads, circuit evaluation;
//! * [`tree`] — the attribution tree and its printing; [`mr`] — map-reduce over samples;
//! * [`topk`] — multi-dimensional top-k; [`export`] — safetensors/JSON; [`bench`] — timings.
//!
//! Shape letters: b batch (IG points), k selected positions, s sequence, e hidden, n heads,
//! d head dim, g downstream gradients, L' layers attributed.

pub mod bench;
pub mod export;
pub mod graph;
pub mod mr;
pub mod node;
pub mod pattern;
pub mod step;
pub mod topk;
pub mod tree;

pub use crate::ig::{Adaptive, Completeness, IgRule};
pub use crate::ig::{
    NodeForwardRequest, NodeGrad, NodeGradRequest, ResidualGrad, ResidualRequest, SinkMode,
};
pub use graph::{Edge, Graph, GraphView};
pub use mr::{Mean, MrOptions, mr, mr_spread};
pub use node::{Node, NodeData, NodeId, NodeType};
pub use pattern::{Pattern, SampleRef, Spans};
pub use step::{
    HeadRanking, HeadScore, accum_output_grad, add_edges, attention_attribution,
    attribute_attn_weights, attribute_step, backward, embed_attribution, forward,
    get_attn_attrs_on_dataset, get_top_heads, rank_heads, set_all_pos_ids, set_pos_ids,
};
pub use topk::{TopK, topk_md};
pub use tree::{AttrData, AttrTree, TreeOptions, add_tree_node, data2str};
