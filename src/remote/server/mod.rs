//! `minarc serve`: an axum HTTP server holding one [`Local`] backend and its activation cache
//! (S1–S7 with the seed's defects fixed).
//!
//! * Heavy model work (forward, batch forward, load model, attribution primitives, recomputing
//!   an evicted sample) is serialised by one async mutex and run on the blocking pool; plain
//!   getters run concurrently on the blocking pool.
//! * Bearer-token auth on every request when a token is set; a non-loopback bind without a
//!   token is refused. Request bodies are limited; every request has a timeout.
//! * Every bad request gets a 4xx `{"error": "..."}` naming the problem; the server keeps serving.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex as AsyncMutex;

use super::wire::{
    self, Ack, BatchForwardRequest, BatchForwardResponse, DatasetInfo, ErrorBody, ForwardRequest,
    ForwardResponse, GetRequest, Getter, LoadModelRequest, SampleInfo, Status, StoreReply,
    StoreRequest,
};
use crate::backend::{Backend, Local, SampleKey};
use crate::model::parse_dtype;

mod attr_routes;
mod errors;
mod guards;
mod model_routes;
mod work;

use attr_routes::*;
use errors::*;
use guards::*;
use model_routes::*;
use work::*;

/// Server settings (the `minarc serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Interface to bind (default 127.0.0.1).
    pub host: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// Bearer token required on every request (required for a non-loopback bind).
    pub token: Option<String>,
    /// Activation-cache byte budget (LRU eviction); None = unlimited. `minarc serve` defaults
    /// to [`default_cache_bytes`].
    pub cache_bytes: Option<usize>,
    /// Largest accepted request body in bytes (the tensor-carrying routes; the JSON routes have
    /// smaller limits, see [`JSON_SMALL_LIMIT`], [`FORWARD_LIMIT`], [`BATCH_FORWARD_LIMIT`]).
    pub body_limit: usize,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Compute dtype for `/load_model` when the request names none.
    pub dtype: DType,
    /// Compute device for `/load_model`.
    pub device: Device,
    /// How checkpoints are read (the startup model and `/load_model`).
    pub load: crate::model::LoadOptions,
    /// The activation store on disk: evicted samples spill to `store/spill`, and
    /// `/datasets/{id}/save` and `/datasets/load` name folders under it (None: no disk store).
    pub store: Option<std::path::PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            token: None,
            cache_bytes: None,
            body_limit: 256 << 20,
            timeout: Duration::from_secs(600),
            dtype: DType::F32,
            device: Device::Cpu,
            load: crate::model::LoadOptions::default(),
            store: None,
        }
    }
}

/// Body limit of the small JSON routes (getters, `/load_model`): 1 MiB.
pub const JSON_SMALL_LIMIT: usize = 1 << 20;
/// Body limit of `/forward` (one prompt plus its metadata): 16 MiB.
pub const FORWARD_LIMIT: usize = 16 << 20;
/// Body limit of `/batch_forward`: 64 MiB.
pub const BATCH_FORWARD_LIMIT: usize = 64 << 20;

/// The default activation-cache budget of `minarc serve`: a quarter of the machine's memory
/// (8 GiB where the total is unknown).
pub fn default_cache_bytes() -> usize {
    crate::limits::total_memory()
        .map(|t| (t / 4) as usize)
        .unwrap_or(8 << 30)
}

/// Shared server state: the backend (swappable by `/load_model`) and the heavy-work lock.
pub struct AppState {
    backend: RwLock<Arc<Local>>,
    tokenizer_json: RwLock<Arc<String>>,
    heavy: Arc<AsyncMutex<()>>,
    opts: ServeOptions,
}

impl AppState {
    /// Wraps a loaded backend; applies the cache budget.
    pub fn new(local: Local, opts: ServeOptions) -> Result<Self> {
        local.set_cache_budget(opts.cache_bytes)?;
        if let Some(store) = &opts.store {
            local.set_spill_dir(Some(store.join("spill")))?;
        }
        let tok = local
            .tokenizer()
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?;
        Ok(Self {
            backend: RwLock::new(Arc::new(local)),
            tokenizer_json: RwLock::new(Arc::new(tok)),
            heavy: Arc::new(AsyncMutex::new(())),
            opts,
        })
    }

