//! # idem-http
//!
//! A tower [`Layer`](tower_layer::Layer) that makes HTTP endpoints idempotent, following
//! the IETF draft *The Idempotency-Key HTTP Header Field*, on any idem
//! [`IdempotencyStore`](idem_core::IdempotencyStore) (memory, Redis, MySQL, your own).
//!
//! Use it in front of non-idempotent endpoints (creating a payment, placing an order)
//! whose clients retry: a retry with the same `Idempotency-Key` gets the first response
//! back instead of running the handler again. It works with axum, or any tower service
//! taking `Request<axum::body::Body>`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use axum::{Router, body::Body, routing::post};
//! use http::{Request, StatusCode};
//! use idem_http::IdempotencyLayer;
//! use idem_memory::MemoryStore;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let charges = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&charges);
//! let app = Router::new()
//!     .route("/charges", post(move |body: String| async move {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         (StatusCode::CREATED, format!("charged {body}"))
//!     }))
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).required(true));
//!
//! for _ in 0..2 {
//!     let request = Request::post("/charges")
//!         .header("Idempotency-Key", "\"order-1042\"")
//!         .body(Body::from("4999"))
//!         .unwrap();
//!     let response = app.clone().oneshot(request).await.unwrap();
//!     assert_eq!(response.status(), StatusCode::CREATED);
//! }
//! assert_eq!(charges.load(Ordering::SeqCst), 1); // the second was replayed
//! # });
//! ```
//!
//! ## Behaviour
//!
//! - Only the configured methods (POST and PATCH by default) are handled; others pass
//!   through untouched. So do requests without the header, unless it is
//!   [`required`](IdempotencyLayer::required) (then 400).
//! - The key is the header value (quoted as the draft shows, or bare) in a namespace,
//!   `"http"` or [computed per request](IdempotencyLayer::namespace_with). An invalid key
//!   (empty, over 255 bytes, control characters, several headers) is 400.
//! - The request body is buffered (1 MiB by default, larger is 413) and fingerprinted with
//!   the method, path and query: the same key on a different request is 422.
//! - The first request runs the handler, its lease renewed meanwhile. Its status, body and
//!   `Content-Type`, `Location` (plus [configured](IdempotencyLayer::replay_header)) headers
//!   are stored for 24 h; every repeat gets them back byte for byte, with
//!   `Idempotent-Replayed: true`. A repeat while the first still runs gets 409 with
//!   `Retry-After`.
//! - The key is released, so a retry runs the handler again, when the response is 5xx
//!   (unless [`store_server_errors`](IdempotencyLayer::store_server_errors)), when the
//!   inner service fails, when the response body is over the storable size (1 MiB by
//!   default; that response is passed on unstored), and when the request is cancelled.
//! - Store errors answer 503 (unavailable) or 500; a stored response that does not
//!   decode is logged and answers 500. The layer's own answers are
//!   `application/problem+json`.
//!
//! ## Limits
//!
//! Response trailers are not stored. Request headers are not part of the fingerprint,
//! since clients and proxies rewrite them between retries.
#![deny(missing_docs)]

mod body;
mod fingerprint;
mod guard;
mod layer;
mod problem;
mod record;
mod service;

pub use layer::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyLayer};
pub use service::{IdempotencyService, ResponseFuture};
