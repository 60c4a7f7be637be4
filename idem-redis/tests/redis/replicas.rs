//! `wait_for_replicas`: a finish waits for replicas with `WAIT` in the same round trip, on a
//! private primary and replica pair of the test's own.

use std::time::{Duration, Instant};

use crate::common::{
    RedisServer, acquire, key, raw_connection, store_at, ttl_ms, unique_prefix, value_of,
};
use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, InvalidInput};
use idem_redis::redis;
use idem_redis::{RedisStore, ReplicasNotReached};

const WAIT: Duration = Duration::from_millis(300);

/// A primary and one replica of it, once the replica is in sync.
fn replica_pair() -> (RedisServer, RedisServer) {
    // Full sync at once, not after the default 5 s of waiting for more replicas.
    let primary = RedisServer::start_with(vec!["--repl-diskless-sync-delay".into(), "0".into()]);
    let replica = RedisServer::start_with(vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ]);
    // In sync once the primary shows the replica online: the replica reports its link up
    // as soon as it connected, while the primary may still be making the snapshot of its
    // full sync (`state=wait_bgsave`), and a WAIT then counts no replica.
    let client = redis::Client::open(primary.url()).expect("a valid URL");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let info: String = client
            .get_connection()
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
            .unwrap_or_default();
        if info.contains("state=online") {
            return (primary, replica);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the replica on port {} never synced", replica.port);
}

/// A synced primary and replica, and a store on the primary that waits for the replica.
async fn store_waiting_for_a_replica() -> (RedisServer, RedisServer, RedisStore) {
    let (primary, replica) = replica_pair();
    let store = store_at(
        &primary.url(),
        RedisStore::builder()
            .prefix(unique_prefix())
            .wait_for_replicas(1, WAIT),
    )
    .await;
    (primary, replica, store)
}

#[tokio::test]
async fn a_finish_returns_once_the_replica_has_the_record() {
    let (primary, mut replica, store) = store_waiting_for_a_replica().await;
    let ttl = ttl_ms(60_000);

    let k = key("replicated");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl)).await;
    store
        .complete(&lease, Bytes::from_static(b"paid"), ttl)
        .await
        .expect("the replica acknowledged");
    // WAIT returned 1, so the replica holds the finished record already, byte for byte.
    let redis_key = store.redis_key(&k);
    let on = async |url: String| value_of(&mut raw_connection(&url).await, &redis_key).await;
    let on_primary = on(primary.url())
        .await
        .expect("the record is on the primary");
    assert_eq!(on(replica.url()).await.as_ref(), Some(&on_primary));

    // Without the replica, the finish is applied on the primary but reported.
    replica.kill();
    let k = key("unreplicated");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl)).await;
    let result = store
        .fail(&lease, Bytes::from_static(b"declined"), ttl)
        .await;
    let Err(Error::Backend { source }) = &result else {
        panic!("expected a backend error, got {result:?}")
    };
    let short = source
        .downcast_ref::<ReplicasNotReached>()
        .expect("the source says how many replicas answered");
    assert_eq!((short.wanted, short.acknowledged), (1, 0));
    assert!(matches!(
        store.claim(&ClaimRequest::new(k, ttl)).await,
        Ok(Claim::Failed(failure)) if failure == "declined"
    ));
}

/// The kind of a replica shortfall, and what the executor does with it: `Backend`, because
/// the finish is applied on the primary and writing it again cannot help (the lease is
/// spent, so a second finish is `LeaseLost` by the store contract). The executor writes the
/// outcome once (one `WAIT` on the server), hands the value back as `NotRecorded` with the
/// shortfall as the cause, and a repeat of the request replays: the operation ran once.
#[tokio::test]
async fn the_executor_reports_a_replica_shortfall_once_and_a_repeat_replays() {
    use idem_core::{ExecuteError, Idempotency, Retryable};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Declined;
    impl Retryable for Declined {
        fn is_retryable(&self) -> bool {
            false
        }
    }

    let (primary, mut replica, store) = store_waiting_for_a_replica().await;
    let idem = Idempotency::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let operation = || {
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Declined>(7_u32)
        }
    };
    // With the replica up, once: the scripts are loaded, so below every `WAIT` the server
    // counts is a finish's own, not one pipelined behind a `NOSCRIPT` attempt.
    let warm = idem.execute(&key("warm"), None, operation).await;
    assert!(matches!(warm, Ok(7)), "{warm:?}");
    let mut raw = raw_connection(&primary.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .expect("CONFIG RESETSTAT");
    replica.kill();
    let k = key("shortfall");

    let first = idem.execute(&k, None, operation).await;
    let Err(ExecuteError::NotRecorded { result, error }) = first else {
        panic!("expected NotRecorded, got {first:?}")
    };
    assert!(matches!(result, Ok(7)));
    let Error::NotRecorded { cause } = &error else {
        panic!("expected Error::NotRecorded, got {error:?}")
    };
    let Error::Backend { source } = cause.as_ref() else {
        panic!("expected a Backend cause, got {cause:?}")
    };
    assert!(source.downcast_ref::<ReplicasNotReached>().is_some());
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .expect("INFO");
    assert!(
        stats.contains("cmdstat_wait:calls=1,"),
        "the outcome is written once, not retried:\n{stats}"
    );

    let again = idem.execute(&k, None, operation).await.expect("a replay");
    assert_eq!(again, 7);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "once for `warm`, once for this key"
    );
}

