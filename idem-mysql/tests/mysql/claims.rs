//! The claim rules, row by row.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, OwnerToken};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::{self, AssertSqlSafe};
use tokio::sync::Barrier;

use crate::support::*;

const SHORT: Duration = Duration::from_millis(200);
const PAST_SHORT: Duration = Duration::from_millis(450);

/// 64 claims of one key at once, over a pool of 8 connections.
async fn race(store: &Arc<MySqlStore>, key: &idem_core::Key) -> Vec<Claim> {
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

fn winners(claims: &[Claim]) -> Vec<&idem_core::Lease> {
    claims
        .iter()
        .filter_map(|c| match c {
            Claim::Acquired(lease) => Some(lease),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_claims_of_a_new_key_one_winner() {
    let store = Arc::new(shared_store().await);
    let key = key(&namespace("race-new"), "k");
    let claims = race(&store, &key).await;
    let winners = winners(&claims);
    assert_eq!(winners.len(), 1, "{claims:?}");
    assert_eq!(winners[0].fencing, 1);
    let in_progress = claims
        .iter()
        .filter(|c| matches!(c, Claim::InProgress { .. }))
        .count();
    assert_eq!(in_progress, 63, "{claims:?}");
}

/// Five lapsed keys, each raced by 64 claimers at once: reads of the same free row overlap,
/// and the conditional UPDATE must let exactly one of them win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_takeovers_of_a_lapsed_lease_one_winner() {
    let store = Arc::new(shared_store().await);
    let ns = namespace("race-lapsed");
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
        let winners = winners(&claims);
        assert_eq!(winners.len(), 1, "{claims:?}");
        assert_eq!(winners[0].fencing, first.fencing + 1);
        let in_progress = claims
            .iter()
            .filter(|c| matches!(c, Claim::InProgress { .. }))
            .count();
        assert_eq!(in_progress, 63, "{claims:?}");
    }
}

#[tokio::test]
async fn payloads_are_stored_byte_for_byte() {
    let store = shared_store().await;
    let ns = namespace("bytes");
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
            let stored: Vec<u8> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT payload FROM `{SHARED_TABLE}` WHERE namespace = ? AND idem_key = ?"
            )))
            .bind(key.namespace().as_bytes())
            .bind(key.id().as_bytes())
            .fetch_one(store.pool())
            .await
            .expect("raw payload");
            assert!(stored == *payload, "payload {i} stored altered");
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

#[tokio::test]
async fn fencing_grows_on_every_takeover_and_restarts_once_forgotten() {
    let store = shared_store().await;
    let key = key(&namespace("fencing"), "k");
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

#[tokio::test]
async fn a_stale_lease_changes_nothing() {
    let store = shared_store().await;
    let key = key(&namespace("stale"), "k");
    let stale = acquired(store.claim(&request(&key, SHORT)).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    let current = acquired(store.claim(&request(&key, LONG)).await.expect("takeover"));
    let before = raw_row(&store, &key).await;
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
    // Right owner, wrong fencing number; right fencing number, wrong owner.
    let forged = idem_core::Lease {
        fencing: stale.fencing,
        ..current.clone()
    };
    assert!(matches!(
        store.release(&forged).await,
        Err(Error::LeaseLost)
    ));
    let forged = idem_core::Lease {
        owner: OwnerToken::random(),
        ..current.clone()
    };
    assert!(matches!(
        store.complete(&forged, "x".into(), retention).await,
        Err(Error::LeaseLost)
    ));
    assert_eq!(
        raw_row(&store, &key).await,
        before,
        "a stale lease changed the row"
    );
    store
        .complete(&current, "ok".into(), retention)
        .await
        .expect("the current lease completes");
}

#[tokio::test]
async fn the_same_owner_gets_its_lease_back_extended() {
    let store = shared_store().await;
    let key = key(&namespace("same-owner"), "k");
    let fingerprint = Fingerprint::from_bytes(b"body");
    let request = ClaimRequest::new(key.clone(), ttl(SHORT)).with_fingerprint(fingerprint);
    let lease = acquired(store.claim(&request).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    // Lapsed but not taken over: the same attempt asking again keeps its fencing number.
    let longer = request.clone().with_owner(lease.owner);
    let longer = ClaimRequest {
        lease_ttl: ttl(LONG),
        ..longer
    };
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

#[tokio::test]
async fn fingerprints_are_compared_only_on_remembered_records() {
    let store = shared_store().await;
    let ns = namespace("fingerprint");
    let original = Fingerprint::from_bytes(b"amount=100");
    let changed = Fingerprint::from_bytes(b"amount=999");
    let key = key(&ns, "k");
    let lease = acquired(
        store
            .claim(&request(&key, LONG).with_fingerprint(original))
            .await
            .expect("claim"),
    );
    let before = raw_row(&store, &key).await;
    for other in [Some(changed), None] {
        let result = store
            .claim(&request(&key, LONG).with_fingerprint(other))
            .await;
        assert!(
            matches!(result, Err(Error::FingerprintMismatch)),
            "{result:?}"
        );
    }
    assert_eq!(raw_row(&store, &key).await, before);
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

#[tokio::test]
async fn keys_are_distinct_byte_for_byte() {
    let store = shared_store().await;
    let ns = namespace("keys");
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
