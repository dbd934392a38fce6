//! The registry of every script function: name, signature and one-line doc.
//!
//! Bindings register functions through [`Registrar`], which adds the function to the
//! [`rhai::Engine`] and its documentation to [`Docs`] in the same call, so nothing can be
//! registered undocumented. The registry feeds the REPL's `:help`, tab completion and the
//! function table of docs/src/functions.md (`minarc help-functions --markdown`).

use rhai::{Engine, EvalAltResult, RhaiNativeFunc};
use std::any::Any;

/// Documentation of one script-visible function (one entry per overload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnDoc {
    /// Name as called from a script (`shape`, `gen_puzzle`, `+`). Properties are `.name`.
    pub name: String,
    /// Human-readable signature, e.g. `slice(t: Tensor, dim: int, start: int, end: int) -> Tensor`.
    pub signature: String,
    /// One-line description.
    pub doc: String,
    /// The binding domain it belongs to (`tensor`, `util`, `puzzle`, `model`, ...).
    pub domain: String,
}

/// Documentation of a registered script type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDoc {
    /// Type name as shown in scripts (`Tensor`, `Sample`).
    pub name: String,
    /// One-line description.
    pub doc: String,
}

/// The registry: functions (in registration order) and types.
#[derive(Debug, Clone, Default)]
pub struct Docs {
    fns: Vec<FnDoc>,
    types: Vec<TypeDoc>,
}

impl Docs {
    /// Add one function entry.
    pub fn add_fn(&mut self, domain: &str, name: &str, signature: &str, doc: &str) {
        self.fns.push(FnDoc {
            name: name.to_string(),
            signature: signature.to_string(),
            doc: doc.to_string(),
            domain: domain.to_string(),
        });
    }

    /// Add one type entry.
    pub fn add_type(&mut self, name: &str, doc: &str) {
        self.types.push(TypeDoc {
            name: name.to_string(),
            doc: doc.to_string(),
        });
    }

    /// All function entries in registration order.
    pub fn fns(&self) -> &[FnDoc] {
        &self.fns
    }

    /// All registered types.
    pub fn types(&self) -> &[TypeDoc] {
        &self.types
    }

    /// Entries for one name (all overloads). A leading `.` (property) is optional.
    pub fn lookup(&self, name: &str) -> Vec<&FnDoc> {
        let bare = name.trim_start_matches('.');
        self.fns
            .iter()
            .filter(|f| f.name == name || f.name.trim_start_matches('.') == bare)
            .collect()
    }

    /// Look up a type by name.
    pub fn lookup_type(&self, name: &str) -> Option<&TypeDoc> {
        self.types.iter().find(|t| t.name == name)
    }

    /// Distinct function names that are identifiers (operators and properties' dots removed),
    /// sorted: the words offered by tab completion.
    pub fn identifier_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .fns
            .iter()
            .map(|f| f.name.trim_start_matches('.').to_string())
            .filter(|n| {
                n.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Is this engine-level function name (as reported by rhai metadata: `get$x`,
    /// `index$get$`, `+`, `name`) documented?
    pub fn documents_engine_name(&self, engine_name: &str) -> bool {
        let wanted = if let Some(p) = engine_name.strip_prefix("get$") {
            format!(".{p}")
        } else if let Some(p) = engine_name.strip_prefix("set$") {
            format!(".{p}")
        } else if engine_name == "index$get$" || engine_name == "index$set$" {
            "[]".to_string()
        } else {
            engine_name.to_string()
        };
        self.fns.iter().any(|f| f.name == wanted)
    }

    /// One line per overload: `signature  —  doc`.
    pub fn help_lines(&self) -> Vec<String> {
        let width = self
            .fns
            .iter()
            .map(|f| f.signature.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        self.fns
            .iter()
            .map(|f| format!("{:width$}  {}", f.signature, f.doc))
            .collect()
    }

    /// Markdown tables (types, then functions grouped by domain) for docs/src/functions.md.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.types.is_empty() {
            out.push_str("| type | description |\n|---|---|\n");
            for t in &self.types {
                out.push_str(&format!("| `{}` | {} |\n", t.name, escape_md(&t.doc)));
            }
            out.push('\n');
        }
        out.push_str("| domain | function | description |\n|---|---|---|\n");
        for f in &self.fns {
            out.push_str(&format!(
                "| {} | `{}` | {} |\n",
                f.domain,
                escape_md(&f.signature),
                escape_md(&f.doc)
            ));
        }
        out
    }
}

fn escape_md(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Registers functions into an engine and their docs into a [`Docs`] in one call.
pub struct Registrar<'a> {
    engine: &'a mut Engine,
    docs: &'a mut Docs,
    domain: &'static str,
}

impl<'a> Registrar<'a> {
    /// A registrar for one binding domain.
    pub fn new(engine: &'a mut Engine, docs: &'a mut Docs, domain: &'static str) -> Self {
        Self {
            engine,
            docs,
            domain,
        }
    }

    /// Register a function (or one overload) with its signature and one-line doc.
    pub fn func<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Any + Clone + Send + Sync,
        const F: bool,
    >(
        &mut self,
        name: &str,
        signature: &str,
        doc: &str,
        f: impl RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    ) -> &mut Self {
        self.engine.register_fn(name, f);
        self.docs.add_fn(self.domain, name, signature, doc);
        self
    }

    /// Register a read-only property `x.name`.
    pub fn getter<T: Any + Clone + Send + Sync, R: Any + Clone + Send + Sync>(
        &mut self,
        name: &str,
        signature: &str,
        doc: &str,
        f: impl Fn(&mut T) -> R + Send + Sync + 'static,
    ) -> &mut Self {
        self.engine.register_get(name, move |t: &mut T| f(t));
        self.docs
            .add_fn(self.domain, &format!(".{name}"), signature, doc);
        self
    }

    /// Register a fallible index getter `x[i]` (documented under the name `[]`).
    pub fn indexer<
        T: Any + Clone + Send + Sync,
        I: Any + Clone + Send + Sync,
        R: Any + Clone + Send + Sync,
    >(
        &mut self,
        signature: &str,
        doc: &str,
        f: impl Fn(&mut T, I) -> Result<R, Box<EvalAltResult>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.engine
            .register_indexer_get(move |t: &mut T, i: I| f(t, i));
        self.docs.add_fn(self.domain, "[]", signature, doc);
        self
    }

    /// Register a custom type under its script name.
    pub fn type_named<T: Any + Clone + Send + Sync>(&mut self, name: &str, doc: &str) -> &mut Self {
        self.engine.register_type_with_name::<T>(name);
        self.docs.add_type(name, doc);
        self
    }

    /// Direct access to the engine (for things that are not functions, e.g. iterators).
    pub fn engine(&mut self) -> &mut Engine {
        self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_documents_what_it_registers() {
        let mut engine = Engine::new_raw();
        let mut docs = Docs::default();
        Registrar::new(&mut engine, &mut docs, "t").func(
            "twice",
            "twice(x: int) -> int",
            "Double a number.",
            |x: rhai::INT| x * 2,
        );
        assert_eq!(engine.eval::<rhai::INT>("twice(21)").unwrap(), 42);
        assert_eq!(docs.lookup("twice").len(), 1);
        assert!(docs.documents_engine_name("twice"));
        assert!(!docs.documents_engine_name("thrice"));
        assert!(docs.markdown().contains("`twice(x: int) -> int`"));
    }
}
