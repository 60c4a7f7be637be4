//! `PgTokenStore`: what the token conformance suite does not cover.

use std::time::Duration;

use idem_core::{
    Consumption, Error, Rejection, Scope, TokenGenerator, TokenStore, Tokens, UuidV7Tokens,
};
use idem_postgres::sqlx::{self, AssertSqlSafe};
use idem_postgres::{PgTokenStore, PurgeExpired};

use crate::support::*;

fn scope(name: &str) -> Scope {
    Scope::new(namespace(name)).expect("scope")
}

#[tokio::test]
async fn expired_tokens_are_reissued_purged_and_live_ones_never_overwritten() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    let store = PgTokenStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("store");
    store.migrate().await.expect("migrate");
    let tokens = Tokens::new(store.clone());
    let (alice, bob) = (scope("alice"), scope("bob"));
    let token = tokens.parse(&UuidV7Tokens.generate()).expect("token");

    store
        .issue(&token, &alice, ttl(Duration::from_millis(1_500)))
        .await
        .expect("issue");
    let again = store.issue(&token, &bob, ttl(LONG)).await;
    assert!(matches!(again, Err(Error::TokenCollision)), "{again:?}");
    assert_eq!(
        store.consume(&token, &bob).await.expect("consume"),
        Consumption::Rejected(Rejection::WrongScope)
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // Expired: reissued for bob, and now only bob can use it.
    store
        .issue(&token, &bob, ttl(LONG))
        .await
        .expect("reissue an expired token");
    assert_eq!(
        store.consume(&token, &bob).await.expect("consume"),
        Consumption::Consumed
    );

    let short = tokens.parse(&UuidV7Tokens.generate()).expect("token");
    store
        .issue(&short, &alice, ttl(Duration::from_millis(50)))
        .await
        .expect("issue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.purge_expired(100).await.expect("purge"), 1);
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 1, "the used, live token stays until it expires");
    drop_table(&pool, &table).await;
}
