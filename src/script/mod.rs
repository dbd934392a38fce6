//! The Rhai script host: `minarc run`, `minarc watch`, `minarc repl`.
//!
//! One long-lived [`host::Host`] holds the engine, a persistent scope and the shared state
//! (models, memoised values, the graph registry); bindings plug in per domain
//! ([`bindings::register_all`]); every function is documented in [`docs::Docs`].

pub mod bindings;
pub mod cli;
pub mod docs;
pub mod errors;
pub mod host;
pub mod modules;
pub mod repl;
pub mod runner;
pub mod shard;
pub mod state;
pub mod tensor;
pub mod tensor_maths;
pub mod view;
pub mod watch;

pub use errors::{ErrorDetails, ErrorKind, ScriptError};
pub use host::Host;
pub use state::{HostState, Output, SharedBuf};
pub use tensor::Tensor;
