//! The network as math: config and checkpoint loading, a forward with activation capture,
//! autograd-safe component functions, fixture models and what one forwarded sample keeps
//! ([`sample`]). Imports nothing above it (the [`crate::backend::Backend`] trait sits above).
//!
//! Shape letters: b batch, n heads, d head_dim, e hidden, i query len, j kv len, s seq len,
//! k selected positions, v vocab.

pub mod cli;
pub mod components;
pub mod config;
pub mod fixture;
pub mod gemm;
pub mod gguf;
pub mod gptq;
pub mod intervene;
pub mod kernels;
pub mod loader;
pub mod ops;
pub mod outputs;
pub mod plan;
pub mod qwen2;
pub mod sample;
pub mod weights;

pub use components::{AttnInputs, KvProj, NoSink, Norm};
pub use config::{ModelConfig, parse_device, parse_dtype};
pub use intervene::{Edit, EditKind, IntervenedRun, Intervention, Site};
pub use loader::LoadOptions;
pub use outputs::{CaptureSpec, Outputs};
pub use qwen2::Qwen2;
pub use sample::{CachedSample, SampleInput};
pub use weights::{LayerWeights, Weights};
