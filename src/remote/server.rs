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
    ForwardResponse, GetRequest, Getter, LoadModelRequest, SampleInfo, Status,
};
use crate::backend::{Backend, Local, SampleKey};
use crate::model::parse_dtype;

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

type Shared = Arc<AppState>;

// ---------------------------------------------------------------- errors

/// An error response: status + `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// A request the backend could not serve (its message names why).
    fn unprocessable(e: anyhow::Error) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&ErrorBody {
            error: self.message,
        })
        .unwrap_or_else(|_| "{\"error\":\"unserialisable error\"}".into());
        (self.status, [(header::CONTENT_TYPE, wire::JSON)], body).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

// ---------------------------------------------------------------- extractors / responses

/// A JSON body parsed with serde; every failure (too large, bad JSON, missing field) is a JSON
/// 4xx error.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), format!("cannot read request body: {r}")))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad(format!("bad JSON request: {e}")))
    }
}

/// A raw body (size-limited), for safetensors requests.
struct RawBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| ApiError::new(r.status(), format!("cannot read request body: {r}")))
    }
}

/// Parses a tensor-carrying request; only the `allowed` tensor names are accepted.
fn tensor_request<T: DeserializeOwned>(
    body: &[u8],
    allowed: impl Fn(&str) -> bool,
) -> ApiResult<(T, HashMap<String, Tensor>)> {
    let (req, tensors) =
        wire::decode_request::<T>(body).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    if let Some(name) = tensors.keys().find(|n| !allowed(n)) {
        return Err(ApiError::bad(format!(
            "unexpected tensor {name:?} in the request"
        )));
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok((req, tensors))
}

fn json<T: Serialize>(v: &T) -> ApiResult<Response> {
    let body = serde_json::to_string(v)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, wire::JSON)], body).into_response())
}

fn tensor_response(
    named: &[(&str, &Tensor)],
    meta: HashMap<String, String>,
) -> ApiResult<Response> {
    let bytes = wire::encode_tensors(named, Some(meta))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::OCTET_STREAM)],
        bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------- work scheduling

/// Runs CPU work on the blocking pool (getters: concurrent).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

/// Runs heavy model work on the blocking pool while holding the heavy-work lock. The guard
/// moves into the worker, so the work stays serialised; when the request is dropped (its time
/// limit passed or the client went away) the work is cancelled at its next check
/// ([`crate::cancel`]: between IG chunks, decoder layers and samples), which frees the lock.
async fn heavy<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let guard = st.heavy.clone().lock_owned().await;
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = crate::cancel::CancelOnDrop(flag.clone());
    blocking(move || {
        let _guard = guard;
        crate::cancel::with_flag(flag, f)
    })
    .await
}

// ---------------------------------------------------------------- validation

fn dataset_samples(local: &Local, dataset: &str) -> ApiResult<Vec<usize>> {
    local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .find(|(n, _)| n == dataset)
        .map(|(_, s)| s)
        .ok_or_else(|| ApiError::not_found(format!("dataset {dataset:?} not found")))
}

/// Every cached dataset with its sample ids.
fn dataset_infos(local: &Local) -> ApiResult<Vec<DatasetInfo>> {
    Ok(local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .map(|(dataset, sample_ids)| DatasetInfo {
            dataset,
            count: sample_ids.len(),
            sample_ids,
        })
        .collect())
}

fn check_sample(local: &Local, key: &SampleKey) -> ApiResult<usize> {
    let samples = dataset_samples(local, &key.dataset)?;
    if !samples.contains(&key.index) {
        return Err(ApiError::not_found(format!(
            "sample {} not found in dataset {:?} (it has {} samples)",
            key.index,
            key.dataset,
            samples.len()
        )));
    }
    local.seq_len(key).map_err(ApiError::unprocessable)
}

