//! The claim rules where the SQL matters: fencing at its limit, bytes kept raw, stale
//! leases, the same owner, races.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{Claim, Error, IdempotencyStore, Lease, OwnerToken};
use idem_postgres::PgStore;
use idem_postgres::sqlx::{self, AssertSqlSafe};
use tokio::sync::Barrier;

use crate::support::*;

const SHORT: Duration = Duration::from_millis(200);
const PAST_SHORT: Duration = Duration::from_millis(450);

/// Sets a key's fencing number by hand and lets its lease lapse.
async fn plant_lapsed_fencing(store: &PgStore, lease: &Lease, fencing: i64) {
    let changed = sqlx::query(AssertSqlSafe(format!(
        "UPDATE \"{}\" SET fencing = $1, lease_until = clock_timestamp() - interval '1 second' \
         WHERE namespace = $2 AND idem_key = $3",
        store.table()
    )))
    .bind(fencing)
    .bind(lease.key.namespace().as_bytes())
    .bind(lease.key.id().as_bytes())
    .execute(store.pool())
    .await
    .expect("plant a fencing number");
    assert_eq!(changed.rows_affected(), 1);
}

/// At 2^63−1, the end of the `bigint` range, a takeover is refused with `CorruptRecord` and
/// changes nothing, as on every store (`idem_core::backend::lifecycle::next_fencing`): saturating
/// handed the number the lapsed owner still held to a second owner, so a resource guarded
/// by it would have taken the stale owner's writes for the new one's. One below still grows.
#[tokio::test]
async fn fencing_at_the_largest_bigint_is_a_corrupt_record() {
    let store = shared_store().await;
    let ns = namespace("fencing-max");
    let at_max = key(&ns, "k");
    let first = acquired(store.claim(&request(&at_max, LONG)).await.expect("claim"));
    plant_lapsed_fencing(&store, &first, i64::MAX).await;
    for _ in 0..2 {
        let refused = store.claim(&request(&at_max, LONG)).await;
        assert!(
            matches!(refused, Err(Error::CorruptRecord { .. })),
            "{refused:?}"
        );
    }
    // Nothing changed: the lapsed owner, whom nobody took over from, can still finish.
    let lapsed = Lease {
        fencing: i64::MAX as u64,
        ..first
    };
    store
        .complete(&lapsed, "late".into(), ttl(RETENTION))
        .await
        .expect("the lapsed owner still holds the key");
    // One below the limit still grows, to the limit.
    let next = key(&ns, "below");
    let first = acquired(store.claim(&request(&next, LONG)).await.expect("claim"));
    plant_lapsed_fencing(&store, &first, i64::MAX - 1).await;
    let taken = acquired(store.claim(&request(&next, LONG)).await.expect("takeover"));
    assert_eq!(taken.fencing, i64::MAX as u64);
    let stale = Lease {
        fencing: i64::MAX as u64 - 1,
        ..first
    };
    assert!(matches!(
        store.complete(&stale, "stale".into(), ttl(RETENTION)).await,
        Err(Error::LeaseLost)
    ));
    store
        .complete(&taken, "ok".into(), ttl(RETENTION))
        .await
        .expect("the new owner completes");
}

/// A negative fencing number cannot come from the store: the row is corrupt.
#[tokio::test]
async fn a_negative_fencing_number_is_a_corrupt_record() {
    let store = shared_store().await;
    let key = key(&namespace("fencing-negative"), "k");
    let first = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    plant_lapsed_fencing(&store, &first, -5).await;
    let result = store.claim(&request(&key, LONG)).await;
    assert!(
        matches!(result, Err(Error::CorruptRecord { .. })),
        "{result:?}"
    );
    assert!(store.remove(&key).await.is_ok());
}

#[tokio::test]
async fn payloads_are_stored_byte_for_byte() {
    let store = shared_store().await;
    let ns = namespace("bytes");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let payloads = [
        Vec::new(),
        every_byte,
        vec![0xff, 0xfe, 0x00, 0x5c, 0x27, 0xc0],
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let key = key(&ns, &format!("{i}"));
        let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
        let bytes = Bytes::from(payload.clone());
        store
            .complete(&lease, bytes.clone(), ttl(RETENTION))
            .await
            .expect("complete");
        let stored: Vec<u8> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT payload FROM \"{SHARED_TABLE}\" WHERE namespace = $1 AND idem_key = $2"
        )))
        .bind(key.namespace().as_bytes())
        .bind(key.id().as_bytes())
        .fetch_one(store.pool())
        .await
        .expect("raw payload");
        assert!(stored == *payload, "payload {i} stored altered");
        let replay = store.claim(&request(&key, LONG)).await.expect("replay");
        assert!(
            replay == Claim::Completed(bytes),
            "payload {i} replayed altered"
        );
    }
}

#[tokio::test]
async fn a_stale_lease_changes_nothing() {
    let store = shared_store().await;
    let key = key(&namespace("stale"), "k");
    let stale = acquired(store.claim(&request(&key, SHORT)).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    let current = acquired(store.claim(&request(&key, LONG)).await.expect("takeover"));
    assert_eq!(current.fencing, stale.fencing + 1);
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
    let forged = Lease {
        owner: OwnerToken::random(),
        ..current.clone()
    };
    assert!(matches!(
        store.complete(&forged, "x".into(), retention).await,
        Err(Error::LeaseLost)
    ));
    let forged = Lease {
        fencing: u64::MAX,
        ..current.clone()
    };
    assert!(matches!(
        store.release(&forged).await,
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

/// 64 claims of one lapsed key at once, over a pool of 8 connections: one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_takeovers_of_a_lapsed_lease_one_winner() {
    let store = Arc::new(shared_store().await);
    let key = key(&namespace("race-lapsed"), "k");
    let first = acquired(store.claim(&request(&key, SHORT)).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    let barrier = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, barrier, request) = (store.clone(), barrier.clone(), request(&key, LONG));
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&request).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("no panic").expect("no error") {
            Claim::Acquired(lease) => winners.push(lease),
            Claim::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].fencing, first.fencing + 1);
}
