//! Values under a managed key that do not decode are corrupt records, never a panic.

use crate::common::{
    OTHER_TYPES, key, plant, plant_other_type, raw_connection, store, ttl_ms, url, value_of,
};
use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, OwnerToken};
use idem_redis::RedisStore;

/// A well-formed record header (layout version 2), to corrupt one field at a time.
fn header(version: u8, phase: u8, fencing: u64) -> Vec<u8> {
    let mut out = vec![version, phase];
    out.extend_from_slice(&fencing.to_be_bytes());
    out
}

fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let claimed_body = |mut v: Vec<u8>, trace_ttl: u64| {
        v.push(0);
        v.extend_from_slice(&[9u8; 16]);
        v.extend_from_slice(&trace_ttl.to_be_bytes());
        v
    };
    vec![
        ("empty", Vec::new()),
        ("text", b"hello, world".to_vec()),
        ("short header", header(2, 3, 1)[..6].to_vec()),
        ("unknown version", [header(3, 3, 1), vec![0]].concat()),
        (
            "layout version 1",
            [header(1, 3, 1), vec![0; 8], vec![0]].concat(),
        ),
        ("unknown phase", [header(2, 9, 1), vec![0]].concat()),
        ("no fingerprint flag", header(2, 3, 1)),
        ("bad fingerprint flag", [header(2, 3, 1), vec![7]].concat()),
        (
            "truncated fingerprint",
            [header(2, 3, 1), vec![1], vec![0; 31]].concat(),
        ),
        (
            "vacant with trailing bytes",
            [header(2, 2, 1), vec![0]].concat(),
        ),
        (
            "claimed too short",
            [header(2, 1, 1), vec![0], vec![9; 16]].concat(),
        ),
        (
            "claimed too long",
            [claimed_body(header(2, 1, 1), 1000), vec![0]].concat(),
        ),
        (
            "claimed with no trace TTL",
            claimed_body(header(2, 1, 1), 0),
        ),
        ("zero fencing", claimed_body(header(2, 1, 0), 1000)),
        (
            "fencing beyond 2^53",
            claimed_body(header(2, 1, (1 << 53) + 1), 1000),
        ),
        ("all ones", vec![0xff; 64]),
    ]
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::CorruptRecord { .. }))
}

async fn assert_every_call_is_corrupt(store: &RedisStore, k: &Key, what: &str) {
    let lease = Lease::new(k.clone(), OwnerToken::random(), 1);
    let request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
    assert!(is_corrupt(store.claim(&request).await), "claim of {what}");
    assert!(is_corrupt(store.read(k).await), "read of {what}");
    assert!(
        is_corrupt(store.complete(&lease, Bytes::new(), ttl_ms(10_000)).await),
        "complete of {what}"
    );
    assert!(
        is_corrupt(store.fail(&lease, Bytes::new(), ttl_ms(10_000)).await),
        "fail of {what}"
    );
    assert!(
        is_corrupt(store.renew(&lease, ttl_ms(10_000)).await),
        "renew of {what}"
    );
    assert!(is_corrupt(store.release(&lease).await), "release of {what}");
}

#[tokio::test]
async fn garbage_strings_are_corrupt_records() {
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    for (what, value) in garbage() {
        let k = key(what);
        let redis_key = store.redis_key(&k);
        plant(&mut raw, &redis_key, &value).await;
        assert_every_call_is_corrupt(&store, &k, what).await;
        // Nothing was overwritten.
        assert_eq!(value_of(&mut raw, &redis_key).await, Some(value), "{what}");
        // Removing clears it, and the key works again.
        assert!(store.remove(&k).await.expect("remove"), "{what}");
        let request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
        assert!(
            matches!(store.claim(&request).await, Ok(Claim::Acquired(_))),
            "{what}"
        );
    }
}

#[tokio::test]
async fn other_redis_types_are_corrupt_records() {
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    for (what, command, args) in OTHER_TYPES {
        let k = key(what);
        plant_other_type(&mut raw, &store.redis_key(&k), command, args).await;
        assert_every_call_is_corrupt(&store, &k, what).await;
        assert!(store.remove(&k).await.expect("remove"), "{what}");
        assert_eq!(store.read(&k).await.expect("read"), None);
    }
}

#[tokio::test]
async fn a_record_written_by_the_store_decodes() {
    // The counterpart of the garbage: the same layout, well-formed, is accepted.
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    let k = key("handmade");
    let mut value = header(2, 3, 7);
    value.push(0);
    value.extend_from_slice(b"\x00handmade\xff");
    plant(&mut raw, &store.redis_key(&k), &value).await;
    let request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
    assert_eq!(
        store.claim(&request).await.expect("claim"),
        Claim::Completed(Bytes::from_static(b"\x00handmade\xff"))
    );
    assert_eq!(
        store.read(&k).await.expect("read").expect("record").fencing,
        7
    );
    assert!(store.remove(&k).await.expect("remove"));
}

