//! What a third party does: write a store, then run the whole contract against it with one
//! line. This store keeps its records in a `Mutex<HashMap>` and runs the core's lifecycle
//! state machine, and it passes every check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use idem_core::lifecycle::{self, Entry, Step, Write};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, async_trait,
    check_payload,
};

const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

#[derive(Debug)]
struct MapStore {
    started: Instant,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl MapStore {
    /// Runs one transition under the lock: the whole of this store's atomicity.
    fn step<T>(
        &self,
        key: &Key,
        transition: impl FnOnce(Option<&Entry>, u64) -> Step<T>,
    ) -> Result<T, Error> {
        let now = self.started.elapsed().as_millis() as u64;
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| Error::backend("lock poisoned"))?;
        let step = transition(entries.get(key).filter(|e| !e.is_expired(now)), now);
        match step.write {
            Write::Keep => {}
            Write::Put(entry) => {
                entries.insert(key.clone(), entry);
            }
            Write::Remove => {
                entries.remove(key);
            }
        }
        step.answer
    }
}

#[async_trait]
impl IdempotencyStore for MapStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.step(&request.key, |current, now| {
            lifecycle::claim(current, request, now)
        })
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        check_payload(response.len(), MAX_PAYLOAD)?;
        self.step(&lease.key, |current, now| {
            lifecycle::complete(current, lease, response, retention, now)
        })
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        check_payload(failure.len(), MAX_PAYLOAD)?;
        self.step(&lease.key, |current, now| {
            lifecycle::fail(current, lease, failure, retention, now)
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::renew(current, lease, ttl, now)
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::release(current, lease, now)
        })
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.step(key, |current, now| {
            Step::keep(Ok(current.and_then(|e| e.record(key, now))))
        })
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.step(key, |current, now| lifecycle::remove(current, key, now))
    }
}

async fn make_store() -> MapStore {
    MapStore {
        started: Instant::now(),
        entries: Mutex::default(),
    }
}

// The one line.
idem_tests::conformance!(make_store);
