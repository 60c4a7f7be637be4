//! The claim rules where the SQL matters: races over a pool, bytes kept raw, fencing at the
//! column's limit, stale leases, the same owner, keys byte for byte.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{
    Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Key, Lease, OwnerToken,
};
use tokio::sync::Barrier;

use super::*;

const SHORT: Duration = Duration::from_millis(200);
const PAST_SHORT: Duration = Duration::from_millis(450);

/// 64 claims of one key at once, over a pool of 8 connections.
async fn race<D: SqlDialect>(store: &Arc<SqlStore<D>>, key: &Key) -> Vec<Claim> {
    let barrier = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, barrier, request) = (store.clone(), barrier.clone(), request(key, LONG));
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&request).await
            })
        })
        .collect();
    let mut claims = Vec::new();
    for task in tasks {
        claims.push(task.await.expect("no panic").expect("no error"));
    }
    claims
}

/// The one winner of a race, and that every other claim was told "in progress".
fn one_winner(claims: &[Claim]) -> &Lease {
    let winners: Vec<_> = claims
        .iter()
        .filter_map(|c| match c {
            Claim::Acquired(lease) => Some(lease),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let in_progress = claims
        .iter()
        .filter(|c| matches!(c, Claim::InProgress { .. }))
        .count();
    assert_eq!(in_progress, claims.len() - 1, "{claims:?}");
    winners[0]
}

/// Sixty four claims of a new key one winner.
pub async fn sixty_four_claims_of_a_new_key_one_winner<S: TestServer>() {
    let store = Arc::new(shared_store::<S>().await);
    let key = key(&namespace::<S>("race-new"), "k");
    let claims = race(&store, &key).await;
    assert_eq!(one_winner(&claims).fencing, 1);
}

/// Five lapsed keys, each raced by 64 claimers at once: reads of the same free row overlap,
/// and the conditional UPDATE must let exactly one of them win.
pub async fn sixty_four_takeovers_of_a_lapsed_lease_one_winner<S: TestServer>() {
    let store = Arc::new(shared_store::<S>().await);
    let ns = namespace::<S>("race-lapsed");
    let mut firsts = Vec::new();
    for i in 0..5 {
        let key = key(&ns, &format!("k{i}"));
        firsts.push(acquired(
            store.claim(&request(&key, SHORT)).await.expect("claim"),
        ));
    }
    tokio::time::sleep(PAST_SHORT).await;
    let races: Vec<_> = firsts
        .iter()
        .map(|first| {
            let (store, key) = (store.clone(), first.key.clone());
            tokio::spawn(async move { race(&store, &key).await })
        })
        .collect();
    for (first, race) in firsts.iter().zip(races) {
        let claims = race.await.expect("no panic");
        assert_eq!(one_winner(&claims).fencing, first.fencing + 1);
    }
}

/// Payloads are stored byte for byte.
pub async fn payloads_are_stored_byte_for_byte<S: TestServer>() {
    let store = shared_store::<S>().await;
    let ns = namespace::<S>("bytes");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let payloads = [
        Vec::new(),
        every_byte,
        vec![
            0xff, 0xfe, 0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0x00, 0x5c, 0x27,
        ],
        big,
    ];
    for (i, payload) in payloads.iter().enumerate() {
        for fail in [false, true] {
            let key = key(&ns, &format!("{i}-{fail}"));
            let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
            let bytes = Bytes::from(payload.clone());
            if fail {
                store
                    .fail(&lease, bytes.clone(), ttl(RETENTION))
                    .await
                    .expect("fail");
            } else {
                store
                    .complete(&lease, bytes.clone(), ttl(RETENTION))
                    .await
                    .expect("complete");
            }
            let stored =
                read_text::<S>(store.pool(), S::payload_hex(store.table()), &row_key(&key))
                    .await
                    .expect("a row");
            assert!(stored == hex(payload), "payload {i} stored altered");
            let replay = store.claim(&request(&key, LONG)).await.expect("replay");
            let expected = if fail {
                Claim::Failed(bytes)
            } else {
                Claim::Completed(bytes)
            };
            assert!(replay == expected, "payload {i} replayed altered");
        }
    }
}

/// Fencing grows on every takeover and restarts once forgotten.
pub async fn fencing_grows_on_every_takeover_and_restarts_once_forgotten<S: TestServer>() {
    let store = shared_store::<S>().await;
    let key = key(&namespace::<S>("fencing"), "k");
    let first = acquired(store.claim(&request(&key, SHORT)).await.expect("claim"));
    assert_eq!(first.fencing, 1);
    let busy = store.claim(&request(&key, LONG)).await.expect("claim");
    assert!(
        matches!(busy, Claim::InProgress { retry_after } if retry_after <= SHORT),
        "{busy:?}"
    );

    tokio::time::sleep(PAST_SHORT).await;
    let second = acquired(store.claim(&request(&key, LONG)).await.expect("takeover"));
    assert_eq!(second.fencing, 2);
    store.release(&second).await.expect("release");
    let third = acquired(
        store
            .claim(&request(&key, LONG))
            .await
            .expect("after release"),
    );
    assert_eq!(third.fencing, 3);

    // A finished record past its retention is forgotten: the lifecycle starts afresh at 1.
    store
        .complete(&third, "done".into(), ttl(Duration::from_millis(100)))
        .await
        .expect("complete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.read(&key).await.expect("read"), None);
    let fresh = acquired(
        store
            .claim(&request(&key, LONG))
            .await
            .expect("after retention"),
    );
    assert_eq!(fresh.fencing, 1);
}

/// At [`SqlDialect::MAX_FENCING`], the end of the column's range, a takeover is refused with
/// `CorruptRecord` and changes nothing, as on every store
/// (`idem_core::backend::lifecycle::next_fencing`): saturating handed the number the lapsed
/// owner still held to a second owner, so a resource guarded by it would have taken the
/// stale owner's writes for the new one's. One below still grows, to the limit.
pub async fn fencing_stops_at_the_largest_number_the_column_holds<S: TestServer>() {
    let max = S::Dialect::MAX_FENCING;
    let store = shared_store::<S>().await;
    let ns = namespace::<S>("fencing-max");
    let at_max = key(&ns, "k");
    let first = acquired(store.claim(&request(&at_max, LONG)).await.expect("claim"));
    plant_lapsed_fencing::<S>(&store, &at_max, max).await;
    for _ in 0..2 {
        let refused = store.claim(&request(&at_max, LONG)).await;
        assert!(
            matches!(refused, Err(Error::CorruptRecord { .. })),
            "{refused:?}"
        );
    }
    // Nothing changed: the lapsed owner, whom nobody took over from, can still finish.
    let lapsed = Lease::new(first.key.clone(), first.owner, max);
    store
        .complete(&lapsed, "late".into(), ttl(RETENTION))
        .await
        .expect("the lapsed owner still holds the key");

    takes_over_past::<S>(&store, &key(&ns, "below"), max - 1).await;
}

/// Plants fencing number `planted` on a lapsed claim of `key`, then takes it over: the
/// takeover gets `planted + 1`, the lapsed lease is lost, the new one completes. The new
/// lease.
pub async fn takes_over_past<S: TestServer>(
    store: &SqlStore<S::Dialect>,
    key: &Key,
    planted: u64,
) -> Lease {
    let first = acquired(store.claim(&request(key, LONG)).await.expect("claim"));
    plant_lapsed_fencing::<S>(store, key, planted).await;
    let taken = acquired(store.claim(&request(key, LONG)).await.expect("takeover"));
    assert_eq!(taken.fencing, planted + 1);
    let stale = Lease::new(first.key.clone(), first.owner, planted);
    assert!(matches!(
        store.complete(&stale, "stale".into(), ttl(RETENTION)).await,
        Err(Error::LeaseLost)
    ));
    store
        .complete(&taken, "ok".into(), ttl(RETENTION))
        .await
        .expect("the new owner completes");
    taken
}

/// A stale lease changes nothing.
pub async fn a_stale_lease_changes_nothing<S: TestServer>() {
    let store = shared_store::<S>().await;
    let key = key(&namespace::<S>("stale"), "k");
    let stale = acquired(store.claim(&request(&key, SHORT)).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    let current = acquired(store.claim(&request(&key, LONG)).await.expect("takeover"));
    assert_eq!(current.fencing, stale.fencing + 1);
    let before = raw_row::<S>(&store, &key).await;
    let retention = ttl(RETENTION);
    assert!(matches!(
        store.complete(&stale, "x".into(), retention).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.fail(&stale, "x".into(), retention).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.renew(&stale, ttl(LONG)).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(store.release(&stale).await, Err(Error::LeaseLost)));
    // Right owner, wrong fencing number (one behind, or past any the column holds); right
    // fencing number, wrong owner.
    for fencing in [stale.fencing, u64::MAX] {
        let forged = Lease::new(current.key.clone(), current.owner, fencing);
        assert!(matches!(
            store.release(&forged).await,
            Err(Error::LeaseLost)
        ));
    }
    let forged = Lease::new(current.key.clone(), OwnerToken::random(), current.fencing);
    assert!(matches!(
        store.complete(&forged, "x".into(), retention).await,
        Err(Error::LeaseLost)
    ));
    assert_eq!(
        raw_row::<S>(&store, &key).await,
        before,
        "a stale lease changed the row"
    );
    store
        .complete(&current, "ok".into(), retention)
        .await
        .expect("the current lease completes");
}

/// The same owner gets its lease back extended.
pub async fn the_same_owner_gets_its_lease_back_extended<S: TestServer>() {
    let store = shared_store::<S>().await;
    let key = key(&namespace::<S>("same-owner"), "k");
    let fingerprint = Fingerprint::from_bytes(b"body");
    let request = ClaimRequest::new(key.clone(), ttl(SHORT)).with_fingerprint(fingerprint);
    let lease = acquired(store.claim(&request).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    // Lapsed but not taken over: the same attempt asking again keeps its fencing number.
    let longer = ClaimRequest::new(key.clone(), ttl(LONG))
        .with_owner(lease.owner)
        .with_fingerprint(fingerprint);
    assert_eq!(
        store.claim(&longer).await.expect("re-claim"),
        Claim::Acquired(lease.clone())
    );
    let record = store.read(&key).await.expect("read").expect("claimed");
    assert!(
        record.expires_in > LONG - Duration::from_secs(5),
        "not extended: {record:?}"
    );
    assert_eq!(record.fencing, lease.fencing);
    // The same owner with another fingerprint is refused like anyone else.
    let other = longer
        .clone()
        .with_fingerprint(Fingerprint::from_bytes(b"other"));
    assert!(matches!(
        store.claim(&other).await,
        Err(Error::FingerprintMismatch)
    ));
    let without = longer.clone().with_fingerprint(None);
    assert!(matches!(
        store.claim(&without).await,
        Err(Error::FingerprintMismatch)
    ));
}

/// Fingerprints are compared only on remembered records.
pub async fn fingerprints_are_compared_only_on_remembered_records<S: TestServer>() {
    let store = shared_store::<S>().await;
    let ns = namespace::<S>("fingerprint");
    let original = Fingerprint::from_bytes(b"amount=100");
    let changed = Fingerprint::from_bytes(b"amount=999");
    let key = key(&ns, "k");
    let lease = acquired(
        store
            .claim(&request(&key, LONG).with_fingerprint(original))
            .await
            .expect("claim"),
    );
    let before = raw_row::<S>(&store, &key).await;
    for other in [Some(changed), None] {
        let result = store
            .claim(&request(&key, LONG).with_fingerprint(other))
            .await;
        assert!(
            matches!(result, Err(Error::FingerprintMismatch)),
            "{result:?}"
        );
    }
    assert_eq!(raw_row::<S>(&store, &key).await, before);
    // A released key is free: not compared, taken with the new fingerprint.
    store.release(&lease).await.expect("release");
    let next = acquired(
        store
            .claim(&request(&key, LONG).with_fingerprint(changed))
            .await
            .expect("free key"),
    );
    assert_eq!(next.fencing, lease.fencing + 1);
    store
        .complete(&next, "r".into(), ttl(RETENTION))
        .await
        .expect("complete");
    let result = store
        .claim(&request(&key, LONG).with_fingerprint(original))
        .await;
    assert!(
        matches!(result, Err(Error::FingerprintMismatch)),
        "{result:?}"
    );
    let replay = store
        .claim(&request(&key, LONG).with_fingerprint(changed))
        .await;
    assert_eq!(replay.expect("replay"), Claim::Completed("r".into()));
}

/// Keys are distinct byte for byte.
pub async fn keys_are_distinct_byte_for_byte<S: TestServer>() {
    let store = shared_store::<S>().await;
    let ns = namespace::<S>("keys");
    let long_ns = format!("{ns}.{}", "n".repeat(255 - ns.len() - 1));
    let ids = [
        "Key".to_string(),
        "key".into(),
        "k".into(),
        "k ".into(),
        "caf\u{e9}".into(),
        "cafe\u{301}".into(),
        "ß".into(),
        "ss".into(),
        "k".repeat(255),
        format!("{}x", "k".repeat(254)),
    ];
    for namespace in [&ns, &long_ns] {
        assert_eq!(long_ns.len(), 255);
        for (i, id) in ids.iter().enumerate() {
            let key = key(namespace, id);
            let lease = acquired(
                store
                    .claim(&request(&key, LONG))
                    .await
                    .unwrap_or_else(|e| panic!("{key:?} should be a key of its own: {e}")),
            );
            store
                .complete(&lease, i.to_string().into(), ttl(RETENTION))
                .await
                .expect("complete");
        }
        for (i, id) in ids.iter().enumerate() {
            let replay = store
                .claim(&request(&key(namespace, id), LONG))
                .await
                .expect("replay");
            assert_eq!(replay, Claim::Completed(i.to_string().into()), "{id:?}");
        }
    }
}
