//! The layer around a real axum router, on the in-memory store, driven without a network.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use idem_http::IdempotencyLayer;
use idem_memory::MemoryStore;
use tokio::sync::Notify;
use tower::{ServiceExt, service_fn};

type Counter = Arc<AtomicUsize>;

fn layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::new())
}

/// A router whose POST /orders counts its runs and answers 201 with headers worth replaying.
fn orders(layer: IdempotencyLayer<MemoryStore>) -> (Router, Counter) {
    let runs = Counter::default();
    let counter = Arc::clone(&runs);
    let router = Router::new()
        .route(
            "/orders",
            post(move |body: Bytes| async move {
                let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    StatusCode::CREATED,
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                        (header::LOCATION, format!("/orders/{run}")),
                        (header::HeaderName::from_static("x-cost"), "42".to_owned()),
                        (header::HeaderName::from_static("x-run"), run.to_string()),
                    ],
                    body,
                )
            })
            .get({
                let counter = Arc::clone(&runs);
                move || async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "listing"
                }
            }),
        )
        .layer(layer);
    (router, runs)
}

fn post_with_key(uri: &str, key: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(uri);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(body.into()).expect("valid request")
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    split(response).await
}

async fn split(response: Response<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn a_repeat_is_replayed_without_running_the_handler() {
    let (router, runs) = orders(layer().replay_header(header::HeaderName::from_static("x-cost")));
    let first = send(&router, post_with_key("/orders", Some("\"k-1\""), "pay 5")).await;
    let again = send(&router, post_with_key("/orders", Some("\"k-1\""), "pay 5")).await;

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first.2, Bytes::from_static(b"pay 5"));
    assert!(first.1.get("idempotent-replayed").is_none());
    assert_eq!(again.0, first.0);
    assert_eq!(again.2, first.2);
    for name in ["content-type", "location", "x-cost"] {
        assert_eq!(again.1.get(name), first.1.get(name), "{name} replayed");
    }
    assert_eq!(again.1.get("location").expect("location"), "/orders/1");
    assert_eq!(again.1.get("idempotent-replayed").expect("marked"), "true");
    assert!(
        again.1.get("x-run").is_none(),
        "unselected headers are not stored"
    );

    // The bare spelling of the key names the same key.
    let bare = send(&router, post_with_key("/orders", Some("k-1"), "pay 5")).await;
    assert_eq!(bare.1.get("idempotent-replayed").expect("marked"), "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_key_on_a_different_request_is_422() {
    let (router, runs) = orders(layer());
    let first = send(&router, post_with_key("/orders", Some("k-2"), "pay 5")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let other_body = send(&router, post_with_key("/orders", Some("k-2"), "pay 6")).await;
    assert_eq!(other_body.0, StatusCode::UNPROCESSABLE_ENTITY);
    let other_query = send(&router, post_with_key("/orders?x=1", Some("k-2"), "pay 5")).await;
    assert_eq!(other_query.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_concurrent_duplicate_gets_409_with_retry_after() {
    let started = Arc::new(Notify::new());
    let runs = Counter::default();
    let router = Router::new()
        .route(
            "/slow",
            post({
                let (started, runs) = (Arc::clone(&started), Arc::clone(&runs));
                move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (StatusCode::CREATED, "done")
                }
            }),
        )
        .layer(layer());

    let first = tokio::spawn({
        let router = router.clone();
        async move { send(&router, post_with_key("/slow", Some("k-3"), "x")).await }
    });
    started.notified().await;
    let duplicate = send(&router, post_with_key("/slow", Some("k-3"), "x")).await;
    assert_eq!(duplicate.0, StatusCode::CONFLICT);
    let retry_after: u64 = duplicate.1[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=30).contains(&retry_after), "retry after {retry_after}");

    let first = first.await.expect("first request completes");
    assert_eq!(
        (first.0, first.2),
        (StatusCode::CREATED, Bytes::from_static(b"done"))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A router whose first run answers `first`, and every later run 201.
fn flaky(layer: IdempotencyLayer<MemoryStore>, first: StatusCode) -> (Router, Counter) {
    let runs = Counter::default();
    let counter = Arc::clone(&runs);
    let router = Router::new()
        .route(
            "/flaky",
            post(move || async move {
                match counter.fetch_add(1, Ordering::SeqCst) {
                    0 => (first, "first"),
                    _ => (StatusCode::CREATED, "later"),
                }
            }),
        )
        .layer(layer);
    (router, runs)
}

#[tokio::test]
async fn a_server_error_is_not_stored() {
    let (router, runs) = flaky(layer(), StatusCode::INTERNAL_SERVER_ERROR);
    let first = send(&router, post_with_key("/flaky", Some("k-4"), "")).await;
    assert_eq!(first.0, StatusCode::INTERNAL_SERVER_ERROR);
    let again = send(&router, post_with_key("/flaky", Some("k-4"), "")).await;
    assert_eq!(
        (again.0, again.2),
        (StatusCode::CREATED, Bytes::from_static(b"later"))
    );
    assert!(again.1.get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn server_errors_are_stored_when_configured_and_client_errors_always() {
    let (router, runs) = flaky(layer().store_server_errors(true), StatusCode::BAD_GATEWAY);
    send(&router, post_with_key("/flaky", Some("k-5"), "")).await;
    let again = send(&router, post_with_key("/flaky", Some("k-5"), "")).await;
    assert_eq!(
        (again.0, again.2),
        (StatusCode::BAD_GATEWAY, Bytes::from_static(b"first"))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let (router, runs) = flaky(layer(), StatusCode::CONFLICT);
    send(&router, post_with_key("/flaky", Some("k-5"), "")).await;
    let again = send(&router, post_with_key("/flaky", Some("k-5"), "")).await;
    assert_eq!(again.0, StatusCode::CONFLICT);
    assert_eq!(again.1.get("idempotent-replayed").expect("marked"), "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn other_methods_pass_through() {
    let (router, runs) = orders(layer().required(true));
    let plain = Request::get("/orders").body(Body::empty()).expect("valid");
    assert_eq!(send(&router, plain).await.0, StatusCode::OK);
    for _ in 0..2 {
        let keyed = Request::get("/orders")
            .header("idempotency-key", "k-6")
            .body(Body::empty())
            .expect("valid");
        let (status, headers, body) = send(&router, keyed).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Bytes::from_static(b"listing"))
        );
        assert!(headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_missing_key_passes_through_unless_required() {
    let (router, runs) = orders(layer());
    for _ in 0..2 {
        let response = send(&router, post_with_key("/orders", None, "x")).await;
        assert_eq!(response.0, StatusCode::CREATED);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let (router, runs) = orders(layer().required(true));
    let (status, headers, _) = send(&router, post_with_key("/orders", None, "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_key_is_400() {
    let (router, runs) = orders(layer());
    let too_long = "k".repeat(256);
    for key in ["", "\"\"", "a\tb", too_long.as_str()] {
        let (status, _, _) = send(&router, post_with_key("/orders", Some(key), "x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key {key:?}");
    }
    let two_keys = Request::post("/orders")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Body::from("x"))
        .expect("valid");
    assert_eq!(send(&router, two_keys).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let (router, runs) = orders(layer().max_request_body(16));
    let over = send(
        &router,
        post_with_key("/orders", Some("k-7"), vec![b'a'; 17]),
    )
    .await;
    assert_eq!(over.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let at_limit = send(
        &router,
        post_with_key("/orders", Some("k-7"), vec![b'a'; 16]),
    )
    .await;
    assert_eq!(at_limit.0, StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn binary_bodies_replay_byte_for_byte() {
    let (router, runs) = orders(layer());
    let binary: Vec<u8> = (0..=255u8).rev().chain([0, 0xff, 0xc3, 0x28]).collect();
    let first = send(
        &router,
        post_with_key("/orders", Some("k-8"), binary.clone()),
    )
    .await;
    let again = send(
        &router,
        post_with_key("/orders", Some("k-8"), binary.clone()),
    )
    .await;
    assert_eq!(first.2.as_ref(), binary.as_slice());
    assert_eq!(again.2.as_ref(), binary.as_slice());
    assert_eq!(again.1.get("idempotent-replayed").expect("marked"), "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_oversized_response_is_passed_on_and_not_stored() {
    let (router, runs) = orders(layer().max_response_body(8));
    let big = vec![7u8; 32];
    let first = send(&router, post_with_key("/orders", Some("k-9"), big.clone())).await;
    assert_eq!(
        (first.0, first.2.as_ref()),
        (StatusCode::CREATED, big.as_slice())
    );
    let again = send(&router, post_with_key("/orders", Some("k-9"), big.clone())).await;
    assert_eq!(again.2.as_ref(), big.as_slice());
    assert!(again.1.get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_request_releases_its_key() {
    let runs = Counter::default();
    let router = Router::new()
        .route(
            "/hang",
            post({
                let runs = Arc::clone(&runs);
                move || async move {
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    StatusCode::CREATED
                }
            }),
        )
        .layer(layer());
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        router
            .clone()
            .oneshot(post_with_key("/hang", Some("k-10"), "")),
    )
    .await;
    assert!(cancelled.is_err(), "the first request hangs until dropped");

    // The release runs on a spawned task: let it, then retry until the key is free.
    let mut status = StatusCode::CONFLICT;
    for _ in 0..50 {
        status = send(&router, post_with_key("/hang", Some("k-10"), ""))
            .await
            .0;
        if status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_inner_error_propagates_and_frees_the_key() {
    let runs = Counter::default();
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    Err("backend down")
                } else {
                    Ok(Response::new(Body::from("ok")))
                }
            }
        }
    });
    let service = tower::Layer::layer(&layer(), inner);
    let failed = service
        .clone()
        .oneshot(post_with_key("/x", Some("k-11"), ""))
        .await;
    assert_eq!(failed.err(), Some("backend down"));
    let retried = service
        .oneshot(post_with_key("/x", Some("k-11"), ""))
        .await
        .expect("second run succeeds");
    assert_eq!(split(retried).await.2, Bytes::from_static(b"ok"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn namespaces_keep_tenants_apart() {
    let layer = layer().namespace_with(|parts| {
        parts
            .headers
            .get("x-tenant")
            .and_then(|tenant| tenant.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned()
    });
    let (router, runs) = orders(layer);
    for tenant in ["acme", "globex", "acme"] {
        let request = Request::post("/orders")
            .header("idempotency-key", "k-12")
            .header("x-tenant", tenant)
            .body(Body::from("x"))
            .expect("valid");
        assert_eq!(send(&router, request).await.0, StatusCode::CREATED);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_full_store_is_503() {
    let (router, runs) = orders(IdempotencyLayer::new(MemoryStore::with_capacity(0)));
    let (status, _, _) = send(&router, post_with_key("/orders", Some("k-13"), "x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn get_routes_stay_reachable_without_the_layer_interfering() {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .layer(layer().required(true));
    let request = Request::get("/health").body(Body::empty()).expect("valid");
    assert_eq!(send(&router, request).await.2, Bytes::from_static(b"ok"));
}
