//! What a third party does: write a store, then run the whole contract against it with one
//! line. This store keeps its records in a `Mutex<HashMap>`; the core's
//! [`LifecycleStore`] runs the lifecycle on it, and it passes every check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use idem_core::backend::lifecycle::{Entry, Step};
use idem_core::backend::{EntryMap, LifecycleStore};
use idem_core::{Error, Key};

const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

#[derive(Debug)]
struct LockedMap {
    started: Instant,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl EntryMap for LockedMap {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One update under the lock: the whole of this store's atomicity.
    async fn update<T: Send>(
        &self,
        key: &Key,
        step: impl FnOnce(Option<&Entry>) -> Step<T> + Send,
    ) -> Result<T, Error> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| Error::backend("lock poisoned"))?;
        step(entries.get(key)).apply_to(&mut entries, key)
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, Error> {
        let entries = self
            .entries
            .lock()
            .map_err(|_| Error::backend("lock poisoned"))?;
        Ok(entries.get(key).cloned())
    }
}

async fn make_store() -> LifecycleStore<LockedMap> {
    LifecycleStore::new(LockedMap {
        started: Instant::now(),
        entries: Mutex::default(),
    })
    .with_max_payload(MAX_PAYLOAD)
}

// The one line.
idem_tests::conformance!(make_store);
