//! Bearer-token auth and the per-request time limit.

use super::*;

pub(super) async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
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

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn time_limit(State(st): State<Shared>, req: Request, next: Next) -> Response {
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
