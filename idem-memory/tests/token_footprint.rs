//! The token store's capacity means what it says, as the record store's does (footprint.rs).
//!
//! Its own test binary with a single test: resident memory is a property of the whole process,
//! so a second test allocating in parallel (as `cargo test` runs them) would be measured too.

use idem_core::Error;
use idem_memory::StoreFull;

/// Resident set size from /proc/self/statm, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux exposes statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_token_store_takes_about_its_capacity_of_memory() {
    use idem_core::{Scope, Tokens};
    use idem_memory::MemoryTokenStore;

    const CAPACITY: u64 = 8 * 1024 * 1024;
    let tokens = Tokens::new(MemoryTokenStore::with_capacity(CAPACITY));
    let before = resident_bytes();
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
    let grown = resident_bytes().saturating_sub(before);
    let ratio = grown as f64 / CAPACITY as f64;
    println!(
        "{held} tokens; resident memory grew {grown} bytes for a capacity of {CAPACITY} \
         ({ratio:.2}×, {:.0} bytes per token)",
        grown as f64 / held as f64
    );
    assert!(
        (0.8..=1.15).contains(&ratio),
        "a token store of {CAPACITY} bytes grew the process by {grown} bytes ({ratio:.2}×)"
    );
}