    fn local(&self) -> Arc<Local> {
        self.backend
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

pub(super) type Shared = Arc<AppState>;

// ---------------------------------------------------------------- router / serving

/// The router with every endpoint and the auth, timeout and body-limit layers.
pub fn router(state: Shared) -> Router {
    let limit = state.opts.body_limit;
    // JSON routes get limits that fit their content (never above the server's body limit)
    let small = DefaultBodyLimit::max(JSON_SMALL_LIMIT.min(limit));
    let fwd = DefaultBodyLimit::max(FORWARD_LIMIT.min(limit));
    let batch = DefaultBodyLimit::max(BATCH_FORWARD_LIMIT.min(limit));
    Router::new()
        .route("/status", get(status))
        .route("/tokenizer", get(tokenizer))
        .route("/load_model", post(load_model).layer(small))
        .route("/forward", post(forward).layer(fwd))
        .route("/prompt_sample", post(prompt_sample).layer(fwd))
        .route("/batch_forward", post(batch_forward).layer(batch))
        .route("/hidden_states", post(hidden_states).layer(small))
        .route("/attn_output", post(attn_output).layer(small))
        .route("/mlp_output", post(mlp_output).layer(small))
        .route("/head_output", post(head_output).layer(small))
        .route("/attn_weights", post(attn_weights).layer(small))
        .route("/logits", post(logits).layer(small))
        .route("/attn_out", post(attn_out).layer(small))
        .route("/input_norm_var", post(input_norm_var).layer(small))
        .route("/post_attn_norm_var", post(post_attn_norm_var).layer(small))
        .route("/weight", post(weight).layer(small))
        .route("/datasets", get(list_datasets).delete(delete_all))
        .route("/datasets/{id}", delete(delete_dataset))
        .route("/datasets/{id}/save", post(save_dataset).layer(small))
        .route("/datasets/load", post(load_dataset).layer(small))
        .route("/datasets/{id}/samples", get(list_samples))
        .route("/datasets/{id}/samples/{index}", get(sample_info))
        .route("/empty_cache", post(empty_cache))
        .route("/node_gradient", post(node_gradient))
        .route("/node_forward", post(node_forward))
        .route("/attribute_residual", post(attribute_residual))
        .route("/lens_logits", post(lens_logits))
        .route("/intervene", post(intervene))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Refuses a non-loopback bind without a token; resolves the address.
pub fn bind_address(opts: &ServeOptions) -> Result<SocketAddr> {
    let host = if opts.host == "localhost" {
        "127.0.0.1"
    } else {
        opts.host.as_str()
    };
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("--host {:?} is not an IP address", opts.host))?;
    if !ip.is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
        bail!(
            "refusing to bind {ip} (not a loopback address) without --token: anyone on the \
             network could drive the model"
        );
    }
    Ok(SocketAddr::new(ip, opts.port))
}

/// Serves until `shutdown` resolves, on an already bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("server failed")
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds and serves `local` until SIGINT/SIGTERM (the `minarc serve` main loop).
pub fn serve_blocking(local: Local, opts: ServeOptions) -> Result<()> {
    let addr = bind_address(&opts)?;
    let state = Arc::new(AppState::new(local, opts)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        eprintln!(
            "minarc serve: listening on http://{} ({})",
            listener.local_addr()?,
            state.local().describe()
        );
        serve_on(listener, state, shutdown_signal()).await?;
        eprintln!("minarc serve: shut down");
        Ok(())
    })
}

/// A server running on a background thread (tests, notebooks). Dropping it shuts it down.
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// Binds (port 0 = ephemeral) and serves `local` on a background thread.
    pub fn start(local: Local, opts: ServeOptions) -> Result<Self> {
        let addr = bind_address(&opts)?;
        let state = Arc::new(AppState::new(local, opts)?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot bind {addr}"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(serve_on(listener, state, async {
                let _ = rx.await;
            }))
        });
        Ok(Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (in-flight requests finish) and waits for the thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
