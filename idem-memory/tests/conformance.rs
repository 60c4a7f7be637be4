//! The idem-tests conformance suite against the in-memory store.

use idem_memory::MemoryStore;

/// The suite's declared payload limit, set on the store so the limit check is exact.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

async fn make_store() -> MemoryStore {
    MemoryStore::new().with_max_payload(MAX_PAYLOAD)
}

idem_tests::conformance!(
    make_store,
    idem_tests::Capabilities {
        max_payload: MAX_PAYLOAD,
        ..Default::default()
    }
);

async fn make_token_store() -> idem_memory::MemoryTokenStore {
    idem_memory::MemoryTokenStore::new()
}

idem_tests::token_conformance!(make_token_store);
