//! The capacity means what it says: a store filled to its capacity grows the process's
//! resident memory by about that many bytes, not by twice as many.
//!
//! Its own test binary with a single test, so no other test's allocations share the process
//! while it measures (`cargo test` runs the tests of one binary in parallel threads; the token
//! store's twin is `token_footprint.rs`).

use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Ttl};
use idem_memory::{MemoryStore, StoreFull};

mod common;

#[tokio::test(flavor = "current_thread")]
async fn a_full_store_takes_about_its_capacity_of_memory() {
    const CAPACITY: u64 = 16 * 1024 * 1024;
    let store = MemoryStore::with_capacity(CAPACITY);
    let ttl = Ttl::from_secs(3600).expect("valid ttl");
    let payload = [b'x'; 100];
    common::assert_fills_about_its_capacity(CAPACITY, "records", async || {
        let mut held = 0_u64;
        loop {
            let key = Key::new("footprint", format!("record-{held:08}")).expect("valid key");
            match store.claim(&ClaimRequest::new(key, ttl)).await {
                Ok(Claim::Acquired(lease)) => {
                    // A fresh copy per record, as a real response would be.
                    let response = Bytes::copy_from_slice(&payload);
                    store
                        .complete(&lease, response, ttl)
                        .await
                        .expect("complete");
                }
                Err(Error::Unavailable { source }) if source.is::<StoreFull>() => break,
                other => panic!("claim {held}: {other:?}"),
            }
            held += 1;
            if held.is_multiple_of(1024) {
                // Keep the store's count current, as its housekeeping does over time.
                store.run_pending_tasks().await;
            }
            assert!(held < 10_000_000, "the store never filled up");
        }
        store.run_pending_tasks().await;
        held
    })
    .await;
}
