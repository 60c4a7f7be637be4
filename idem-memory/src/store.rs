//! The in-memory [`IdempotencyStore`]: the core's [`LifecycleStore`] over a moka cache.

use std::time::{Duration, Instant};

use idem_core::adapter::{EntryMap, LifecycleStore};
use idem_core::lifecycle::{Entry, Phase, Step, Write};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, async_trait,
};
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;

use crate::clock::Clock;
use crate::full::StoreFull;

/// Bytes of process memory one record takes besides its key text and payload: moka's
/// entry with its per-entry expiry bookkeeping, the key's and the payload's headers, and
/// the lifecycle entry, allocator rounding included. Measured against the process RSS by
/// `tests/footprint.rs`, which fails if the capacity stops meaning what it says.
pub const RECORD_OVERHEAD: u64 = 580;

/// The in-memory [`IdempotencyStore`]. Cloning is cheap and clones share the records.
///
/// It is the core's [`LifecycleStore`] over a moka cache ([`Records`]): every step is one
/// atomic `and_compute_with` on the key, and replays are answered from a plain `get`.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: LifecycleStore<Records>,
}

/// The records of a [`MemoryStore`]: a moka cache with per-entry expiry, bounded by bytes.
#[derive(Clone)]
pub struct Records {
    cache: Cache<Key, Entry, foldhash::fast::RandomState>,
    clock: Clock,
    capacity: u64,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("held_bytes", &self.cache.weighted_size())
            .field("capacity", &self.capacity)
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
    pub const DEFAULT_MAX_PAYLOAD: usize = LifecycleStore::<Records>::DEFAULT_MAX_PAYLOAD;

    /// A store with the default capacity and payload limit.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store whose records take at most about `capacity` bytes of process memory, keys,
    /// payloads and bookkeeping included (see the crate docs for what happens when full).
    pub fn with_capacity(capacity: u64) -> Self {
        let clock = Clock::new();
        let cache = Cache::builder()
            .expire_after(EntryExpiry { clock })
            // No max_capacity: moka only keeps the weighted size, it never evicts by it.
            .weigher(|key: &Key, entry: &Entry| weight(key, entry))
            // Keys come from clients: a hasher with a random per-store seed, and much
            // cheaper than the default SipHash on short keys.
            .build_with_hasher(foldhash::fast::RandomState::default());
        let records = Records {
            cache,
            clock,
            capacity,
        };
        Self {
            inner: LifecycleStore::new(records),
        }
    }

    /// Sets the largest payload accepted, in bytes. Default: [`Self::DEFAULT_MAX_PAYLOAD`].
    #[must_use]
    pub fn with_max_payload(self, max_payload: usize) -> Self {
        Self {
            inner: self.inner.with_max_payload(max_payload),
        }
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.map().capacity
    }

    /// The bytes the records held take, by the store's own count (as of moka's last
    /// housekeeping; [`run_pending_tasks`](Self::run_pending_tasks) brings it up to date).
    pub fn held_bytes(&self) -> u64 {
        self.inner.map().cache.weighted_size()
    }

    /// Drops expired records now rather than lazily, and returns their bytes to the budget.
    pub async fn run_pending_tasks(&self) {
        self.inner.map().cache.run_pending_tasks().await;
    }
}

/// What one record counts against the capacity.
fn weight(key: &Key, entry: &Entry) -> u32 {
    let payload = match &entry.phase {
        Phase::Completed(bytes) | Phase::Failed(bytes) => bytes.len(),
        Phase::Claimed { .. } | Phase::Vacant => 0,
    };
    let bytes = (key.namespace().len() + key.id().len() + payload) as u64 + RECORD_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl EntryMap for Records {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    async fn update<T: Send>(
        &self,
        key: &Key,
        step: impl FnOnce(Option<&Entry>) -> Step<T> + Send,
    ) -> Result<T, Error> {
        let mut answer = None;
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let step = step(current.as_ref().map(|e| e.value()));
                answer = Some(step.answer);
                std::future::ready(match step.write {
                    Write::Keep => Op::Nop,
                    Write::Remove => Op::Remove,
                    Write::Put(entry) => Op::Put(entry),
                })
            })
            .await;
        answer.unwrap_or_else(|| Err(Error::backend("the cache did not run the transition")))
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, Error> {
        Ok(self.cache.get(key).await)
    }

    /// Refuses keys it does not hold yet while at capacity; keys it holds always get in.
    async fn admit(&self, key: &Key) -> Result<(), Error> {
        if self.cache.weighted_size() < self.capacity || self.cache.contains_key(key) {
            return Ok(());
        }
        self.cache.run_pending_tasks().await;
        if self.cache.weighted_size() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull {
            capacity: self.capacity,
        }))
    }
}

/// Tells moka when each entry's own `expires_at` comes.
struct EntryExpiry {
    clock: Clock,
}

impl EntryExpiry {
    fn remaining(&self, entry: &Entry, at: Instant) -> Option<Duration> {
        Some(self.clock.until(entry.expires_at, at))
    }
}

impl Expiry<Key, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &Key, entry: &Entry, created_at: Instant) -> Option<Duration> {
        self.remaining(entry, created_at)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Entry,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(entry, updated_at)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}
