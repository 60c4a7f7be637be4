//! Outages: a server of the test's own is killed mid-run and restarted; calls fail fast
//! with `Unavailable`, never hang or panic, and the same store works again afterwards.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{RedisServer, SlowProxy, acquire, key, store_at, ttl_ms, unique_prefix, url};
use crate::outage::{NO_HANG, builder, is_unavailable, nothing_listening, once_back, timed};
use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, OwnerToken};
use idem_redis::RedisStore;
use idem_redis::redis::AsyncConnectionConfig;

/// Claims fresh keys in a loop until stopped; returns how many succeeded and failed, and
/// the longest call.
async fn claim_loop(
    store: Arc<RedisStore>,
    stop: Arc<AtomicBool>,
    task: usize,
) -> (u32, u32, Duration) {
    let (mut ok, mut unavailable, mut longest) = (0, 0, Duration::ZERO);
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let request = ClaimRequest::new(key(&format!("load-{task}-{i}")), ttl_ms(10_000));
        let started = Instant::now();
        let result = store.claim(&request).await;
        longest = longest.max(started.elapsed());
        match result {
            Ok(Claim::Acquired(_)) => ok += 1,
            Err(Error::Unavailable { .. }) => unavailable += 1,
            other => panic!("during an outage a claim must succeed or be Unavailable: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, unavailable, longest)
}

async fn assert_every_call_is_unavailable(store: &RedisStore, k: &Key) {
    let lease = Lease::new(k.clone(), OwnerToken::random(), 1);
    let request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
    let started = Instant::now();
    assert!(is_unavailable(&store.claim(&request).await));
    assert!(is_unavailable(
        &store.complete(&lease, Bytes::new(), ttl_ms(10_000)).await
    ));
    assert!(is_unavailable(
        &store.fail(&lease, Bytes::new(), ttl_ms(10_000)).await
    ));
    assert!(is_unavailable(&store.renew(&lease, ttl_ms(10_000)).await));
    assert!(is_unavailable(&store.release(&lease).await));
    assert!(is_unavailable(&store.read(k).await));
    assert!(is_unavailable(&store.remove(k).await));
    assert!(is_unavailable(&store.load_scripts().await));
    assert!(started.elapsed() < NO_HANG, "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_gives_unavailable_and_the_store_recovers() {
    let mut server = RedisServer::start();
    let store = Arc::new(store_at(&server.url(), builder()).await);
    let k = key("before");
    let request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
    assert!(matches!(
        store.claim(&request).await,
        Ok(Claim::Acquired(_))
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|task| tokio::spawn(claim_loop(Arc::clone(&store), Arc::clone(&stop), task)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_every_call_is_unavailable(&store, &key("during")).await;

    server.restart();
    // The same store value, not rebuilt, works again once the server is back.
    let request = ClaimRequest::new(key("after"), ttl_ms(10_000));
    let Claim::Acquired(lease) = once_back(|| store.claim(&request)).await else {
        panic!("the key after the outage is new")
    };
    store
        .complete(&lease, Bytes::from_static(b"back"), ttl_ms(10_000))
        .await
        .expect("complete");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut unavailable) = (0, 0);
    for task in load {
        let (o, u, longest) = task.await.expect("no claim panicked");
        assert!(longest < NO_HANG, "a claim took {longest:?}");
        ok += o;
        unavailable += u;
    }
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    let result = timed(builder::<RedisStore>().connect(&nothing_listening())).await;
    assert!(is_unavailable(&result), "{result:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and reads nothing: a hung server or a black-holed network.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    let result = timed(builder::<RedisStore>().connect(&format!("redis://127.0.0.1:{port}"))).await;
    assert!(is_unavailable(&result), "{result:?}");
    drop(listener);
}

#[tokio::test]
async fn a_malformed_url_is_a_backend_error() {
    let result = RedisStore::connect("mysql://127.0.0.1/").await;
    assert!(matches!(result, Err(Error::Backend { .. })), "{result:?}");
}

/// A server that stops answering after the store connected (paused with SIGSTOP): every
/// call gives up within the timeouts, whether the connection bounds it (the store's own
/// manager) or the store does (a connection from the application).
#[tokio::test]
async fn a_hung_server_times_out_every_call() {
    let server = RedisServer::start();
    let managed = store_at(&server.url(), builder()).await;
    let client = idem_redis::redis::Client::open(server.url()).expect("a valid URL");
    // No response timeout of its own: only the store's deadline can end a call.
    let unbounded = AsyncConnectionConfig::new().set_response_timeout(None);
    let plain = client
        .get_multiplexed_async_connection_with_config(&unbounded)
        .await
        .expect("a connection");
    let own = builder::<RedisStore>()
        .build(plain)
        .expect("a valid prefix");
    let k = key("hung");
    server.pause();
    for result in [
        timed(managed.claim(&ClaimRequest::new(k.clone(), ttl_ms(30_000)))).await,
        timed(own.claim(&ClaimRequest::new(k.clone(), ttl_ms(30_000)))).await,
    ] {
        assert!(is_unavailable(&result), "{result:?}");
    }
    server.resume();
}

#[tokio::test]
async fn a_server_out_of_memory_is_unavailable_to_a_store_waiting_for_replicas_too() {
    // Out of memory is worth retrying later (the write was refused): Unavailable, for a
    // finish sent alone and for one sent with `WAIT` in the same pipeline alike.
    let server = RedisServer::start();
    let plain = store_at(&server.url(), RedisStore::builder()).await;
    let waiting = store_at(
        &server.url(),
        RedisStore::builder().wait_for_replicas(1, Duration::from_millis(50)),
    )
    .await;
    let mut leases = Vec::new();
    for id in ["plain", "waiting"] {
        let request = ClaimRequest::new(key(id), ttl_ms(30_000));
        leases.push(crate::common::acquire(&plain, &request).await);
    }
    let mut config = crate::common::raw_connection(&server.url()).await;
    idem_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async::<()>(&mut config)
        .await
        .expect("CONFIG SET maxmemory");
    for (store, lease) in [&plain, &waiting].into_iter().zip(&leases) {
        let done = store
            .complete(lease, Bytes::from_static(b"x"), ttl_ms(30_000))
            .await;
        assert!(is_unavailable(&done), "{store:?}: {done:?}");
    }
}

/// A claim that finds another owner's lease takes two round trips (the plain `SET`, then
/// the claim script): on a server that answers each command late, but within the response
/// timeout, the two together must still end within the connection timeout plus the response
/// timeout, as the crate docs promise of every call, whether the connection bounds the call
/// (the store's own manager) or the store does (a connection from the application).
#[tokio::test]
async fn a_claim_of_a_held_key_keeps_within_one_deadline() {
    const CONNECT: Duration = Duration::from_millis(200);
    const RESPOND: Duration = Duration::from_millis(2_000);
    // Each round trip fits the response timeout; two of them do not fit the deadline.
    let proxy = SlowProxy::start(&url(), Duration::from_millis(1_500)).await;
    let prefix = unique_prefix();
    let settings = || {
        RedisStore::builder()
            .prefix(prefix.clone())
            .connection_timeout(CONNECT)
            .response_timeout(RESPOND)
    };
    let owner = store_at(&url(), settings()).await;
    owner.load_scripts().await.expect("SCRIPT LOAD");
    let k = key("held");
    acquire(&owner, &ClaimRequest::new(k.clone(), ttl_ms(60_000))).await;

    let managed = store_at(&proxy.url(), settings()).await;
    let client = idem_redis::redis::Client::open(proxy.url()).expect("a valid URL");
    let unbounded = AsyncConnectionConfig::new().set_response_timeout(None);
    let plain = client
        .get_multiplexed_async_connection_with_config(&unbounded)
        .await
        .expect("a connection");
    let own = settings().build(plain).expect("a valid prefix");
    proxy.slow_down();
    let request = ClaimRequest::new(k, ttl_ms(60_000));
    for claimed in [managed.claim(&request).await, own.claim(&request).await] {
        assert!(
            is_unavailable(&claimed),
            "the claim outlived its deadline to answer {claimed:?}"
        );
    }
}

/// A server that has forgotten the scripts (a restart, `SCRIPT FLUSH`) costs a script call
/// two more round trips (`SCRIPT LOAD`, then the script again): on a server that answers
/// each command late, but within the response timeout, the three together must still end
/// within the connection timeout plus the response timeout, for a script run alone (read)
/// and for a finish with `WAIT` behind it alike.
#[tokio::test]
async fn a_call_that_reloads_its_script_keeps_within_one_deadline() {
    let server = RedisServer::start();
    let proxy = SlowProxy::start(&server.url(), Duration::from_millis(1_500)).await;
    let settings = || {
        RedisStore::builder()
            .prefix(unique_prefix())
            .connection_timeout(Duration::from_millis(200))
            .response_timeout(Duration::from_millis(2_000))
    };
    let plain = store_at(&proxy.url(), settings()).await;
    let waiting = store_at(
        &proxy.url(),
        settings().wait_for_replicas(1, Duration::from_millis(100)),
    )
    .await;
    let lease = acquire(&waiting, &ClaimRequest::new(key("k"), ttl_ms(60_000))).await;
    proxy.slow_down();
    let read = plain.read(&key("fresh")).await;
    assert!(
        is_unavailable(&read),
        "the read outlived its deadline to answer {read:?}"
    );
    let completed = waiting
        .complete(&lease, Bytes::from_static(b"paid"), ttl_ms(60_000))
        .await;
    assert!(
        is_unavailable(&completed),
        "the finish outlived its deadline to answer {completed:?}"
    );
}

/// A full server (`maxmemory` reached, `noeviction`) refuses writes, but what it holds it
/// still serves: a repeat of a finished key gets its stored outcome, and a repeat of a key
/// in progress is told so, while a claim that would write (a new key) is refused as
/// `Unavailable`.
#[tokio::test]
async fn a_full_server_still_replays_and_reports_keys_in_progress() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let ttl = ttl_ms(60_000);
    let done = key("done");
    let lease = acquire(&store, &ClaimRequest::new(done.clone(), ttl)).await;
    store
        .complete(&lease, Bytes::from_static(b"receipt"), ttl)
        .await
        .expect("complete");
    let running = key("running");
    acquire(&store, &ClaimRequest::new(running.clone(), ttl)).await;
    let mut config = crate::common::raw_connection(&server.url()).await;
    idem_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async::<()>(&mut config)
        .await
        .expect("CONFIG SET maxmemory");

    let replay = store.claim(&ClaimRequest::new(done, ttl)).await;
    assert!(
        matches!(&replay, Ok(Claim::Completed(receipt)) if receipt == "receipt"),
        "{replay:?}"
    );
    let repeat = store.claim(&ClaimRequest::new(running, ttl)).await;
    assert!(matches!(repeat, Ok(Claim::InProgress { .. })), "{repeat:?}");
    let new = store.claim(&ClaimRequest::new(key("new"), ttl)).await;
    assert!(is_unavailable(&new), "{new:?}");
}

/// A primary that refuses writes for want of replicas (`min-replicas-to-write`, replicas
/// lagging or gone: `NOREPLICAS`) refused the write and wrote nothing, and will take it
/// once the replicas are back: worth retrying later, so `Unavailable`, as out of memory is.
#[tokio::test]
async fn a_primary_short_of_replicas_is_unavailable() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let ttl = ttl_ms(60_000);
    let lease = acquire(&store, &ClaimRequest::new(key("running"), ttl)).await;
    let mut config = crate::common::raw_connection(&server.url()).await;
    idem_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("1")
        .query_async::<()>(&mut config)
        .await
        .expect("CONFIG SET min-replicas-to-write");

    let claimed = store.claim(&ClaimRequest::new(key("new"), ttl)).await;
    assert!(is_unavailable(&claimed), "{claimed:?}");
    let completed = store
        .complete(&lease, Bytes::from_static(b"receipt"), ttl)
        .await;
    assert!(is_unavailable(&completed), "{completed:?}");
}

/// A primary that refuses writes for want of replicas still serves what it holds: a repeat
/// of a finished key gets its stored outcome, and a repeat of a key in progress is told so.
#[tokio::test]
async fn a_primary_short_of_replicas_still_replays_and_reports_keys_in_progress() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let ttl = ttl_ms(60_000);
    let done = key("done");
    let lease = acquire(&store, &ClaimRequest::new(done.clone(), ttl)).await;
    store
        .complete(&lease, Bytes::from_static(b"receipt"), ttl)
        .await
        .expect("complete");
    let running = key("running");
    acquire(&store, &ClaimRequest::new(running.clone(), ttl)).await;
    let mut config = crate::common::raw_connection(&server.url()).await;
    idem_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("1")
        .query_async::<()>(&mut config)
        .await
        .expect("CONFIG SET min-replicas-to-write");

    let replay = store.claim(&ClaimRequest::new(done, ttl)).await;
    assert!(
        matches!(&replay, Ok(Claim::Completed(receipt)) if receipt == "receipt"),
        "{replay:?}"
    );
    let repeat = store.claim(&ClaimRequest::new(running, ttl)).await;
    assert!(matches!(repeat, Ok(Claim::InProgress { .. })), "{repeat:?}");
}

/// Ends every connection of the server's clients but the caller's (`CLIENT KILL`), as the
/// server's idle `timeout` does, and gives the clients a moment of idleness after it.
async fn server_closes_connections(server: &RedisServer) {
    let mut admin = crate::common::raw_connection(&server.url()).await;
    let killed: i64 = idem_redis::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert!(killed > 0, "no connection to close");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A server that closed an idle connection is still up: the next call (a claim, and a
/// finish on a lane of its own) must get the server's answer, not `Unavailable`.
#[tokio::test]
async fn a_connection_the_server_closed_while_idle_fails_no_call() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let waiting = store_at(
        &server.url(),
        RedisStore::builder().wait_for_replicas(1, Duration::from_millis(20)),
    )
    .await;
    let lease = acquire(&store, &ClaimRequest::new(key("idle-1"), ttl_ms(30_000))).await;
    server_closes_connections(&server).await;
    let claim = store
        .claim(&ClaimRequest::new(key("idle-2"), ttl_ms(30_000)))
        .await;
    assert!(matches!(claim, Ok(Claim::Acquired(_))), "{claim:?}");
    // No replica: the finish is written, and the lane answers that the replica is missing.
    let finish = waiting
        .complete(&lease, Bytes::from_static(b"x"), ttl_ms(30_000))
        .await;
    assert!(matches!(finish, Err(Error::Backend { .. })), "{finish:?}");
}

/// A server whose last snapshot failed refuses writes (`stop-writes-on-bgsave-error`,
/// `MISCONF`) until one succeeds, a disk problem an operator fixes, and still serves what it
/// holds: as a full server, worth retrying later (`Unavailable`), and a repeat of a finished
/// key gets its outcome and one of a key in progress is told so.
#[tokio::test]
async fn a_server_that_cannot_persist_is_unavailable_and_still_replays() {
    let dir = std::env::temp_dir().join(format!("idem-misconf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).expect("a directory of the test's own");
    let server = RedisServer::start_with(vec![
        "--dir".into(),
        dir.display().to_string(),
        "--save".into(),
        "3600 1".into(),
    ]);
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let ttl = ttl_ms(60_000);
    let done = key("done");
    let lease = acquire(&store, &ClaimRequest::new(done.clone(), ttl)).await;
    store
        .complete(&lease, Bytes::from_static(b"receipt"), ttl)
        .await
        .expect("complete");
    let running = key("running");
    let running_lease = acquire(&store, &ClaimRequest::new(running.clone(), ttl)).await;
    // The snapshot cannot be written where the directory was.
    std::fs::remove_dir(&dir).expect("remove the server's directory");
    let mut config = crate::common::raw_connection(&server.url()).await;
    idem_redis::redis::cmd("BGSAVE")
        .query_async::<()>(&mut config)
        .await
        .expect("BGSAVE");
    loop {
        let info: String = idem_redis::redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut config)
            .await
            .expect("INFO persistence");
        if info.contains("rdb_bgsave_in_progress:0") {
            assert!(info.contains("rdb_last_bgsave_status:err"), "{info}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let new = store.claim(&ClaimRequest::new(key("new"), ttl)).await;
    assert!(is_unavailable(&new), "{new:?}");
    let completed = store
        .complete(&running_lease, Bytes::from_static(b"x"), ttl)
        .await;
    assert!(is_unavailable(&completed), "{completed:?}");
    let replay = store.claim(&ClaimRequest::new(done, ttl)).await;
    assert!(
        matches!(&replay, Ok(Claim::Completed(receipt)) if receipt == "receipt"),
        "{replay:?}"
    );
    let repeat = store.claim(&ClaimRequest::new(running, ttl)).await;
    assert!(matches!(repeat, Ok(Claim::InProgress { .. })), "{repeat:?}");
}

/// The store's connections ask for RESP3 (`HELLO 3`); a server or proxy that does not offer
/// `HELLO` (renamed away here, as a RESP2-only proxy or an ACL user denied `HELLO` refuses
/// it) served the store on RESP2 before, and must still: every call works there.
#[tokio::test]
async fn a_server_without_hello_is_still_served_on_resp2() {
    let server = RedisServer::start_with(vec![
        "--rename-command".into(),
        "HELLO".into(),
        String::new(),
    ]);
    for replicas in [false, true] {
        let mut builder = RedisStore::builder().prefix(unique_prefix());
        if replicas {
            builder = builder.wait_for_replicas(1, Duration::from_millis(50));
        }
        let store = builder.connect(&server.url()).await;
        let store = store.unwrap_or_else(|err| panic!("no RESP2 fallback: {err:?}"));
        let ttl = ttl_ms(60_000);
        let k = key("no-hello");
        let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl)).await;
        let done = store
            .complete(&lease, Bytes::from_static(b"paid"), ttl)
            .await;
        // No replica answers the wait: the record is written all the same.
        assert_eq!(done.is_ok(), !replicas, "{done:?}");
        assert!(matches!(
            store.claim(&ClaimRequest::new(k, ttl)).await,
            Ok(Claim::Completed(receipt)) if receipt == "paid"
        ));
    }
    let tokens = idem_redis::RedisTokenStore::builder()
        .prefix(unique_prefix())
        .connect(&server.url())
        .await;
    assert!(tokens.is_ok(), "{tokens:?}");
}

/// A store that waits for replicas opens five connections (its own and four wait lanes):
/// on a slow server, connecting must still take one connection's time, within the
/// connection timeout plus the response timeout, not five in a row.
#[tokio::test]
async fn a_store_waiting_for_replicas_connects_within_one_deadline_on_a_slow_server() {
    const CONNECT: Duration = Duration::from_millis(700);
    const RESPOND: Duration = Duration::from_millis(700);
    let proxy = SlowProxy::start(&url(), Duration::from_millis(400)).await;
    proxy.slow_down();
    let started = Instant::now();
    let store = RedisStore::builder()
        .prefix(unique_prefix())
        .connection_timeout(CONNECT)
        .response_timeout(RESPOND)
        .wait_for_replicas(1, Duration::from_millis(100))
        .connect(&proxy.url())
        .await;
    let took = started.elapsed();
    assert!(store.is_ok(), "{store:?}");
    assert!(
        took <= CONNECT + RESPOND,
        "connecting took {took:?}, over the {:?} of one call",
        CONNECT + RESPOND
    );
}

/// The tests' own servers: one whose port was taken between `free_port` and its start
/// exits at once, and is started again on another port instead of being waited for, even
/// where the process that took the port answers as a Redis server would.
#[test]
fn a_test_server_whose_port_is_taken_starts_on_another() {
    let taken = RedisServer::start();
    let started = Instant::now();
    let server = RedisServer::start_on(taken.port);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the start waited {:?} on the taken port",
        started.elapsed()
    );
    assert_ne!(server.port, taken.port);
    let client = idem_redis::redis::Client::open(server.url()).expect("a valid URL");
    assert!(crate::common::answered_by(&client, server.pid()));
}
