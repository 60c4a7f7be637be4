//! The idem-tests executor checks against the in-memory store: the executor's rules
//! (cancellation, renewal, lost replies, "ran but not recorded") hold on it.

use idem_memory::MemoryStore;

async fn make_store() -> MemoryStore {
    MemoryStore::new()
}

idem_tests::executor_conformance!(make_store);