/// Whether a client of the server at `raw`'s end is blocked in `WAIT` (`CLIENT LIST`).
async fn blocked_in_wait(raw: &mut redis::aio::MultiplexedConnection) -> bool {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .expect("CLIENT LIST");
    clients.lines().any(|client| client.contains(" cmd=wait "))
}

/// `WAIT` holds up the connection it is sent on until the replicas answer, so a finish
/// waiting for a lagging replica must not hold up the store's other calls: a claim of
/// another key, made while that finish's `WAIT` is blocked on the server, is answered while
/// the `WAIT` still is.
#[tokio::test]
async fn a_finish_waiting_for_a_lagging_replica_holds_up_no_claim() {
    let (primary, replica) = replica_pair();
    let store = store_at(
        &primary.url(),
        RedisStore::builder()
            .prefix(unique_prefix())
            .response_timeout(Duration::from_secs(30))
            .wait_for_replicas(1, Duration::from_secs(10)),
    )
    .await;
    store.load_scripts().await.expect("SCRIPT LOAD");
    let ttl = ttl_ms(60_000);
    let lease = acquire(&store, &ClaimRequest::new(key("slow-finish"), ttl)).await;
    // A replica that stops answering: the finish's WAIT runs out its 10 s.
    replica.pause();
    let finishing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .complete(&lease, Bytes::from_static(b"paid"), ttl)
                .await
        }
    });
    let mut raw = raw_connection(&primary.url()).await;
    let started = Instant::now();
    while !blocked_in_wait(&mut raw).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the finish never reached WAIT"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let claimed = store.claim(&ClaimRequest::new(key("meanwhile"), ttl)).await;
    let still_waiting = blocked_in_wait(&mut raw).await;
    replica.resume();
    assert!(matches!(claimed, Ok(Claim::Acquired(_))), "{claimed:?}");
    assert!(
        still_waiting,
        "the claim was answered only once the finish's WAIT was"
    );
    let finished = finishing.await.expect("the finish did not panic");
    assert!(finished.is_ok(), "{finished:?}");
}

#[tokio::test]
async fn replica_waits_out_of_range_are_refused_before_connecting() {
    for builder in [
        RedisStore::builder().wait_for_replicas(0, WAIT),
        RedisStore::builder().wait_for_replicas(1, Duration::ZERO),
        RedisStore::builder()
            .response_timeout(Duration::from_secs(1))
            .wait_for_replicas(1, Duration::from_secs(1)),
    ] {
        // Nothing listens there: only the settings check can answer.
        let result = builder.connect("redis://127.0.0.1:1").await;
        assert!(
            matches!(result, Err(Error::InvalidInput(InvalidInput::Other(_)))),
            "{result:?}"
        );
    }
}

/// A store on a primary whose replica is gone (so each `WAIT` runs out its timeout), with a
/// replica wait close to the response timeout: the call must still end within the
/// connection timeout plus the response timeout, as the crate docs promise, even when the
/// server has forgotten the scripts (a restart, `SCRIPT FLUSH`).
const CONNECT: Duration = Duration::from_millis(200);
const RESPOND: Duration = Duration::from_millis(1_000);
const LONG_WAIT: Duration = Duration::from_millis(800);

async fn flushed_primary_without_replica() -> RedisServer {
    let primary = RedisServer::start();
    let mut raw = raw_connection(&primary.url()).await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut raw)
        .await
        .expect("SCRIPT FLUSH");
    primary
}

