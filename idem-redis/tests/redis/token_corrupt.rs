//! Values under a token key that the store did not write are corrupt records: never a
//! panic, never a guess, and never overwritten.

use crate::common::{
    OTHER_TYPES, plant, plant_other_type, raw_connection, token_store, url, value_of,
};
use idem_core::{
    Consumption, Error, OwnerToken, Rejection, Scope, Token, TokenGenerator, TokenStore, Tokens,
    Ttl, UuidV7Tokens,
};
use idem_redis::RedisTokenStore;
use idem_redis::redis;

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
        // A well-formed header over a scope no `Scope` can be: the store never wrote it,
        // whether the token reads as issued or as used.
        (
            "a scope that is not UTF-8",
            b"\x01\x00\xff\xfealice".to_vec(),
        ),
        (
            "a used token's scope that is not UTF-8",
            b"\x01\x01\xff\xfe".to_vec(),
        ),
        // Used by a consumer (state 2): 16 consumer bytes, then a scope that is never
        // empty.
        (
            "a used mark with a short consumer",
            [&[1, 2][..], &[7; 10]].concat(),
        ),
        (
            "a used mark with a consumer and no scope",
            [&[1, 2][..], &[7; 16]].concat(),
        ),
        (
            "a used mark whose scope is not UTF-8",
            [&[1, 2][..], &[7; 16], b"\xff\xfe"].concat(),
        ),
        (
            "a scope with a control character",
            b"\x01\x00al\x07ice".to_vec(),
        ),
        (
            "a scope over MAX_KEY_LEN",
            [&[1, 0][..], &[b'a'; 256]].concat(),
        ),
    ]
}

/// Consuming finds it corrupt, and issuing the same token does not overwrite it.
async fn assert_corrupt_and_kept(
    store: &RedisTokenStore,
    token: &Token,
    scope: &Scope,
    what: &str,
) {
    let consumed = store.consume(token, scope, &OwnerToken::random()).await;
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
        plant(&mut raw, &redis_key, &value).await;
        assert_corrupt_and_kept(store, &token, &alice, what).await;
        assert_eq!(value_of(&mut raw, &redis_key).await, Some(value), "{what}");
    }
}

#[tokio::test]
async fn other_redis_types_are_corrupt_records() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let alice = Scope::new("alice").expect("a valid scope");
    for (what, command, args) in OTHER_TYPES {
        let token = fresh_token(&tokens);
        let redis_key = store.redis_key(&token);
        plant_other_type(&mut raw, &redis_key, command, args).await;
        assert_corrupt_and_kept(store, &token, &alice, what).await;
        let kind: String = redis::cmd("TYPE")
            .arg(&redis_key)
            .query_async(&mut raw)
            .await
            .expect("TYPE");
        assert_eq!(kind, what);
    }
}

/// A used mark (state 2) too short for its 16 consumer bytes and a scope is stopped by the
/// script's own length check, whose reason names what is missing; read on as a used token
/// of an empty scope, it would be corrupt only by the scope's decoding ("not a scope"),
/// and a consumer's bytes would be compared against a stub. Even for the consumer whose
/// bytes the mark begins with.
#[tokio::test]
async fn a_used_mark_too_short_for_its_consumer_and_scope_is_corrupt_for_that_reason() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let alice = Scope::new("alice").expect("a valid scope");
    let consumer = OwnerToken::from_bytes([7; 16]);
    for (what, value) in [
        ("a short consumer", [&[1, 2][..], &[7; 10]].concat()),
        ("a consumer and no scope", [&[1, 2][..], &[7; 16]].concat()),
    ] {
        let token = fresh_token(&tokens);
        let redis_key = store.redis_key(&token);
        plant(&mut raw, &redis_key, &value).await;
        match store.consume(&token, &alice, &consumer).await {
            Err(Error::CorruptRecord { reason, .. }) => assert!(
                reason.contains("shorter than its header, consumer and scope"),
                "{what}: {reason}"
            ),
            other => panic!("{what}: not CorruptRecord but {other:?}"),
        }
        assert_eq!(value_of(&mut raw, &redis_key).await, Some(value), "{what}");
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
    plant(&mut raw, &redis_key, b"\x01\x00handmade").await;
    let handmade = Scope::new("handmade").expect("a valid scope");
    let consumer = OwnerToken::random();
    assert_eq!(
        store
            .consume(&token, &handmade, &consumer)
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    let used = [b"\x01\x02".as_slice(), consumer.as_bytes(), b"handmade"].concat();
    assert_eq!(value_of(&mut raw, &redis_key).await, Some(used));
}

#[tokio::test]
async fn a_handmade_used_mark_is_its_consumers_alone() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let token = fresh_token(&tokens);
    let redis_key = store.redis_key(&token);
    let consumer = OwnerToken::from_bytes(*b"handmade-owner16");
    let used = [b"\x01\x02".as_slice(), consumer.as_bytes(), b"handmade"].concat();
    plant(&mut raw, &redis_key, &used).await;
    let handmade = Scope::new("handmade").expect("a valid scope");
    assert_eq!(
        store
            .consume(&token, &handmade, &consumer)
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    assert_eq!(
        store
            .consume(&token, &handmade, &OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    assert_eq!(value_of(&mut raw, &redis_key).await, Some(used));
}

/// A token used before the store kept consumers (state 1, no consumer) may still be live
/// after an upgrade: it reads as used by nobody known, so every consumer is refused, and it
/// stays as it is.
#[tokio::test]
async fn a_token_used_before_consumers_were_kept_is_already_used_for_everyone() {
    let tokens = Tokens::new(token_store().await);
    let store = tokens.store();
    let mut raw = raw_connection(&url()).await;
    let token = fresh_token(&tokens);
    let redis_key = store.redis_key(&token);
    plant(&mut raw, &redis_key, b"\x01\x01alice").await;
    let alice = Scope::new("alice").expect("a valid scope");
    let consumer = OwnerToken::random();
    for (who, scope) in [
        ("a consumer", &alice),
        ("the same consumer again", &alice),
        (
            "the same consumer for another scope",
            &Scope::new("bob").expect("a valid scope"),
        ),
    ] {
        assert_eq!(
            store
                .consume(&token, scope, &consumer)
                .await
                .expect("consume"),
            Consumption::Rejected(Rejection::AlreadyUsed),
            "{who}"
        );
    }
    assert_eq!(
        tokens
            .consume(&alice, token.as_str())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed),
        "through Tokens"
    );
    assert_eq!(
        value_of(&mut raw, &redis_key).await.as_deref(),
        Some(b"\x01\x01alice".as_slice())
    );
}
