//! idem-redis on Valkey 8.1, which offers `SET ... IFEQ`: the conformance suite on both ways
//! of finishing (the conditional `SET`, and the script with it turned off), the executor's
//! checks on the first, and what each finish makes the server run, counted with `INFO
//! commandstats` on a server of the test's own.

use std::collections::BTreeMap;

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Lease, RecordState,
};
use idem_redis::RedisStore;

use crate::common::{
    OTHER_TYPES, RedisServer, START_VALKEY, acquire, commands_during, expected, key,
    plant_other_type, raw_connection, store_at, ttl_ms, unique_prefix, valkey_url,
};

/// A store on the shared Valkey under a fresh prefix; fails with how to start Valkey.
async fn valkey_store(builder: idem_redis::RedisStoreBuilder) -> RedisStore {
    let url = valkey_url();
    builder
        .prefix(unique_prefix())
        .connect(&url)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "Valkey at {url} did not answer ({err}). Start it with:\n    {START_VALKEY}\n\
                 or point IDEM_VALKEY_URL at a running server."
            )
        })
}

/// How the store says it finishes, in its debug output.
fn finishing<C>(store: &RedisStore<C>) -> String {
    let debug = format!("{store:?}");
    let (_, rest) = debug
        .split_once("conditional_set: ")
        .expect("the store's debug output names its conditional_set");
    rest.split([',', '}'])
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

mod conditional_set {
    use idem_redis::RedisStore;

    /// Asserts the suite runs the path it is named for: a store that found no `IFEQ` would
    /// pass it on the script alone.
    async fn make_store() -> RedisStore {
        let store = super::valkey_store(RedisStore::builder()).await;
        assert_eq!(super::finishing(&store), "offered");
        store
    }

    idem_tests::conformance!(make_store, crate::common::capabilities());

    idem_tests::executor_conformance!(make_store);
}

mod script {
    use idem_redis::RedisStore;

    async fn make_store() -> RedisStore {
        let store = super::valkey_store(RedisStore::builder().conditional_set(false)).await;
        assert_eq!(super::finishing(&store), "off");
        store
    }

    idem_tests::conformance!(make_store, crate::common::capabilities());
}

/// The script path's commands: the script, its `GET`, its `SET`.
fn by_script() -> BTreeMap<String, u64> {
    expected(&["evalsha", "get", "set"])
}

#[tokio::test]
async fn a_finish_is_one_conditional_set_and_replays_byte_for_byte() {
    let server = RedisServer::start_valkey();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    assert_eq!(finishing(&store), "offered");
    let mut stats = raw_connection(&server.url()).await;
    let fingerprint = Fingerprint::from_bytes(b"order 1042");

    for (id, failed) in [("completed", false), ("failed", true)] {
        let request = ClaimRequest::new(key(id), ttl_ms(30_000)).with_fingerprint(fingerprint);
        let lease = acquire(&store, &request).await;
        let outcome = Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<_>>());
        let finish = async {
            if failed {
                store.fail(&lease, outcome.clone(), ttl_ms(30_000)).await
            } else {
                store
                    .complete(&lease, outcome.clone(), ttl_ms(30_000))
                    .await
            }
        };
        let (done, commands) = commands_during(&mut stats, finish).await;
        done.expect("finish");
        assert_eq!(commands, expected(&["set"]), "{id}");

        let repeat = ClaimRequest::new(key(id), ttl_ms(30_000)).with_fingerprint(fingerprint);
        let replay = store.claim(&repeat).await.expect("replay");
        let stored = if failed {
            Claim::Failed(outcome.clone())
        } else {
            Claim::Completed(outcome.clone())
        };
        assert_eq!(replay, stored, "{id}");
        // The record is the one the script would have written: the fingerprint kept.
        let other = ClaimRequest::new(key(id), ttl_ms(30_000))
            .with_fingerprint(Fingerprint::from_bytes(b"order 1043"));
        assert!(matches!(
            store.claim(&other).await,
            Err(Error::FingerprintMismatch)
        ));
        let record = store.read(&key(id)).await.expect("read").expect("a record");
        assert_eq!(record.fencing, lease.fencing, "{id}");
        assert_eq!(record.fingerprint, Some(fingerprint), "{id}");
    }
}