#[tokio::test]
async fn a_finish_that_reloads_its_script_stays_within_the_deadline() {
    let primary = flushed_primary_without_replica().await;
    let store = store_at(
        &primary.url(),
        RedisStore::builder()
            .connection_timeout(CONNECT)
            .response_timeout(RESPOND)
            .wait_for_replicas(1, LONG_WAIT),
    )
    .await;
    let lease = acquire(&store, &ClaimRequest::new(key("reload"), ttl_ms(60_000))).await;
    let started = Instant::now();
    let done = store
        .complete(&lease, Bytes::from_static(b"paid"), ttl_ms(60_000))
        .await;
    let took = started.elapsed();
    assert!(
        took <= CONNECT + RESPOND,
        "the finish took {took:?}, over the {:?} the docs promise ({done:?})",
        CONNECT + RESPOND
    );
}

#[tokio::test]
async fn a_finish_that_applied_is_not_reported_unavailable_by_its_own_deadline() {
    // On a connection of the application's, the store bounds the whole call by the
    // connection timeout plus the response timeout: after a NOSCRIPT the second pipeline's
    // WAIT outlives it, and the finish (written) comes back as a retryable Unavailable.
    let primary = flushed_primary_without_replica().await;
    let client = redis::Client::open(primary.url()).expect("a valid URL");
    // The connection's own response timeout is the store's: only the store's deadline
    // (their sum with the connection timeout) can cut the call short.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPOND));
    let connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    let store = RedisStore::builder()
        .connection_timeout(CONNECT)
        .response_timeout(RESPOND)
        .wait_for_replicas(1, LONG_WAIT)
        .build(connection)
        .expect("build");
    let k = key("reload-own-connection");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(60_000))).await;
    let done = store
        .complete(&lease, Bytes::from_static(b"paid"), ttl_ms(60_000))
        .await;
    let written = matches!(
        store.claim(&ClaimRequest::new(k, ttl_ms(60_000))).await,
        Ok(Claim::Completed(_))
    );
    assert!(
        !(written && matches!(done, Err(Error::Unavailable { .. }))),
        "the finish was written, yet reported as retryable: {done:?}"
    );
}

/// A finish whose reply was lost is sent again by the executor, which gets `LeaseLost`,
/// reads the key back, finds its outcome and reports it stored. With `wait_for_replicas`,
/// the first send's `WAIT` answer was lost with it: the second must check the replicas
/// itself, and report a shortfall rather than `LeaseLost`, or nobody ever did. Another
/// outcome under the spent lease is still `LeaseLost`.
#[tokio::test]
async fn a_finish_sent_again_after_its_reply_was_lost_still_waits_for_the_replicas() {
    let (primary, mut replica, store) = store_waiting_for_a_replica().await;
    let ttl = ttl_ms(60_000);
    // The first send of each finish: applied, its answer (and its WAIT's) lost.
    let first = store_at(&primary.url(), RedisStore::builder().prefix(store.prefix())).await;
    // The replica has it: the lease is spent, and the executor's read-back finds the outcome.
    let replicated = key("sent-again-replicated");
    let lease = acquire(&store, &ClaimRequest::new(replicated, ttl)).await;
    first
        .complete(&lease, Bytes::from_static(b"paid"), ttl)
        .await
        .expect("the first send is applied");
    let again = store
        .complete(&lease, Bytes::from_static(b"paid"), ttl)
        .await;
    assert!(matches!(again, Err(Error::LeaseLost)), "{again:?}");

    let k = key("sent-again");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl)).await;
    replica.kill();
    first
        .complete(&lease, Bytes::from_static(b"paid"), ttl)
        .await
        .expect("the first send is applied");

    let again = store
        .complete(&lease, Bytes::from_static(b"paid"), ttl)
        .await;
    let Err(Error::Backend { source }) = &again else {
        panic!("expected the replica shortfall, got {again:?}")
    };
    let short = source
        .downcast_ref::<ReplicasNotReached>()
        .expect("the source says how many replicas answered");
    assert_eq!((short.wanted, short.acknowledged), (1, 0));
    let other = store
        .complete(&lease, Bytes::from_static(b"other"), ttl)
        .await;
    assert!(matches!(other, Err(Error::LeaseLost)), "{other:?}");
    assert!(matches!(
        store.claim(&ClaimRequest::new(k, ttl)).await,
        Ok(Claim::Completed(receipt)) if receipt == "paid"
    ));
}

