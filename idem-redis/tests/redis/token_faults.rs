//! Outages: with its server killed, the token store fails fast with `Unavailable`, never
//! hangs or panics, and the same store works again once the server is back.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{RedisServer, token_store_at, unique_prefix};
use idem_core::{Consumption, Error, Scope, Tokens};
use idem_redis::{RedisTokenStore, RedisTokenStoreBuilder};

/// Far above the store's bound (800 ms): catches a hang, not a slow machine.
const NO_HANG: Duration = Duration::from_secs(5);

fn builder() -> RedisTokenStoreBuilder {
    RedisTokenStore::builder()
        .prefix(unique_prefix())
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
}

fn is_unavailable<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Unavailable { source }) if source.is::<idem_redis::redis::RedisError>())
}

#[tokio::test]
async fn a_killed_server_gives_unavailable_and_the_store_recovers() {
    let mut server = RedisServer::start();
    let tokens = Tokens::new(token_store_at(&server.url(), builder()).await);
    let alice = Scope::new("alice").expect("a valid scope");
    let before = tokens.issue(&alice).await.expect("issue");

    server.kill();
    let started = Instant::now();
    let issued = tokens.issue(&alice).await;
    assert!(is_unavailable(&issued), "issue: {issued:?}");
    let consumed = tokens.consume(&alice, before.as_str()).await;
    assert!(is_unavailable(&consumed), "consume: {consumed:?}");
    let loaded = tokens.store().load_scripts().await;
    assert!(is_unavailable(&loaded), "load_scripts: {loaded:?}");
    assert!(started.elapsed() < NO_HANG, "took {:?}", started.elapsed());

    // A fresh server (its memory is gone) and the same store value.
    server.restart();
    let back = Instant::now();
    let after = loop {
        match tokens.issue(&alice).await {
            Ok(token) => break token,
            Err(Error::Unavailable { .. }) if back.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the store did not recover: {other:?}"),
        }
    };
    assert_eq!(
        tokens
            .consume(&alice, after.as_str())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    let port = common::free_port();
    let started = Instant::now();
    let result = builder()
        .connect(&format!("redis://127.0.0.1:{port}"))
        .await;
    assert!(is_unavailable(&result), "{result:?}");
    assert!(started.elapsed() < NO_HANG);
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let result = RedisTokenStore::builder()
        .prefix("app{1}:")
        .connect("redis://127.0.0.1:1")
        .await;
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
}
