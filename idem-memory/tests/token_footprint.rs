//! The token store's capacity means what it says, as the record store's does (footprint.rs).
//!
//! Its own test binary with a single test: resident memory is a property of the whole process,
//! so a second test allocating in parallel (as `cargo test` runs them) would be measured too.

use idem_core::Error;
use idem_memory::StoreFull;

mod common;

#[tokio::test(flavor = "current_thread")]
async fn a_full_token_store_takes_about_its_capacity_of_memory() {
    use idem_core::{Scope, Tokens};
    use idem_memory::MemoryTokenStore;

    const CAPACITY: u64 = 8 * 1024 * 1024;
    let tokens = Tokens::new(MemoryTokenStore::with_capacity(CAPACITY));
    common::assert_fills_about_its_capacity(CAPACITY, "tokens", async || {
        let mut held = 0_u64;
        loop {
            let scope = Scope::new(format!("user:{held:08}")).expect("valid scope");
            match tokens.issue(&scope).await {
                Ok(_) => {}
                Err(Error::Unavailable { source }) if source.is::<StoreFull>() => break,
                Err(other) => panic!("issue {held}: {other:?}"),
            }
            held += 1;
            assert!(held < 10_000_000, "the store never filled up");
        }
        held
    })
    .await;
}
