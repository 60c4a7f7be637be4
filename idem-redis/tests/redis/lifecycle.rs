//! The lifecycle against the real server: exclusivity, replay, leases, fencing, fingerprints.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use crate::common::{acquire, key, raw_connection, store, ttl_ms, unique_prefix, url, value_of};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Lease, OwnerToken,
    RecordState,
};
use idem_redis::RedisStore;

const LONG: u64 = 30_000;

/// Each of `requests` is refused with `FingerprintMismatch`.
async fn assert_mismatch(store: &RedisStore, requests: &[ClaimRequest]) {
    for request in requests {
        let claimed = store.claim(request).await;
        assert!(
            matches!(claimed, Err(Error::FingerprintMismatch)),
            "{:?}: {claimed:?}",
            request.fingerprint
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn exactly_one_of_64_concurrent_claims_acquires() {
    let store = Arc::new(store().await);
    let k = key("race");
    let claims = (0..64).map(|_| {
        let store = Arc::clone(&store);
        let request = ClaimRequest::new(k.clone(), ttl_ms(LONG));
        tokio::spawn(async move { store.claim(&request).await })
    });
    let mut acquired = 0;
    let mut in_progress = 0;
    for claim in claims {
        match claim.await.expect("no panic").expect("claim") {
            Claim::Acquired(lease) => {
                assert_eq!(lease.fencing, 1);
                acquired += 1;
            }
            Claim::InProgress { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(LONG));
                in_progress += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((acquired, in_progress), (1, 63));
}

#[tokio::test]
async fn replays_payloads_byte_for_byte() {
    let store = store().await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let payloads: [(&str, Bytes); 5] = [
        ("all-256", Bytes::from(all_bytes)),
        (
            "invalid-utf8",
            Bytes::from_static(b"\xff\xfe\xc3\x28 \x00 \xed\xa0\x80"),
        ),
        ("empty", Bytes::new()),
        ("one-mib", Bytes::from(big)),
        ("crlf", Bytes::from_static(b"$3\r\nfoo\r\n*1\r\n")),
    ];
    for (id, payload) in payloads {
        for completed in [true, false] {
            let k = key(&format!("{id}-{completed}"));
            let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
            let retention = ttl_ms(LONG);
            let expected = if completed {
                store
                    .complete(&lease, payload.clone(), retention)
                    .await
                    .expect("complete");
                Claim::Completed(payload.clone())
            } else {
                store
                    .fail(&lease, payload.clone(), retention)
                    .await
                    .expect("fail");
                Claim::Failed(payload.clone())
            };
            let repeat = ClaimRequest::new(k.clone(), ttl_ms(LONG));
            assert_eq!(
                store.claim(&repeat).await.expect("repeat"),
                expected,
                "{id}"
            );
            let record = store.read(&k).await.expect("read").expect("a record");
            let stored = match record.state {
                RecordState::Completed { response } => response,
                RecordState::Failed { failure } => failure,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(stored, payload, "{id}");
            assert_eq!(record.fencing, 1);
        }
    }
}

#[tokio::test]
async fn payload_limit_is_enforced_before_writing() {
    let limit = 1024;
    let store = common::store_at(
        &url(),
        RedisStore::builder()
            .prefix(unique_prefix())
            .max_payload(limit),
    )
    .await;
    assert_eq!(store.max_payload(), limit);
    let k = key("big");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    let too_big = Bytes::from(vec![7u8; limit + 1]);
    assert!(matches!(
        store.complete(&lease, too_big.clone(), ttl_ms(LONG)).await,
        Err(Error::PayloadTooLarge { size, limit: l }) if size == limit + 1 && l == limit
    ));
    assert!(matches!(
        store.fail(&lease, too_big, ttl_ms(LONG)).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    // Nothing was written: the key is still claimed by the same lease.
    let record = store.read(&k).await.expect("read").expect("claimed");
    assert_eq!(record.state, RecordState::Claimed { owner: lease.owner });
    let exact = Bytes::from(vec![7u8; limit]);
    store
        .complete(&lease, exact.clone(), ttl_ms(LONG))
        .await
        .expect("at the limit");
    let repeat = ClaimRequest::new(k, ttl_ms(LONG));
    assert_eq!(
        store.claim(&repeat).await.expect("repeat"),
        Claim::Completed(exact)
    );
}

#[tokio::test]
async fn default_limit_accepts_four_mib() {
    let store = store().await;
    assert_eq!(store.max_payload(), 4 * 1024 * 1024);
    let k = key("four-mib");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    let payload = Bytes::from(vec![0xA5u8; store.max_payload()]);
    store
        .complete(&lease, payload.clone(), ttl_ms(LONG))
        .await
        .expect("complete");
    let repeat = ClaimRequest::new(k.clone(), ttl_ms(LONG));
    assert_eq!(
        store.claim(&repeat).await.expect("repeat"),
        Claim::Completed(payload)
    );
    assert!(store.remove(&k).await.expect("remove"));
}

#[tokio::test]
async fn expired_leases_are_taken_over_with_growing_fencing() {
    let store = store().await;
    let k = key("takeover");
    let ttl = ttl_ms(300);
    let mut last = 0;
    for _ in 0..3 {
        let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl)).await;
        assert!(lease.fencing > last, "{} after {last}", lease.fencing);
        last = lease.fencing;
        // Past the lease, within the one extra TTL the key is remembered.
        tokio::time::sleep(Duration::from_millis(420)).await;
        assert_eq!(
            store.read(&k).await.expect("read"),
            None,
            "a lapsed lease is free"
        );
    }
    assert_eq!(last, 3);
    // Release also frees the key and the next acquisition gets a larger number.
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert_eq!(lease.fencing, 4);
    store.release(&lease).await.expect("release");
    assert_eq!(store.read(&k).await.expect("read"), None);
    assert!(matches!(store.release(&lease).await, Err(Error::LeaseLost)));
    let next = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert_eq!(next.fencing, 5);
    // Removing frees the key but leaves a trace: fencing keeps growing, so a downstream
    // guard keeps accepting the next owner while the removed one may still be running.
    assert!(store.remove(&k).await.expect("remove"));
    assert!(!store.remove(&k).await.expect("remove again"));
    let fresh = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert_eq!(fresh.fencing, 6);
    store
        .complete(&fresh, Bytes::new(), ttl_ms(LONG))
        .await
        .expect("complete");
    assert!(store.remove(&k).await.expect("remove a finished key"));
    let left = pttl(&store, &k).await;
    let memory = idem_core::backend::lifecycle::FENCING_MEMORY.as_millis() as i64;
    assert!(left > memory - 5_000 && left <= memory, "{left}");
    let after_finished = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert_eq!(after_finished.fencing, 7);
    assert!(matches!(
        store.complete(&next, Bytes::new(), ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
}

/// The key's TTL in Redis, in milliseconds.
async fn pttl(store: &RedisStore, k: &idem_core::Key) -> i64 {
    let mut raw = common::raw_connection(&url()).await;
    idem_redis::redis::cmd("PTTL")
        .arg(store.redis_key(k))
        .query_async(&mut raw)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn an_ended_lease_leaves_a_trace_for_trace_ttl() {
    let store = store().await;
    let k = key("trace");
    let memory = idem_core::backend::lifecycle::FENCING_MEMORY.as_millis() as i64;
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(100))).await;
    // A short lease: remembered FENCING_MEMORY after it ends, by Redis's own key TTL.
    let left = pttl(&store, &k).await;
    assert!(
        left > memory + 100 - 5_000 && left <= memory + 100,
        "{left}"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let next = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(100))).await;
    assert_eq!(next.fencing, lease.fencing + 1);
    store.release(&next).await.expect("release");
    let left = pttl(&store, &k).await;
    assert!(left > memory - 5_000 && left <= memory, "{left}");
    // A long lease: remembered one more lease TTL.
    let long = 90_000;
    let held = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(long))).await;
    assert_eq!(held.fencing, 3);
    let left = pttl(&store, &k).await;
    assert!(
        left > 2 * long as i64 - 5_000 && left <= 2 * long as i64,
        "{left}"
    );
    store.renew(&held, ttl_ms(100)).await.expect("renew");
    let left = pttl(&store, &k).await;
    assert!(
        left > memory + 100 - 5_000 && left <= memory + 100,
        "{left}"
    );
    store.renew(&held, ttl_ms(long)).await.expect("renew");
    store.release(&held).await.expect("release");
    let left = pttl(&store, &k).await;
    assert!(left > long as i64 - 5_000 && left <= long as i64, "{left}");
    assert!(
        !store.remove(&k).await.expect("remove"),
        "a released key holds no record"
    );
}

#[tokio::test]
async fn a_lapsed_lease_nobody_took_over_can_still_finish() {
    let store = store().await;
    let k = key("lapsed");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(300))).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    store
        .renew(&lease, ttl_ms(300))
        .await
        .expect("renew a lapsed lease");
    tokio::time::sleep(Duration::from_millis(400)).await;
    store
        .complete(&lease, Bytes::from_static(b"late"), ttl_ms(LONG))
        .await
        .expect("complete a lapsed lease");
    let repeat = ClaimRequest::new(k, ttl_ms(LONG));
    assert_eq!(
        store.claim(&repeat).await.expect("repeat"),
        Claim::Completed(Bytes::from_static(b"late"))
    );
}

#[tokio::test]
async fn a_stale_lease_changes_nothing() {
    let store = store().await;
    let k = key("stale");
    let old = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(300))).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert_eq!(new.fencing, old.fencing + 1);
    let before = store.read(&k).await.expect("read").expect("claimed");

    let payload = Bytes::from_static(b"stale");
    assert!(matches!(
        store.complete(&old, payload.clone(), ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.fail(&old, payload.clone(), ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.renew(&old, ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(store.release(&old).await, Err(Error::LeaseLost)));
    // The same owner with a wrong fencing number, and a stranger with the right one.
    let forged = Lease::new(new.key.clone(), new.owner, new.fencing + 1);
    assert!(matches!(
        store.complete(&forged, payload.clone(), ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    let stranger = Lease::new(new.key.clone(), OwnerToken::random(), new.fencing);
    assert!(matches!(
        store.release(&stranger).await,
        Err(Error::LeaseLost)
    ));
    let huge = Lease::new(new.key.clone(), new.owner, u64::MAX);
    assert!(matches!(store.release(&huge).await, Err(Error::LeaseLost)));

    let after = store.read(&k).await.expect("read").expect("claimed");
    assert_eq!(after.state, before.state);
    assert_eq!(after.fencing, new.fencing);
    assert_eq!(after.state, RecordState::Claimed { owner: new.owner });

    store
        .complete(&new, Bytes::from_static(b"fresh"), ttl_ms(LONG))
        .await
        .expect("complete");
    assert!(matches!(
        store.complete(&old, payload, ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.complete(&new, Bytes::new(), ttl_ms(LONG)).await,
        Err(Error::LeaseLost)
    ));
    let record = store.read(&k).await.expect("read").expect("completed");
    assert_eq!(
        record.state,
        RecordState::Completed {
            response: Bytes::from_static(b"fresh")
        }
    );
}

#[tokio::test]
async fn the_same_owner_reclaims_its_lease_extended() {
    let store = store().await;
    let k = key("reclaim");
    let fp = Some(Fingerprint::from_bytes(b"body"));
    let request = ClaimRequest::new(k.clone(), ttl_ms(1_000)).with_fingerprint(fp);
    let first = acquire(&store, &request).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let longer = with_lease_ttl(request.clone(), LONG);
    let again = acquire(&store, &longer).await;
    assert_eq!(again, first);
    let record = store.read(&k).await.expect("read").expect("claimed");
    assert!(
        record.expires_in > Duration::from_millis(LONG - 5_000),
        "{:?}",
        record.expires_in
    );
    assert_eq!(record.fingerprint, fp);
    // Even after the lease lapsed, nobody else having taken it.
    let short = with_lease_ttl(request.clone(), 200);
    acquire(&store, &short).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acquire(&store, &request).await, first);
    // But a different fingerprint from the same owner is refused.
    let other = request
        .clone()
        .with_fingerprint(Fingerprint::from_bytes(b"other"));
    assert_mismatch(&store, &[other, request.with_fingerprint(None)]).await;
}

fn with_lease_ttl(mut request: ClaimRequest, millis: u64) -> ClaimRequest {
    request.lease_ttl = ttl_ms(millis);
    request
}

#[tokio::test]
async fn fingerprints_are_compared_strictly() {
    let store = store().await;
    let a = Some(Fingerprint::from_bytes(b"a"));
    let b = Some(Fingerprint::from_bytes(b"b"));
    let k = key("fingerprints");
    let claim =
        |fp: Option<Fingerprint>| ClaimRequest::new(k.clone(), ttl_ms(LONG)).with_fingerprint(fp);

    let lease = acquire(&store, &claim(a)).await;
    // Claimed by another owner: a mismatch beats "in progress".
    assert_mismatch(&store, &[claim(b), claim(None)]).await;
    assert!(matches!(
        store.claim(&claim(a)).await,
        Ok(Claim::InProgress { .. })
    ));

    store
        .complete(&lease, Bytes::from_static(b"ok"), ttl_ms(LONG))
        .await
        .expect("complete");
    assert_mismatch(&store, &[claim(b), claim(None)]).await;
    assert_eq!(
        store.claim(&claim(a)).await.expect("replay"),
        Claim::Completed(Bytes::from_static(b"ok"))
    );
    let record = store.read(&k).await.expect("read").expect("completed");
    assert_eq!(record.fingerprint, a);

    // None stored, Some asked.
    let k2 = key("no-fingerprint");
    let lease = acquire(&store, &ClaimRequest::new(k2.clone(), ttl_ms(LONG))).await;
    store
        .fail(&lease, Bytes::from_static(b"no"), ttl_ms(LONG))
        .await
        .expect("fail");
    let some = ClaimRequest::new(k2.clone(), ttl_ms(LONG)).with_fingerprint(a);
    assert_mismatch(&store, &[some]).await;
    let none = ClaimRequest::new(k2, ttl_ms(LONG));
    assert_eq!(
        store.claim(&none).await.expect("replay"),
        Claim::Failed(Bytes::from_static(b"no"))
    );

    // Free keys are not checked: released, or lapsed.
    let k3 = key("free");
    let lease = acquire(
        &store,
        &ClaimRequest::new(k3.clone(), ttl_ms(200)).with_fingerprint(a),
    )
    .await;
    store.release(&lease).await.expect("release");
    let taken = acquire(
        &store,
        &ClaimRequest::new(k3.clone(), ttl_ms(200)).with_fingerprint(b),
    )
    .await;
    assert_eq!(taken.fencing, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lapsed = acquire(&store, &ClaimRequest::new(k3.clone(), ttl_ms(LONG))).await;
    assert_eq!(lapsed.fencing, 3);
    assert_eq!(
        store
            .read(&k3)
            .await
            .expect("read")
            .expect("claimed")
            .fingerprint,
        None
    );
}

/// A finish writes the fingerprint its key was claimed with, whatever the lease carries: the
/// claim's own (the finished record is then written as the client sent it), none (a lease
/// made with `Lease::new`) or another one. Each way the record is the same bytes, the layout
/// a finish has always written, `2 | phase | fencing | flag [digest] | payload`, and renew
/// and release accept the lease too.
#[tokio::test]
async fn a_finish_keeps_the_claims_fingerprint_whatever_the_lease_carries() {
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    let a = Some(Fingerprint::from_bytes(b"a"));
    let b = Some(Fingerprint::from_bytes(b"b"));
    let payload = Bytes::from_static(b"\x00out\xff");
    let cases = [(a, a), (a, None), (a, b), (None, None), (None, a)];
    for (i, (claimed, carried)) in cases.into_iter().enumerate() {
        for (phase, name) in [(3, "complete"), (4, "fail")] {
            let k = key(&format!("lease-fingerprint-{i}-{name}"));
            let request = ClaimRequest::new(k.clone(), ttl_ms(LONG)).with_fingerprint(claimed);
            let lease = acquire(&store, &request).await.with_fingerprint(carried);
            store.renew(&lease, ttl_ms(LONG)).await.expect("renew");
            let finished = if phase == 3 {
                store.complete(&lease, payload.clone(), ttl_ms(LONG)).await
            } else {
                store.fail(&lease, payload.clone(), ttl_ms(LONG)).await
            };
            finished.expect("the owner finishes");

            let mut written = vec![2, phase];
            written.extend_from_slice(&1u64.to_be_bytes());
            match claimed {
                Some(fingerprint) => {
                    written.push(1);
                    written.extend_from_slice(fingerprint.as_bytes());
                }
                None => written.push(0),
            }
            written.extend_from_slice(&payload);
            let what = format!("claimed {claimed:?}, lease {carried:?}, {name}");
            assert_eq!(
                value_of(&mut raw, &store.redis_key(&k)).await,
                Some(written),
                "{what}"
            );
            let replay = store.claim(&request).await.expect(&what);
            let expected = if phase == 3 {
                Claim::Completed(payload.clone())
            } else {
                Claim::Failed(payload.clone())
            };
            assert_eq!(replay, expected, "{what}");
        }
        let k = key(&format!("lease-fingerprint-{i}-release"));
        let request = ClaimRequest::new(k.clone(), ttl_ms(LONG)).with_fingerprint(claimed);
        let lease = acquire(&store, &request).await.with_fingerprint(carried);
        store.release(&lease).await.expect("release");
        assert_eq!(store.read(&k).await.expect("read"), None);
    }
}

#[tokio::test]
async fn read_reports_claims_and_their_time_left() {
    let store = store().await;
    let k = key("read");
    assert_eq!(store.read(&k).await.expect("read"), None);
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    let record = store.read(&k).await.expect("read").expect("claimed");
    assert_eq!(record.key, k);
    assert_eq!(record.state, RecordState::Claimed { owner: lease.owner });
    assert_eq!(record.fencing, 1);
    assert!(record.expires_in <= Duration::from_millis(LONG));
    assert!(record.expires_in > Duration::from_millis(LONG - 5_000));
    store.renew(&lease, ttl_ms(2 * LONG)).await.expect("renew");
    let renewed = store.read(&k).await.expect("read").expect("claimed");
    assert!(renewed.expires_in > Duration::from_millis(2 * LONG - 5_000));
    store
        .complete(&lease, Bytes::from_static(b"r"), ttl_ms(10 * LONG))
        .await
        .expect("complete");
    let finished = store.read(&k).await.expect("read").expect("completed");
    assert!(finished.expires_in > Duration::from_millis(10 * LONG - 5_000));
    assert!(store.remove(&k).await.expect("remove"));
}

#[tokio::test]
async fn retention_expires_on_its_own() {
    let store = store().await;
    let k = key("retention");
    let lease = acquire(&store, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    store
        .complete(&lease, Bytes::from_static(b"x"), ttl_ms(200))
        .await
        .expect("complete");
    assert!(store.read(&k).await.expect("read").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.read(&k).await.expect("read"), None);
    let again = acquire(&store, &ClaimRequest::new(k, ttl_ms(LONG))).await;
    assert_eq!(again.fencing, 1, "the key was forgotten with its record");
}

#[tokio::test]
async fn keys_with_braces_and_separators_never_collide() {
    let store = store().await;
    let ids = ["}", "{", "{}", "%7D", "%257D", "a}b", "a:b", "x{y}z"];
    let namespaces = ["n", "n}", "n:a"];
    let mut leases = Vec::new();
    for namespace in namespaces {
        for id in ids {
            let k = idem_core::Key::new(namespace, id).expect("valid");
            leases.push(acquire(&store, &ClaimRequest::new(k, ttl_ms(LONG))).await);
        }
    }
    for lease in &leases {
        assert_eq!(lease.fencing, 1, "{:?} shared a record", lease.key);
        let payload = Bytes::from(lease.key.to_string());
        store
            .complete(lease, payload, ttl_ms(LONG))
            .await
            .expect("complete");
    }
    for lease in &leases {
        let repeat = ClaimRequest::new(lease.key.clone(), ttl_ms(LONG));
        assert_eq!(
            store.claim(&repeat).await.expect("replay"),
            Claim::Completed(Bytes::from(lease.key.to_string()))
        );
    }
}

#[tokio::test]
async fn prefixes_isolate_stores_on_one_server() {
    let one = store().await;
    let two = store().await;
    assert_ne!(one.prefix(), two.prefix());
    let k = key("shared-id");
    acquire(&one, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    acquire(&two, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    assert!(one.redis_key(&k).starts_with(one.prefix()));
}

#[tokio::test]
async fn builds_from_a_client_and_from_a_connection_manager() {
    let client = idem_redis::redis::Client::open(url()).expect("a valid URL");
    let from_client = RedisStore::from_client(client.clone())
        .await
        .expect("connect");
    assert_eq!(from_client.prefix(), RedisStore::DEFAULT_PREFIX);
    let manager = client.get_connection_manager().await.expect("connect");
    let from_manager = RedisStore::builder()
        .prefix(unique_prefix())
        .build(manager.clone())
        .expect("build");
    let k = key("constructors");
    let lease = acquire(&from_manager, &ClaimRequest::new(k.clone(), ttl_ms(LONG))).await;
    from_manager.release(&lease).await.expect("release");
    let defaults = RedisStore::from_manager(manager);
    assert_eq!(defaults.max_payload(), RedisStore::DEFAULT_MAX_PAYLOAD);
}

#[tokio::test]
async fn works_under_the_executor() {
    use idem_core::{Idempotency, Retryable};

    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Declined;
    impl Retryable for Declined {
        fn is_retryable(&self) -> bool {
            false
        }
    }

    let idem = Idempotency::new(store().await);
    let k = key("executor");
    let mut runs = 0;
    for _ in 0..3 {
        let value: u64 = idem
            // The operation borrows `runs`: the scoped entry point (it releases on drop).
            .execute_scoped(&k, None, || async {
                runs += 1;
                Ok::<_, Declined>(42)
            })
            .await
            .expect("executed");
        assert_eq!(value, 42);
    }
    assert_eq!(runs, 1);
}
