//! Interrupted statements, statement timeouts, lock waits and lost connections, as MySQL
//! and MariaDB report them: several once a defect (issue 16), each a regression test.

use std::time::{Duration, Instant};

use idem_core::{Claim, Consumption, Error, IdempotencyStore, Lease, TokenStore};
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, Executor, MySqlPool};
use idem_mysql::{MySqlStore, MySqlTokenStore};

use idem_sql::testing::maintenance::gives_up_behind_a_row_lock;

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
/// transaction ends; the lease it claimed the key with.
async fn hold_row(
    holder: &MySqlStore,
    key: &idem_core::Key,
) -> (sqlx::Transaction<'static, sqlx::MySql>, Lease) {
    let mut tx = holder.pool().begin().await.expect("begin");
    let lease = acquired(
        holder
            .claim_in(&mut tx, &request(key, LONG))
            .await
            .expect("claim_in"),
    );
    (tx, lease)
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
    let holder = shared_store::<MariaDb>().await;
    let admin = pool(1).await;
    let (store, id) = one_connection_store(None, MySqlStore::DEFAULT_STATEMENT_TIMEOUT).await;
    let key = key(&namespace::<MariaDb>("kill-query"), "k");
    let (tx, _) = hold_row(&holder, &key).await;
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
    let holder = shared_store::<MariaDb>().await;
    let (store, _) = one_connection_store(
        Some("SET SESSION max_statement_time = 0.3"),
        MySqlStore::DEFAULT_STATEMENT_TIMEOUT,
    )
    .await;
    let key = key(&namespace::<MariaDb>("statement-time"), "k");
    let (tx, _) = hold_row(&holder, &key).await;
    let result = store.claim(&request(&key, LONG)).await;
    tx.rollback().await.expect("rollback");
    assert_unavailable_with(result, "1969");
}

/// With no server-side bound at all, the store's own statement timeout ends the wait:
/// `Unavailable` after about the timeout, not after the 50 s lock wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_waits_longer_than_the_statement_timeout() {
    let (store, _) = one_connection_store(None, Duration::from_secs(1)).await;
    gives_up_behind_a_row_lock::<MariaDb>(&store).await;
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

/// A lock wait timeout (1205) on a pooled claim is retried, not reported as in progress;
/// with retries off it is `Unavailable`, carrying the server error. The statement timeout
/// leaves room for the retry: nine tenths of it after the 1 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_timeouts_are_retried() {
    let holder = shared_store::<MariaDb>().await;
    let impatient = MySqlPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
                    .await?;
                Ok(())
            })
        })
        .connect(&url())
        .await
        .expect("connect");
    for retries in [3, 0] {
        let claimer = MySqlStore::builder()
            .table(SHARED_TABLE)
            .lock_retries(retries)
            .statement_timeout(Duration::from_secs(20))
            .build(impatient.clone())
            .expect("table");
        let key = key(&namespace::<MariaDb>("lock-wait"), "k");
        let (mut tx, lease) = hold_row(&holder, &key).await;
        let waiting = {
            let request = request(&key, LONG);
            tokio::spawn(async move { claimer.claim(&request).await })
        };
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        holder
            .complete_in(&mut tx, &lease, "done".into(), ttl(RETENTION))
            .await
            .expect("complete_in");
        tx.commit().await.expect("commit");
        let seen = waiting.await.expect("no panic");
        if retries > 0 {
            assert_eq!(seen.expect("claim"), Claim::Completed("done".into()));
        } else {
            assert_unavailable_with(seen, "1205");
        }
    }
}