/// A lease another owner took over: the conditional `SET` writes nothing, the script says
/// the lease is lost, and the new owner's record is untouched.
#[tokio::test]
async fn a_lost_lease_changes_nothing_and_the_script_says_so() {
    let server = RedisServer::start_valkey();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    store.load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    let stale = acquire(&store, &ClaimRequest::new(key("lost"), ttl_ms(30_000))).await;
    store.release(&stale).await.expect("release");
    let taker = ClaimRequest::new(key("lost"), ttl_ms(30_000));
    let current = acquire(&store, &taker).await;

    let (done, commands) = commands_during(
        &mut stats,
        store.complete(&stale, Bytes::from_static(b"late"), ttl_ms(30_000)),
    )
    .await;
    assert!(matches!(done, Err(Error::LeaseLost)), "{done:?}");
    // The conditional SET (nothing written), then the script's GET (nothing written).
    assert_eq!(commands, expected(&["set", "evalsha", "get"]));
    let record = store
        .read(&key("lost"))
        .await
        .expect("read")
        .expect("a record");
    assert_eq!(record.fencing, current.fencing);
    assert!(
        matches!(record.state, RecordState::Claimed { owner } if owner == taker.owner),
        "{record:?}"
    );
}

/// The record is still the lease's, but not the bytes its claim wrote: the script decides,
/// and completes it.
#[tokio::test]
async fn a_lease_whose_claim_the_store_cannot_rebuild_completes_by_script() {
    let server = RedisServer::start_valkey();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    store.load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;

    // Renewed with a lease TTL past the minute of fencing memory: the claimed record's
    // trace TTL changed.
    let renewed = acquire(&store, &ClaimRequest::new(key("renewed"), ttl_ms(30_000))).await;
    store.renew(&renewed, ttl_ms(120_000)).await.expect("renew");
    let (done, commands) = commands_during(
        &mut stats,
        store.complete(&renewed, Bytes::from_static(b"renewed"), ttl_ms(30_000)),
    )
    .await;
    done.expect("complete");
    let mut conditional_then_script = by_script();
    conditional_then_script.insert("set".to_owned(), 2);
    assert_eq!(commands, conditional_then_script);

    // A lease made by hand knows neither the claim's TTL nor that it was sent: the script
    // alone, no conditional SET first.
    let granted = acquire(&store, &ClaimRequest::new(key("by-hand"), ttl_ms(30_000))).await;
    let by_hand = Lease::new(granted.key.clone(), granted.owner, granted.fencing);
    let (done, commands) = commands_during(
        &mut stats,
        store.complete(&by_hand, Bytes::from_static(b"by hand"), ttl_ms(30_000)),
    )
    .await;
    done.expect("complete");
    assert_eq!(commands, by_script());

    for (id, outcome) in [("renewed", "renewed"), ("by-hand", "by hand")] {
        let replay = store
            .claim(&ClaimRequest::new(key(id), ttl_ms(30_000)))
            .await
            .expect("replay");
        assert_eq!(replay, Claim::Completed(Bytes::from(outcome)), "{id}");
    }
}

/// A key overwritten with another Redis type under a lease: the conditional `SET`'s own
/// error is the answer (a corrupt record, nothing written), with no script after it, and it
/// teaches the store nothing about the server.
#[tokio::test]
async fn an_error_of_the_conditional_set_is_the_answer() {
    let server = RedisServer::start_valkey();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    store.load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    for (name, command, args) in OTHER_TYPES {
        let lease = acquire(&store, &ClaimRequest::new(key(name), ttl_ms(30_000))).await;
        let redis_key = store.redis_key(&key(name));
        idem_redis::redis::cmd("DEL")
            .arg(&redis_key)
            .query_async::<()>(&mut stats)
            .await
            .expect("DEL");
        plant_other_type(&mut stats, &redis_key, command, args).await;
        let (done, commands) = commands_during(
            &mut stats,
            store.complete(&lease, Bytes::from_static(b"late"), ttl_ms(30_000)),
        )
        .await;
        assert!(
            matches!(done, Err(Error::CorruptRecord { .. })),
            "{name}: {done:?}"
        );
        assert_eq!(commands, expected(&["set"]), "{name}");
        assert!(store.finishes_by_conditional_set(), "{name}");
    }
}

