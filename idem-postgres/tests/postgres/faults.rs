//! Connections terminated under load (`pg_terminate_backend`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem_core::{Error, Idempotency, IdempotencyStore, Retryable};
use idem_postgres::PgStore;
use idem_postgres::sqlx;

use crate::support::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Never;
impl Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// Terminates every server connection of `application`; how many.
async fn terminate(admin: &sqlx::PgPool, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application)
    .fetch_one(admin)
    .await
    .expect("terminate backends")
}

/// The store's connections are terminated (`pg_terminate_backend`) again and again while 16
/// tasks run claims and completions: every error is `Unavailable` (never `Backend` or
/// `CorruptRecord`), completed keys replay what they stored, and once the terminations stop
/// every call succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_connections_are_unavailable_then_recover() {
    let application = format!(
        "idem-pg-fault-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = pool(1).await;
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .build(pool_on(&url(), 4, &application).await)
        .expect("store");
    store.migrate().await.expect("migrate");
    let ns = namespace::<PostgreSql>("fault");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (store, stop, ns) = (store.clone(), stop.clone(), ns.clone());
            tokio::spawn(async move {
                let (mut unavailable, mut completed) = (0u32, Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = key(&ns, &format!("{w}-{i}"));
                    let claim = match store.claim(&request(&key, LONG)).await {
                        Ok(claim) => claim,
                        Err(Error::Unavailable { .. }) => {
                            unavailable += 1;
                            continue;
                        }
                        Err(other) => panic!("a claim failed with {other:?}"),
                    };
                    let lease = acquired(claim);
                    let payload = format!("{w}-{i}");
                    match store
                        .complete(&lease, payload.clone().into(), ttl(RETENTION))
                        .await
                    {
                        Ok(()) => completed.push((key, payload)),
                        Err(Error::Unavailable { .. }) => unavailable += 1,
                        Err(other) => panic!("a completion failed with {other:?}"),
                    }
                }
                (unavailable, completed)
            })
        })
        .collect();

    // Terminate until the workers have seen it, at least three rounds, within a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while rounds < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if terminate(&admin, &application).await > 0 {
            rounds += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut unavailable, mut completed) = (0, Vec::new());
    for worker in workers {
        let (u, c) = worker.await.expect("no worker panicked");
        unavailable += u;
        completed.extend(c);
    }
    assert!(
        rounds >= 3,
        "the store's connections were never found to terminate"
    );
    // No count of `Unavailable` is asserted: a claim that found its connection terminated
    // runs again on another, and a termination the pool's release ping finds first costs
    // no call at all.
    assert!(
        !completed.is_empty(),
        "nothing completed ({unavailable} calls unavailable)"
    );

    // Recovery: the pool opens new connections; every completed key replays its payload.
    for (key, payload) in &completed {
        let replay = store
            .claim(&request(key, LONG))
            .await
            .expect("claim after recovery");
        assert_eq!(
            replay,
            idem_core::Claim::Completed(payload.clone().into()),
            "{key:?}"
        );
    }
    let idem = Idempotency::new(store.clone());
    let key = key(&ns, "after");
    let value = idem
        .execute(&key, None, || async { Ok::<u32, Never>(7) })
        .await
        .expect("execute after recovery");
    assert_eq!(value, 7);
}

/// A server that refuses writes because it is read-only (a standby, or a primary demoted by a
/// failover: SQLSTATE 25006) changed nothing, and the application may reach the new primary
/// soon: claims and outcome writes are `Unavailable`, which the executor retries, not a
/// `Backend` error that ends the request with a 500. The sessions here are made read-only
/// (`default_transaction_read_only`), which refuses writes with the same SQLSTATE as a standby.
#[tokio::test]
async fn a_read_only_server_is_unavailable() {
    let writable = PgStore::builder()
        .table(SHARED_TABLE)
        .build(pool(1).await)
        .expect("store");
    writable.migrate().await.expect("migrate");
    let options: sqlx::postgres::PgConnectOptions = url().parse().expect("a valid URL");
    let read_only = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("default_transaction_read_only", "on")]))
        .await
        .expect("a read-only pool");
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .build(read_only)
        .expect("store");
    let ns = namespace::<PostgreSql>("read-only");
    let fresh = key(&ns, "fresh");
    let claim = store.claim(&request(&fresh, LONG)).await;
    assert!(
        matches!(claim, Err(Error::Unavailable { .. })),
        "a claim on a read-only server: {claim:?}"
    );
    let held = key(&ns, "held");
    let lease = acquired(
        writable
            .claim(&request(&held, LONG))
            .await
            .expect("a claim on the primary"),
    );
    let completed = store.complete(&lease, "paid".into(), ttl(RETENTION)).await;
    assert!(
        matches!(completed, Err(Error::Unavailable { .. })),
        "an outcome write on a read-only server: {completed:?}"
    );
    assert_eq!(
        writable.read(&fresh).await.expect("read"),
        None,
        "the refused claim changed nothing"
    );
    writable.remove(&held).await.expect("clean up");
}

