//! Values under a token key that the store did not write are corrupt records: never a
//! panic, never a guess, and never overwritten.

use crate::common::{raw_connection, token_store, url};
use idem_core::{
    Consumption, Error, Scope, Token, TokenGenerator, TokenStore, Tokens, Ttl, UuidV7Tokens,
};
use idem_redis::RedisTokenStore;
use idem_redis::redis::{self, aio::MultiplexedConnection};

fn fresh_token(tokens: &Tokens<RedisTokenStore>) -> Token {
    tokens
        .parse(&UuidV7Tokens.generate())
        .expect("a well-formed token")
}

fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one byte", vec![1]),
        ("header without a scope", vec![1, 0]),
        ("text", b"hello, world".to_vec()),
        ("unknown version", b"\x02\x00alice".to_vec()),
        ("unknown state", b"\x01\x07alice".to_vec()),
        ("all ones", vec![0xff; 64]),
    ]
}

async fn write(raw: &mut MultiplexedConnection, redis_key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(redis_key)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(raw)
        .await
        .expect("SET");
}

async fn value_of(raw: &mut MultiplexedConnection, redis_key: &str) -> Vec<u8> {
    redis::cmd("GET")
        .arg(redis_key)
        .query_async(raw)
        .await
        .expect("GET")
}

/// Consuming finds it corrupt, and issuing the same token does not overwrite it.
async fn assert_corrupt_and_kept(
    store: &RedisTokenStore,
    token: &Token,
    scope: &Scope,
    what: &str,
) {
    let consumed = store.consume(token, scope).await;
    assert!(
        matches!(consumed, Err(Error::CorruptRecord { .. })),
        "consume of {what}: {consumed:?}"
    );
    let issued = store
        .issue(token, scope, Ttl::from_secs(60).expect("a valid TTL"))
        .await;
    assert!(
        matches!(issued, Err(Error::TokenCollision)),
        "issue over {what}: {issued:?}"
    );
}

#[tokio::test]
async fn garbage_strings_are_corrupt_records() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let alice = Scope::new("alice").expect("a valid scope");
    for (what, value) in garbage() {
        let token = fresh_token(&tokens);
        let redis_key = store.redis_key(&token);
        write(&mut raw, &redis_key, &value).await;
        assert_corrupt_and_kept(store, &token, &alice, what).await;
        assert_eq!(value_of(&mut raw, &redis_key).await, value, "{what}");
    }
}

#[tokio::test]
async fn other_redis_types_are_corrupt_records() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let alice = Scope::new("alice").expect("a valid scope");
    let writes: [(&str, &str, &[&str]); 3] = [
        ("list", "RPUSH", &["x", "y"]),
        ("hash", "HSET", &["field", "value"]),
        ("set", "SADD", &["member"]),
    ];
    for (what, command, args) in writes {
        let token = fresh_token(&tokens);
        let redis_key = store.redis_key(&token);
        redis::cmd(command)
            .arg(&redis_key)
            .arg(args)
            .query_async::<()>(&mut raw)
            .await
            .expect("write");
        redis::cmd("PEXPIRE")
            .arg(&redis_key)
            .arg(60_000)
            .query_async::<()>(&mut raw)
            .await
            .expect("PEXPIRE");
        assert_corrupt_and_kept(store, &token, &alice, what).await;
        let kind: String = redis::cmd("TYPE")
            .arg(&redis_key)
            .query_async(&mut raw)
            .await
            .expect("TYPE");
        assert_eq!(kind, what);
    }
}

#[tokio::test]
async fn a_handmade_token_in_the_documented_layout_is_consumed() {
    // The counterpart of the garbage: the layout of the docs, well-formed, is accepted.
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let token = fresh_token(&tokens);
    let redis_key = store.redis_key(&token);
    write(&mut raw, &redis_key, b"\x01\x00handmade").await;
    let handmade = Scope::new("handmade").expect("a valid scope");
    assert_eq!(
        store.consume(&token, &handmade).await.expect("consume"),
        Consumption::Consumed
    );
    assert_eq!(value_of(&mut raw, &redis_key).await, b"\x01\x01handmade");
}
