//! The Qwen2 model we own (issue 3): config and checkpoint loading, a forward with activation
//! capture, autograd-safe component functions, fixture models and the [`Backend`] trait.
//!
//! Shape letters: b batch, n heads, d head_dim, e hidden, i query len, j kv len, s seq len,
//! k selected positions, v vocab.

pub mod backend;
pub mod cli;
pub mod components;
pub mod config;
pub mod fixture;
pub mod loader;
pub mod lru;
pub mod ops;
pub mod outputs;
pub mod qwen2;
pub mod weights;

pub use backend::{Backend, CachedSample, HeadSel, Local, SampleInput, SampleKey};
pub use components::{AttnInputs, NoSink, Norm};
pub use config::{ModelConfig, parse_device, parse_dtype};
pub use loader::LoadOptions;
pub use lru::CacheStats;
pub use outputs::{CaptureSpec, Outputs};
pub use qwen2::Qwen2;
pub use weights::{LayerWeights, Weights};
