//! The in-memory [`IdempotencyStore`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::lifecycle::{self, Entry, Phase, Step, Write};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, async_trait,
    check_payload,
};
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;

/// Bytes of bookkeeping counted per record on top of its key and payload: moka's entry,
/// the `Arc`, and the lifecycle entry.
const ENTRY_OVERHEAD: u64 = 160;

/// The in-memory [`IdempotencyStore`]. Cloning is cheap and clones share the records.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Key, Arc<Entry>>,
    origin: Instant,
    capacity: u64,
    max_payload: usize,
}

/// The source of [`Error::Unavailable`] when a [`MemoryStore`] is at capacity.
#[derive(Debug, thiserror::Error)]
#[error("the memory store holds its capacity of {capacity} bytes")]
pub struct StoreFull {
    /// The capacity in bytes.
    pub capacity: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("held_bytes", &self.held_bytes())
            .field("capacity", &self.capacity)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The default capacity: 512 MiB of records.
    pub const DEFAULT_CAPACITY: u64 = 512 * 1024 * 1024;
    /// The default largest payload: 16 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

    /// A store with the default capacity and payload limit.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store that holds at most about `capacity` bytes of records (see the crate docs
    /// for what happens when full).
    pub fn with_capacity(capacity: u64) -> Self {
        let origin = Instant::now();
        let cache = Cache::builder()
            .expire_after(EntryExpiry { origin })
            // No max_capacity: moka only keeps the weighted size, it never evicts by it.
            .weigher(|key: &Key, entry: &Arc<Entry>| weight(key, entry))
            .build();
        Self {
            cache,
            origin,
            capacity,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Sets the largest payload accepted, in bytes.
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }

    /// The bytes the records held take, by the store's own count (as of moka's last
    /// housekeeping; [`run_pending_tasks`](Self::run_pending_tasks) brings it up to date).
    pub fn held_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Drops expired records now rather than lazily, and returns their bytes to the budget.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs one lifecycle transition on `key`, atomically with every other on that key.
    async fn step<T>(
        &self,
        key: &Key,
        transition: impl FnOnce(Option<&Entry>, u64) -> Step<T>,
    ) -> Result<T, Error> {
        let mut answer = None;
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let now = self.now();
                let step = transition(current.as_ref().map(|e| e.value().as_ref()), now);
                answer = Some(step.answer);
                std::future::ready(match step.write {
                    Write::Keep => Op::Nop,
                    Write::Remove => Op::Remove,
                    Write::Put(entry) => Op::Put(Arc::new(entry)),
                })
            })
            .await;
        answer.unwrap_or_else(|| Err(Error::backend("the cache did not run the transition")))
    }

    /// Refuses claims of keys it does not hold yet while at capacity.
    async fn ensure_room_for(&self, key: &Key) -> Result<(), Error> {
        if self.held_bytes() < self.capacity || self.cache.contains_key(key) {
            return Ok(());
        }
        self.cache.run_pending_tasks().await;
        if self.held_bytes() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull {
            capacity: self.capacity,
        }))
    }
}

fn weight(key: &Key, entry: &Entry) -> u32 {
    let payload = match &entry.phase {
        Phase::Completed(bytes) | Phase::Failed(bytes) => bytes.len(),
        Phase::Claimed { .. } | Phase::Vacant => 0,
    };
    let bytes = (key.namespace().len() + key.id().len() + payload) as u64 + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Tells moka when each entry's own `expires_at` comes.
struct EntryExpiry {
    origin: Instant,
}

impl EntryExpiry {
    fn remaining(&self, entry: &Entry, at: Instant) -> Option<Duration> {
        let deadline = self.origin + Duration::from_millis(entry.expires_at);
        Some(deadline.saturating_duration_since(at))
    }
}

impl Expiry<Key, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        created_at: Instant,
    ) -> Option<Duration> {
        self.remaining(entry, created_at)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(entry, updated_at)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        // Replays and "in progress" answers only read: decided on a snapshot, they need
        // neither the per-key lock nor a write. Only acquiring goes through the lock.
        if let Some(entry) = self.cache.get(&request.key).await {
            let step = lifecycle::claim(Some(&entry), request, self.now());
            if step.write == Write::Keep {
                return step.answer;
            }
        }
        self.ensure_room_for(&request.key).await?;
        self.step(&request.key, |current, now| {
            lifecycle::claim(current, request, now)
        })
        .await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        check_payload(response.len(), self.max_payload)?;
        self.step(&lease.key, |current, now| {
            lifecycle::complete(current, lease, response, retention, now)
        })
        .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        check_payload(failure.len(), self.max_payload)?;
        self.step(&lease.key, |current, now| {
            lifecycle::fail(current, lease, failure, retention, now)
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::renew(current, lease, ttl, now)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::release(current, lease, now)
        })
        .await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let now = self.now();
        Ok(self
            .cache
            .get(key)
            .await
            .and_then(|entry| entry.record(key, now)))
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.step(key, |current, now| lifecycle::remove(current, key, now))
            .await
    }
}
