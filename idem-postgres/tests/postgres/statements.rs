//! How many statements each call sends, counted on the wire by a proxy in front of the
//! server, over a one-connection pool.

use std::time::Duration;

use idem_core::{Claim, IdempotencyStore};
use idem_core::{Scope, TokenGenerator, Tokens, UuidV7Tokens};
use idem_postgres::{PgStore, PgTokenStore, PurgeExpired};

use crate::support::*;

/// Long enough that a loaded machine gets from the claim to the read inside it.
const SHORT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_first_claim_and_each_finish_are_one_statement() {
    let proxy = CountingProxy::start().await;
    let pool = pool_on(&proxy.url, 1, "idem-postgres-statements").await;
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .build(pool)
        .expect("store");
    store.migrate().await.expect("migrate");
    let ns = namespace("statements");

    let counted = key(&ns, "counted");
    let (n, claim) = count(&proxy, store.claim(&request(&counted, LONG))).await;
    let lease = acquired(claim.expect("claim"));
    assert_eq!(n, 1, "a first claim is one INSERT");

    let (n, done) = count(&proxy, store.complete(&lease, "r".into(), ttl(RETENTION))).await;
    done.expect("complete");
    assert_eq!(n, 1, "a completion is one UPDATE");

    let (n, replay) = count(&proxy, store.claim(&request(&counted, LONG))).await;
    assert_eq!(replay.expect("replay"), Claim::Completed("r".into()));
    assert_eq!(
        n, 1,
        "a replay is one INSERT that does nothing and reads the row back"
    );

    let failed = key(&ns, "failed");
    let lease = acquired(store.claim(&request(&failed, LONG)).await.expect("claim"));
    let (n, done) = count(&proxy, store.fail(&lease, "f".into(), ttl(RETENTION))).await;
    done.expect("fail");
    assert_eq!(n, 1, "a failure is one UPDATE");

    let other = key(&ns, "others");
    let lease = acquired(store.claim(&request(&other, SHORT)).await.expect("claim"));
    let (n, renewed) = count(&proxy, store.renew(&lease, ttl(SHORT))).await;
    renewed.expect("renew");
    assert_eq!(n, 1, "a renewal is one UPDATE");
    let (n, read) = count(&proxy, store.read(&other)).await;
    assert!(read.expect("read").is_some());
    assert_eq!(n, 1, "a read is one SELECT");
    tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
    let (n, taken) = count(&proxy, store.claim(&request(&other, LONG))).await;
    let lease = acquired(taken.expect("takeover"));
    assert_eq!(
        n, 2,
        "a takeover is the INSERT that reads the row back, and one UPDATE"
    );
    let (n, released) = count(&proxy, store.release(&lease)).await;
    released.expect("release");
    assert_eq!(n, 1, "a release is one UPDATE");
    let (n, removed) = count(&proxy, store.remove(&other)).await;
    assert!(!removed.expect("remove"), "a released key shows no record");
    assert_eq!(n, 1, "a removal is one DELETE ... RETURNING");
    let (n, purged) = count(&proxy, store.purge_expired(1_000_000)).await;
    purged.expect("purge");
    assert_eq!(
        n, 1,
        "a purge with fewer expired rows than a batch is one DELETE"
    );
}

#[tokio::test]
async fn issuing_and_a_winning_consume_are_one_statement_each() {
    let proxy = CountingProxy::start().await;
    let pool = pool_on(&proxy.url, 1, "idem-postgres-statements").await;
    let store = PgTokenStore::builder()
        .table(SHARED_TOKEN_TABLE)
        .build(pool)
        .expect("store");
    store.migrate().await.expect("migrate");
    let tokens = Tokens::new(store.clone());
    let alice = Scope::new(namespace("alice")).expect("scope");
    let token = tokens.parse(&UuidV7Tokens.generate()).expect("token");

    use idem_core::TokenStore;
    let (n, issued) = count(&proxy, store.issue(&token, &alice, ttl(LONG))).await;
    issued.expect("issue");
    assert_eq!(n, 1, "issuing is one INSERT");
    let (n, consumed) = count(&proxy, store.consume(&token, &alice)).await;
    assert_eq!(consumed.expect("consume"), idem_core::Consumption::Consumed);
    assert_eq!(n, 1, "a winning consume is one UPDATE");
    let (n, repeat) = count(&proxy, store.consume(&token, &alice)).await;
    assert!(matches!(repeat, Ok(idem_core::Consumption::Rejected(_))));
    assert_eq!(n, 2, "a rejected consume is the UPDATE and one SELECT");
}
