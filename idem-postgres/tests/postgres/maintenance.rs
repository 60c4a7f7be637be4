//! Corrupt rows and purging.

use std::time::Duration;

use idem_core::{Error, IdempotencyStore, Key};
use idem_postgres::sqlx::{self, AssertSqlSafe};
use idem_postgres::{PgStore, PurgeExpired};

use crate::support::*;

async fn corrupt(store: &PgStore, key: &Key, set: &str) {
    let changed = sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{}\" SET {set} WHERE namespace = $1 AND idem_key = $2",
        store.table()
    )))
    .bind(key.namespace().as_bytes())
    .bind(key.id().as_bytes())
    .execute(store.pool())
    .await
    .expect("corrupt a row");
    assert_eq!(changed.rows_affected(), 1);
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::CorruptRecord { .. }))
}

#[tokio::test]
async fn rows_that_do_not_decode_are_corrupt_records() {
    let store = shared_store().await;
    let ns = namespace("corrupt");
    for (id, set, finish) in [
        ("bad-state", "state = 9", false),
        ("huge-state", "state = 300", false),
        ("no-payload", "payload = NULL", true),
        ("short-fingerprint", "fingerprint = '\\x0102'::bytea", false),
        ("short-owner", "owner = '\\x01'::bytea", false),
        ("no-lease", "lease_until = NULL", false),
    ] {
        let key = key(&ns, id);
        let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
        if finish {
            store
                .complete(&lease, "x".into(), ttl(RETENTION))
                .await
                .expect("complete");
        }
        corrupt(&store, &key, set).await;
        assert!(is_corrupt(store.read(&key).await), "{id}");
        assert!(is_corrupt(store.claim(&request(&key, LONG)).await), "{id}");
        // Removing a corrupt row works, which is how an operator clears one.
        store.remove(&key).await.expect("remove");
        acquired(
            store
                .claim(&request(&key, LONG))
                .await
                .expect("claim after removal"),
        );
    }
}

#[tokio::test]
async fn purge_removes_only_expired_rows_in_batches() {
    let store = own_store(pool(2).await).await;
    let ns = namespace("purge");
    let short = ttl(Duration::from_millis(50));
    for i in 0..25 {
        let lease = acquired(
            store
                .claim(&request(&key(&ns, &format!("old-{i}")), LONG))
                .await
                .expect("claim"),
        );
        store
            .complete(&lease, "old".into(), short)
            .await
            .expect("complete");
    }
    let mut kept = Vec::new();
    for i in 0..5 {
        let key = key(&ns, &format!("kept-{i}"));
        let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
        if i % 2 == 0 {
            store
                .complete(&lease, "new".into(), ttl(RETENTION))
                .await
                .expect("complete");
        } else {
            // A released key's trace is kept for its fencing memory.
            store.release(&lease).await.expect("release");
        }
        kept.push(key);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(store.purge_expired(10).await.expect("purge"), 25);
    assert_eq!(store.purge_expired(10).await.expect("purge again"), 0);
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{}\"",
        store.table()
    )))
    .fetch_one(store.pool())
    .await
    .expect("count");
    assert_eq!(left, 5);
    for key in &kept {
        assert!(raw_row(&store, key).await.is_some(), "{key:?} was purged");
    }
    assert!(matches!(
        store.purge_expired(0).await,
        Err(Error::InvalidInput(_))
    ));
    drop_table(store.pool(), store.table()).await;
}
