//! A payments API made idempotent with `IdempotencyLayer`, served on 127.0.0.1:3000.
//!
//! ```sh
//! cargo run --example http_server                 # the in-memory store
//! IDEM_STORE=redis cargo run --example http_server  # Redis at IDEM_REDIS_URL (default redis://127.0.0.1:6379)
//! IDEM_HTTP_ADDR=127.0.0.1:8080 cargo run --example http_server  # another address
//! ```
//!
//! On Redis the responses outlive the server (24 h): the same keys sent after a restart are
//! replayed.
//!
//! Then, from another terminal (the README's HTTP section explains each answer):
//!
//! ```sh
//! curl -i -X POST localhost:3000/payments -H 'Authorization: Bearer token-alice' \
//!      -H 'Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"' -d 'amount=4999'
//! ```
//!
//! The auth layer turns the bearer token into the account it names, and the idempotency
//! layer scopes keys by that account: two clients never share a key, and a token refreshed
//! between a request and its retry still finds the first response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idem_core::IdempotencyStore;
use idem_http::{IdempotencyLayer, KeyScope};

/// Who is calling: what the auth layer found the bearer token to name.
#[derive(Clone, Debug)]
struct Account(String);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("IDEM_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let app = match std::env::var("IDEM_STORE").as_deref() {
        Ok("redis") => {
            let url = std::env::var("IDEM_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let store = idem_redis::RedisStore::builder()
                .prefix("http-example:")
                .connect(&url)
                .await?;
            println!("store: Redis at {url}");
            app(store)?
        }
        _ => {
            println!("store: in memory (IDEM_STORE=redis for Redis)");
            app(idem_memory::MemoryStore::new())?
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}: POST /payments");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The API: `POST /payments` behind the idempotency layer, behind the auth layer.
fn app<S: IdempotencyStore>(store: S) -> Result<Router, idem_core::Error> {
    let idempotency = IdempotencyLayer::builder(
        store,
        KeyScope::principal(|account: &Account| account.0.clone()),
    )
    .require_key(true)
    .build()?;
    let next_id = Arc::new(AtomicU64::new(1));
    Ok(Router::new()
        .route(
            "/payments",
            post(move |body: String| charge(Arc::clone(&next_id), body)),
        )
        .layer(idempotency)
        // Added last, so it runs first: the idempotency layer needs the account.
        .layer(middleware::from_fn(authenticate)))
}

/// Charges a card: slow on purpose (2 s), so a second curl can find it in progress.
async fn charge(next_id: Arc<AtomicU64>, body: String) -> Response {
    let Some(amount) = body
        .strip_prefix("amount=")
        .and_then(|a| a.parse::<u64>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "expected amount=<cents>\n").into_response();
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = next_id.fetch_add(1, Ordering::SeqCst);
    println!("charged payment {id}: {amount} cents");
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!("{{\"payment\":{id},\"amount\":{amount}}}\n"),
    )
        .into_response()
}

/// A stand-in for real authentication: `Bearer token-<name>` is the account `<name>`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let account = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer token-"))
        .map(|name| Account(name.to_owned()));
    match account {
        Some(account) => {
            request.extensions_mut().insert(account);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer token-<name>\n",
        )
            .into_response(),
    }
}
