//! Error responses (`{"error": ...}` with a 4xx status) and the body extractors and
//! response builders of the routes.

use super::*;

/// An error response: status + `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// A request the backend could not serve (its message names why).
    pub(super) fn unprocessable(e: anyhow::Error) -> Self {
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

pub(super) type ApiResult<T> = std::result::Result<T, ApiError>;

// ---------------------------------------------------------------- extractors / responses

/// A JSON body parsed with serde; every failure (too large, bad JSON, missing field) is a JSON
/// 4xx error.
pub(super) struct JsonBody<T>(pub(super) T);

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
pub(super) struct RawBody(pub(super) Bytes);

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
pub(super) fn tensor_request<T: DeserializeOwned>(
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

pub(super) fn json<T: Serialize>(v: &T) -> ApiResult<Response> {
    let body = serde_json::to_string(v)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, wire::JSON)], body).into_response())
}

pub(super) fn tensor_response(
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
