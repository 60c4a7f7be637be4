//! The transactional mode where MySQL/MariaDB differs: MariaDB's snapshot isolation.

use std::time::Duration;

use idem_core::IdempotencyStore;
use idem_mysql::PurgeExpired;
use idem_mysql::sqlx::{self, AssertSqlSafe, Connection};

use idem_sql::testing::{drop_table, own_store, update_row};

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

/// A purge passes a live row in a transaction still open (a claim of the transactional
/// mode): it deletes the expired rows instead of waiting on that row's lock, as one
/// `DELETE ... ORDER BY expires_at LIMIT n` did (the first live row past the expired ones
/// ends its range scan, and is locked too), until it gave up with `Unavailable`.
#[tokio::test]
async fn a_purge_passes_an_open_transactional_claim() {
    let store = own_store::<MariaDb>(pool(3).await).await;
    let ns = namespace::<MariaDb>("tx-purge");
    let expired = key(&ns, "expired");
    acquired(store.claim(&request(&expired, LONG)).await.expect("claim"));
    update_row::<MariaDb>(
        &store,
        &expired,
        "expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 HOUR",
    )
    .await;
    let mut tx = store.pool().begin().await.expect("begin");
    acquired(
        store
            .claim_in(&mut tx, &request(&key(&ns, "open"), LONG))
            .await
            .expect("claim_in"),
    );
    let purged = store.purge_expired(100).await;
    tx.rollback().await.expect("rollback");
    drop_table::<MariaDb>(store.pool(), store.table()).await;
    assert_eq!(purged.expect("purge"), 1);
}
