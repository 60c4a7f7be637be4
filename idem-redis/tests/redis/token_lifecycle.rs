//! The token store's own behaviour beyond the conformance checks: what it writes, how long
//! a used token lives, the order of the checks, and scopes and tokens of any characters.

use std::time::Duration;

use crate::common::{raw_connection, token_store, url, value_of};
use idem_core::{
    Consumption, OwnerToken, Rejection, Scope, Token, TokenGenerator, TokenStore, Tokens, Ttl,
    UuidV7Tokens,
};
use idem_redis::RedisTokenStore;
use idem_redis::redis::{self, aio::MultiplexedConnection};

fn scope(name: &str) -> Scope {
    Scope::new(name).expect("a valid scope")
}

/// What consuming `token` for `scope` answers, through the [`Tokens`] front.
async fn consume(tokens: &Tokens<RedisTokenStore>, scope: &Scope, token: &Token) -> Consumption {
    tokens
        .consume(scope, token.as_str())
        .await
        .expect("consume")
}

async fn pttl(raw: &mut MultiplexedConnection, redis_key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(redis_key)
        .query_async(raw)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn a_used_token_keeps_its_expiry() {
    let tokens = Tokens::new(token_store().await)
        .with_ttl(Duration::from_secs(60))
        .expect("a valid TTL");
    let mut raw = raw_connection(&url()).await;
    let alice = scope("alice");
    let token = tokens.issue(&alice).await.expect("issue");
    let redis_key = tokens.store().redis_key(&token);
    assert_eq!(
        value_of(&mut raw, &redis_key).await.as_deref(),
        Some(b"\x01\x00alice".as_slice())
    );

    assert_eq!(
        consume(&tokens, &alice, &token).await,
        Consumption::Consumed
    );
    // Used by a consumer (state 2): its 16 bytes, then the scope.
    let used = value_of(&mut raw, &redis_key).await.expect("kept");
    assert_eq!(
        (&used[..2], &used[18..]),
        (b"\x01\x02".as_slice(), b"alice".as_slice())
    );
    assert_eq!(used.len(), 2 + 16 + 5);
    // Marked, not made permanent: the key still expires within the TTL it was issued with.
    let left = pttl(&mut raw, &redis_key).await;
    assert!(0 < left && left <= 60_000, "PTTL {left}");
}

/// The value of a token of `scope` that `consumer` used up.
fn used_by(consumer: &OwnerToken, scope: &str) -> Vec<u8> {
    [
        b"\x01\x02".as_slice(),
        consumer.as_bytes(),
        scope.as_bytes(),
    ]
    .concat()
}

#[tokio::test]
async fn the_consumers_resend_is_consumed_again_and_writes_nothing() {
    let store = token_store().await;
    let mut raw = raw_connection(&url()).await;
    let alice = scope("alice");
    let token = Tokens::new(store.clone())
        .parse(&UuidV7Tokens.generate())
        .expect("a well-formed token");
    let redis_key = store.redis_key(&token);
    let ttl = Ttl::from_secs(60).expect("a valid TTL");
    store.issue(&token, &alice, ttl).await.expect("issue");
    let (first, second) = (OwnerToken::random(), OwnerToken::random());

    assert_eq!(
        store
            .consume(&token, &alice, &first)
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    let used = used_by(&first, "alice");
    assert_eq!(value_of(&mut raw, &redis_key).await, Some(used.clone()));
    let left = pttl(&mut raw, &redis_key).await;
    assert!(0 < left && left <= 60_000, "PTTL {left}");

    // Its reply lost, the same consumer asks again: told it consumed, as the first time.
    assert_eq!(
        store
            .consume(&token, &alice, &first)
            .await
            .expect("consume"),
        Consumption::Consumed,
        "the consumer's own resend"
    );
    assert_eq!(
        value_of(&mut raw, &redis_key).await,
        Some(used.clone()),
        "a resend writes nothing"
    );
    // A rewrite without KEEPTTL would have made the key permanent (-1), one with a fresh
    // PX would have put the expiry back up.
    let after = pttl(&mut raw, &redis_key).await;
    assert!(
        0 < after && after <= left,
        "PTTL {after}, {left} before the resend"
    );

    // Anyone else is refused, and so is the consumer for another scope.
    assert_eq!(
        store
            .consume(&token, &alice, &second)
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    assert_eq!(
        store
            .consume(&token, &scope("bob"), &first)
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    assert_eq!(value_of(&mut raw, &redis_key).await, Some(used));
}

#[tokio::test]
async fn a_used_token_is_forgotten_when_it_expires() {
    let store = token_store().await;
    let tokens = Tokens::new(store.clone());
    let alice = scope("alice");
    let token = tokens
        .parse(&UuidV7Tokens.generate())
        .expect("a well-formed token");
    let short = Ttl::from_millis(300).expect("a valid TTL");
    store.issue(&token, &alice, short).await.expect("issue");
    assert_eq!(
        store
            .consume(&token, &alice, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    assert_eq!(
        store
            .consume(&token, &alice, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        store
            .consume(&token, &alice, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::Unknown)
    );
    // Gone, so the same token may be issued again.
    store.issue(&token, &alice, short).await.expect("reissue");
}

#[tokio::test]
async fn a_used_token_is_already_used_for_every_scope() {
    // TokenRecord::consume checks "used" before "scope": a stranger learns no more than
    // the owner would.
    let tokens = Tokens::new(token_store().await);
    let alice = scope("alice");
    let token = tokens.issue(&alice).await.expect("issue");
    assert_eq!(
        consume(&tokens, &alice, &token).await,
        Consumption::Consumed
    );
    assert_eq!(
        consume(&tokens, &scope("mallory"), &token).await,
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
}

#[tokio::test]
async fn scopes_are_compared_byte_for_byte() {
    let tokens = Tokens::new(token_store().await);
    let owner = scope("tenant{7}/ü ser%7D:🔑");
    let token = tokens.issue(&owner).await.expect("issue");
    for other in [
        "tenant{7}/ü ser%7D:",
        "tenant{7}/ü ser%7D:🔑x",
        "tenant{7}/u ser%7D:🔑",
        "tenant%7B7%7D/ü ser}:🔑",
        "TENANT{7}/Ü SER%7D:🔑",
    ] {
        assert_eq!(
            consume(&tokens, &scope(other), &token).await,
            Consumption::Rejected(Rejection::WrongScope),
            "{other}"
        );
    }
    assert_eq!(
        consume(&tokens, &owner, &token).await,
        Consumption::Consumed
    );
}

/// Tokens with braces and percent signs, as a home-made generator might make them.
#[derive(Debug)]
struct BracedTokens;

impl TokenGenerator for BracedTokens {
    fn generate(&self) -> String {
        format!("{{{}}}", uuid::Uuid::new_v4().simple())
    }

    fn is_well_formed(&self, raw: &str) -> bool {
        !raw.is_empty()
    }
}

#[tokio::test]
async fn tokens_of_any_characters_get_keys_of_their_own() {
    let store = token_store().await;
    let tokens = Tokens::new(store.clone()).with_generator(BracedTokens);
    let alice = scope("alice");
    let braced = tokens.issue(&alice).await.expect("issue");
    let redis_key = store.redis_key(&braced);
    let tag = &braced.as_str()[1..braced.as_str().len() - 1];
    assert_eq!(redis_key, format!("{}{{%7B{tag}%7D}}", store.prefix()));

    // Distinct tokens that a naive escaping would merge.
    let ttl = Ttl::from_secs(60).expect("a valid TTL");
    let lookalikes = ["a}", "a%7D", "a%257D", "{a", "%7Ba"];
    for raw in lookalikes {
        let token = tokens.parse(raw).expect("well-formed here");
        store.issue(&token, &alice, ttl).await.expect("issue");
    }
    for raw in lookalikes {
        let token = tokens.parse(raw).expect("well-formed here");
        assert_eq!(
            store
                .consume(&token, &alice, &idem_core::OwnerToken::random())
                .await
                .expect("consume"),
            Consumption::Consumed,
            "{raw}"
        );
    }
    assert_eq!(
        consume(&tokens, &alice, &braced).await,
        Consumption::Consumed
    );
}