fn check_get(local: &Local, g: Getter, req: &GetRequest, seq_len: usize) -> ApiResult<()> {
    let cfg = local.config();
    let (n_layers, n_heads) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    if !g.uses_heads() && req.heads.is_some() {
        return Err(ApiError::bad(format!(
            "{} takes no heads (only /head_output and /attn_weights do)",
            g.path()
        )));
    }
    if !g.needs_layer() && req.layer.is_some() {
        return Err(ApiError::bad(format!("{} takes no layer", g.path())));
    }
    if g.needs_layer() {
        let Some(layer) = req.layer else {
            return Err(ApiError::bad(format!("{} needs a layer", g.path())));
        };
        let max = if g == Getter::HiddenStates {
            n_layers + 1
        } else {
            n_layers
        };
        if layer >= max {
            return Err(ApiError::bad(format!(
                "layer {layer} out of range for {} (0..{max}; the model has {n_layers} layers)",
                g.path()
            )));
        }
    }
    if g.uses_heads() {
        let max = if g == Getter::HeadOutput {
            n_heads + 1
        } else {
            n_heads
        };
        let hs = match &req.heads {
            None => vec![],
            Some(wire::HeadArg::One(h)) => vec![*h],
            Some(wire::HeadArg::Many(hs)) => hs.clone(),
        };
        if matches!(&req.heads, Some(wire::HeadArg::Many(hs)) if hs.is_empty()) {
            return Err(ApiError::bad(
                "heads is an empty list; send null for all heads",
            ));
        }
        if let Some(h) = hs.iter().find(|&&h| h >= max) {
            return Err(ApiError::bad(format!(
                "head {h} out of range for {} (0..{max}; the model has {n_heads} heads{})",
                g.path(),
                if g == Getter::HeadOutput {
                    format!(", {n_heads} = MLP")
                } else {
                    String::new()
                }
            )));
        }
        if hs.len() > 1 && hs.contains(&n_heads) {
            return Err(ApiError::bad(format!(
                "the MLP pseudo-head {n_heads} can only be asked alone"
            )));
        }
    }
    if let Some(p) = &req.pos_ids {
        if p.is_empty() {
            return Err(ApiError::bad(
                "pos_ids is an empty list; send null for all positions",
            ));
        }
        if let Some(bad) = p.iter().find(|&&x| x >= seq_len) {
            return Err(ApiError::bad(format!(
                "position {bad} out of range in pos_ids (sequence has {seq_len} tokens)"
            )));
        }
    }
    Ok(())
}

fn wire_dtype(name: &Option<String>) -> ApiResult<DType> {
    match name {
        None => Ok(DType::F32),
        Some(n) => parse_dtype(n).map_err(|e| ApiError::bad(format!("dtype: {e}"))),
    }
}

// ---------------------------------------------------------------- handlers

async fn status(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let datasets = dataset_infos(&local)?;
    let (attn_cache_entries, attn_cache_bytes) = local.attn_cache_stats();
    let m = local.model();
    json(&Status {
        model: local.describe(),
        dtype: wire::dtype_name(m.dtype()).to_string(),
        device: format!("{:?}", m.device().location()),
        config: local.config().clone(),
        dataset_sizes: datasets
            .iter()
            .map(|d| (d.dataset.clone(), d.count))
            .collect(),
        datasets,
        cache: local.cache_stats(),
        attn_cache_entries,
        attn_cache_bytes,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn tokenizer(State(st): State<Shared>) -> ApiResult<Response> {
    let tok =
        st.tokenizer_json.read().map(|t| t.clone()).map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "tokenizer lock poisoned")
        })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::JSON)],
        tok.as_str().to_owned(),
    )
        .into_response())
}

async fn load_model(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<LoadModelRequest>,
) -> ApiResult<Response> {
    let dtype = match &req.dtype {
        None => st.opts.dtype,
        Some(d) => parse_dtype(d).map_err(|e| ApiError::bad(format!("dtype: {e}")))?,
    };
    let dir = PathBuf::from(&req.model_path);
    if !dir.join("config.json").is_file() {
        return Err(ApiError::bad(format!(
            "model_path {:?} is not a model folder (no config.json)",
            req.model_path
        )));
    }
    let st2 = st.clone();
    heavy(&st, move || {
        let local = Local::load(&dir, dtype, &st2.opts.device).map_err(ApiError::unprocessable)?;
        let fresh = AppState::new(local, st2.opts.clone()).map_err(ApiError::unprocessable)?;
        let backend = fresh.local();
        let tok = fresh.tokenizer_json.read().map(|t| t.clone()).ok();
        if let (Ok(mut b), Ok(mut t), Some(tok)) =
            (st2.backend.write(), st2.tokenizer_json.write(), tok)
        {
            *b = backend;
            *t = tok;
        }
        Ok(())
    })
    .await?;
    status(State(st)).await
}

