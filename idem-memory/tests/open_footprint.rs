//! The capacity means what it says after a burst of claims: a store whose keys were all
//! claimed at once and then finished grows the process's resident memory by about what it
//! counts, not by that plus the room its claims once took.
//!
//! Its own test binary with a single test, so no other test's allocations share the
//! process while it measures.

use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Ttl};
use idem_memory::{MemoryStore, StoreFull};

mod common;

#[tokio::test(flavor = "current_thread")]
async fn a_store_filled_by_a_burst_of_claims_takes_about_its_capacity_of_memory() {
    const CAPACITY: u64 = 16 * 1024 * 1024;
    let store = MemoryStore::with_capacity(CAPACITY);
    let ttl = Ttl::from_secs(3600).expect("valid ttl");
    common::assert_fills_about_its_capacity(CAPACITY, "records", async || {
        // Every key claimed before any finishes, as when operations run long.
        let mut leases = Vec::new();
        loop {
            let i = leases.len();
            let key = Key::new("footprint", format!("open-{i:08}")).expect("valid key");
            match store.claim(&ClaimRequest::new(key, ttl)).await {
                Ok(Claim::Acquired(lease)) => leases.push(lease),
                Err(Error::Unavailable { source }) if source.is::<StoreFull>() => break,
                other => panic!("claim {i}: {other:?}"),
            }
            assert!(i < 10_000_000, "the store never filled up");
        }
        let held = leases.len() as u64;
        for lease in leases {
            // No payload: a finished record weighs what its claim did, so the store stays
            // at its capacity.
            store
                .complete(&lease, Bytes::new(), ttl)
                .await
                .expect("complete");
        }
        store.run_pending_tasks().await;
        held
    })
    .await;
}
