//! What needs a service of its own rather than a server: a dropped request future, an
//! inner service error, a full store. On the memory store, driven with `oneshot`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use idem_http::{
    CancelPolicy, IdempotencyLayer, KeyScope, LeaseHandle, OversizedResponse, Storage, problem,
};
use idem_memory::MemoryStore;
use tower::{Layer, ServiceExt, service_fn};

fn post(key: &str) -> Request<Body> {
    Request::post("/x")
        .header("idempotency-key", key)
        .body(Body::empty())
        .expect("a valid request")
}

/// A service whose first call waits until told; it counts its calls.
fn hanging(
    runs: Arc<AtomicUsize>,
    go: Arc<tokio::sync::Notify>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_: Request<Body>| {
        let (runs, go) = (Arc::clone(&runs), Arc::clone(&go));
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                go.notified().await;
            }
            Ok(Response::new(Body::from("finished")))
        }
    })
}

/// Sends `post("k")` and drops it after 100 ms, while its handler still runs.
async fn drop_a_request<S, B>(service: &S)
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        service.clone().oneshot(post("\"k\"")),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the first request is still running when dropped"
    );
}

/// The JSON of a whole response body: the problem the layer answered with.
async fn json_of<B>(response: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

/// Repeats `post("k")` until the answer is no longer 409 (10 s at most), and returns it.
async fn first_settled<S, B>(service: &S) -> Response<B>
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..400 {
        let response = service
            .clone()
            .oneshot(post("\"k\""))
            .await
            .expect("infallible");
        if response.status() != StatusCode::CONFLICT {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the key stayed in progress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_future_leaves_the_handler_running_and_its_response_stored() {
    let runs = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(hanging(Arc::clone(&runs), Arc::clone(&go)));
    drop_a_request(&service).await;
    let retry = service
        .clone()
        .oneshot(post("\"k\""))
        .await
        .expect("infallible");
    assert_eq!(retry.status(), StatusCode::CONFLICT);
    go.notify_one();
    let replay = first_settled(&service).await;
    assert!(replay.headers().contains_key("idempotent-replayed"));
    let body = replay.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.as_ref(), b"finished");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_release_policy_a_dropped_request_frees_its_key() {
    let runs = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .cancel_policy(CancelPolicy::Release)
        .build()
        .expect("valid");
    let service = layer.layer(hanging(Arc::clone(&runs), Arc::clone(&go)));
    drop_a_request(&service).await;
    assert_eq!(first_settled(&service).await.status(), StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "released, so run again");
}

/// Under `Release` too, a client gone while the layer reads the response body its handler
/// returned does not free the key: the handler ran, so its response is read to the end and
/// stored, and the retry gets it replayed instead of running the handler a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_release_policy_a_request_dropped_after_its_handler_returned_keeps_its_key() {
    let runs = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let inner = service_fn({
        let (runs, go) = (Arc::clone(&runs), Arc::clone(&go));
        move |_: Request<Body>| {
            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
            let go = Arc::clone(&go);
            async move {
                // The handler's work is done; only its body is still on the way.
                let body = futures::stream::once(async move {
                    if first {
                        go.notified().await;
                    }
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"done"))
                });
                Ok::<_, std::convert::Infallible>(Response::new(Body::from_stream(body)))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .cancel_policy(CancelPolicy::Release)
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    drop_a_request(&service).await;
    let retry = service
        .clone()
        .oneshot(post("\"k\""))
        .await
        .expect("infallible");
    assert_eq!(
        retry.status(),
        StatusCode::CONFLICT,
        "the body is still read"
    );
    go.notify_one();
    let replay = first_settled(&service).await;
    assert!(replay.headers().contains_key("idempotent-replayed"));
    let body = replay.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.as_ref(), b"done");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

#[tokio::test]
async fn an_inner_error_propagates_and_frees_the_key() {
    let runs = Arc::new(AtomicUsize::new(0));
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
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let failed = service.clone().oneshot(post("\"k\"")).await;
    assert_eq!(failed.err(), Some("backend down"));
    let retried = service
        .oneshot(post("\"k\""))
        .await
        .expect("second run succeeds");
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A handler that marks its point of no return (`commit` on the `LeaseHandle` in its
/// request's extensions) may have charged the card: a timeout inside the layer that then
/// drops it, with an error (tower's `Timeout`) or with a 408 (tower-http's `TimeoutLayer`,
/// a status the policy frees), must not free the key for a second charge.
#[tokio::test]
async fn a_handler_dropped_after_it_committed_never_runs_twice() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let runs = Arc::clone(&runs);
        move |request: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            let lease = request.extensions().get::<LeaseHandle>().cloned();
            async move {
                lease.expect("the layer's lease").commit(); // the card is charged from here
                std::future::pending::<()>().await; // and the provider never answers
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            }
        }
    });
    // A timeout inside the layer: an error on `/error`, a 408 on `/408`.
    let timed = service_fn(move |request: Request<Body>| {
        let with_408 = request.uri().path() == "/408";
        let call = handler.clone().oneshot(request);
        async move {
            match tokio::time::timeout(Duration::from_millis(50), call).await {
                Ok(answer) => Ok(answer.unwrap_or_else(|never| match never {})),
                Err(_) if with_408 => {
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
                    Ok(response)
                }
                Err(_) => Err("timed out"),
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(timed);
    let at = |path: &str| {
        Request::post(path)
            .header("idempotency-key", "\"k\"")
            .body(Body::empty())
            .expect("a valid request")
    };
    let failed = service.clone().oneshot(at("/error")).await;
    assert_eq!(failed.err(), Some("timed out"));
    let retry = service.clone().oneshot(at("/error")).await.expect("kept");
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(retry.headers().contains_key("idempotent-replayed"));
    let answer = json_of(retry).await;
    assert_eq!(answer["type"], problem::RESPONSE_FAILED);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the charge ran once");
    for attempt in 0..2 {
        let response = service.clone().oneshot(at("/408")).await.expect("408");
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{attempt}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the 408 kept its key too");
}

/// A handler that returned its response has done its work, even if the body it returned then
/// fails mid-way (a stream from a cursor that broke): the key must not be freed, or the
/// retry runs the handler a second time. Every request with the key gets the
/// `response-failed` problem instead; a "try again" status (503) still frees the key.
#[tokio::test]
async fn a_response_body_failing_mid_way_never_runs_the_handler_twice() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |request: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            let status = if request.uri().path() == "/busy" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::CREATED
            };
            async move {
                let frames = [
                    Ok(http_body::Frame::data(axum::body::Bytes::from_static(
                        b"charged, receipt: ",
                    ))),
                    Err(std::io::Error::other("the cursor broke")),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                let mut response = Response::new(Body::new(body));
                *response.status_mut() = status;
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    for attempt in 0..2 {
        let response = service
            .clone()
            .oneshot(post("\"k\""))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let answer = json_of(response).await;
        assert_eq!(
            answer["type"],
            problem::RESPONSE_FAILED,
            "attempt {attempt}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    for _ in 0..2 {
        let busy = Request::post("/busy")
            .header("idempotency-key", "\"b\"")
            .body(Body::empty())
            .expect("a valid request");
        let response = service.clone().oneshot(busy).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "a 503 frees its key");
}

/// A handler that panics may have done part of its work (charged the card, then hit a bug
/// writing the receipt), like one that answers 500, which is stored: its key must not be
/// freed for a second run. The panic still reaches the first caller (a catch-panic layer
/// outside, or the server); every retry gets the `response-failed` problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_never_runs_twice() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run > 0, "the handler panics after charging");
                Ok::<_, std::convert::Infallible>(Response::new(Body::from("charged")))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let first = tokio::spawn(service.clone().oneshot(post("\"k\""))).await;
    assert!(
        first.is_err_and(|error| error.is_panic()),
        "the panic reaches its caller"
    );
    let retry = service
        .clone()
        .oneshot(post("\"k\""))
        .await
        .expect("infallible");
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(retry.headers().contains_key("idempotent-replayed"));
    let answer = json_of(retry).await;
    assert_eq!(answer["type"], problem::RESPONSE_FAILED);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

#[tokio::test]
async fn a_full_store_is_503() {
    let runs = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let layer = IdempotencyLayer::builder(MemoryStore::with_capacity(0), KeyScope::global())
        .build()
        .expect("valid");
    let response = layer
        .layer(hanging(Arc::clone(&runs), Arc::clone(&go)))
        .oneshot(post("\"k\""))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = json_of(response).await;
    assert_eq!(problem["type"], problem::STORE_UNAVAILABLE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[test]
fn bad_settings_are_refused_at_build() {
    let zero = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .lease_ttl(Duration::ZERO)
        .build();
    assert!(zero.is_err());
    let backoff = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .wait(idem_http::WaitPolicy::Wait {
            timeout: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(1),
        })
        .build();
    assert!(backoff.is_err());
}

/// A service whose first call answers `status` with a body of `bytes` bytes, and every later
/// call 201 `again`; it counts its calls.
fn first_answers(
    status: StatusCode,
    bytes: usize,
    runs: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_: Request<Body>| {
        let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let response = if first {
                let mut response = Response::new(Body::from(vec![b'x'; bytes]));
                *response.status_mut() = status;
                response
            } else {
                let mut response = Response::new(Body::from("again"));
                *response.status_mut() = StatusCode::CREATED;
                response
            };
            Ok(response)
        }
    })
}

/// A status the policy releases ("try again": 503 by default, or any 5xx under
/// `server_errors(Storage::Release)`) frees the key whatever its body's size: an
/// oversized 503 or 500 used to store the too-large marker, so every retry got
/// `response-not-stored` for the whole retention and the operation, which said "nothing
/// happened, try again", could never be retried.
#[tokio::test]
async fn an_oversized_answer_of_a_released_status_frees_the_key_too() {
    for (status, server_errors, oversized) in [
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Storage::Store,
            OversizedResponse::PassOn,
        ),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Storage::Release,
            OversizedResponse::PassOn,
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Storage::Store,
            OversizedResponse::Refuse,
        ),
    ] {
        let runs = Arc::new(AtomicUsize::new(0));
        let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
            .max_response_body(4096)
            .server_errors(server_errors)
            .oversized(oversized)
            .build()
            .expect("valid");
        let service = layer.layer(first_answers(status, 10_000, Arc::clone(&runs)));
        let first = service
            .clone()
            .oneshot(post("\"k\""))
            .await
            .expect("infallible");
        assert_eq!(first.status(), status, "{oversized:?}: the answer itself");
        let body = first.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), 10_000, "{status}: passed on whole");
        let retry = service.oneshot(post("\"k\"")).await.expect("infallible");
        assert_eq!(
            retry.status(),
            StatusCode::CREATED,
            "{status} under {server_errors:?}, {oversized:?}: the retry runs again"
        );
        assert!(!retry.headers().contains_key("idempotent-replayed"));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}

/// The request path is the client's: a long one must not turn into the layer's 500
/// `no-scope` (with an error log blaming the application's scope). The route's part of
/// the namespace used to push it over the key length limit, so a POST to a path of a few
/// hundred bytes was refused outright and could never be made idempotent.
#[tokio::test]
async fn a_long_path_is_still_protected_and_keeps_its_own_scope() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::convert::Infallible>(Response::new(Body::from(run.to_string()))) }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let long = |last: char| format!("/{}{last}", "a".repeat(400));
    let call = |path: String| {
        Request::post(path)
            .header("idempotency-key", "\"k\"")
            .body(Body::empty())
            .expect("a valid request")
    };
    let first = service
        .clone()
        .oneshot(call(long('a')))
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
    let again = service
        .clone()
        .oneshot(call(long('a')))
        .await
        .expect("infallible");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.headers().contains_key("idempotent-replayed"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Another long path with the same key is another route: its own run, not a 422.
    let other = service.oneshot(call(long('b'))).await.expect("infallible");
    assert_eq!(other.status(), StatusCode::OK);
    assert!(!other.headers().contains_key("idempotent-replayed"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Under `OversizedResponse::Refuse` "the first client gets the same problem as every
/// retry, so all see one answer". A response within the layer's `max_response_body` but
/// over the store's payload limit gets the too-large marker all the same (never a second
/// run), yet its first client used to be handed the whole response while every retry got
/// `response-not-stored`: two answers.
#[tokio::test]
async fn under_refuse_a_response_the_store_refuses_gets_one_answer_too() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder(
        MemoryStore::new().with_max_payload(1024),
        KeyScope::global(),
    )
    .oversized(OversizedResponse::Refuse)
    .build()
    .expect("valid");
    let service = layer.layer(first_answers(StatusCode::OK, 5000, Arc::clone(&runs)));
    let first = service
        .clone()
        .oneshot(post("\"k\""))
        .await
        .expect("infallible");
    let again = service.oneshot(post("\"k\"")).await.expect("infallible");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "never a second run");
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        first.status(),
        again.status(),
        "the first client gets the retries' answer"
    );
}

/// The stored body is the bytes the inner service answered: compressed, when a compression
/// layer sits inside this one. A replay that dropped `Content-Encoding` would hand a client
/// compressed bytes it cannot tell from plain ones.
#[tokio::test]
async fn a_replay_keeps_the_content_encoding_of_its_body() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Body::from(vec![0x1f, 0x8b, 8, 0, 1, 2, 3]));
                response.headers_mut().insert(
                    http::header::CONTENT_ENCODING,
                    "gzip".parse().expect("valid"),
                );
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let first = service
        .clone()
        .oneshot(post("\"gz\""))
        .await
        .expect("infallible");
    let again = service.oneshot(post("\"gz\"")).await.expect("infallible");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(again.headers().contains_key("idempotent-replayed"));
    assert_eq!(
        again.headers().get(http::header::CONTENT_ENCODING),
        first.headers().get(http::header::CONTENT_ENCODING)
    );
    let (first, again) = (
        first.into_body().collect().await.expect("body").to_bytes(),
        again.into_body().collect().await.expect("body").to_bytes(),
    );
    assert_eq!(first, again);
}

/// `Retry-After` is "the handler's usual run time on this route", and a route is a method
/// and a path (`RunTimes` keeps "a `RunTime` per route (method and path template)"). The
/// averages used to be kept by path alone, so quick `PATCH /x` runs made a duplicate of a
/// long `POST /x`, of which nothing was known yet, told to retry in one second rather than
/// when the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_after_hint_is_kept_per_method_and_path() {
    let started = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let inner = service_fn({
        let (started, go) = (Arc::clone(&started), Arc::clone(&go));
        move |request: Request<Body>| {
            let (started, go) = (Arc::clone(&started), Arc::clone(&go));
            async move {
                if request.method() == http::Method::POST {
                    started.fetch_add(1, Ordering::SeqCst);
                    go.notified().await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(Body::from("done")))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let call = |method: http::Method, key: &str| {
        Request::builder()
            .method(method)
            .uri("/x")
            .header("idempotency-key", key)
            .body(Body::empty())
            .expect("a valid request")
    };
    for n in 0..4 {
        let patched = service
            .clone()
            .oneshot(call(http::Method::PATCH, &format!("\"p{n}\"")))
            .await
            .expect("infallible");
        assert_eq!(patched.status(), StatusCode::OK);
    }
    let first = tokio::spawn(service.clone().oneshot(call(http::Method::POST, "\"k\"")));
    for _ in 0..2_000 {
        if started.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = service
        .clone()
        .oneshot(call(http::Method::POST, "\"k\""))
        .await
        .expect("infallible");
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let seconds: u64 = duplicate.headers()[http::header::RETRY_AFTER]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!(
        seconds > 5,
        "nothing is known of POST /x: the hint is the lease's time left, not PATCH's {seconds} s"
    );
    go.notify_one();
    let first = first.await.expect("joined").expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
}

/// A long path is the client's, not the scope's fault: its digest stands for the route.
/// But only the route was digested, so a principal that fits a key with a short path (an
/// account id of 200 bytes: a long e-mail address, a tenant and user pair) still made
/// the namespace too long on a long path, and the client, by choosing the path, turned its
/// request into the layer's 500 `no-scope`, blaming the application's scope.
#[tokio::test]
async fn a_long_principal_on_a_long_path_is_still_protected() {
    #[derive(Clone)]
    struct Account(String);
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::convert::Infallible>(Response::new(Body::from(run.to_string()))) }
        }
    });
    let layer = IdempotencyLayer::builder(
        MemoryStore::new(),
        KeyScope::principal(|account: &Account| account.0.clone()),
    )
    .build()
    .expect("valid");
    let service = layer.layer(inner);
    let call = |path: &str, account: &str| {
        let mut request = Request::post(path)
            .header("idempotency-key", "\"k\"")
            .body(Body::empty())
            .expect("a valid request");
        request.extensions_mut().insert(Account(account.to_owned()));
        request
    };
    let (alice, bob) = ("a".repeat(200), "b".repeat(200));
    let short = service
        .clone()
        .oneshot(call("/x", &alice))
        .await
        .expect("infallible");
    assert_eq!(short.status(), StatusCode::OK, "the principal fits a key");
    let long = format!("/{}", "p".repeat(400));
    let first = service
        .clone()
        .oneshot(call(&long, &alice))
        .await
        .expect("infallible");
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "a long path is not the scope's fault"
    );
    let again = service
        .clone()
        .oneshot(call(&long, &alice))
        .await
        .expect("infallible");
    assert!(again.headers().contains_key("idempotent-replayed"));
    // Still scoped by principal and by route.
    let other = service
        .clone()
        .oneshot(call(&long, &bob))
        .await
        .expect("infallible");
    assert!(!other.headers().contains_key("idempotent-replayed"));
    let elsewhere = service
        .oneshot(call(&format!("{long}q"), &alice))
        .await
        .expect("infallible");
    assert!(!elsewhere.headers().contains_key("idempotent-replayed"));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

/// A body limit applied in front of the layer (tower-http's `RequestBodyLimitLayer` wraps
/// a chunked body in `http_body_util::Limited`, and axum's router boxes its error once
/// more) ends the body with a length-limit error. That is a body over a limit, 413 as
/// without this layer, not a body that "could not be read": the layer only looked for
/// the error at the top of the chain, so the client got 400 `request-unreadable`.
#[tokio::test]
async fn a_body_over_a_limit_in_front_of_the_layer_is_413() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(first_answers(StatusCode::OK, 2, Arc::clone(&runs)));
    let limited = Body::new(http_body_util::Limited::new(
        Body::from(vec![b'a'; 100]),
        16,
    ));
    let request = Request::post("/x")
        .header("idempotency-key", "\"limited\"")
        .body(limited)
        .expect("a valid request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem = json_of(response).await;
    assert_eq!(problem["type"], problem::REQUEST_TOO_LARGE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Inside an axum `nest`, the path the layer sees has the nest's prefix stripped, so
/// without the `axum` feature one layer on `/v1` and `/v2` nests sees one route for
/// `/v1/orders` and `/v2/orders` and replays one's response to the other (documented on
/// `KeyScope`). With the feature, the matched path keeps them apart.
#[cfg(feature = "axum")]
#[tokio::test]
async fn nested_routers_keep_their_routes_apart_with_the_axum_feature() {
    use axum::Router;
    use axum::routing::post;
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let v1 = Router::new()
        .route("/orders", post(|| async { "v1" }))
        .layer(layer.clone());
    let v2 = Router::new()
        .route("/orders", post(|| async { "v2" }))
        .layer(layer);
    let app = Router::new().nest("/v1", v1).nest("/v2", v2);
    for (path, answer) in [("/v1/orders", "v1"), ("/v2/orders", "v2")] {
        let response = app
            .clone()
            .oneshot(
                Request::post(path)
                    .header("idempotency-key", "\"k\"")
                    .body(Body::empty())
                    .expect("a valid request"),
            )
            .await
            .expect("infallible");
        assert!(
            !response.headers().contains_key("idempotent-replayed"),
            "{path}"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.as_ref(), answer.as_bytes(), "{path}");
    }
}

/// Inside an axum `nest`, the request the layer fingerprints is the one the client sent,
/// not its nest-stripped path: `/v1/orders` and `/v2/orders` (a scope without the route),
/// or `/tenants/a/orders` and `/tenants/b/orders` (one route template, `{t}` in the nest's
/// prefix), with one key and one body, are two requests, and the second gets 422 rather
/// than the first one's response.
#[cfg(feature = "axum")]
#[tokio::test]
async fn inside_a_nest_the_fingerprint_reads_the_path_the_client_sent() {
    use axum::Router;
    use axum::routing::post;
    let reused = |app: Router, first: &'static str, second: &'static str| async move {
        let mut statuses = Vec::new();
        for path in [first, second] {
            let response = app
                .clone()
                .oneshot(
                    Request::post(path)
                        .header("idempotency-key", "\"k\"")
                        .body(Body::from("{}"))
                        .expect("a valid request"),
                )
                .await
                .expect("infallible");
            statuses.push(response.status());
        }
        statuses
    };
    let across_routes =
        IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global().across_routes())
            .build()
            .expect("valid");
    let v1 = Router::new()
        .route("/orders", post(|| async { "v1" }))
        .layer(across_routes.clone());
    let v2 = Router::new()
        .route("/orders", post(|| async { "v2" }))
        .layer(across_routes);
    let app = Router::new().nest("/v1", v1).nest("/v2", v2);
    assert_eq!(
        reused(app, "/v1/orders", "/v2/orders").await,
        [StatusCode::OK, StatusCode::UNPROCESSABLE_ENTITY],
        "one key across routes on another path is another request"
    );
    let per_route = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let tenant = Router::new()
        .route(
            "/orders",
            post(|axum::extract::Path(t): axum::extract::Path<String>| async move { t }),
        )
        .layer(per_route);
    let app = Router::new().nest("/tenants/{t}", tenant);
    assert_eq!(
        reused(app, "/tenants/a/orders", "/tenants/b/orders").await,
        [StatusCode::OK, StatusCode::UNPROCESSABLE_ENTITY],
        "tenant b never gets tenant a's response"
    );
}

/// The first response is the handler's own, and its client must get all of it. Buffering
/// the body for storage used to drop the trailers frame, so the first client lost them (a
/// gRPC call's `grpc-status`, a checksum sent after the body).
#[tokio::test]
async fn the_first_response_keeps_its_trailers() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().expect("valid"));
                let frames = [
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                        axum::body::Bytes::from_static(b"answer"),
                    )),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(Response::new(Body::new(body)))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let first = service
        .clone()
        .oneshot(post("\"trailers\""))
        .await
        .expect("infallible");
    let first = first.into_body().collect().await.expect("body");
    let trailers = first.trailers().cloned();
    assert_eq!(first.to_bytes().as_ref(), b"answer");
    assert_eq!(
        trailers.as_ref().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0")),
        "the first client gets the handler's trailers"
    );
    let again = service
        .oneshot(post("\"trailers\""))
        .await
        .expect("infallible");
    assert!(again.headers().contains_key("idempotent-replayed"));
    let again = again.into_body().collect().await.expect("body");
    assert_eq!(again.to_bytes().as_ref(), b"answer");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A replay is the response that ran, trailers included: they end its body (a gRPC call's
/// `grpc-status` and `grpc-message`, a checksum of the body). They used to be left out of
/// the stored record, so every replay ended without them: a gRPC client read the replay
/// as a call that failed, and a checksum went missing.
#[tokio::test]
async fn a_replay_ends_with_the_first_responses_trailers() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(run));
                trailers.append("checksum", http::HeaderValue::from_static("a"));
                trailers.append("checksum", http::HeaderValue::from_static("b"));
                let frames = [
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                        axum::body::Bytes::from_static(b"answer"),
                    )),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(Response::new(Body::new(body)))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = service
            .clone()
            .oneshot(post("\"trailers\""))
            .await
            .expect("infallible");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        answers.push((replayed, collected.to_bytes(), trailers));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let [
        (false, body, trailers),
        (true, replayed_body, replayed_trailers),
    ] = &answers[..]
    else {
        panic!("a first answer, then a replay: {answers:?}");
    };
    assert_eq!(replayed_body, body);
    let trailers = trailers.as_ref().expect("the first answer's trailers");
    assert_eq!(trailers["grpc-status"], "1");
    assert_eq!(
        replayed_trailers.as_ref(),
        Some(trailers),
        "the replay ends with the same trailers"
    );
}