/// Kills connection `id`, and waits until it is gone: KILL returns before the server has
/// closed the connection, and a call must not slip in first.
async fn kill_connection(killer: &MySqlPool, id: u64) {
    exec(killer, format!("KILL CONNECTION {id}")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")
                .bind(id)
                .fetch_one(killer)
                .await
                .expect("processlist");
        if alive == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "connection {id} never went away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An outcome write on a connection the server ended is `Unavailable` (which the executor
/// retries), not `Backend`; the next call gets a new connection.
#[tokio::test]
async fn a_lost_connection_is_unavailable() {
    let (store, id) = one_connection_store(None, MySqlStore::DEFAULT_STATEMENT_TIMEOUT).await;
    let killer = pool(1).await;
    let lease = acquired(
        store
            .claim(&request(&key(&namespace::<MariaDb>("lost"), "k"), LONG))
            .await
            .expect("claim"),
    );
    // sqlx pings a connection on its way back to the pool: killed before that ping, it
    // would be found dead there and replaced, and the complete would never meet it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.pool().num_idle() < 1 {
        assert!(
            Instant::now() < deadline,
            "the claim's connection never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_connection(&killer, id).await;
    let result = store.complete(&lease, "done".into(), ttl(RETENTION)).await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    store
        .complete(&lease, "done".into(), ttl(RETENTION))
        .await
        .expect("the next call, on a new connection");
}

/// A claim on a connection the server ended while it sat idle in the pool (a restart, an
/// idle timeout, a kill) runs on a new connection instead of failing: its owner may send
/// it again, and the executor's few claim retries would otherwise be spent one per dead
/// connection.
#[tokio::test]
async fn a_claim_on_a_lost_connection_runs_on_a_new_one() {
    let (store, id) = one_connection_store(None, MySqlStore::DEFAULT_STATEMENT_TIMEOUT).await;
    let killer = pool(1).await;
    kill_connection(&killer, id).await;
    let key = key(&namespace::<MariaDb>("lost-claim"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    assert_eq!(lease.fencing, 1);
    store.release(&lease).await.expect("release");
}

/// A pool made by `connect` pings a connection that sat idle for a while before a call
/// uses it, so a connection the server ended meanwhile (a restart, `wait_timeout`, a kill)
/// is replaced instead of failing the call: an outcome write (like a token's consume or a
/// release), which cannot simply run again on another connection, then succeeds. It
/// failed with `Unavailable`, once per dead connection in the pool.
#[tokio::test]
async fn a_write_on_a_connection_ended_while_idle_runs_on_a_new_one() {
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .max_connections(1)
        .connect(&url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let key = key(&namespace::<MariaDb>("idle-write"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(store.pool())
        .await
        .expect("the store's one connection");
    kill_connection(&pool(1).await, id).await;
    // Idle long enough to be pinged before its next call.
    tokio::time::sleep(idem_sql::driver::PING_AFTER_IDLE + Duration::from_millis(200)).await;
    store
        .complete(&lease, "done".into(), ttl(RETENTION))
        .await
        .expect("the outcome write after the connection was ended");
    let replay = store.claim(&request(&key, LONG)).await.expect("claim");
    assert_eq!(replay, Claim::Completed("done".into()));
}

/// A payload over the server's `max_allowed_packet` (16 MiB on MariaDB), under a store
/// limit set above it, is refused as the store's own limit refuses one: `PayloadTooLarge`
/// with nothing written, so the executor stores its marker under the same lease instead
/// of leaving the key to run again (it was `Backend`).
#[tokio::test]
async fn a_payload_over_max_allowed_packet_is_too_large() {
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .max_payload(64 << 20)
        .build(pool(2).await)
        .expect("store");
    let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
        .fetch_one(store.pool())
        .await
        .expect("max_allowed_packet");
    let size = usize::try_from(packet).expect("a size") + 1;
    let key = key(&namespace::<MariaDb>("packet"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    let refused = store
        .complete(&lease, vec![7u8; size].into(), ttl(RETENTION))
        .await;
    assert!(
        matches!(refused, Err(Error::PayloadTooLarge { size: s, limit }) if s == size && limit < size),
        "{refused:?}"
    );
    let record = store.read(&key).await.expect("read").expect("a record");
    assert_eq!(record.fencing, lease.fencing);
    assert!(
        matches!(record.state, idem_core::RecordState::Claimed { .. }),
        "nothing written: {record:?}"
    );
    store
        .fail(&lease, "too large".into(), ttl(RETENTION))
        .await
        .expect("a marker under the same lease");
}

/// A consume stuck behind a row lock with the default statement timeout (5 s; the server's
/// lock wait gives up at 4 s) is `Unavailable` and changes nothing: the token is still
/// there for the retry. The store ran the statement again after the 4 s lock wait timeout
/// and gave up on it a second later, while the server went on waiting, so the consume
/// took effect once the lock was free, after its caller got `Unavailable`, and the retry
/// was refused as `AlreadyUsed`. The retry is the same consumer's, as `Tokens` resends it;
/// since that consumer would now be answered `Consumed` either way, a consume of another
/// scope, queued behind the lock like the retry, tells first whether the token is unused
/// (`WrongScope`) or was used after all (`AlreadyUsed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_given_up_behind_a_row_lock_changes_nothing() {
    let store = MySqlTokenStore::builder()
        .table(idem_sql::testing::SHARED_TOKEN_TABLE)
        .connect(&url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let token = idem_sql::testing::tokens::new_token(&store);
    let scope = idem_sql::testing::tokens::scope::<MariaDb>("consume-lock-wait");
    store.issue(&token, &scope, ttl(LONG)).await.expect("issue");
    let holder = pool(1).await;
    let mut tx = holder.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT used_at FROM {} WHERE token = ? FOR UPDATE",
        idem_sql::testing::SHARED_TOKEN_TABLE
    )))
    .bind(token.as_str().as_bytes())
    .fetch_optional(&mut *tx)
    .await
    .expect("lock the token's row");
    let consumer = idem_core::OwnerToken::random();
    let given_up = store.consume(&token, &scope, &consumer).await;
    tx.rollback().await.expect("rollback");
    assert!(
        matches!(given_up, Err(Error::Unavailable { .. })),
        "{given_up:?}"
    );
    assert_token_unused(&store, &token, &consumer).await;
    let retried = store
        .consume(&token, &scope, &consumer)
        .await
        .expect("consume");
    assert_eq!(retried, Consumption::Consumed);
}

/// Fails unless `token` is still unused after a consume by `consumer` was given up: a
/// consume of another scope, by another consumer, is told `WrongScope` (`AlreadyUsed` if
/// the given-up consume took effect) and changes nothing.
async fn assert_token_unused(
    store: &MySqlTokenStore,
    token: &idem_core::Token,
    consumer: &idem_core::OwnerToken,
) {
    let elsewhere = idem_sql::testing::tokens::scope::<MariaDb>("elsewhere");
    let probe = store
        .consume(token, &elsewhere, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(
        probe,
        Consumption::Rejected(idem_core::Rejection::WrongScope),
        "the consume by {consumer} that was given up changed nothing"
    );
}

/// A consume that waited for a pooled connection, then behind a row lock, is `Unavailable`
/// and changes nothing. It was sent late in its call, the server's lock wait (4 s) outlived
/// the call's 5 s, and the server went on waiting after the store gave up: the consume took
/// effect once the lock was free, and the caller's retry was refused as `AlreadyUsed`. The
/// retry is the same consumer's, as `Tokens` resends it, after a probe of another scope
/// shows the token unused (see [`assert_token_unused`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_sent_late_in_its_call_changes_nothing_once_given_up() {
    let store = MySqlTokenStore::builder()
        .table(idem_sql::testing::SHARED_TOKEN_TABLE)
        .max_connections(1)
        .connect(&url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let token = idem_sql::testing::tokens::new_token(&store);
    let scope = idem_sql::testing::tokens::scope::<MariaDb>("consume-late");
    store.issue(&token, &scope, ttl(LONG)).await.expect("issue");
    let holder = pool(1).await;
    let mut tx = holder.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT used_at FROM {} WHERE token = ? FOR UPDATE",
        idem_sql::testing::SHARED_TOKEN_TABLE
    )))
    .bind(token.as_str().as_bytes())
    .fetch_optional(&mut *tx)
    .await
    .expect("lock the token's row");
    // The pool's one connection, busy elsewhere for the first 1.5 s of the consume.
    let busy = store.pool().acquire().await.expect("the one connection");
    let consumer = idem_core::OwnerToken::random();
    let consuming = {
        let (store, token, scope) = (store.clone(), token.clone(), scope.clone());
        tokio::spawn(async move { store.consume(&token, &scope, &consumer).await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(busy);
    let given_up = consuming.await.expect("no panic");
    tx.rollback().await.expect("rollback");
    assert!(
        matches!(given_up, Err(Error::Unavailable { .. })),
        "{given_up:?}"
    );
    assert_token_unused(&store, &token, &consumer).await;
    let retried = store
        .consume(&token, &scope, &consumer)
        .await
        .expect("consume");
    assert_eq!(retried, Consumption::Consumed);
}
