//! The replay cache's capacity means what it says: a cache filled to its capacity grows
//! the process's resident memory by about that many bytes.
//!
//! Its own test binary with a single test, so no other test's allocations share the
//! process while it measures.

use idem_core::{Bytes, Claim, ClaimRequest, IdempotencyStore, Key, Ttl};
use idem_memory::{MemoryStore, ReplayCache};

mod common;

#[tokio::test(flavor = "current_thread")]
async fn a_full_replay_cache_takes_about_its_capacity_of_memory() {
    const CAPACITY: u64 = 16 * 1024 * 1024;
    // About twice as many records as the cache holds, so it fills up and evicts.
    const RECORDS: usize = 80_000;
    let ttl = Ttl::from_secs(3600).expect("valid ttl");
    let store = MemoryStore::new();
    let request = |i: usize| {
        let key = Key::new("footprint", format!("replay-{i:08}")).expect("valid key");
        ClaimRequest::new(key, ttl)
    };
    // Records without payload: the copy of a payload the store behind hands out shares
    // its bytes with the store's record here, so only the bookkeeping is measured.
    for i in 0..RECORDS {
        let Ok(Claim::Acquired(lease)) = store.claim(&request(i)).await else {
            panic!("a fresh key")
        };
        store
            .complete(&lease, Bytes::new(), ttl)
            .await
            .expect("complete");
    }
    store.run_pending_tasks().await;
    let cache = ReplayCache::builder()
        .capacity(CAPACITY)
        .ttl(std::time::Duration::from_secs(3600))
        .build(store);
    common::assert_fills_about_its_capacity(CAPACITY, "replays asked", async || {
        for i in 0..RECORDS {
            let replay = cache.claim(&request(i)).await.expect("replay");
            assert_eq!(replay, Claim::Completed(Bytes::new()));
        }
        RECORDS as u64
    })
    .await;
}
