//! The documented policy when full: never evict, refuse claims of new keys.

use idem_core::{Claim, ClaimRequest, Error, IdempotencyStore, Key, Ttl};
use idem_memory::{MemoryStore, StoreFull};

fn request(i: usize) -> ClaimRequest {
    let key = Key::new("capacity", format!("key-{i}")).expect("valid key");
    ClaimRequest::new(key, Ttl::from_secs(30).expect("valid ttl"))
}

#[tokio::test]
async fn a_full_store_refuses_new_keys_and_keeps_serving_held_ones() {
    let store = MemoryStore::with_capacity(4 * 1024);
    let mut leases = Vec::new();
    let refused_at = loop {
        let i = leases.len();
        assert!(i < 1000, "a 4 KiB store accepted 1000 claims");
        match store.claim(&request(i)).await {
            Ok(Claim::Acquired(lease)) => leases.push(lease),
            Err(Error::Unavailable { source }) => {
                let full = source.downcast_ref::<StoreFull>();
                assert_eq!(
                    full.map(|full| full.capacity),
                    Some(4 * 1024),
                    "refused with another cause: {source}"
                );
                break i;
            }
            other => panic!("claim {i}: {other:?}"),
        }
        // Let moka's housekeeping account for the write, as it does on its own over time.
        store.run_pending_tasks().await;
    };
    assert!(refused_at > 0, "refused before anything was stored");

    // Nothing held was evicted: every claim can still be completed and replayed.
    let retention = Ttl::from_millis(300).expect("valid ttl");
    for (i, lease) in leases.iter().enumerate() {
        store
            .complete(lease, format!("r{i}").into(), retention)
            .await
            .expect("complete a held key");
        let replay = store.claim(&request(i)).await.expect("replay");
        assert_eq!(
            replay,
            Claim::Completed(format!("r{i}").into()),
            "key {i} lost its record"
        );
    }

    // Room made by records outliving their retention lets new keys in again. (Removing
    // would not do: a removed key leaves its fencing trace, as a released one does.)
    // (moka's timer wheel ticks about once a second, so give it a few.)
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    store.run_pending_tasks().await;
    let again = store.claim(&request(refused_at)).await;
    assert!(
        matches!(again, Ok(Claim::Acquired(_))),
        "after freeing room: {again:?}"
    );
}

/// The capacity holds without anyone running moka's housekeeping: records finished one
/// after another, each admitted while the store was below its capacity, stop at the
/// capacity (give or take the one claim in flight), not at what moka last counted.
#[tokio::test]
async fn finished_records_count_against_the_capacity_at_once() {
    const CAPACITY: u64 = 64 * 1024;
    const PAYLOAD: usize = 8 * 1024;
    let store = MemoryStore::with_capacity(CAPACITY);
    let retention = Ttl::from_secs(60).expect("valid ttl");
    let mut finished = 0_u64;
    for i in 0..200 {
        match store.claim(&request(i)).await {
            Ok(Claim::Acquired(lease)) => {
                store
                    .complete(&lease, vec![b'r'; PAYLOAD].into(), retention)
                    .await
                    .expect("complete a held key");
                finished += 1;
            }
            Err(Error::Unavailable { .. }) => break,
            other => panic!("claim {i}: {other:?}"),
        }
    }
    store.run_pending_tasks().await;
    let record = PAYLOAD as u64 + idem_memory::RECORD_OVERHEAD + 64;
    assert!(
        store.held_bytes() <= CAPACITY + record,
        "a {CAPACITY}-byte store took {finished} records of {PAYLOAD} bytes: {} bytes held",
        store.held_bytes()
    );
}