fn forward_one(
    local: &Local,
    dataset: &str,
    sample: &crate::model::SampleInput,
    capture: &crate::model::CaptureSpec,
    force: bool,
) -> ApiResult<ForwardResponse> {
    let seq_len = local
        .forward_sample(dataset, sample, capture, force)
        .map_err(ApiError::unprocessable)?;
    Ok(ForwardResponse {
        dataset: dataset.to_string(),
        index: sample.index,
        seq_len,
    })
}

fn check_dataset_name(name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(ApiError::bad("dataset name is empty"));
    }
    Ok(())
}

async fn forward(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<ForwardRequest>,
) -> ApiResult<Response> {
    check_dataset_name(&req.dataset)?;
    let capture = req
        .capture
        .to_spec()
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let local = st.local();
    local
        .check_prompt(&req.sample.prompt)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{e:#}")))?;
    let r = heavy(&st, move || {
        forward_one(&local, &req.dataset, &req.sample, &capture, req.force)
    })
    .await?;
    json(&r)
}

async fn batch_forward(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<BatchForwardRequest>,
) -> ApiResult<Response> {
    check_dataset_name(&req.dataset)?;
    let capture = req
        .capture
        .to_spec()
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    crate::limits::BATCH_SAMPLES
        .check(req.samples.len(), "samples in /batch_forward")
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(s) = req.samples.iter().find(|s| !seen.insert(s.index)) {
        return Err(ApiError::bad(format!(
            "sample index {} appears twice in the batch",
            s.index
        )));
    }
    let local = st.local();
    for s in &req.samples {
        local.check_prompt(&s.prompt).map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("sample {}: {e:#}", s.index),
            )
        })?;
    }
    let results = heavy(&st, move || {
        req.samples
            .iter()
            .map(|s| {
                crate::cancel::check().map_err(|e| ApiError::unprocessable(e.into()))?;
                forward_one(&local, &req.dataset, s, &capture, req.force)
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(|results| BatchForwardResponse {
                dataset: req.dataset.clone(),
                results,
            })
    })
    .await?;
    json(&results)
}

/// One getter call on the backend (validated request, one sample).
fn run_getter(local: &Local, g: Getter, req: &GetRequest, key: &SampleKey) -> Result<Tensor> {
    let act = g.act(req.layer.unwrap_or(0), &req.heads);
    local.activation(key, &act, req.pos_ids.as_deref())
}

/// Mean of a getter over samples; every sample must give the same shape.
fn mean_getter(local: &Local, g: Getter, req: &GetRequest, indices: &[usize]) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    let mut first_shape = None;
    for &i in indices {
        let key = SampleKey::new(req.dataset.clone(), i);
        let t = run_getter(local, g, req, &key)?;
        match &first_shape {
            None => first_shape = Some((i, t.dims().to_vec())),
            Some((i0, s0)) if s0.as_slice() != t.dims() => bail!(
                "cannot average over dataset {:?}: sample {i0} gives shape {s0:?} but sample {i} \
                 gives {:?} (select the same pos_ids on equal-length prompts, or name a sample)",
                req.dataset,
                t.dims()
            ),
            Some(_) => {}
        }
        sum = Some(match sum {
            None => t,
            Some(s) => (s + t)?,
        });
    }
    let sum = sum.ok_or_else(|| anyhow!("dataset {:?} has no samples", req.dataset))?;
    Ok((sum / indices.len() as f64)?)
}

async fn getter(st: Shared, g: Getter, req: GetRequest) -> ApiResult<Response> {
    let local = st.local();
    let dtype = wire_dtype(&req.dtype)?;
    let indices = match req.sample {
        Some(i) => vec![i],
        None => dataset_samples(&local, &req.dataset)?,
    };
    if indices.is_empty() {
        return Err(ApiError::not_found(format!(
            "dataset {:?} has no samples to average over",
            req.dataset
        )));
    }
    for &i in &indices {
        let seq_len = check_sample(&local, &SampleKey::new(req.dataset.clone(), i))?;
        check_get(&local, g, &req, seq_len)?;
    }
    // An evicted sample is recomputed: heavy work, so it takes the heavy lock.
    let all_resident = indices
        .iter()
        .all(|&i| local.is_resident(&SampleKey::new(req.dataset.clone(), i)));
    let averaged = req.sample.is_none();
    let n = indices.len();
    let work = move || -> ApiResult<(Tensor, GetRequest)> {
        let t = match req.sample {
            Some(i) => run_getter(&local, g, &req, &SampleKey::new(req.dataset.clone(), i)),
            None => mean_getter(&local, g, &req, &indices),
        }
        .map_err(ApiError::unprocessable)?;
        let t = t
            .to_dtype(dtype)
            .map_err(|e| ApiError::unprocessable(e.into()))?;
        Ok((t, req))
    };
    let (t, req) = if all_resident {
        blocking(work).await?
    } else {
        heavy(&st, work).await?
    };
    let mut meta = HashMap::from([
        ("dataset".to_string(), req.dataset.clone()),
        (
            "getter".to_string(),
            g.path().trim_start_matches('/').to_string(),
        ),
    ]);
    if averaged {
        meta.insert("averaged_over".into(), n.to_string());
    }
    tensor_response(&[(wire::TENSOR, &t)], meta)
}