/// A claim that is the lease's own (its header and owner) but whose trace TTL is out of
/// range: release, the one transition that uses the trace TTL, finds it corrupt and leaves
/// it; renew and finish, which replace it, go through, with or without a fingerprint.
#[tokio::test]
async fn a_held_claim_with_a_bad_trace_ttl_is_corrupt_only_to_release() {
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    for fingerprint in [None, Some(idem_core::Fingerprint::from_bytes(b"body"))] {
        let k = key(&format!("bad-trace-{}", fingerprint.is_some()));
        let mut request = ClaimRequest::new(k.clone(), ttl_ms(10_000));
        if let Some(fingerprint) = fingerprint {
            request = request.with_fingerprint(fingerprint);
        }
        let Claim::Acquired(lease) = store.claim(&request).await.expect("claim") else {
            panic!("a fresh key");
        };
        let redis_key = store.redis_key(&k);
        let mut bad = value_of(&mut raw, &redis_key).await.expect("the claim");
        let at = bad.len() - 8;
        bad[at..].copy_from_slice(&0_u64.to_be_bytes());
        plant(&mut raw, &redis_key, &bad).await;

        assert!(
            matches!(
                store.release(&lease).await,
                Err(Error::CorruptRecord { .. })
            ),
            "release of a claim whose trace TTL is 0"
        );
        assert_eq!(value_of(&mut raw, &redis_key).await, Some(bad.clone()));
        store
            .renew(&lease, ttl_ms(10_000))
            .await
            .expect("renew replaces the trace TTL");
        plant(&mut raw, &redis_key, &bad).await;
        store
            .complete(&lease, Bytes::from_static(b"done"), ttl_ms(10_000))
            .await
            .expect("complete replaces it");
        assert_eq!(
            store.claim(&request).await.expect("replay"),
            Claim::Completed(Bytes::from_static(b"done"))
        );
        assert!(store.remove(&k).await.expect("remove"));
    }
}

/// At the end of the exact range (2^53 − 1, the largest number Lua counts without
/// rounding) a takeover is refused with `CorruptRecord` and changes nothing, as on every
/// store (`idem_core::backend::lifecycle::next_fencing`); one below still grows, to the end.
#[tokio::test]
async fn a_takeover_at_the_end_of_the_fencing_range_is_a_corrupt_record() {
    const END: u64 = (1 << 53) - 1;
    let store = store().await;
    let mut raw = raw_connection(&url()).await;
    for (id, planted, expected) in [("at-end", END, None), ("below-end", END - 1, Some(END))] {
        let k = key(id);
        // A released key (vacant: the header alone) that last granted `planted`.
        let vacant = header(2, 2, planted);
        plant(&mut raw, &store.redis_key(&k), &vacant).await;
        let claimed = store
            .claim(&ClaimRequest::new(k.clone(), ttl_ms(30_000)))
            .await;
        match expected {
            None => {
                assert!(
                    matches!(claimed, Err(Error::CorruptRecord { .. })),
                    "{id}: {claimed:?}"
                );
                assert_eq!(
                    value_of(&mut raw, &store.redis_key(&k)).await,
                    Some(vacant),
                    "{id}: the record is left as it was"
                );
            }
            Some(fencing) => {
                let Ok(Claim::Acquired(lease)) = claimed else {
                    panic!("{id}: {claimed:?}")
                };
                assert_eq!(lease.fencing, fencing, "{id}");
            }
        }
    }
}

#[tokio::test]
async fn other_redis_types_are_corrupt_records_to_a_store_waiting_for_replicas() {
    // A finish that waits for replicas sends its script and `WAIT` in one pipeline: a key of
    // another type is still a corrupt record there, as for a store that does not wait.
    let store = crate::common::store_at(
        &url(),
        RedisStore::builder()
            .prefix(crate::common::unique_prefix())
            .wait_for_replicas(1, std::time::Duration::from_millis(50)),
    )
    .await;
    let mut raw = raw_connection(&url()).await;
    for (what, command, args) in OTHER_TYPES {
        let k = key(what);
        plant_other_type(&mut raw, &store.redis_key(&k), command, args).await;
        let lease = Lease::new(k.clone(), OwnerToken::random(), 1);
        let completed = store.complete(&lease, Bytes::new(), ttl_ms(10_000)).await;
        assert!(
            matches!(completed, Err(Error::CorruptRecord { .. })),
            "complete of {what}: {completed:?}"
        );
        let failed = store.fail(&lease, Bytes::new(), ttl_ms(10_000)).await;
        assert!(
            matches!(failed, Err(Error::CorruptRecord { .. })),
            "fail of {what}: {failed:?}"
        );
        assert!(store.remove(&k).await.expect("remove"), "{what}");
    }
}
