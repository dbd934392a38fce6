//! `minarc train`: trains a Qwen2-architecture model on freshly generated MinARC puzzles and
//! writes it as a Hugging Face folder (config.json, model.safetensors, tokenizer.json) that
//! loads in minarc and in transformers, plus `minarc.json` (the puzzle distribution, which the
//! shipped scripts use to build their datasets) and a training report.
//!
//! * [`config`]: the configuration file (TOML or JSON).
//! * [`data`]: batches and held-out sequences.
//! * [`net`]: the trainable model (composed ops, autograd).
//! * [`optim`]: AdamW, clipping and the schedule.
//! * [`run`]: the loop with progress, evaluations, checkpoints, resume and the outputs.

pub mod cli;
pub mod config;
pub mod data;
pub mod net;
pub mod optim;
pub mod run;

pub use config::TrainConfig;
pub use net::Net;