macro_rules! getter_handler {
    ($name:ident, $g:expr) => {
        async fn $name(
            State(st): State<Shared>,
            JsonBody(req): JsonBody<GetRequest>,
        ) -> ApiResult<Response> {
            getter(st, $g, req).await
        }
    };
}
getter_handler!(hidden_states, Getter::HiddenStates);
getter_handler!(attn_output, Getter::AttnOutput);
getter_handler!(mlp_output, Getter::MlpOutput);
getter_handler!(head_output, Getter::HeadOutput);
getter_handler!(attn_weights, Getter::AttnWeights);
getter_handler!(logits, Getter::Logits);

async fn list_datasets(State(st): State<Shared>) -> ApiResult<Response> {
    let list = dataset_infos(&st.local())?;
    json(&list)
}

async fn list_samples(State(st): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let sample_ids = dataset_samples(&st.local(), &id)?;
    json(&DatasetInfo {
        dataset: id,
        count: sample_ids.len(),
        sample_ids,
    })
}

async fn sample_info(
    State(st): State<Shared>,
    Path((id, index)): Path<(String, String)>,
) -> ApiResult<Response> {
    let index: usize = index.parse().map_err(|_| {
        ApiError::bad(format!(
            "sample index {index:?} is not a non-negative integer"
        ))
    })?;
    let local = st.local();
    let key = SampleKey::new(id.clone(), index);
    let seq_len = check_sample(&local, &key)?;
    let input = local.sample_meta(&key).map_err(ApiError::unprocessable)?;
    json(&SampleInfo {
        dataset: id,
        index,
        seq_len,
        input,
        resident: local.is_resident(&key),
    })
}

async fn delete_dataset(State(st): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let local = st.local();
    dataset_samples(&local, &id)?;
    local
        .drop_dataset(&id)
        .map_err(|e| ApiError::not_found(format!("{e:#}")))?;
    json(&Ack {
        status: "ok".into(),
        message: format!("dataset {id:?} deleted"),
    })
}

async fn delete_all(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let names: Vec<String> = local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in &names {
        // A dataset deleted concurrently is fine to miss.
        let _ = local.drop_dataset(n);
    }
    json(&Ack {
        status: "ok".into(),
        message: format!("{} datasets deleted", names.len()),
    })
}

