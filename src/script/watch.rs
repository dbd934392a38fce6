//! `minarc watch FILE`: run a script, then re-run it on every save (debounced). The host
//! (models, memoised values, caches, the graph registry) persists across runs; a failing
//! run (parse or runtime) only prints its error, and the next save runs again.

use crate::script::errors::ScriptError;
use crate::script::host::Host;
use anyhow::{Context, Result, bail};
use notify::{EventKind, RecursiveMode, Watcher as _};
use rhai::Dynamic;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Quiet period after the last file event before a re-run.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the event loop checks its stop flag while idle.
const POLL: Duration = Duration::from_millis(100);

/// What the event loop reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// The file watcher is installed: saves from now on are seen.
    Ready,
    /// A run finished (run number, counting from 1 including the initial run).
    Ran(usize, Result<(), ScriptError>),
}

/// A script file bound to a long-lived host.
pub struct Watcher {
    host: Host,
    path: PathBuf,
    runs: usize,
}

impl Watcher {
    /// Watch `path`, running it in `host`.
    pub fn new(host: Host, path: &Path) -> Self {
        Self {
            host,
            path: path.to_path_buf(),
            runs: 0,
        }
    }

    /// The host (its state persists across runs).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Give the host back.
    pub fn into_host(self) -> Host {
        self.host
    }

    /// Number of runs so far.
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// Compile and run the file once with the persistent host. Errors leave the host intact.
    pub fn run_once(&mut self) -> Result<Dynamic, ScriptError> {
        self.runs += 1;
        let r = self.host.run_file(&self.path);
        // An interrupt ends this run only; it must not stop the watch loop.
        self.host.state().clear_interrupt();
        r
    }

    /// Re-run on every change of the file until `stop` is set. `on_event` sees
    /// [`WatchEvent::Ready`] once the watcher is installed, then every run's result.
    pub fn event_loop(
        &mut self,
        stop: &AtomicBool,
        mut on_event: impl FnMut(&WatchEvent),
    ) -> Result<()> {
        let abs = std::path::absolute(&self.path)
            .with_context(|| format!("cannot resolve {}", self.path.display()))?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let Some(file_name) = abs.file_name().map(|f| f.to_os_string()) else {
            bail!("{} is not a file path", self.path.display());
        };
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // The receiver only disappears when the loop ends.
            let _ = tx.send(ev);
        })
        .context("cannot start the file watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        on_event(&WatchEvent::Ready);

        let relevant = |ev: &notify::Result<notify::Event>| match ev {
            Ok(ev) => {
                matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_))
                    && !matches!(
                        ev.kind,
                        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                    )
                    && ev
                        .paths
                        .iter()
                        .any(|p| p.file_name() == Some(file_name.as_os_str()))
            }
            Err(_) => false,
        };
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(POLL) {
                Ok(ev) if relevant(&ev) => {
                    // Debounce: wait for a quiet period (editors write in several steps).
                    loop {
                        match rx.recv_timeout(DEBOUNCE) {
                            Ok(_) => continue,
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                bail!("file watcher stopped")
                            }
                        }
                    }
                    let result = self.run_once().map(|_| ());
                    on_event(&WatchEvent::Ran(self.runs, result));
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("file watcher stopped"),
            }
        }
        Ok(())
    }
}
