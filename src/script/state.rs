//! The state a script session keeps whatever it runs: loaded models, memoised values, the
//! graph-registry slot, typed slots for other domains, the interrupt flag and the output sink.
//! Bindings and the host both use it; it imports neither (only the shard mode's type).

use crate::script::shard::ShardMode;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rhai::{Dynamic, EvalAltResult, Position};
use std::any::Any;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Lock a mutex, recovering the data if a panicking thread poisoned it (host state must
/// survive a caught panic in a native call).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where script `print`/`debug` output goes: stdout, or an in-memory buffer (tests).
#[derive(Clone)]
pub struct Output(Arc<Mutex<Box<dyn Write + Send>>>);

impl Output {
    /// Write to the process's stdout.
    pub fn stdout() -> Self {
        Output(Arc::new(Mutex::new(Box::new(std::io::stdout()))))
    }

    /// Write to stdout and also into a shared buffer (the live view reads each run's output).
    pub fn tee_stdout() -> (Self, SharedBuf) {
        struct Tee(std::io::Stdout, SharedBuf);
        impl Write for Tee {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.write_all(b);
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let buf = SharedBuf::default();
        (
            Output(Arc::new(Mutex::new(Box::new(Tee(
                std::io::stdout(),
                buf.clone(),
            ))))),
            buf,
        )
    }

    /// Write into a shared buffer; read it back with [`SharedBuf::contents`].
    pub fn buffer() -> (Self, SharedBuf) {
        let buf = SharedBuf::default();
        (Output(Arc::new(Mutex::new(Box::new(buf.clone())))), buf)
    }

    /// Write one line.
    pub fn line(&self, s: &str) {
        let mut w = lock(&self.0);
        // Output errors (closed pipe) must not abort a script.
        let _ = writeln!(w, "{s}");
        let _ = w.flush();
    }
}

/// A cloneable in-memory writer.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }

    /// Forget what was written.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type AnyArc = Arc<dyn Any + Send + Sync>;

/// State shared by all bindings and kept for the whole session.
pub struct HostState {
    interrupt: Arc<AtomicBool>,
    models: Mutex<HashMap<PathBuf, AnyArc>>,
    load_count: AtomicUsize,
    memo: Mutex<HashMap<String, Dynamic>>,
    graph: Mutex<Option<Dynamic>>,
    slots: Mutex<HashMap<String, AnyArc>>,
    output: Output,
    show_progress: AtomicBool,
    shown: Mutex<Vec<Shown>>,
    shard: Mutex<ShardMode>,
    mr_calls: AtomicUsize,
}

/// A value a script sent to the live view with `show` / `show_table`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shown {
    /// A value as text (a tensor preview, a map, a number).
    Text {
        /// Its label (the anchor on the page).
        label: String,
        /// The text.
        text: String,
    },
    /// A table: the first row is the header.
    Table {
        /// Its label (the anchor on the page).
        label: String,
        /// Cells as text.
        rows: Vec<Vec<String>>,
    },
}

impl HostState {
    /// Fresh state writing script output to `output`.
    pub fn new(output: Output) -> Self {
        Self {
            interrupt: Arc::new(AtomicBool::new(false)),
            models: Mutex::new(HashMap::new()),
            load_count: AtomicUsize::new(0),
            memo: Mutex::new(HashMap::new()),
            graph: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            output,
            show_progress: AtomicBool::new(true),
            shown: Mutex::new(Vec::new()),
            shard: Mutex::new(ShardMode::Whole),
            mr_calls: AtomicUsize::new(0),
        }
    }

    /// Keeps a value for the live view (bounded: the oldest go beyond 1,000).
    pub fn push_shown(&self, s: Shown) {
        let mut v = lock(&self.shown);
        if v.len() >= 1000 {
            v.remove(0);
        }
        v.push(s);
    }

    /// The values shown since the last call.
    pub fn take_shown(&self) -> Vec<Shown> {
        std::mem::take(&mut *lock(&self.shown))
    }

    /// The output sink used by `print`.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// The interrupt flag, for signal handlers and other threads.
    pub fn interrupt_handle(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// Request that the running evaluation stop.
    pub fn interrupt(&self) {
        self.interrupt.store(true, Ordering::SeqCst);
    }

    /// Has an interrupt been requested since the evaluation started?
    pub fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::Relaxed)
    }

    /// Clear the interrupt flag (done at the start of each evaluation).
    pub fn clear_interrupt(&self) {
        self.interrupt.store(false, Ordering::SeqCst);
    }

    /// For long Rust loops inside native functions: `Err(interrupted)` once an interrupt was
    /// requested. The error is the same one the engine raises, so scripts see "interrupted".
    pub fn check_interrupt(&self) -> Result<(), Box<EvalAltResult>> {
        if self.interrupted() {
            Err(interrupted_error())
        } else {
            Ok(())
        }
    }

    /// Load a model (or any resource keyed by a file path) once per canonical path: later
    /// calls with the same path (even spelled differently) return the same `Arc`.
    pub fn load_memo<T: Any + Send + Sync>(
        &self,
        path: &Path,
        load: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<Arc<T>> {
        self.load_memo_variant(path, "", load)
    }

    /// As [`HostState::load_memo`], keyed by the canonical path and a variant tag (e.g. the
    /// dtype and device a model was loaded with): the same path with another variant loads
    /// again. An empty variant is the plain path.
    pub fn load_memo_variant<T: Any + Send + Sync>(
        &self,
        path: &Path,
        variant: &str,
        load: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<Arc<T>> {
        let canonical = path
            .canonicalize()
            .with_context(|| format!("cannot resolve model path {}", path.display()))?;
        let key = if variant.is_empty() {
            canonical.clone()
        } else {
            PathBuf::from(format!("{}#{variant}", canonical.display()))
        };
        let mut models = lock(&self.models);
        if let Some(m) = models.get(&key) {
            return m.clone().downcast::<T>().map_err(|_| {
                anyhow::anyhow!(
                    "{} is already loaded as a different kind of object",
                    key.display()
                )
            });
        }
        let value = Arc::new(load(&canonical)?);
        self.load_count.fetch_add(1, Ordering::SeqCst);
        models.insert(key, value.clone());
        Ok(value)
    }

    /// How many loads `load_memo` actually performed in this session.
    pub fn load_count(&self) -> usize {
        self.load_count.load(Ordering::SeqCst)
    }

    /// Canonical paths of the loaded models.
    pub fn loaded_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = lock(&self.models).keys().cloned().collect();
        v.sort();
        v
    }

    /// A memoised script value (see the `memo` script function).
    pub fn memo_get(&self, name: &str) -> Option<Dynamic> {
        lock(&self.memo).get(name).cloned()
    }

    /// Store a memoised script value.
    pub fn memo_set(&self, name: &str, value: Dynamic) {
        lock(&self.memo).insert(name.to_string(), value);
    }

    /// Drop a memoised value; returns whether it existed.
    pub fn memo_forget(&self, name: &str) -> bool {
        lock(&self.memo).remove(name).is_some()
    }

    /// Names of memoised values, sorted.
    pub fn memo_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.memo).keys().cloned().collect();
        v.sort();
        v
    }

    /// Set the current graph (M4 graph registry).
    pub fn set_graph(&self, g: Dynamic) {
        *lock(&self.graph) = Some(g);
    }

    /// The current graph, if one was set.
    pub fn graph(&self) -> Option<Dynamic> {
        lock(&self.graph).clone()
    }

    /// A typed per-session slot (e.g. an activation cache) created on first use.
    pub fn slot<T: Any + Send + Sync>(
        &self,
        key: &str,
        init: impl FnOnce() -> T,
    ) -> Result<Arc<T>> {
        let mut slots = lock(&self.slots);
        let entry = slots
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(init()) as AnyArc)
            .clone();
        entry
            .downcast::<T>()
            .map_err(|_| anyhow::anyhow!("slot {key} holds a different type"))
    }

    /// Sets how `forward` and `mr` split their items (`minarc run --shard` / `--reduced`).
    pub fn set_shard_mode(&self, mode: ShardMode) {
        *lock(&self.shard) = mode;
    }

    /// How `forward` and `mr` split their items.
    pub fn shard_mode(&self) -> ShardMode {
        lock(&self.shard).clone()
    }

    /// The index of the next `mr` call of this process (0, 1, 2, … in call order).
    pub fn next_mr_call(&self) -> usize {
        self.mr_calls.fetch_add(1, Ordering::SeqCst)
    }

    /// Show progress bars (on by default; they draw only on a terminal).
    pub fn set_show_progress(&self, on: bool) {
        self.show_progress.store(on, Ordering::Relaxed);
    }

    /// Are progress bars shown?
    pub fn show_progress(&self) -> bool {
        self.show_progress.load(Ordering::Relaxed)
    }

    /// A progress bar for a long loop of `len` steps.
    pub fn progress(&self, len: u64, label: &str) -> ProgressBar {
        if !self.show_progress.load(Ordering::Relaxed) {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(label.to_string());
        pb
    }
}

/// The error raised when an evaluation is interrupted.
pub fn interrupted_error() -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from("interrupted"),
        Position::NONE,
    ))
}

pub use crate::backend::spread::panic_message;
