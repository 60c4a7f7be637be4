//! The responses the layer answers with itself, as RFC 9457 problem details (the draft
//! recommends them).

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use idem_core::Error;

/// A `application/problem+json` response.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// 409 while the first request with the key still runs, with `Retry-After` in whole
/// seconds, rounded up and at least one so clients do not spin.
pub(crate) fn in_progress(retry_after: Duration) -> Response<Body> {
    let mut response = problem(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still being processed",
    );
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
    response
}

/// Maps a store error to the response the client gets.
pub(crate) fn store_error(error: &Error) -> Response<Body> {
    match error {
        Error::FingerprintMismatch => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was already used with a different request",
        ),
        Error::InProgress { retry_after } => in_progress(*retry_after),
        Error::Unavailable { .. } => {
            tracing::warn!(%error, "idempotency store unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the idempotency store is unavailable; retry later",
            )
        }
        _ => {
            tracing::error!(%error, "idempotency store failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the idempotency store failed",
            )
        }
    }
}