/// A keyed request's body is rebuilt from its bytes for the handler, which drops the
/// trailers it ended with: the handler would run without them (a checksum, a signature).
/// The layer refuses such a request with a typed 400 instead, and runs nothing.
#[tokio::test]
async fn a_keyed_request_with_trailers_is_refused_not_stripped() {
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok"))) }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("checksum", http::HeaderValue::from_static("abc"));
    let frames = [
        Ok::<_, std::io::Error>(http_body::Frame::data(axum::body::Bytes::from_static(
            b"{}",
        ))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
        frames,
    )));
    let request = Request::post("/x")
        .header("idempotency-key", "\"k\"")
        .body(body)
        .expect("a valid request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer = json_of(response).await;
    assert_eq!(answer["type"], problem::REQUEST_TRAILERS);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the handler never ran without them"
    );
}

/// A client that sends `Expect: 100-continue` waits for the server's go-ahead before it
/// uploads the body. A body its `Content-Length` announces over `max_request_body` is
/// refused with 413 at once; the layer used to poll it first, so the server sent
/// `100 Continue`, the client uploaded (a megabyte of it was read) only to be refused,
/// and a request whose `Content-Length` was larger than what it sent waited for bytes that
/// never came. A body within the limit still gets the go-ahead, and its repeat the
/// stored response after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_before_the_client_is_asked_for_it() {
    let layer = crate::support::builder(MemoryStore::new(), crate::support::by_principal())
        .max_request_body(16)
        .build()
        .expect("valid");
    let app = crate::support::serve(layer).await;
    let head = |length: usize| {
        format!(
            "POST /orders HTTP/1.1\r\nhost: localhost\r\nidempotency-key: \"k\"\r\n\
             x-principal: alice\r\nexpect: 100-continue\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let mut over = crate::support::Raw::connect(app.addr).await;
    over.write(head(17).as_bytes()).await;
    let answer = over.head().await;
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    for replayed in [false, true] {
        let mut within = crate::support::Raw::connect(app.addr).await;
        within.write(head(16).as_bytes()).await;
        let go_ahead = within.head().await;
        assert!(go_ahead.starts_with("http/1.1 100"), "{go_ahead}");
        within.write(&[b'a'; 16]).await;
        let answer = within.head().await;
        assert!(answer.starts_with("http/1.1 201"), "{answer}");
        assert_eq!(
            answer.contains("idempotent-replayed: true"),
            replayed,
            "{answer}"
        );
    }
    assert_eq!(app.runs(), 1);
}

/// A chunked body says nothing of its size, so the layer reads it up to the limit: one over
/// it is 413 too, and the handler never runs.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_too() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .max_request_body(16)
        .build()
        .expect("valid");
    let service = layer.layer(first_answers(StatusCode::OK, 2, Arc::clone(&runs)));
    for (frames, status) in [(2, StatusCode::OK), (3, StatusCode::PAYLOAD_TOO_LARGE)] {
        let chunks = (0..frames).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 8]));
        let request = Request::post("/x")
            .header("idempotency-key", format!("\"chunked-{frames}\""))
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .expect("a valid request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), status, "{frames} chunks of 8 bytes");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A response body sent in one frame (a `String`, a `Vec`: most handlers' answers) is read
/// at once rather than piece by piece, and the limit holds there too: one of exactly
/// `max_response_body` bytes is stored and replayed, and one a byte over it is passed on
/// whole to its first client and never stored, so its retry gets `response-not-stored`
/// and the handler does not run again.
#[tokio::test]
async fn a_response_in_one_frame_is_stored_up_to_the_limit_and_not_past_it() {
    for (bytes, stored) in [(4096, true), (4097, false)] {
        let runs = Arc::new(AtomicUsize::new(0));
        let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
            .max_response_body(4096)
            .build()
            .expect("valid");
        let service = layer.layer(first_answers(StatusCode::OK, bytes, Arc::clone(&runs)));
        let first = service
            .clone()
            .oneshot(post("\"k\""))
            .await
            .expect("infallible");
        assert_eq!(first.status(), StatusCode::OK);
        let body = first.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), bytes, "the first client gets it all");
        let retry = service.oneshot(post("\"k\"")).await.expect("infallible");
        assert!(retry.headers().contains_key("idempotent-replayed"));
        let (status, body) = (retry.status(), retry.into_body());
        let body = body.collect().await.expect("body").to_bytes();
        if stored {
            assert_eq!(status, StatusCode::OK, "{bytes} bytes: replayed");
            assert_eq!(body.len(), bytes, "{bytes} bytes: replayed whole");
        } else {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{bytes} bytes");
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                answer["type"],
                problem::RESPONSE_NOT_STORED,
                "{bytes} bytes"
            );
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "{bytes} bytes: never run twice"
        );
    }
}

