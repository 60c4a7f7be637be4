//! The in-memory [`IdempotencyStore`]: the core's [`LifecycleStore`] over a moka cache.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use idem_core::adapter::{EntryMap, LifecycleStore};
use idem_core::lifecycle::{Entry, Phase, Step, Write};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, async_trait,
};
use moka::Expiry;
use moka::sync::Cache;

use crate::clock::Clock;
use crate::full::StoreFull;

/// Bytes of process memory one record takes besides its key text and payload: moka's
/// entry with its per-entry expiry bookkeeping, the key's and the payload's headers, and
/// the lifecycle entry, allocator rounding included. Measured against the process RSS by
/// `tests/footprint.rs`, which fails if the capacity stops meaning what it says.
pub const RECORD_OVERHEAD: u64 = 540;

/// The in-memory [`IdempotencyStore`]. Cloning is cheap and clones share the records.
///
/// It is the core's [`LifecycleStore`] over a moka cache ([`Records`]): every step is one
/// `get` and at most one `insert` under the key's lock stripe, and replays are answered from
/// a plain `get`.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: LifecycleStore<Records>,
}

/// The records of a [`MemoryStore`], in two places by phase:
///
/// - **finished** records (completed, failed), which make up nearly all of a store's
///   memory, live in a moka cache with per-entry expiry: one insert per record;
/// - **open** entries (a live or lapsed claim, the trace of a released one) are short-lived
///   and live in small hash maps, one per lock stripe.
///
/// A step on a key holds its stripe's mutex (one of [`STRIPES`], picked by the key's hash)
/// while it reads the key's entry and writes the next one, so steps on one key are
/// serialized and a key is in one place at a time. The lock is never held across an await;
/// under it run a lookup, the pure lifecycle step and at most one insert. This is cheaper
/// than moka's `and_compute_with`, which allocates, registers and notifies a per-key waiter
/// on every call, and a finished record costs one moka entry instead of an entry that was
/// written twice (claimed, then finished).
#[derive(Clone)]
pub struct Records {
    finished: Cache<Key, Entry, foldhash::fast::RandomState>,
    stripes: Arc<[Mutex<Stripe>]>,
    /// The weight of every open entry, which moka does not see.
    open_bytes: Arc<AtomicU64>,
    hasher: foldhash::fast::RandomState,
    clock: Clock,
    capacity: u64,
}

/// How many lock stripes serialize the steps: far more than cores, so two busy keys rarely
/// share one.
pub const STRIPES: usize = 1024;

/// How often, at most, a stripe drops its expired open entries (on its next write).
const SWEEP_EVERY_MS: u64 = 1000;

/// The open entries of one stripe.
#[derive(Default)]
struct Stripe {
    open: HashMap<Key, Entry, foldhash::fast::RandomState>,
    swept_at: u64,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("held_bytes", &self.held_bytes())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Records {
    fn held_bytes(&self) -> u64 {
        self.finished
            .weighted_size()
            .saturating_add(self.open_bytes.load(Ordering::Relaxed))
    }

    fn stripe(&self, key: &Key) -> MutexGuard<'_, Stripe> {
        let index = (self.hasher.hash_one(key) as usize) % self.stripes.len();
        // The stripe's map is only ever changed by whole inserts and removes, so a panic
        // under the lock leaves it consistent: a poisoned stripe is used as it is.
        self.stripes[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops a stripe's expired open entries, at most once per [`SWEEP_EVERY_MS`].
    fn sweep(&self, stripe: &mut Stripe, now: u64, force: bool) {
        if !force && now.saturating_sub(stripe.swept_at) < SWEEP_EVERY_MS {
            return;
        }
        stripe.swept_at = now;
        let mut freed = 0_u64;
        stripe.open.retain(|key, entry| {
            let keep = !entry.is_expired(now);
            if !keep {
                freed += u64::from(weight(key, entry));
            }
            keep
        });
        self.open_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Takes `key` out of the open entries, returning its weight to the budget.
    fn close(&self, stripe: &mut Stripe, key: &Key) {
        if let Some(entry) = stripe.open.remove(key) {
            self.open_bytes
                .fetch_sub(u64::from(weight(key, &entry)), Ordering::Relaxed);
        }
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
            finished: cache,
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            open_bytes: Arc::default(),
            hasher: foldhash::fast::RandomState::default(),
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
        self.inner.map().held_bytes()
    }

    /// Drops expired records now rather than lazily, and returns their bytes to the budget.
    pub async fn run_pending_tasks(&self) {
        let records = self.inner.map();
        records.finished.run_pending_tasks();
        let now = records.clock.now();
        for stripe in records.stripes.iter() {
            let mut stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            records.sweep(&mut stripe, now, true);
        }
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
        let mut stripe = self.stripe(key);
        let finished;
        let step = match stripe.open.get(key) {
            Some(open) => step(Some(open)),
            None => {
                finished = self.finished.get(key);
                step(finished.as_ref())
            }
        };
        match step.write {
            Write::Keep => {}
            Write::Remove => {
                self.close(&mut stripe, key);
                self.finished.invalidate(key);
            }
            Write::Put(entry) => match entry.phase {
                Phase::Completed(_) | Phase::Failed(_) => {
                    self.close(&mut stripe, key);
                    self.finished.insert(key.clone(), entry);
                }
                // A finished record changes only by removal, which leaves a vacant trace
                // (lifecycle::remove): that one must leave moka. A claim never meets a live
                // finished record, so nothing else in moka needs dropping.
                Phase::Claimed { .. } | Phase::Vacant => {
                    if matches!(entry.phase, Phase::Vacant) {
                        self.finished.invalidate(key);
                    }
                    self.open_bytes
                        .fetch_add(u64::from(weight(key, &entry)), Ordering::Relaxed);
                    if let Some(old) = stripe.open.insert(key.clone(), entry) {
                        self.open_bytes
                            .fetch_sub(u64::from(weight(key, &old)), Ordering::Relaxed);
                    }
                    let now = self.clock.now();
                    self.sweep(&mut stripe, now, false);
                }
            },
        }
        step.answer
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, Error> {
        // A live finished record is read without the stripe: the only write its key can
        // get is its removal. Anything else is read under the stripe, where a key moving
        // from open to finished is never seen half-way.
        if let Some(finished) = self.finished.get(key) {
            return Ok(Some(finished));
        }
        let stripe = self.stripe(key);
        Ok(match stripe.open.get(key) {
            Some(open) => Some(open.clone()),
            None => self.finished.get(key),
        })
    }

    /// Refuses keys it does not hold yet while at capacity; keys it holds always get in.
    async fn admit(&self, key: &Key) -> Result<(), Error> {
        if self.held_bytes() < self.capacity || self.holds(key) {
            return Ok(());
        }
        self.finished.run_pending_tasks();
        if self.held_bytes() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull {
            capacity: self.capacity,
        }))
    }
}

impl Records {
    fn holds(&self, key: &Key) -> bool {
        let stripe = self.stripe(key);
        stripe.open.contains_key(key) || self.finished.contains_key(key)
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