async fn empty_cache(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let (entries, bytes) = local.attn_cache_stats();
    local.clear_attn_cache();
    json(&Ack {
        status: "ok".into(),
        message: format!("attention-weights cache emptied ({entries} entries, {bytes} bytes)"),
    })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no endpoint {} {}", req.method(), req.uri().path()))
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

// ---------------------------------------------------------------- attribution primitives

/// The samples a node/residual request runs on (one, or the whole dataset when null), checked.
fn request_samples(
    local: &Local,
    dataset: &str,
    sample: Option<usize>,
) -> ApiResult<Vec<SampleKey>> {
    let indices = match sample {
        Some(i) => vec![i],
        None => dataset_samples(local, dataset)?,
    };
    if indices.is_empty() {
        return Err(ApiError::not_found(format!(
            "dataset {dataset:?} has no samples to average over"
        )));
    }
    indices
        .into_iter()
        .map(|i| {
            let key = SampleKey::new(dataset, i);
            check_sample(local, &key).map(|_| key)
        })
        .collect()
}

/// Layer (0..=L; L only for lm_head) and head (< H) of a node.
fn check_node(
    local: &Local,
    t: crate::attribution::NodeType,
    layer: usize,
    head: Option<usize>,
) -> ApiResult<()> {
    let cfg = local.config();
    let (nl, nh) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    let max = if t == crate::attribution::NodeType::LmHead {
        nl + 1
    } else {
        nl
    };
    if layer >= max {
        return Err(ApiError::bad(format!(
            "layer {layer} out of range for a {t} node (0..{max}; the model has {nl} layers)"
        )));
    }
    if let Some(h) = head
        && h >= nh
    {
        return Err(ApiError::bad(format!(
            "head {h} out of range (the model has {nh} heads)"
        )));
    }
    Ok(())
}

fn mean_tensors(ts: Vec<Tensor>) -> Result<Tensor> {
    <Tensor as crate::attribution::Mean>::mean_of(ts)
}

/// Runs `op` on every sample as heavy work and answers with the mean tensor (metadata
/// `averaged_over` when the request named no sample).
async fn mean_tensor_response(
    st: &AppState,
    keys: Vec<SampleKey>,
    averaged: bool,
    op: impl Fn(&SampleKey) -> Result<Tensor> + Send + 'static,
) -> ApiResult<Response> {
    let n = keys.len();
    let t = heavy(st, move || {
        let out = keys
            .iter()
            .map(|k| {
                crate::cancel::check()?;
                op(k)
            })
            .collect::<Result<Vec<_>>>()
            .map_err(ApiError::unprocessable)?;
        mean_tensors(out).map_err(ApiError::unprocessable)
    })
    .await?;
    let mut meta = HashMap::new();
    if averaged {
        meta.insert("averaged_over".to_string(), n.to_string());
    }
    tensor_response(&[(wire::TENSOR, &t)], meta)
}

fn mean_opt(ts: Vec<Option<Tensor>>) -> Result<Option<Tensor>> {
    if ts.iter().all(Option::is_none) {
        return Ok(None);
    }
    let all: Option<Vec<Tensor>> = ts.into_iter().collect();
    let all = all.ok_or_else(|| anyhow!("some samples returned a tensor and others did not"))?;
    mean_tensors(all).map(Some)
}

async fn node_gradient(State(st): State<Shared>, RawBody(body): RawBody) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::NodeGradWire>(&body, |n| n == "output_grad")?;
    let mut req = w.request;
    if req.output_grad.is_some() {
        return Err(ApiError::bad(
            "request.output_grad must be null; send the gradient as the safetensors tensor \"output_grad\"",
        ));
    }
    req.output_grad = ts.remove("output_grad");
    if let Some(rule) = &req.ig {
        rule.validate()
            .map_err(|e| ApiError::bad(format!("ig: {e:#}")))?;
    }
    if let Some(ad) = &req.adaptive {
        ad.validate()
            .map_err(|e| ApiError::bad(format!("adaptive: {e:#}")))?;
    }
    let local = st.local();
    check_node(&local, req.node_type, req.layer, req.head)?;
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    let n = keys.len();
    let g = heavy(&st, move || {
        let mut out = keys
            .iter()
            .map(|k| local.node_gradient(k, &req))
            .collect::<Result<Vec<_>>>()
            .map_err(ApiError::unprocessable)?;
        if out.len() == 1 {
            return Ok(out.remove(0));
        }
        let rule = out[0].rule;
        let (mut grad, mut aw, mut grad_aw) = (vec![], vec![], vec![]);
        for g in out {
            grad.push(g.grad);
            aw.push(g.aw);
            grad_aw.push(g.grad_aw);
        }
        let avg = |v| mean_opt(v).map_err(ApiError::unprocessable);
        Ok(crate::attribution::NodeGrad {
            grad: avg(grad)?,
            aw: avg(aw)?,
            grad_aw: avg(grad_aw)?,
            completeness: None,
            converged: None,
            rule,
        })
    })
    .await?;
    let named: Vec<(&str, &Tensor)> = [("grad", &g.grad), ("aw", &g.aw), ("grad_aw", &g.grad_aw)]
        .into_iter()
        .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
        .collect();
    let scalars = crate::attribution::NodeGrad {
        grad: None,
        aw: None,
        grad_aw: None,
        ..g.clone()
    };
    let mut meta = HashMap::from([(
        wire::RESULT_KEY.to_string(),
        serde_json::to_string(&scalars)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    )]);
    if w.sample.is_none() {
        meta.insert("averaged_over".into(), n.to_string());
    }
    tensor_response(&named, meta)
}

