//! minarc: a workbench for mechanistic interpretability of Qwen2-architecture models.
#![warn(missing_docs)]

pub mod analysis;
pub mod attribution;
pub mod backend;
pub mod cancel;
pub mod ig;
pub mod limits;
pub mod model;
pub mod puzzle;
pub mod remote;
pub mod script;
pub mod tokenizer;
pub mod train;
pub mod vis;
