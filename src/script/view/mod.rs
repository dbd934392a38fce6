//! The live view of `minarc watch FILE --view` and `minarc repl --view`: a page on 127.0.0.1
//! that shows the latest run (its printed output, its error with file:line and source line,
//! every figure and page it wrote, the values it sent with `show` / `show_table`) and a short
//! history of earlier runs. The page updates itself through server-sent events when a run ends;
//! a failed run keeps the previous results on the page, marked stale. "Save report" downloads
//! one self-contained HTML file of the latest run. No CDN, no external fonts: it works offline.
//!
//! Only files a run recorded as written are served (by index, never by path).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::script::state::{Shown, lock};

/// Runs kept on the page (the latest and its predecessors).
pub const HISTORY: usize = 10;

/// One run as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ViewRun {
    /// Run number (1 = the first run).
    pub n: usize,
    /// The error text (file:line, source line, message) of a failed run.
    pub error: Option<String>,
    /// What the run printed.
    pub output: String,
    /// Values sent with `show` / `show_table`.
    pub shown: Vec<Shown>,
    /// Files the run wrote (figures, pages), in order.
    pub files: Vec<PathBuf>,
    /// Seconds since the Unix epoch when the run ended.
    pub time: u64,
}

#[derive(Default)]
struct ViewData {
    version: u64,
    runs: VecDeque<ViewRun>,
}

type Shared = Arc<(Mutex<ViewData>, tokio::sync::broadcast::Sender<u64>)>;

/// The running view server.
pub struct View {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl View {
    /// Serves the view on 127.0.0.1:`port` (0 = any free port) on a background thread.
    pub fn start(port: u16) -> Result<Self> {
        let (tx, _) = tokio::sync::broadcast::channel(64);
        let shared: Shared = Arc::new((Mutex::new(ViewData::default()), tx));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot bind the view to {addr}"))?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Adds a finished run and tells the open pages.
    pub fn publish(&self, run: ViewRun) {
        let version = {
            let mut d = lock(&self.shared.0);
            d.runs.push_front(run);
            d.runs.truncate(HISTORY);
            d.version += 1;
            d.version
        };
        // no open page: nobody to tell
        let _ = self.shared.1.send(version);
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/state", get(state))
        .route("/events", get(events))
        .route("/file/{run}/{index}", get(file))
        .route("/report", get(report))
        .with_state(shared)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// A file of a run as the page links it.
#[derive(Serialize)]
struct FileEntry {
    name: String,
    kind: &'static str,
    url: String,
    anchor: String,
}

fn kind_of(p: &std::path::Path) -> &'static str {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "png",
        Some("svg") => "svg",
        Some("html") => "html",
        _ => "other",
    }
}

/// A stable anchor from a name: letters, digits and '-' only.
fn anchor(prefix: &str, name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}-{}", s.trim_matches('-'))
}

#[derive(Serialize)]
struct RunJson<'a> {
    #[serde(flatten)]
    run: &'a ViewRun,
    file_entries: Vec<FileEntry>,
}

async fn state(State(shared): State<Shared>) -> Response {
    let d = lock(&shared.0);
    let runs: Vec<RunJson> = d
        .runs
        .iter()
        .map(|r| RunJson {
            run: r,
            file_entries: r
                .files
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    FileEntry {
                        anchor: anchor(
                            "fig",
                            p.file_stem()
                                .map(|s| s.to_string_lossy())
                                .as_deref()
                                .unwrap_or(""),
                        ),
                        kind: kind_of(p),
                        url: format!("/file/{}/{i}", r.n),
                        name,
                    }
                })
                .collect(),
        })
        .collect();
    let body = serde_json::json!({"version": d.version, "runs": runs});
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

