//! Script bindings, one module per domain. [`register_all`] wires every domain into an
//! engine; each domain registers through a [`Registrar`] so every function is documented.

pub mod analysis;
pub mod attribution;
pub mod forward;
pub mod graph_ops;
pub mod lens;
pub mod model;
pub mod puzzle;
pub mod spread;
pub mod tensor;
pub mod tensor_io;
pub mod util;
pub mod vis;

use crate::script::docs::{Docs, Registrar};
use crate::script::host::{HostState, panic_message};
use rhai::{Array, Dynamic, Engine, EvalAltResult, INT};
use std::sync::Arc;

/// Result type of native script functions.
pub type RResult<T> = Result<T, Box<EvalAltResult>>;

/// Register every binding domain.
pub fn register_all(engine: &mut Engine, docs: &mut Docs, state: &Arc<HostState>) {
    tensor::register(&mut Registrar::new(engine, docs, "tensor"));
    tensor_io::register(&mut Registrar::new(engine, docs, "tensor"));
    util::register(&mut Registrar::new(engine, docs, "util"), state);
    puzzle::register(&mut Registrar::new(engine, docs, "puzzle"), state);
    analysis::register(&mut Registrar::new(engine, docs, "analysis"));
    model::register(&mut Registrar::new(engine, docs, "model"), state);
    forward::register(&mut Registrar::new(engine, docs, "model"), state);
    spread::register_forward(&mut Registrar::new(engine, docs, "model"), state);
    spread::register_mr(&mut Registrar::new(engine, docs, "util"), state);
    attribution::register(&mut Registrar::new(engine, docs, "attribution"), state);
    graph_ops::register(&mut Registrar::new(engine, docs, "attribution"));
    vis::register(&mut Registrar::new(engine, docs, "vis"));
    lens::register(&mut Registrar::new(engine, docs, "lens"));
}

/// Run a native function body: errors become Rhai errors prefixed with the function name,
/// and a panic is caught and reported instead of unwinding through the engine.
pub fn guard<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> RResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        // Ctrl-C seen by native work: the same error the engine raises when interrupted
        Ok(Err(e)) if e.chain().any(|c| c.is::<crate::cancel::Cancelled>()) => {
            Err(crate::script::host::interrupted_error())
        }
        Ok(Err(e)) => Err(format!("{name}(): {e:#}").into()),
        Err(p) => Err(format!("{name}(): internal error (panic): {}", panic_message(&p)).into()),
    }
}

/// Convert a script array of non-negative ints into sizes/indices.
pub fn usize_list(what: &str, arr: &Array) -> anyhow::Result<Vec<usize>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            let i = v
                .as_int()
                .map_err(|t| anyhow::anyhow!("{what}[{k}] must be an int, got {t}"))?;
            anyhow::ensure!(i >= 0, "{what}[{k}] must be >= 0, got {i}");
            Ok(i as usize)
        })
        .collect()
}

/// Convert a script array of ints (negative allowed).
pub fn int_list(what: &str, arr: &Array) -> anyhow::Result<Vec<INT>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.as_int()
                .map_err(|t| anyhow::anyhow!("{what}[{k}] must be an int, got {t}"))
        })
        .collect()
}

/// Sizes as a script array of ints.
pub fn int_array(v: &[usize]) -> Array {
    v.iter().map(|&x| Dynamic::from_int(x as INT)).collect()
}
