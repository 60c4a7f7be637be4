//! The bench's HTTP handler, bare or behind `IdempotencyLayer` on the memory store, called in
//! process (no sockets, no hyper) on a single-threaded runtime, for instruction counts per
//! request: what the layer adds to a request, apart from the connection's work, which is
//! the same for both (`strace -c -f` on the bench's server process counts one `writev` and
//! one `recvfrom` per request, bare or not).
//!
//! ```text
//! cargo build --release -p idem-bench --example http_cost
//! valgrind --tool=callgrind target/release/examples/http_cost new 20000
//! ```
//!
//! Steps: `bare` (the handler alone), `new` (every request a new key), `replay` (keys
//! completed beforehand by as many `new` requests, then each replayed once: subtract
//! `new`'s count), `noop` (the loop alone). Divide the counts, less `noop`'s, by the number
//! of calls. `size` prints the bytes of the layer's future for one request (its box): past
//! glibc's per-thread cache (1,032 bytes) every request's box takes the allocator's slow path.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use idem::http::{IdempotencyLayer, KeyScope};
use idem::{Error, MemoryStore};
use tower::ServiceExt;

/// The bench's handler: a small JSON answer.
async fn charge(body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!("{{\"charged\":{}}}", body.len()),
    )
}

fn request(i: usize) -> Result<Request<Body>, Error> {
    Request::post("/charges")
        .header("host", "bench")
        .header("idempotency-key", format!("\"cost-{i}\""))
        .body(Body::from(Bytes::from_static(b"{\"cents\":4999}")))
        .map_err(Error::backend)
}

/// Sends requests `0..calls` through `router`; each must answer 201, marked as a replay or
/// not as `replay` says.
async fn send(router: &Router, calls: usize, replay: bool) -> Result<(), Error> {
    for i in 0..calls {
        let response = router
            .clone()
            .oneshot(request(i)?)
            .await
            .map_err(Error::backend)?;
        let (parts, body) = response.into_parts();
        body.collect().await.map_err(Error::backend)?;
        if parts.status != StatusCode::CREATED
            || replay != parts.headers.contains_key("idempotent-replayed")
        {
            return Err(Error::backend(format!(
                "unexpected answer {}",
                parts.status
            )));
        }
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let step = args.next().unwrap_or_else(|| "new".to_owned());
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::backend)?;
    let elapsed = runtime.block_on(run(&step, calls))?;
    println!(
        "{step}: {calls} calls, {:.2} µs per call",
        elapsed.as_secs_f64() * 1e6 / calls as f64
    );
    Ok(())
}

async fn run(step: &str, calls: usize) -> Result<Duration, Error> {
    // Both routers with their state given, as `axum::serve` gives it: a router without
    // boxes its handler anew for every request, and behind a layer clones the layer too.
    let bare = Router::new().route("/charges", post(charge)).with_state(());
    let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
        .retention(Duration::from_secs(60))
        .build()?;
    let idem = Router::new()
        .route("/charges", post(charge))
        .layer(layer.clone())
        .with_state(());
    let started = Instant::now();
    match step {
        "bare" => send(&bare, calls, false).await?,
        "new" => send(&idem, calls, false).await?,
        "replay" => {
            send(&idem, calls, false).await?;
            send(&idem, calls, true).await?;
        }
        "size" => {
            let handler = tower::service_fn(|request: Request<Body>| async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let answer = charge(body.unwrap_or_default()).await;
                Ok::<_, Infallible>(axum::response::IntoResponse::into_response(answer))
            });
            let mut service = tower::Layer::layer(&layer, handler);
            let future = tower::Service::call(&mut service, request(0)?);
            println!(
                "the layer's future: {} bytes",
                std::mem::size_of_val(&*future)
            );
        }
        "noop" => {
            for i in 0..calls {
                drop(request(i)?);
            }
        }
        other => return Err(Error::backend(format!("unknown step {other}"))),
    }
    Ok(started.elapsed())
}