async fn events(
    State(shared): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = shared.1.subscribe();
    let first = lock(&shared.0).version;
    let stream = futures_util::stream::unfold((rx, Some(first)), |(mut rx, first)| async move {
        if let Some(v) = first {
            return Some((
                Ok(Event::default().event("update").data(v.to_string())),
                (rx, None),
            ));
        }
        loop {
            match rx.recv().await {
                Ok(v) => {
                    return Some((
                        Ok(Event::default().event("update").data(v.to_string())),
                        (rx, None),
                    ));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn content_type(kind: &str) -> &'static str {
    match kind {
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "html" => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The recorded path of file `index` of run `n`.
fn recorded(shared: &Shared, n: usize, index: usize) -> Option<PathBuf> {
    let d = lock(&shared.0);
    d.runs
        .iter()
        .find(|r| r.n == n)
        .and_then(|r| r.files.get(index).cloned())
}

async fn file(
    State(shared): State<Shared>,
    UrlPath((n, index)): UrlPath<(usize, usize)>,
) -> Response {
    let Some(p) = recorded(&shared, n, index) else {
        return (StatusCode::NOT_FOUND, "no such file in the kept runs").into_response();
    };
    let read = p.clone();
    match tokio::task::spawn_blocking(move || std::fs::read(read))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(kind_of(&p))),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!("{} cannot be read any more: {e}", p.display()),
        )
            .into_response(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained HTML file of the latest run: output, error, shown values, figures embedded
/// (PNG as data URIs, SVG inline, pages in sandboxed iframes through srcdoc).
pub fn render_report(run: &ViewRun) -> String {
    use base64::Engine as _;
    let mut body = String::new();
    body.push_str(&format!("<h1>minarc run {}</h1>\n", run.n));
    if let Some(e) = &run.error {
        body.push_str(&format!(
            "<h2 id=\"error\">Error</h2>\n<pre class=\"error\">{}</pre>\n",
            escape(e)
        ));
    }
    body.push_str(&format!(
        "<h2 id=\"output\">Output</h2>\n<pre>{}</pre>\n",
        escape(&run.output)
    ));
    for s in &run.shown {
        match s {
            Shown::Text { label, text } => body.push_str(&format!(
                "<h3 id=\"{}\">{}</h3>\n<pre>{}</pre>\n",
                anchor("show", label),
                escape(label),
                escape(text)
            )),
            Shown::Table { label, rows } => {
                body.push_str(&format!(
                    "<h3 id=\"{}\">{}</h3>\n<table>",
                    anchor("show", label),
                    escape(label)
                ));
                for (i, r) in rows.iter().enumerate() {
                    let tag = if i == 0 { "th" } else { "td" };
                    body.push_str("<tr>");
                    for c in r {
                        body.push_str(&format!("<{tag}>{}</{tag}>", escape(c)));
                    }
                    body.push_str("</tr>");
                }
                body.push_str("</table>\n");
            }
        }
    }
    for p in &run.files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = anchor(
            "fig",
            p.file_stem()
                .map(|s| s.to_string_lossy())
                .as_deref()
                .unwrap_or(""),
        );
        body.push_str(&format!("<h3 id=\"{id}\">{}</h3>\n", escape(&name)));
        match (kind_of(p), std::fs::read(p)) {
            ("png", Ok(b)) => body.push_str(&format!(
                "<img alt=\"{}\" src=\"data:image/png;base64,{}\">\n",
                escape(&name),
                base64::engine::general_purpose::STANDARD.encode(b)
            )),
            ("svg", Ok(b)) => body.push_str(&String::from_utf8_lossy(&b)),
            ("html", Ok(b)) => body.push_str(&format!(
                "<iframe sandbox=\"allow-scripts\" srcdoc=\"{}\"></iframe>\n",
                escape(&String::from_utf8_lossy(&b))
            )),
            (_, Ok(_)) => body.push_str("<p>(not shown)</p>\n"),
            (_, Err(e)) => body.push_str(&format!(
                "<p>(cannot be read: {})</p>\n",
                escape(&e.to_string())
            )),
        }
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>minarc run {}</title><style>{}</style></head><body>\n{body}</body></html>\n",
        run.n, REPORT_CSS
    )
}

const REPORT_CSS: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px}pre{background:#f6f6f6;padding:.6em;overflow:auto}pre.error{background:#fdecea;color:#611}img,svg{max-width:100%}iframe{width:100%;height:600px;border:1px solid #ccc}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}";

async fn report(State(shared): State<Shared>) -> Response {
    let run = lock(&shared.0).runs.front().cloned();
    match run {
        None => (StatusCode::NOT_FOUND, "no run yet").into_response(),
        Some(r) => {
            let html = tokio::task::spawn_blocking(move || render_report(&r))
                .await
                .unwrap_or_else(|e| format!("report failed: {e}"));
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"minarc-report.html\"",
                    ),
                ],
                html,
            )
                .into_response()
        }
    }
}