/// Turned off by the builder, or by a replica wait, the store never sends it.
#[tokio::test]
async fn turned_off_or_waiting_for_replicas_a_finish_runs_the_script() {
    let server = RedisServer::start_valkey();
    let mut stats = raw_connection(&server.url()).await;

    let off = store_at(&server.url(), RedisStore::builder().conditional_set(false)).await;
    off.load_scripts().await.expect("load scripts");
    assert_eq!(finishing(&off), "off");
    let lease = acquire(&off, &ClaimRequest::new(key("off"), ttl_ms(30_000))).await;
    let (done, commands) = commands_during(
        &mut stats,
        off.complete(&lease, Bytes::new(), ttl_ms(30_000)),
    )
    .await;
    done.expect("complete");
    assert_eq!(commands, by_script());

    // No replica: the WAIT finds none and the finish says so, after the script wrote.
    let waiting = RedisStore::builder()
        .wait_for_replicas(1, std::time::Duration::from_millis(10))
        .prefix("waiting:");
    let waiting = store_at(&server.url(), waiting).await;
    waiting.load_scripts().await.expect("load scripts");
    assert_eq!(finishing(&waiting), "off");
    let lease = acquire(&waiting, &ClaimRequest::new(key("waiting"), ttl_ms(30_000))).await;
    let (done, commands) = commands_during(
        &mut stats,
        waiting.complete(&lease, Bytes::new(), ttl_ms(30_000)),
    )
    .await;
    assert!(matches!(done, Err(Error::Backend { .. })), "{done:?}");
    let mut script_then_wait = by_script();
    script_then_wait.insert("wait".to_owned(), 1);
    assert_eq!(commands, script_then_wait);
}

/// A store built on an application's connection asks nothing as it is built: its first
/// finish tries the conditional `SET` and learns from the answer. Redis 7 does not know it
/// (a syntax error, then the script, and only the script from then on); Valkey does.
#[tokio::test]
async fn a_store_on_an_application_connection_learns_from_its_first_finish() {
    for (server, offered) in [
        (RedisServer::start(), false),
        (RedisServer::start_valkey(), true),
    ] {
        let mut stats = raw_connection(&server.url()).await;
        let connection = raw_connection(&server.url()).await;
        let store = RedisStore::builder()
            .build(connection)
            .expect("a valid builder");
        store.load_scripts().await.expect("load scripts");
        assert_eq!(finishing(&store), "untried");
        assert!(!store.finishes_by_conditional_set());

        let mut finishes = Vec::new();
        for id in ["first", "second"] {
            let lease = acquire(&store, &ClaimRequest::new(key(id), ttl_ms(30_000))).await;
            let (done, commands) = commands_during(
                &mut stats,
                store.complete(&lease, Bytes::new(), ttl_ms(30_000)),
            )
            .await;
            done.expect("complete");
            finishes.push(commands);
        }
        assert_eq!(store.finishes_by_conditional_set(), offered);
        if offered {
            assert_eq!(finishing(&store), "offered");
            assert_eq!(finishes, [expected(&["set"]), expected(&["set"])]);
        } else {
            assert_eq!(finishing(&store), "not offered");
            // The refused SET is counted with the script's.
            let mut refused_then_script = by_script();
            refused_then_script.insert("set".to_owned(), 2);
            assert_eq!(finishes, [refused_then_script, by_script()]);
        }
    }
}
