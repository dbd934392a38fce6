//! Files the visualisations write: one writer for the text outputs, and a per-thread record of
//! every figure and page written, which the live view (`watch --view`) collects after each run.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

thread_local! {
    static WRITTEN: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
}

/// Starts recording the files written on this thread (dropping any earlier record).
pub fn start_recording() {
    WRITTEN.with(|w| *w.borrow_mut() = Some(Vec::new()));
}

/// The files written on this thread since [`start_recording`], in order, each once (empty when
/// not recording); recording goes on.
pub fn take_recorded() -> Vec<PathBuf> {
    WRITTEN.with(|w| {
        w.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    })
}

/// Notes that `path` was written (when this thread records).
pub fn record(path: &Path) {
    WRITTEN.with(|w| {
        if let Some(v) = w.borrow_mut().as_mut() {
            let p = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            v.retain(|q| *q != p);
            v.push(p);
        }
    });
}

/// Creates the parent folder, writes `contents` to `path` and records it.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    record(path);
    Ok(())
}
