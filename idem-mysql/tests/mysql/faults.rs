//! Interrupted statements, statement timeouts and fencing at its limit: each once a defect
//! (issue 16), each a regression test.

use std::time::{Duration, Instant};

use idem_core::{Claim, Error, IdempotencyStore, Lease};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, AssertSqlSafe, Executor, MySqlPool};

use crate::support::*;

/// A store over one connection of its own, and that connection's id.
async fn one_connection_store(
    after_connect: Option<&'static str>,
    statement_timeout: Duration,
) -> (MySqlStore, u64) {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if let Some(statement) = after_connect {
                    conn.execute(statement).await?;
                }
                Ok(())
            })
        })
        .connect(&url())
        .await
        .expect("connect");
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&pool)
        .await
        .expect("connection id");
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .lock_retries(0)
        .statement_timeout(statement_timeout)
        .build(pool)
        .expect("table");
    (store, id)
}

/// Holds the row lock of `key` in a transaction of `holder`'s, until the returned
/// transaction ends.
async fn hold_row(
    holder: &MySqlStore,
    key: &idem_core::Key,
) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut tx = holder.pool().begin().await.expect("begin");
    acquired(
        holder
            .claim_in(&mut tx, &request(key, LONG))
            .await
            .expect("claim_in"),
    );
    tx
}

/// Waits until connection `id` is running a statement (waiting on the row lock).
async fn until_running(admin: &MySqlPool, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: Option<Option<String>> = sqlx::query_scalar(
            "SELECT CAST(INFO AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?",
        )
        .bind(id)
        .fetch_optional(admin)
        .await
        .expect("processlist");
        if info.flatten().is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} never ran the claim"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_unavailable_with<T: std::fmt::Debug>(result: Result<T, Error>, code: &str) {
    match result {
        Err(Error::Unavailable { source }) => {
            assert!(source.to_string().contains(code), "{source}")
        }
        other => panic!("expected Unavailable ({code}), got {other:?}"),
    }
}

/// `KILL QUERY` (1317) interrupts a statement and changes nothing: `Unavailable`, so the
/// executor retries the outcome write instead of giving the key up (it was `Backend`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_query_is_unavailable() {
    let holder = shared_store().await;
    let admin = pool(1).await;
    let (store, id) = one_connection_store(None, MySqlStore::DEFAULT_STATEMENT_TIMEOUT).await;
    let key = key(&namespace("kill-query"), "k");
    let tx = hold_row(&holder, &key).await;
    let waiting = {
        let (store, request) = (store.clone(), request(&key, LONG));
        tokio::spawn(async move { store.claim(&request).await })
    };
    until_running(&admin, id).await;
    exec(&admin, format!("KILL QUERY {id}")).await;
    assert_unavailable_with(waiting.await.expect("no panic"), "1317");
    tx.rollback().await.expect("rollback");
    // The connection itself survived: the same store claims the now free key.
    acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
}

/// MariaDB's `max_statement_time` (1969) ends a statement stuck behind a row lock:
/// `Unavailable`, not `Backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_max_statement_time_is_unavailable() {
    let holder = shared_store().await;
    let (store, _) = one_connection_store(
        Some("SET SESSION max_statement_time = 0.3"),
        MySqlStore::DEFAULT_STATEMENT_TIMEOUT,
    )
    .await;
    let key = key(&namespace("statement-time"), "k");
    let tx = hold_row(&holder, &key).await;
    let result = store.claim(&request(&key, LONG)).await;
    tx.rollback().await.expect("rollback");
    assert_unavailable_with(result, "1969");
}

/// With no server-side bound at all, the store's own statement timeout ends the wait:
/// `Unavailable` after about the timeout, not after the 50 s lock wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_waits_longer_than_the_statement_timeout() {
    let holder = shared_store().await;
    let (store, _) = one_connection_store(None, Duration::from_secs(1)).await;
    let key = key(&namespace("timeout"), "k");
    let tx = hold_row(&holder, &key).await;
    let started = Instant::now();
    let result = store.claim(&request(&key, LONG)).await;
    let waited = started.elapsed();
    tx.rollback().await.expect("rollback");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
}

/// Pools made by `connect` check connections out without a ping, and bound statements on
/// the server side too.
#[tokio::test]
async fn connect_makes_a_pool_without_pings_and_with_server_bounds() {
    let store = MySqlStore::connect(&url()).await.expect("connect");
    assert!(!store.pool().options().get_test_before_acquire());
    let (_, lock_wait): (String, String) =
        sqlx::query_as("SHOW SESSION VARIABLES LIKE 'innodb_lock_wait_timeout'")
            .fetch_one(store.pool())
            .await
            .expect("lock wait timeout");
    // Nine tenths of the 5 s default, in whole seconds: the server gives up first.
    assert_eq!(lock_wait, "4");
}

/// Sets a key's fencing number by hand and lets its lease lapse.
async fn plant_lapsed_fencing(store: &MySqlStore, lease: &Lease, fencing: u64) {
    let changed = sqlx::query(AssertSqlSafe(format!(
        "UPDATE `{}` SET fencing = ?, lease_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND \
         WHERE namespace = ? AND idem_key = ?",
        store.table()
    )))
    .bind(fencing)
    .bind(lease.key.namespace().as_bytes())
    .bind(lease.key.id().as_bytes())
    .execute(store.pool())
    .await
    .expect("plant a fencing number");
    assert_eq!(changed.rows_affected(), 1);
}

/// A key at fencing 2^63−1 is taken over with 2^63 (the takeover's CASE overflowed a
/// signed integer, error 1916, on every claim). At 2^64−1, the end of the column's range, a
/// takeover is refused with `CorruptRecord` and changes nothing, as on every store
/// (`idem_core::backend::lifecycle::next_fencing`): saturating handed the lapsed owner's number to a
/// second owner.
#[tokio::test]
async fn fencing_grows_past_the_signed_limit_and_stops_at_the_unsigned_one() {
    let store = shared_store().await;
    let ns = namespace("fencing-limit");
    let key_at = key(&ns, "signed-max");
    let first = acquired(store.claim(&request(&key_at, LONG)).await.expect("claim"));
    plant_lapsed_fencing(&store, &first, i64::MAX as u64).await;
    let taken = acquired(
        store
            .claim(&request(&key_at, LONG))
            .await
            .expect("a takeover past the signed limit"),
    );
    assert_eq!(taken.fencing, i64::MAX as u64 + 1);
    let stale = Lease {
        fencing: i64::MAX as u64,
        ..first
    };
    assert!(matches!(
        store.complete(&stale, "stale".into(), ttl(RETENTION)).await,
        Err(Error::LeaseLost)
    ));
    store
        .complete(&taken, "ok".into(), ttl(RETENTION))
        .await
        .expect("complete");
    assert_eq!(
        store.claim(&request(&key_at, LONG)).await.expect("replay"),
        Claim::Completed("ok".into())
    );

    let key_at = key(&ns, "unsigned-max");
    let first = acquired(store.claim(&request(&key_at, LONG)).await.expect("claim"));
    plant_lapsed_fencing(&store, &first, u64::MAX).await;
    for _ in 0..2 {
        let refused = store.claim(&request(&key_at, LONG)).await;
        assert!(
            matches!(refused, Err(Error::CorruptRecord { .. })),
            "{refused:?}"
        );
    }
    // Nothing changed: the lapsed owner, whom nobody took over from, can still finish.
    let lapsed = Lease {
        fencing: u64::MAX,
        ..first
    };
    store
        .complete(&lapsed, "late".into(), ttl(RETENTION))
        .await
        .expect("the lapsed owner still holds the key");
}
