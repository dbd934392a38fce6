//! `import "lib/x"`: module files resolved from the importing file's folder, read afresh on every
//! import (watch mode sees edits of imported files), and named by their path as reached from the
//! main script (`scripts/lib/common.rhai`), so an error inside a module reports the module's own
//! file, line and source line ([`crate::script::errors`]).

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The module resolver of the script host.
#[derive(Debug, Default, Clone, Copy)]
pub struct ModuleFiles;

/// The file of `import "path"` written in the file named `importer` (none: the working
/// directory): relative to the importer's folder, `.rhai` added when there is no extension.
pub fn module_file(importer: Option<&str>, path: &str) -> PathBuf {
    let p = Path::new(path);
    let mut file = if p.is_absolute() {
        p.to_path_buf()
    } else {
        importer
            .and_then(|s| Path::new(s).parent())
            .unwrap_or(Path::new(""))
            .join(p)
    };
    if file.extension().is_none() {
        file.set_extension("rhai");
    }
    lexical_clean(&file)
}

/// `a/./b/../c` → `a/c` without touching the file system (a leading `..` stays).
fn lexical_clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.iter().collect()
}

impl ModuleResolver for ModuleFiles {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Arc<Module>, Box<EvalAltResult>> {
        let file = module_file(source, path);
        let name = file.display().to_string();
        let text = crate::limits::read_text_file(&file)
            .map_err(|_| Box::new(EvalAltResult::ErrorModuleNotFound(name.clone(), pos)))?;
        let mut ast = engine.compile(&text).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                name.clone(),
                Box::new(EvalAltResult::ErrorParsing(*e.0, e.1)),
                pos,
            ))
        })?;
        ast.set_source(name.as_str());
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name, e, pos)))?;
        Ok(module.into())
    }
}
