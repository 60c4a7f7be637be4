//! The transactional mode where MySQL/MariaDB differs: MariaDB's snapshot isolation.

use std::time::Duration;

use idem_core::IdempotencyStore;
use idem_mysql::sqlx::{self, AssertSqlSafe, Connection};

use crate::support::*;

/// MariaDB with `innodb_snapshot_isolation` (the default from 11.6 on) refuses a locking
/// read or a write of a row another transaction changed after this one's snapshot:
/// `ER_CHECKREAD` (1020, "Record has changed since last read"), PostgreSQL's
/// serialization failure. The transaction must run again from the start, so it is
/// `Unavailable`, as a deadlock is, not `Backend`.
#[tokio::test]
async fn a_row_changed_since_the_snapshot_is_unavailable() {
    let store = shared_store::<MariaDb>().await;
    let key = key(&namespace::<MariaDb>("tx-snapshot"), "k");
    let first = acquired(
        store
            .claim(&request(&key, Duration::from_millis(100)))
            .await
            .expect("claim"),
    );
    let mut conn = store.pool().acquire().await.expect("a connection");
    if sqlx::query("SET SESSION innodb_snapshot_isolation = ON")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        // MySQL, or a MariaDB before 10.6.18: no snapshot isolation to check.
        return;
    }
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{SHARED_TABLE}` WHERE namespace = ? AND idem_key = ?"
    )))
    .bind(key.namespace().as_bytes())
    .bind(key.id().as_bytes())
    .execute(&mut *tx)
    .await
    .expect("take the snapshot");
    // Changed after the snapshot, by another connection.
    store.release(&first).await.expect("release");
    let result = store.claim_in(&mut tx, &request(&key, LONG)).await;
    tx.rollback().await.expect("rollback");
    match result {
        Err(idem_core::Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable (1020), got {other:?}"),
    }
}
