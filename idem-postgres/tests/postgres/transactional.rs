//! The claim and the business write in one transaction.

use std::time::Duration;

use idem_core::{Claim, IdempotencyStore};
use idem_postgres::PgStore;
use idem_postgres::sqlx::{self, AssertSqlSafe, PgPool};

use crate::support::*;

async fn orders_table(pool: &PgPool) -> String {
    let table = fresh_table(pool).await;
    exec(
        pool,
        format!(
            "CREATE TABLE \"{table}\" (client_key text PRIMARY KEY, amount int NOT NULL, \
             fencing bigint NOT NULL)"
        ),
    )
    .await;
    table
}

async fn orders(pool: &PgPool, table: &str, client_key: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{table}\" WHERE client_key = $1"
    )))
    .bind(client_key)
    .fetch_one(pool)
    .await
    .expect("count orders")
}

/// Claims, writes the order and completes, all in one transaction; commits or rolls back.
async fn place_order(store: &PgStore, orders: &str, ns: &str, client_key: &str, commit: bool) {
    let key = key(ns, client_key);
    let mut tx = store.pool().begin().await.expect("begin");
    let lease = acquired(
        store
            .claim_in(&mut tx, &request(&key, LONG))
            .await
            .expect("claim_in"),
    );
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{orders}\" (client_key, amount, fencing) VALUES ($1, $2, $3)"
    )))
    .bind(client_key)
    .bind(4_999)
    .bind(lease.fencing as i64)
    .execute(&mut *tx)
    .await
    .expect("business insert");
    store
        .complete_in(&mut tx, &lease, "order placed".into(), ttl(RETENTION))
        .await
        .expect("complete_in");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn rollback_frees_the_key_and_leaves_no_row() {
    let store = shared_store().await;
    let orders_table = orders_table(store.pool()).await;
    let ns = namespace("tx-rollback");
    place_order(&store, &orders_table, &ns, "order-1", false).await;

    assert_eq!(orders(store.pool(), &orders_table, "order-1").await, 0);
    let key = key(&ns, "order-1");
    assert_eq!(store.read(&key).await.expect("read"), None);
    let again = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    assert_eq!(again.fencing, 1);
    drop_table(store.pool(), &orders_table).await;
}

#[tokio::test]
async fn commit_stores_both_and_the_key_replays() {
    let store = shared_store().await;
    let orders_table = orders_table(store.pool()).await;
    let ns = namespace("tx-commit");
    place_order(&store, &orders_table, &ns, "order-1", true).await;

    assert_eq!(orders(store.pool(), &orders_table, "order-1").await, 1);
    let key = key(&ns, "order-1");
    let replay = store.claim(&request(&key, LONG)).await.expect("claim");
    assert_eq!(replay, Claim::Completed("order placed".into()));
    // A transactional repeat replays too, and writes nothing.
    let mut tx = store.pool().begin().await.expect("begin");
    let replay = store
        .claim_in(&mut tx, &request(&key, LONG))
        .await
        .expect("claim_in");
    assert_eq!(replay, Claim::Completed("order placed".into()));
    tx.commit().await.expect("commit");
    drop_table(store.pool(), &orders_table).await;
}

/// A concurrent claim waits on the row lock, then sees what the transaction did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_claim_waits_for_the_transaction() {
    let store = shared_store().await;
    for commit in [true, false] {
        let key = key(&namespace("tx-wait"), "k");
        let mut tx = store.pool().begin().await.expect("begin");
        let lease = acquired(
            store
                .claim_in(&mut tx, &request(&key, LONG))
                .await
                .expect("claim_in"),
        );
        let waiting = {
            let (store, request) = (store.clone(), request(&key, LONG));
            tokio::spawn(async move { store.claim(&request).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the claim did not wait for the transaction"
        );
        store
            .complete_in(&mut tx, &lease, "done".into(), ttl(RETENTION))
            .await
            .expect("complete_in");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
        let seen = waiting.await.expect("no panic").expect("claim");
        if commit {
            assert_eq!(seen, Claim::Completed("done".into()));
        } else {
            assert_eq!(
                acquired(seen).fencing,
                1,
                "after a rollback the key is free"
            );
        }
    }
}

/// Times come from `clock_timestamp()`, not `now()`: a claim made late in a long transaction
/// gets a lease that ends its TTL after the claim, not after the transaction began.
#[tokio::test]
async fn a_claim_late_in_a_transaction_uses_the_current_clock() {
    let store = shared_store().await;
    let key = key(&namespace("tx-clock"), "k");
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_sleep(1.2)")
        .execute(&mut *tx)
        .await
        .expect("a long transaction");
    acquired(
        store
            .claim_in(&mut tx, &request(&key, Duration::from_secs(1)))
            .await
            .expect("claim_in"),
    );
    let live: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT lease_until > clock_timestamp() FROM \"{SHARED_TABLE}\" \
         WHERE namespace = $1 AND idem_key = $2"
    )))
    .bind(key.namespace().as_bytes())
    .bind(key.id().as_bytes())
    .fetch_one(&mut *tx)
    .await
    .expect("read the lease");
    assert!(
        live,
        "the lease was timed from the start of the transaction"
    );
    tx.commit().await.expect("commit");
}

/// Under REPEATABLE READ, a row another transaction changed after this one's snapshot is a
/// serialization failure (40001): Unavailable, so the caller runs the transaction again.
#[tokio::test]
async fn a_serialization_failure_is_unavailable() {
    let store = shared_store().await;
    let key = key(&namespace("tx-serialize"), "k");
    let first = acquired(
        store
            .claim(&request(&key, Duration::from_millis(100)))
            .await
            .expect("claim"),
    );
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .expect("repeatable read");
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect("take the snapshot");
    // Changed after the snapshot, by another connection.
    store.release(&first).await.expect("release");
    let result = store.claim_in(&mut tx, &request(&key, LONG)).await;
    match result {
        Err(idem_core::Error::Unavailable { source }) => {
            assert!(source.to_string().contains("serialize"), "{source}")
        }
        other => panic!("expected Unavailable (40001), got {other:?}"),
    }
    tx.rollback().await.expect("rollback");
}
