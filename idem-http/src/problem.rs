//! The layer's own answers: RFC 9457 problem details (`application/problem+json`), as the
//! draft recommends, each with a `type` link to its entry below.
//!
//! Two of them stand for a handler that ran: [`RESPONSE_NOT_STORED`] and
//! [`RESPONSE_FAILED`] are kept with the key (as a marker, not as the problem's bytes) and
//! every retry gets them back, marked `Idempotent-Replayed: true`, until the retention ends
//! (but for a status that frees the key, see their rows). No other is ever stored: a retry
//! after one gets a fresh answer. Each `type` is this page with its row's anchor
//! (`#missing-key`, ...), so a client's link lands on the row.
//!
//! | `type` | status | when |
//! |---|---|---|
//! | <a id="missing-key"></a>[`MISSING_KEY`] | 400 | the route requires a key and the request has none |
//! | <a id="invalid-key"></a>[`INVALID_KEY`] | 400 | the header is not one structured-field string of 1 to 255 visible characters |
//! | <a id="key-reused"></a>[`KEY_REUSED`] | 422 | the key was used before with a different request (method, path, query, body) |
//! | <a id="in-progress"></a>[`IN_PROGRESS`] | 409 | the first request with the key is still running; `Retry-After` says when to ask again |
//! | <a id="request-too-large"></a>[`REQUEST_TOO_LARGE`] | 413 | the request body is over the layer's buffering limit, or a limit in front of the layer ended it |
//! | <a id="request-unreadable"></a>[`REQUEST_UNREADABLE`] | 400 | the request body failed while being read |
//! | <a id="request-trailers"></a>[`REQUEST_TRAILERS`] | 400 | the request body ends with trailers, which the layer cannot hand on to the handler (it rebuilds the body from its bytes) |
//! | <a id="response-not-stored"></a>[`RESPONSE_NOT_STORED`] | 500 | the first request ran, but its response was too large to store: it cannot be replayed, and the handler does not run again |
//! | <a id="response-failed"></a>[`RESPONSE_FAILED`] | 500 | the handler panicked, or returned a response whose body failed while being read: the handler does not run again for this key (but for a status that frees it, 503 say, or a panic under [`server_errors`](crate::IdempotencyLayerBuilder::server_errors)`(Release)`), and every retry gets this problem |
//! | <a id="no-scope"></a>[`NO_SCOPE`] | 500 | the request carries no principal to scope its key (the auth layer must run first) |
//! | <a id="store-unavailable"></a>[`STORE_UNAVAILABLE`] | 503 | the idempotency store did not answer |
//! | <a id="store-failed"></a>[`STORE_FAILED`] | 500 | the idempotency store failed, or a stored response does not decode |

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use idem_core::Error;

/// The base of every problem `type`: this module's documentation.
const BASE: &str = "https://docs.rs/idem-http/latest/idem_http/problem/index.html#";

macro_rules! problem_types {
    ($($(#[$doc:meta])* $name:ident = $anchor:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = concat!(
            "https://docs.rs/idem-http/latest/idem_http/problem/index.html#", $anchor
        );)*
    };
}

problem_types! {
    /// 400: the route requires an `Idempotency-Key` and the request has none.
    MISSING_KEY = "missing-key";
    /// 400: the `Idempotency-Key` is malformed: not exactly one structured-field string
    /// (`"…"`, double quotes included), empty, over 255 bytes, or with parameters.
    INVALID_KEY = "invalid-key";
    /// 422: the key was already used with a different request.
    KEY_REUSED = "key-reused";
    /// 409: a request with this key is still being processed.
    IN_PROGRESS = "in-progress";
    /// 413: the request body is over the limit for idempotent requests, or a body limit
    /// in front of the layer ended it.
    REQUEST_TOO_LARGE = "request-too-large";
    /// 400: the request body could not be read.
    REQUEST_UNREADABLE = "request-unreadable";
    /// 400: the request body ends with trailers, which the handler would not get.
    REQUEST_TRAILERS = "request-trailers";
    /// 500: the first request with this key ran, but its response was over the storable
    /// size; it is not replayed, and the handler does not run again for this key.
    RESPONSE_NOT_STORED = "response-not-stored";
    /// 500: the handler panicked, or its response body failed while being read; the
    /// handler does not run again for this key (but for a status the policy releases).
    RESPONSE_FAILED = "response-failed";
    /// 500: the request carries no principal to scope its key.
    NO_SCOPE = "no-scope";
    /// 503: the idempotency store is unavailable.
    STORE_UNAVAILABLE = "store-unavailable";
    /// 500: the idempotency store failed.
    STORE_FAILED = "store-failed";
}

