//! Faults: connections terminated under load, statements that would wait too long, a server
//! that is not there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem_core::{Error, Idempotency, IdempotencyStore, Retryable};
use idem_postgres::PgStore;
use idem_postgres::sqlx;
use idem_postgres::sqlx::postgres::PgPoolOptions;

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
    let ns = namespace("fault");
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
    assert!(
        unavailable > 0,
        "terminating connections under load caused no Unavailable"
    );
    assert!(!completed.is_empty(), "nothing completed");

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

/// A claim stuck behind a row lock held by a long transaction gives up within the store's
/// statement timeout, as `Unavailable`, instead of waiting as long as the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_never_waits_longer_than_the_statement_timeout() {
    let holder = shared_store().await;
    let impatient = PgStore::builder()
        .table(SHARED_TABLE)
        .statement_timeout(Duration::from_secs(1))
        .connect(&url())
        .await
        .expect("connect");
    let key = key(&namespace("timeout"), "k");
    let mut tx = holder.pool().begin().await.expect("begin");
    acquired(
        holder
            .claim_in(&mut tx, &request(&key, LONG))
            .await
            .expect("claim_in"),
    );
    let started = Instant::now();
    let result = impatient.claim(&request(&key, LONG)).await;
    let waited = started.elapsed();
    tx.rollback().await.expect("rollback");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    // The server cancelled the statement too (57014), the same connection works again.
    let after = impatient
        .claim(&request(&key, LONG))
        .await
        .expect("claim after");
    acquired(after);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1 of loopback.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .expect("a well-formed URL");
    let store = PgStore::from_pool(pool);
    let result = store
        .claim(&request(&key("idem-postgres.down", "k"), LONG))
        .await;
    match result {
        Err(Error::Unavailable { source }) => {
            assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