async fn node_forward(State(st): State<Shared>, RawBody(body): RawBody) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::NodeForwardWire>(&body, |n| n == "upstream_sum")?;
    let mut req = w.request;
    if req.upstream_sum.is_some() {
        return Err(ApiError::bad(
            "request.upstream_sum must be null; send it as the safetensors tensor \"upstream_sum\"",
        ));
    }
    req.upstream_sum = ts.remove("upstream_sum");
    let local = st.local();
    check_node(&local, req.node_type, req.layer, req.head)?;
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    mean_tensor_response(&st, keys, w.sample.is_none(), move |k| {
        local.node_forward(k, &req)
    })
    .await
}

async fn lens_logits(State(st): State<Shared>, RawBody(body): RawBody) -> ApiResult<Response> {
    let (_, mut ts) = tensor_request::<wire::LensLogitsWire>(&body, |n| n == "x")?;
    let x = ts
        .remove("x")
        .ok_or_else(|| ApiError::bad("missing tensor \"x\" (the residual [b,k,e])"))?;
    let local = st.local();
    let e = local.config().hidden_size;
    match x.dims() {
        [b, k, h] if *b > 0 && *k > 0 && *h == e => {}
        d => {
            return Err(ApiError::bad(format!(
                "tensor \"x\" must be [b,k,{e}] with b, k > 0, got {d:?}"
            )));
        }
    }
    let t = blocking(move || local.lens_logits(&x).map_err(ApiError::unprocessable)).await?;
    tensor_response(&[(wire::TENSOR, &t)], HashMap::new())
}

async fn attribute_residual(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::ResidualWire>(&body, |n| {
        n.strip_prefix("grad.")
            .is_some_and(|i| i.parse::<usize>().is_ok())
    })?;
    if w.grads.is_empty() {
        return Err(ApiError::bad(
            "grads is empty: attribute_residual needs at least one gradient",
        ));
    }
    let mut grads = Vec::with_capacity(w.grads.len());
    for (i, g) in w.grads.iter().enumerate() {
        let grad = ts.remove(&wire::grad_name(i)).ok_or_else(|| {
            ApiError::bad(format!(
                "grads has {} entries but tensor {:?} is missing",
                w.grads.len(),
                wire::grad_name(i)
            ))
        })?;
        grads.push(crate::attribution::ResidualGrad {
            pos_ids: g.pos_ids.clone(),
            grad,
            downstream_layer: g.downstream_layer,
        });
    }
    if let Some(extra) = ts.keys().next() {
        return Err(ApiError::bad(format!(
            "tensor {extra:?} has no entry in grads ({} entries)",
            w.grads.len()
        )));
    }
    let req = crate::attribution::ResidualRequest {
        grads,
        from_layer: w.from_layer,
        to_layer: w.to_layer,
    };
    let local = st.local();
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    mean_tensor_response(&st, keys, w.sample.is_none(), move |k| {
        local.attribute_residual(k, &req)
    })
    .await
}

// ---------------------------------------------------------------- middleware

async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.opts.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token (send Authorization: Bearer <token>)",
                )
                .into_response();
            }
            Some(g) if !constant_time_eq(g.as_bytes(), token.as_bytes()) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token")
                    .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn time_limit(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let limit = st.opts.timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request took longer than the server's {limit:?} limit"),
        )
        .into_response(),
    }
}

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
        .route("/batch_forward", post(batch_forward).layer(batch))
        .route("/hidden_states", post(hidden_states).layer(small))
        .route("/attn_output", post(attn_output).layer(small))
        .route("/mlp_output", post(mlp_output).layer(small))
        .route("/head_output", post(head_output).layer(small))
        .route("/attn_weights", post(attn_weights).layer(small))
        .route("/logits", post(logits).layer(small))
        .route("/datasets", get(list_datasets).delete(delete_all))
        .route("/datasets/{id}", delete(delete_dataset))
        .route("/datasets/{id}/samples", get(list_samples))
        .route("/datasets/{id}/samples/{index}", get(sample_info))
        .route("/empty_cache", post(empty_cache))
        .route("/node_gradient", post(node_gradient))
        .route("/node_forward", post(node_forward))
        .route("/attribute_residual", post(attribute_residual))
        .route("/lens_logits", post(lens_logits))
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