/// A request body that breaks off mid-way (the client's connection reset) is not a body
/// over a limit: the client gets 400 `request-unreadable`, not 413 telling it to send
/// less, and the handler never runs, so the key stays free for the request sent again.
#[tokio::test]
async fn a_request_body_that_fails_mid_way_is_400_not_413() {
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(first_answers(StatusCode::OK, 2, Arc::clone(&runs)));
    let chunks = [
        Ok(vec![b'a'; 8]),
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    ];
    let request = Request::post("/x")
        .header("idempotency-key", "\"k\"")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("a valid request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer = json_of(response).await;
    assert_eq!(answer["type"], problem::REQUEST_UNREADABLE);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler never ran");
    let again = service.oneshot(post("\"k\"")).await.expect("infallible");
    assert_eq!(again.status(), StatusCode::OK, "the key was never taken");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A chunked body over the layer's own `max_request_body` is told that limit, so its
/// client knows how much it may send with a key; "the server's size limit" is for a limit
/// in front of the layer, whose size the layer does not know.
#[tokio::test]
async fn a_chunked_body_over_the_layers_limit_is_told_that_limit() {
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .max_request_body(16)
        .build()
        .expect("valid");
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(first_answers(StatusCode::OK, 2, Arc::clone(&runs)));
    let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 8]));
    let request = Request::post("/x")
        .header("idempotency-key", "\"k\"")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("a valid request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer = json_of(response).await;
    assert_eq!(answer["type"], problem::REQUEST_TOO_LARGE);
    let detail = answer["detail"].as_str().expect("a detail");
    assert!(detail.contains("16 byte limit"), "{detail}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Every answer the layer buffers is sent with its `Content-Length`, as the handler's own
/// answer was: the first response, its replay, and one over `max_response_body` passed on
/// with the part the layer read put back in front. Without its length the server sends it
/// chunked, which an HTTP/1.0 client or a proxy that wants a length cannot take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_answer_is_sent_with_its_length() {
    use crate::support::{Call, builder, by_principal, key, send, serve};

    let layer = builder(MemoryStore::new(), by_principal())
        .max_response_body(64)
        .build()
        .expect("valid");
    let app = serve(layer).await;
    let (small, big) = (key("small"), key("big"));
    let large_body = "a".repeat(100);
    let calls = [
        (Call::post("/orders", &small, "alice", "{}"), false),
        (Call::post("/orders", &small, "alice", "{}"), true),
        (Call::post("/orders", &big, "alice", &large_body), false),
    ];
    for (call, replayed) in &calls {
        let reply = send(app.addr, call).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        assert_eq!(reply.replayed(), *replayed, "{}", reply.text());
        let length = reply.headers.get(http::header::CONTENT_LENGTH);
        assert_eq!(
            length.and_then(|l| l.to_str().ok()),
            Some(reply.body.len().to_string().as_str()),
            "{} bytes, replayed: {replayed}: {:?}",
            reply.body.len(),
            reply.headers
        );
    }
    assert_eq!(app.runs(), 2);
}

/// A handler that returned has done its work, and a panic in the body it returned (a
/// stream that hits a bug writing the receipt) is still the handler's panic: caught while
/// the layer reads the body so that the key is settled first, then resumed for the first
/// caller, as without the layer. The key is never freed for a second run: every retry
/// gets the `response-failed` problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_panics_while_it_is_read_reaches_its_caller_and_never_runs_twice() {
    type NextFrame =
        std::task::Poll<Option<Result<http_body::Frame<axum::body::Bytes>, std::io::Error>>>;
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                let frames = futures::stream::poll_fn(|_| -> NextFrame {
                    panic!("the receipt writer has a bug")
                });
                let body = Body::new(http_body_util::StreamBody::new(frames));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        }
    });
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .build()
        .expect("valid");
    let service = layer.layer(inner);
    let first = tokio::spawn(service.clone().oneshot(post("\"k\""))).await;
    assert!(
        first.is_err_and(|error| error.is_panic()),
        "the panic reaches its caller"
    );
    let retry = service.oneshot(post("\"k\"")).await.expect("infallible");
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(retry.headers().contains_key("idempotent-replayed"));
    let answer = json_of(retry).await;
    assert_eq!(answer["type"], problem::RESPONSE_FAILED);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