/// Every idle connection of a pool the server ended while idle (`pg_terminate_backend`, as a
/// restart or an idle-session timeout does): the executor's next call still succeeds, and
/// so does the one after, instead of each dead connection failing a call of its own until
/// a claim has used up its retries on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_server_ended_cost_no_request() {
    let application = format!(
        "idem-pg-idle-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = pool(1).await;
    let size = 6;
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .build(pool_on(&url(), size, &application).await)
        .expect("store");
    store.migrate().await.expect("migrate");
    // Every connection of the pool opened, then idle.
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(store.pool().acquire().await.expect("a connection"));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.pool().num_idle() < size as usize {
        assert!(
            Instant::now() < deadline,
            "the pool never had every connection idle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(terminate(&admin, &application).await, i64::from(size));
    let idem = Idempotency::new(store.clone());
    let ns = namespace::<PostgreSql>("idle-ended");
    for name in ["first", "second"] {
        let value = idem
            .execute(&key(&ns, name), None, || async { Ok::<u32, Never>(7) })
            .await
            .unwrap_or_else(|error| panic!("the {name} call after the terminations: {error:?}"));
        assert_eq!(value, 7);
    }
}

/// A statement timeout past the longest `statement_timeout` PostgreSQL takes (2^31−1 ms,
/// about 24.8 days) gives the server its longest bound, instead of every connection being
/// refused ("Value exceeds integer range") and the store never connecting.
#[tokio::test]
async fn a_statement_timeout_past_the_servers_range_still_connects() {
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .statement_timeout(Duration::from_secs(30 * 24 * 3600))
        .connect(&url())
        .await
        .expect("connect");
    let bound: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .expect("statement_timeout");
    assert_eq!(bound, "2147483647ms");
    let key = key(&namespace::<PostgreSql>("long-timeout"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    store.release(&lease).await.expect("release");
}

/// A pool made by `connect` pings a connection that sat idle for a while before a call
/// uses it, so a connection the server ended meanwhile (a restart, an idle-session
/// timeout, a kill) is replaced instead of failing the call: an outcome write (like a
/// token's consume or a release), which cannot simply run again on another connection,
/// then succeeds. It failed with `Unavailable`, once per dead connection in the pool.
#[tokio::test]
async fn a_write_on_a_connection_ended_while_idle_runs_on_a_new_one() {
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .max_connections(1)
        .connect(&url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let key = key(&namespace::<PostgreSql>("idle-write"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("the store's one connection");
    let admin = pool(1).await;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(ended, "the store's connection was not terminated");
    // Idle long enough to be pinged before its next call.
    tokio::time::sleep(idem_sql::driver::PING_AFTER_IDLE + Duration::from_millis(200)).await;
    store
        .complete(&lease, "done".into(), ttl(RETENTION))
        .await
        .expect("the outcome write after the connection was ended");
    let replay = store.claim(&request(&key, LONG)).await.expect("claim");
    assert_eq!(replay, idem_core::Claim::Completed("done".into()));
}

/// A payload limit above what PostgreSQL takes in one statement is PostgreSQL's (just
/// under 1 GiB), so a larger payload is refused with `PayloadTooLarge` before it is sent.
/// It was sent: the server ends the connection on a message over 1 GiB, the store
/// reported `Unavailable`, and the executor kept trying the write until the lease ran out
/// and the key ran again. (Checked on the limit, not with a payload of a GiB.)
#[tokio::test]
async fn a_payload_limit_over_the_servers_is_the_servers() {
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .max_payload(usize::MAX)
        .build(pool(1).await)
        .expect("store");
    let limit = store.max_payload();
    assert_eq!(limit, (1 << 30) - (64 << 10));
}