/// What the server's clients are doing: how many are blocked in `WAIT`, and whether one of
/// those has more commands queued behind its `WAIT` (`CLIENT LIST`'s `qbuf`).
async fn wait_clients(raw: &mut redis::aio::MultiplexedConnection) -> (usize, bool) {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .expect("CLIENT LIST");
    let waiting: Vec<&str> = clients
        .lines()
        .filter(|client| client.contains(" cmd=wait "))
        .collect();
    let queued = waiting.iter().any(|client| !client.contains(" qbuf=0 "));
    (waiting.len(), queued)
}

/// A finish whose caller went away while its `WAIT` was blocked leaves that lane's
/// connection blocked until the `WAIT` ends: the lane must count as busy until then, so the
/// next finish takes a free lane instead of queueing behind a `WAIT` nobody awaits.
#[tokio::test]
async fn a_cancelled_finish_keeps_its_lane_busy_until_its_wait_ends() {
    let (primary, replica) = replica_pair();
    let store = store_at(
        &primary.url(),
        RedisStore::builder()
            .prefix(unique_prefix())
            .response_timeout(Duration::from_secs(30))
            .wait_for_replicas(1, Duration::from_secs(10)),
    )
    .await;
    store.load_scripts().await.expect("SCRIPT LOAD");
    let ttl = ttl_ms(60_000);
    let first = acquire(&store, &ClaimRequest::new(key("cancelled"), ttl)).await;
    let second = acquire(&store, &ClaimRequest::new(key("next"), ttl)).await;
    replica.pause();
    let finish = |lease| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .complete(&lease, Bytes::from_static(b"paid"), ttl)
                .await
        })
    };
    let cancelled = finish(first);
    let mut raw = raw_connection(&primary.url()).await;
    while wait_clients(&mut raw).await.0 == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancelled.abort();
    let _ = cancelled.await;

    let next = finish(second);
    let (waiting, queued) = loop {
        let (waiting, queued) = wait_clients(&mut raw).await;
        if waiting >= 2 || queued {
            break (waiting, queued);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    replica.resume();
    assert!(
        !queued && waiting == 2,
        "the next finish queued behind the cancelled one's WAIT ({waiting} blocked in WAIT)"
    );
    let next = next.await.expect("the finish did not panic");
    assert!(next.is_ok(), "{next:?}");
}

/// A finish the client gave up on at its response timeout (the primary paused past it) is
/// still run by the server once it resumes: the finish, then its `WAIT`, which blocks that
/// lane's connection. The lane must count as busy until the server has answered it, so the
/// next finish takes a free lane instead of queueing behind a `WAIT` nobody awaits.
#[tokio::test]
async fn a_finish_given_up_on_keeps_its_lane_busy_until_the_server_answered_it() {
    let (primary, replica) = replica_pair();
    let store = store_at(
        &primary.url(),
        RedisStore::builder()
            .prefix(unique_prefix())
            .response_timeout(Duration::from_secs(3))
            .wait_for_replicas(1, Duration::from_millis(2_500)),
    )
    .await;
    store.load_scripts().await.expect("SCRIPT LOAD");
    let ttl = ttl_ms(60_000);
    let first = acquire(&store, &ClaimRequest::new(key("given-up"), ttl)).await;
    let second = acquire(&store, &ClaimRequest::new(key("after"), ttl)).await;
    // Connected before the pause: a new connection would wait for the server too.
    let mut raw = raw_connection(&primary.url()).await;
    replica.pause();
    primary.pause();
    let given_up = store
        .complete(&first, Bytes::from_static(b"paid"), ttl)
        .await;
    primary.resume();
    assert!(
        matches!(given_up, Err(Error::Unavailable { .. })),
        "{given_up:?}"
    );
    let started = Instant::now();
    while wait_clients(&mut raw).await.0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the resumed server never ran the finish's WAIT"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let next = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .complete(&second, Bytes::from_static(b"paid"), ttl)
                .await
        }
    });
    // Both blocked in `WAIT` at once, or the next one is queued behind the first's (where
    // the store's own `PING` waits too, so a queue alone tells nothing) until it times out.
    let waiting = loop {
        let (waiting, _) = wait_clients(&mut raw).await;
        if waiting >= 2 || next.is_finished() {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    replica.resume();
    assert_eq!(
        waiting, 2,
        "the next finish queued behind the WAIT of one given up on"
    );
    let next = next.await.expect("the finish did not panic");
    assert!(next.is_ok(), "{next:?}");
}