/// A panic is settled as a 500 whose body failed, so under `server_errors(Storage::Release)`
/// ("a 5xx means nothing happened, try again") a handler that panics before it committed
/// frees its key, whether it panics in `call` itself, before it hands back a future, or
/// in that future: the retry runs the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_released_server_errors_a_handler_that_panics_uncommitted_frees_its_key() {
    for in_call in [true, false] {
        let runs = Arc::new(AtomicUsize::new(0));
        let inner = service_fn({
            let runs = Arc::clone(&runs);
            move |_: Request<Body>| {
                let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                assert!(!(first && in_call), "the handler panics in its call");
                async move {
                    assert!(!first, "the handler panics in its future");
                    Ok::<_, std::convert::Infallible>(Response::new(Body::from("ran again")))
                }
            }
        });
        let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
            .server_errors(Storage::Release)
            .build()
            .expect("valid");
        let service = layer.layer(inner);
        let first = tokio::spawn(service.clone().oneshot(post("\"k\""))).await;
        assert!(
            first.is_err_and(|error| error.is_panic()),
            "in call: {in_call}: the panic reaches its caller"
        );
        let retry = service.oneshot(post("\"k\"")).await.expect("infallible");
        assert_eq!(retry.status(), StatusCode::OK, "in call: {in_call}");
        assert!(!retry.headers().contains_key("idempotent-replayed"));
        let body = retry.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.as_ref(), b"ran again", "in call: {in_call}");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "in call: {in_call}: freed");
    }
}
