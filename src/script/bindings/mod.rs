//! Script bindings, one module per domain. [`register_all`] wires every domain into an
//! engine; each domain registers through a [`Registrar`] so every function is documented.

pub mod analysis;
pub mod args;
pub mod attribution;
pub mod causal;
pub mod forward;
pub mod graph_ops;
pub mod internals;
pub mod lens;
pub mod model;
pub mod puzzle;
pub mod show;
pub mod spread;
pub mod tensor;
pub mod tensor_io;
pub mod tensor_maths;
pub mod util;
pub mod vis;

use crate::script::docs::{Docs, Registrar};
use crate::script::state::HostState;
use rhai::Engine;
use std::sync::Arc;

pub use args::{RResult, guard, int_array, int_list, usize_list};

/// Register every binding domain.
pub fn register_all(engine: &mut Engine, docs: &mut Docs, state: &Arc<HostState>) {
    tensor::register(&mut Registrar::new(engine, docs, "tensor"));
    tensor_maths::register(&mut Registrar::new(engine, docs, "tensor"));
    tensor_io::register(&mut Registrar::new(engine, docs, "tensor"));
    util::register(&mut Registrar::new(engine, docs, "util"), state);
    show::register(&mut Registrar::new(engine, docs, "util"), state);
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
    causal::register(&mut Registrar::new(engine, docs, "causal"), state);
    internals::register(&mut Registrar::new(engine, docs, "model"));
}
