//! Corrupt rows, purging, and an absent server.

use std::time::Duration;

use idem_core::{Error, IdempotencyStore, Key};
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, AssertSqlSafe};
use idem_mysql::{MySqlStore, PurgeExpired};

use crate::support::*;

async fn corrupt(store: &MySqlStore, key: &Key, set: &str) {
    let changed = sqlx::query(AssertSqlSafe(format!(
        "UPDATE `{}` SET {set} WHERE namespace = ? AND idem_key = ?",
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
    let store = own_store(2).await;
    let ns = namespace("corrupt");

    let bad_state = key(&ns, "bad-state");
    acquired(
        store
            .claim(&request(&bad_state, LONG))
            .await
            .expect("claim"),
    );
    corrupt(&store, &bad_state, "state = 9").await;
    assert!(is_corrupt(store.read(&bad_state).await));
    assert!(is_corrupt(store.claim(&request(&bad_state, LONG)).await));

    let no_payload = key(&ns, "no-payload");
    let lease = acquired(
        store
            .claim(&request(&no_payload, LONG))
            .await
            .expect("claim"),
    );
    store
        .complete(&lease, "x".into(), ttl(RETENTION))
        .await
        .expect("complete");
    corrupt(&store, &no_payload, "payload = NULL").await;
    assert!(is_corrupt(store.claim(&request(&no_payload, LONG)).await));

    // BINARY(32) pads short values, so a wrong-length fingerprint needs a wider column, as
    // a hand-made or altered table may have.
    exec(
        store.pool(),
        format!(
            "ALTER TABLE `{}` MODIFY fingerprint VARBINARY(64) NULL",
            store.table()
        ),
    )
    .await;
    let short_fp = key(&ns, "short-fingerprint");
    acquired(store.claim(&request(&short_fp, LONG)).await.expect("claim"));
    corrupt(&store, &short_fp, "fingerprint = x'0102'").await;
    assert!(is_corrupt(store.read(&short_fp).await));
    assert!(is_corrupt(store.claim(&request(&short_fp, LONG)).await));

    // Removing a corrupt row works, which is how an operator clears one.
    store.remove(&bad_state).await.expect("remove");
    acquired(
        store
            .claim(&request(&bad_state, LONG))
            .await
            .expect("claim after removal"),
    );
    drop_table(store.pool(), store.table()).await;
}

#[tokio::test]
async fn purge_removes_only_expired_rows_in_batches() {
    // One connection, so the session's statement counters see every purge batch.
    let store = own_store(1).await;
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

    let statements_before = com_delete(&store).await;
    assert_eq!(store.purge_expired(10).await.expect("purge"), 25);
    // 10 + 10 + 5: three full-or-short batches, each its own DELETE.
    assert_eq!(com_delete(&store).await - statements_before, 3);
    assert_eq!(store.purge_expired(10).await.expect("purge again"), 0);
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{}`",
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

/// DELETE statements the store's one connection ran.
async fn com_delete(store: &MySqlStore) -> u64 {
    let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Com_delete'")
        .fetch_one(store.pool())
        .await
        .expect("Com_delete");
    value.parse().expect("a number")
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1 of loopback.
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .expect("a well-formed URL");
    let store = MySqlStore::from_pool(pool);
    let result = store
        .claim(&request(&key("idem-mysql.down", "k"), LONG))
        .await;
    match result {
        Err(Error::Unavailable { source }) => {
            assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_connection_is_unavailable() {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&url())
        .await
        .expect("connect");
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .build(pool.clone())
        .expect("table");
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&pool)
        .await
        .expect("connection id");
    let killer = crate::support::pool(1).await;
    exec(&killer, format!("KILL CONNECTION {id}")).await;
    // KILL returns before the server has closed the connection: wait until it is gone, so
    // the claim below cannot slip in first.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let alive: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")
                .bind(id)
                .fetch_one(&killer)
                .await
                .expect("processlist");
        if alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connection {id} never went away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = store
        .claim(&request(&key(&namespace("lost"), "k"), LONG))
        .await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
}
