//! Integrated gradients on one cached sample (spec §3: A1, A5, A6, A13–A18): node types, IG
//! rules, the request/response types and the backward / forward / residual kernels. Imports
//! only [`crate::model`]; the `Backend` trait methods `node_gradient`,
//! `node_forward` and `attribute_residual` call these functions.
//!
//! Shape letters: b batch (IG points), k selected positions, s sequence, e hidden, n heads,
//! d head dim, g downstream gradients, L' layers attributed.

pub mod backward;
pub mod forward;
mod kernels;
pub mod node_type;
pub mod request;
pub mod residual;
pub mod rule;
pub mod wire;

pub use backward::{KvSource, layer_kv, node_gradient, node_gradient_kv};
pub use forward::node_forward;
pub use node_type::NodeType;
pub use request::{
    NodeForwardRequest, NodeGrad, NodeGradRequest, ResidualGrad, ResidualRequest, SinkMode,
    default_rule, default_to_layer,
};
pub use residual::attribute_residual;
pub use rule::{Adaptive, Completeness, IgRule, gauss_legendre_01};
