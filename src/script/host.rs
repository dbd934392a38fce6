//! The long-lived script host: one [`Engine`], one persistent [`Scope`] and the shared
//! [`HostState`] (loaded models, memoised values, the graph-registry slot, typed slots for
//! other domains, the interrupt flag and the output sink).
//!
//! Everything expensive lives in `HostState` behind an `Arc`, so it survives script errors,
//! re-runs in watch mode and `:reset` in the REPL.

use crate::script::bindings;
use crate::script::docs::{Docs, Registrar};
use crate::script::errors::ScriptError;
use rhai::{AST, Array, Dynamic, Engine, EvalAltResult, Scope};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use crate::script::state::{
    HostState, Output, SharedBuf, interrupted_error, lock, panic_message,
};

/// Maximum depth of script function calls.
pub const MAX_CALL_LEVELS: usize = 64;

/// The script host: engine, persistent scope, shared state and the docs registry.
pub struct Host {
    engine: Engine,
    scope: Scope<'static>,
    base_len: usize,
    fns: AST,
    state: Arc<HostState>,
    docs: Docs,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host printing to stdout with every binding domain registered.
    pub fn new() -> Self {
        Self::with_output(Output::stdout())
    }

    /// A host printing to `output`.
    pub fn with_output(output: Output) -> Self {
        let state = Arc::new(HostState::new(output));
        let mut engine = Engine::new();
        configure_engine(&mut engine, &state);
        let mut docs = Docs::default();
        bindings::register_all(&mut engine, &mut docs, &state);
        let mut host = Self {
            engine,
            scope: Scope::new(),
            base_len: 0,
            fns: AST::empty(),
            state,
            docs,
        };
        host.set_args(Vec::new());
        host
    }

    /// Register more functions (another domain, or test helpers) with their docs.
    pub fn register(
        &mut self,
        domain: &'static str,
        f: impl FnOnce(&mut Registrar, &Arc<HostState>),
    ) {
        let mut reg = Registrar::new(&mut self.engine, &mut self.docs, domain);
        f(&mut reg, &self.state);
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<HostState> {
        &self.state
    }

    /// The docs registry.
    pub fn docs(&self) -> &Docs {
        &self.docs
    }

    /// The persistent scope.
    pub fn scope(&self) -> &Scope<'static> {
        &self.scope
    }

    /// Set the `ARGS` constant (an array of strings) and reset the scope to just the constants.
    pub fn set_args(&mut self, args: Vec<String>) {
        let arr: Array = args.into_iter().map(Dynamic::from).collect();
        self.scope = Scope::new();
        self.scope.push_constant("ARGS", arr);
        self.base_len = self.scope.len();
    }

    /// Drop script variables and functions, keep constants and host state (REPL `:reset`).
    pub fn reset(&mut self) {
        self.scope.rewind(self.base_len);
        self.fns = AST::empty();
    }

    /// Names of the variables currently in scope.
    pub fn scope_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scope.iter().map(|(n, _, _)| n.to_string()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Names of script-defined functions kept from earlier evaluations.
    pub fn script_fn_names(&self) -> Vec<String> {
        self.fns
            .iter_functions()
            .map(|f| f.name.to_string())
            .collect()
    }

    /// Compile `src` against the persistent scope.
    pub fn compile(&self, name: &str, src: &str) -> Result<AST, ScriptError> {
        self.engine
            .compile_with_scope(&self.scope, src)
            .map_err(|e| ScriptError::from_parse(name, src, &e))
    }

    /// Evaluate source text in the persistent scope. With `keep_fns`, functions defined by
    /// earlier evaluations are callable and the ones defined here are kept (REPL, `:load`).
    pub fn eval_source(
        &mut self,
        name: &str,
        src: &str,
        keep_fns: bool,
    ) -> Result<Dynamic, ScriptError> {
        let ast = self.compile(name, src)?;
        self.eval_ast(name, src, ast, keep_fns)
    }

    /// Evaluate a compiled script (see [`Host::eval_source`]).
    pub fn eval_ast(
        &mut self,
        name: &str,
        src: &str,
        ast: AST,
        keep_fns: bool,
    ) -> Result<Dynamic, ScriptError> {
        self.state.clear_interrupt();
        let ast = if keep_fns { self.fns.merge(&ast) } else { ast };
        // Ctrl-C also cancels long native work (IG chunks, decoder layers) at its next check.
        let flag = self.state.interrupt_handle();
        let result =
            crate::cancel::with_flag(flag, || guarded_eval(&self.engine, &mut self.scope, &ast));
        if keep_fns {
            self.fns = ast.clone_functions_only();
        }
        result.map_err(|e| ScriptError::from_eval(name, src, &e))
    }

    /// Run a script file from the base scope (constants only): host state is kept, script
    /// variables from earlier runs are dropped so every run starts the same way.
    pub fn run_file(&mut self, path: &Path) -> Result<Dynamic, ScriptError> {
        let name = path.display().to_string();
        let src = crate::limits::read_text_file(path).map_err(|e| ScriptError::io(&name, &e))?;
        self.scope.rewind(self.base_len);
        let mut ast = self.compile(&name, &src)?;
        // `import "lib/x"` resolves relative to the script's own folder.
        ast.set_source(name.as_str());
        self.eval_ast(&name, &src, ast, false)
    }

    /// Render a value the way the engine's `to_debug` does (uses the registered
    /// `to_debug` of custom types such as `Tensor`); empty for `()`.
    pub fn display_value(&self, v: &Dynamic) -> String {
        if v.is_unit() {
            return String::new();
        }
        let mut scope = Scope::new();
        scope.push("__value", v.clone());
        self.engine
            .eval_with_scope::<String>(&mut scope, "to_debug(__value)")
            .unwrap_or_else(|_| format!("{v:?}"))
    }
}

/// Evaluate with panics caught (a panic in a native call becomes a script error, the host
/// keeps its state).
fn guarded_eval(
    engine: &Engine,
    scope: &mut Scope<'static>,
    ast: &AST,
) -> Result<Dynamic, Box<EvalAltResult>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.eval_ast_with_scope::<Dynamic>(scope, ast)
    }))
    .unwrap_or_else(|p| Err(format!("internal error (panic): {}", panic_message(&*p)).into()))
}

fn configure_engine(engine: &mut Engine, state: &Arc<HostState>) {
    engine.set_max_call_levels(MAX_CALL_LEVELS);
    // `import` reads the module file on every run (no cache), so watch mode sees edits of
    // imported files too; relative paths resolve from the importing script's folder.
    engine.set_module_resolver(crate::script::modules::ModuleFiles);
    // No operation limit: long jobs are legitimate; the interrupt flag stops them instead.
    let flag = state.interrupt_handle();
    engine.on_progress(move |_ops| {
        if flag.load(Ordering::Relaxed) {
            Some(Dynamic::from("interrupted"))
        } else {
            None
        }
    });
    let out = state.output().clone();
    engine.on_print(move |s| out.line(s));
    let out = state.output().clone();
    engine.on_debug(move |s, src, pos| {
        let at = match (src, pos.line()) {
            (Some(src), Some(l)) => format!("{src}:{l}: "),
            (None, Some(l)) => format!("line {l}: "),
            _ => String::new(),
        };
        out.line(&format!("[debug] {at}{s}"));
    });
}
