//! The transactional mode where PostgreSQL differs: its clock inside a transaction, and
//! serialization failures under REPEATABLE READ.

use std::time::Duration;

use idem_core::IdempotencyStore;
use idem_postgres::sqlx::{self, AssertSqlSafe};

use crate::support::*;

/// Times come from `clock_timestamp()`, not `now()`: a claim made late in a long transaction
/// gets a lease that ends its TTL after the claim, not after the transaction began.
#[tokio::test]
async fn a_claim_late_in_a_transaction_uses_the_current_clock() {
    let store = shared_store::<PostgreSql>().await;
    let key = key(&namespace::<PostgreSql>("tx-clock"), "k");
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
    let store = shared_store::<PostgreSql>().await;
    let key = key(&namespace::<PostgreSql>("tx-serialize"), "k");
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
