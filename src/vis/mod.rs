//! Visualisation: plots (plotters, PNG or SVG by extension), the attribution graph view
//! (GQA merge, crossing-minimising layout, self-contained HTML, DOT, JSON) and token views.

pub mod cli;
pub mod colors;
pub mod graph;
pub mod html;
pub mod layout;
pub mod plots;
pub mod tokens;
pub mod written;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// The head layout the visualisations need from a model config: query heads `H` and KV heads.
/// Query head `h` belongs to KV group `h / (H / num_key_value_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GqaConfig {
    /// `num_attention_heads` (H).
    pub num_attention_heads: usize,
    /// `num_key_value_heads`.
    pub num_key_value_heads: usize,
}

impl GqaConfig {
    /// Query heads per KV group; an error unless `H` is a positive multiple of the KV heads.
    pub fn heads_per_group(&self) -> Result<usize> {
        ensure!(
            self.num_attention_heads > 0
                && self.num_key_value_heads > 0
                && self
                    .num_attention_heads
                    .is_multiple_of(self.num_key_value_heads),
            "num_attention_heads {} is not a positive multiple of num_key_value_heads {}",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        Ok(self.num_attention_heads / self.num_key_value_heads)
    }
}