/// A `application/problem+json` response whose body is already bytes.
pub(crate) fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Bytes> {
    debug_assert!(kind.starts_with(BASE));
    let body = serde_json::json!({
        "type": kind,
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// 409 while the first request with the key still runs, with `Retry-After` in whole
/// seconds, rounded up and at least one so clients do not spin.
pub(crate) fn in_progress(retry_after: Duration) -> Response<Bytes> {
    let mut response = problem(
        StatusCode::CONFLICT,
        IN_PROGRESS,
        "a request with this Idempotency-Key is still being processed",
    );
    let seconds = u64::try_from(retry_after.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Maps a store error to the client's answer. `InProgress` is answered by the caller,
/// which knows a better `Retry-After`.
pub(crate) fn store_error(error: &Error) -> Response<Bytes> {
    match error {
        Error::FingerprintMismatch => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            KEY_REUSED,
            "this Idempotency-Key was already used with a different request",
        ),
        Error::InProgress { retry_after } => in_progress(*retry_after),
        // A token collision, like any input a store refuses, comes from values the server
        // made, never from the client: a server error below, not a 4xx.
        Error::Unavailable { .. } => {
            tracing::warn!(%error, "idempotency store unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                STORE_UNAVAILABLE,
                "the idempotency store is unavailable; retry later",
            )
        }
        _ => {
            tracing::error!(%error, "idempotency store failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                STORE_FAILED,
                "the idempotency store failed",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_links_its_type() {
        let response = problem(StatusCode::BAD_REQUEST, INVALID_KEY, "bad");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("problem JSON");
        assert_eq!(body["type"], INVALID_KEY);
        assert!(INVALID_KEY.ends_with("#invalid-key"));
        assert_eq!(body["status"], 400);
        assert_eq!(body["detail"], "bad");
    }

    #[test]
    fn every_problem_type_links_to_an_anchor_of_these_docs() {
        // rustdoc makes no anchor for an entry of a module's table: the table's rows set
        // their own, and a `type` whose fragment has none lands at the top of the page.
        let docs: Vec<&str> = include_str!("problem.rs")
            .lines()
            .filter(|line| line.starts_with("//! |"))
            .collect();
        for kind in [
            MISSING_KEY,
            INVALID_KEY,
            KEY_REUSED,
            IN_PROGRESS,
            REQUEST_TOO_LARGE,
            REQUEST_UNREADABLE,
            REQUEST_TRAILERS,
            RESPONSE_NOT_STORED,
            RESPONSE_FAILED,
            NO_SCOPE,
            STORE_UNAVAILABLE,
            STORE_FAILED,
        ] {
            let (page, anchor) = kind.split_once('#').expect("a fragment");
            assert_eq!(format!("{page}#"), BASE);
            let id = format!("<a id=\"{anchor}\"></a>");
            assert!(
                docs.iter().any(|row| row.contains(&id)),
                "no row of the module docs has the anchor of {kind}"
            );
        }
    }

    #[test]
    fn a_token_collision_is_a_server_error_not_the_clients() {
        let response = store_error(&Error::TokenCollision);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("problem JSON");
        assert_eq!(body["type"], STORE_FAILED);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        for (wait, seconds) in [(0, "1"), (1, "1"), (1000, "1"), (1001, "2"), (2500, "3")] {
            let response = in_progress(Duration::from_millis(wait));
            assert_eq!(
                response.headers()[header::RETRY_AFTER],
                seconds,
                "{wait} ms"
            );
        }
    }
}
