//! Outages: with its server killed, the token store fails fast with `Unavailable`, never
//! hangs or panics, and the same store works again once the server is back.

use std::time::Instant;

use crate::common::{RedisServer, token_store_at};
use crate::outage::{NO_HANG, builder, is_unavailable, nothing_listening, once_back, timed};
use idem_core::{Consumption, Error, Scope, Tokens};
use idem_redis::RedisTokenStore;

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
    let after = once_back(|| tokens.issue(&alice)).await;
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
    let result = timed(builder::<RedisTokenStore>().connect(&nothing_listening())).await;
    assert!(is_unavailable(&result), "{result:?}");
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let result = RedisTokenStore::builder()
        .prefix("app{1}:")
        .connect("redis://127.0.0.1:1")
        .await;
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
}
