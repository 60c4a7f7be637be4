//! Each token call is one command on the wire: measured with `INFO commandstats` on a
//! server of this test's own, so no other test's traffic is counted.

use crate::common;

use crate::common::{RedisServer, commands_during, expected, raw_connection, sent_by_client};
use idem_core::{Consumption, Error, OwnerToken, Rejection, Scope, TokenStore, Tokens, Ttl};
use idem_redis::RedisTokenStore;
use idem_redis::redis;

fn scope(name: &str) -> Scope {
    Scope::new(name).expect("a valid scope")
}

async fn tokens_at(server: &RedisServer) -> Tokens<RedisTokenStore> {
    let store = common::token_store_at(&server.url(), RedisTokenStore::builder()).await;
    Tokens::new(store)
}

#[tokio::test]
async fn issue_and_consume_are_one_command_each() {
    let server = RedisServer::start();
    let tokens = tokens_at(&server).await;
    tokens.store().load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    let alice = scope("alice");

    let (token, issue) = commands_during(&mut stats, tokens.issue(&alice)).await;
    let token = token.expect("issue");
    assert_eq!(issue, expected(&["set"]));

    // A second issue of the same token: the same single SET tells it is a duplicate.
    let ttl = Ttl::from_secs(60).expect("a valid TTL");
    let (again, duplicate) =
        commands_during(&mut stats, tokens.store().issue(&token, &alice, ttl)).await;
    assert!(matches!(again, Err(Error::TokenCollision)), "{again:?}");
    assert_eq!(duplicate, expected(&["set"]));

    // Another scope: read and checked, nothing written.
    let (answer, wrong) =
        commands_during(&mut stats, tokens.consume(&scope("bob"), token.as_str())).await;
    assert_eq!(
        answer.expect("consume"),
        Consumption::Rejected(Rejection::WrongScope)
    );
    assert_eq!(wrong, expected(&["evalsha", "get"]));

    // The check and the mark are one script run: one command from the client.
    let (answer, consume) =
        commands_during(&mut stats, tokens.consume(&alice, token.as_str())).await;
    assert_eq!(answer.expect("consume"), Consumption::Consumed);
    assert_eq!(consume, expected(&["evalsha", "get", "set"]));
    assert_eq!(sent_by_client(&consume), 1);

    let (answer, repeat) =
        commands_during(&mut stats, tokens.consume(&alice, token.as_str())).await;
    assert_eq!(
        answer.expect("consume"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    assert_eq!(repeat, expected(&["evalsha", "get"]));
}

#[tokio::test]
async fn a_consumers_resend_is_one_command_and_writes_nothing() {
    let server = RedisServer::start();
    let tokens = tokens_at(&server).await;
    tokens.store().load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    let alice = scope("alice");
    let token = tokens.issue(&alice).await.expect("issue");
    let consumer = OwnerToken::random();
    let store = tokens.store();

    let (answer, consume) =
        commands_during(&mut stats, store.consume(&token, &alice, &consumer)).await;
    assert_eq!(answer.expect("consume"), Consumption::Consumed);
    assert_eq!(consume, expected(&["evalsha", "get", "set"]));

    // The same consumer again: read, found its own, nothing written.
    let (answer, resend) =
        commands_during(&mut stats, store.consume(&token, &alice, &consumer)).await;
    assert_eq!(answer.expect("consume"), Consumption::Consumed);
    assert_eq!(resend, expected(&["evalsha", "get"]));
}

#[tokio::test]
async fn the_consume_script_loads_itself_after_a_flush() {
    let server = RedisServer::start();
    let tokens = tokens_at(&server).await;
    let mut stats = raw_connection(&server.url()).await;
    let alice = scope("alice");
    let first = tokens.issue(&alice).await.expect("issue");
    let second = tokens.issue(&alice).await.expect("issue");

    // Without load_scripts: the first consume finds NOSCRIPT, loads, and runs.
    let (answer, cold) = commands_during(&mut stats, tokens.consume(&alice, first.as_str())).await;
    assert_eq!(answer.expect("consume"), Consumption::Consumed);
    assert_eq!(cold.get("script|load"), Some(&1), "{cold:?}");
    assert_eq!(cold.get("evalsha"), Some(&2), "{cold:?}");

    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut stats)
        .await
        .expect("SCRIPT FLUSH");
    let (answer, reloaded) =
        commands_during(&mut stats, tokens.consume(&alice, second.as_str())).await;
    assert_eq!(answer.expect("consume"), Consumption::Consumed);
    assert_eq!(reloaded.get("script|load"), Some(&1), "{reloaded:?}");
}
