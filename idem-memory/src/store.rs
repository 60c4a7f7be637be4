//! The in-memory [`IdempotencyStore`]: the core's [`LifecycleStore`] over a moka cache.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use idem_core::backend::lifecycle::{Entry, Phase, Step, Write};
use idem_core::backend::{EntryMap, LifecycleStore};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, async_trait,
};
use moka::sync::Cache;

use crate::clock::{Clock, ClockExpiry};
use crate::full::StoreFull;
use crate::scan::Expiring;
use crate::unapplied::Unapplied;

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
    /// The weight of the finished records written since the store last ran moka's
    /// housekeeping, which moka's `weighted_size` may not count yet.
    unapplied: Arc<Unapplied>,
    /// The latest clock reading a step took: recent enough for the sweeps, which only need
    /// the time to the second, without reading the clock twice per write.
    seen: Arc<AtomicU64>,
    /// When a full store may next sweep every stripe (see [`Records::sweep_all`]).
    next_full_sweep: Arc<AtomicU64>,
    /// The finished records a full store saw expire soon (see [`Records::drop_expired`]).
    expiring: Arc<Expiring<Arc<Key>>>,
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

/// A stripe whose map holds no more than this many entries is never shrunk: small maps
/// cost little, and a busy stripe would otherwise shrink and grow again all the time.
const SHRINK_ABOVE: usize = 32;

impl Stripe {
    /// Gives back the room of entries that left. A map keeps its table at the largest size
    /// it ever grew to, and only its entries count against the capacity: after a burst of
    /// claims that all finished, the empty tables of the stripes held memory no record
    /// counted (an eighth more than a full store's capacity, `tests/open_footprint.rs`).
    /// Shrinks to twice the entries left once they fill under a quarter of the table, so a
    /// stripe does not shrink and grow again on every few claims.
    fn shrink(&mut self) {
        let (len, room) = (self.open.len(), self.open.capacity());
        if room > SHRINK_ABOVE && len < room / 4 {
            self.open.shrink_to(len * 2);
        }
    }
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
        self.unapplied
            .held(self.finished.weighted_size())
            .saturating_add(self.open_bytes.load(Ordering::Relaxed))
    }

    /// Runs moka's housekeeping: expired records leave, and `weighted_size` counts every
    /// write made so far.
    fn apply_pending(&self) {
        self.unapplied.restart();
        self.finished.run_pending_tasks();
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
        stripe.shrink();
    }

    /// Takes `key` out of the open entries, returning its weight to the budget, and hands
    /// back the map's own copy of the key (one clone fewer for the caller to make).
    fn close(&self, stripe: &mut Stripe, key: &Key) -> Option<Key> {
        let (owned, entry) = stripe.open.remove_entry(key)?;
        self.open_bytes
            .fetch_sub(u64::from(weight(key, &entry)), Ordering::Relaxed);
        stripe.shrink();
        Some(owned)
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
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store whose records take at most about `capacity` bytes of process memory, keys,
    /// payloads and bookkeeping included (see the crate docs for what happens when full).
    #[must_use]
    pub fn with_capacity(capacity: u64) -> Self {
        let clock = Clock::new();
        let cache = Cache::builder()
            .expire_after(ClockExpiry(clock))
            // No max_capacity: moka only keeps the weighted size, it never evicts by it.
            .weigher(|key: &Key, entry: &Entry| weight(key, entry))
            // Keys come from clients: a hasher with a random per-store seed, and much
            // cheaper than the default SipHash on short keys.
            .build_with_hasher(foldhash::fast::RandomState::default());
        let records = Records {
            finished: cache,
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            open_bytes: Arc::default(),
            unapplied: Arc::default(),
            seen: Arc::default(),
            next_full_sweep: Arc::default(),
            expiring: Arc::default(),
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
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.inner.map().capacity
    }

    /// The bytes the records held take, by the store's own count: at least what they take
    /// after every step (a record just finished counts at once), expired records included
    /// until they are dropped; exact after [`run_pending_tasks`](Self::run_pending_tasks),
    /// which also drops them.
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.inner.map().held_bytes()
    }

    /// Drops expired records now rather than lazily, and returns their bytes to the budget.
    pub async fn run_pending_tasks(&self) {
        let records = self.inner.map();
        records.apply_pending();
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
        let now = self.clock.now();
        // Written once per millisecond at most, so threads rarely contend for it.
        if self.seen.load(Ordering::Relaxed) < now {
            self.seen.store(now, Ordering::Relaxed);
        }
        now
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
                finished = self.finished_record(key);
                step(finished.as_ref())
            }
        };
        match step.write {
            Write::Keep => {}
            Write::Remove => {
                drop(self.close(&mut stripe, key));
                self.finished.invalidate(key);
            }
            Write::Put(entry) => match entry.phase {
                Phase::Completed(_) | Phase::Failed(_) => {
                    let owned = self.close(&mut stripe, key).unwrap_or_else(|| key.clone());
                    let bytes = u64::from(weight(&owned, &entry));
                    self.finished.insert(owned, entry);
                    self.unapplied.add(bytes);
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
                    // The step just read the clock (through `now`).
                    let now = self.seen.load(Ordering::Relaxed);
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

    /// Finished records only, without the stripe: a claim of a new key (the common case)
    /// then pays one lookup in moka here instead of two and a lock; a claim of a key in
    /// progress is answered under the stripe, by `update`.
    async fn peek(&self, key: &Key) -> Result<Option<Entry>, Error> {
        Ok(self.finished.get(key))
    }

    /// Refuses keys it does not hold yet while at capacity; keys it holds always get in.
    async fn admit(&self, key: &Key) -> Result<(), Error> {
        if self.held_bytes() < self.capacity || self.holds(key) {
            return Ok(());
        }
        self.drop_expired();
        self.apply_pending();
        self.sweep_all();
        if self.held_bytes() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull::new(self.capacity)))
    }
}

impl Records {
    /// The key's finished record. A key that reaches `update` rarely has one (a replay is
    /// answered by `peek`), so a miss is found by `contains_key`, which, unlike `get`,
    /// records no read for moka to process later.
    fn finished_record(&self, key: &Key) -> Option<Entry> {
        if self.finished.contains_key(key) {
            self.finished.get(key)
        } else {
            None
        }
    }

    /// Drops the expired open entries of every stripe, at most once per
    /// [`SWEEP_EVERY_MS`] across the store. A full store needs it: a refused claim writes
    /// nothing, so no write sweeps the stripes for it, and open entries that all expired
    /// (lapsed claims, traces past their fencing memory) would keep it full for good.
    fn sweep_all(&self) {
        let now = self.now();
        let due = self.next_full_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_full_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(SWEEP_EVERY_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for stripe in self.stripes.iter() {
            let mut stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            self.sweep(&mut stripe, now, true);
        }
    }

    /// Drops the finished records whose retention has ended that moka has not dropped yet
    /// (its timer wheel does, up to a second later: `crate::scan`), so that their bytes
    /// leave the count, and the process, at their own expiry.
    fn drop_expired(&self) {
        let finished = self
            .finished
            .iter()
            .map(|(key, entry)| (key, entry.expires_at));
        for key in self.expiring.take_expired(self.now(), finished) {
            // Under the key's stripe, where every write of a finished record is made: a
            // record written since the scan is live, and stays.
            let _stripe = self.stripe(&key);
            if !self.finished.contains_key(&*key) {
                self.finished.invalidate(&*key);
            }
        }
    }

    fn holds(&self, key: &Key) -> bool {
        let stripe = self.stripe(key);
        stripe.open.contains_key(key) || self.finished.contains_key(key)
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

    fn claim_unboxed<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        self.inner.claim(request)
    }

    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.inner.complete(lease, response, retention)
    }

    fn fail_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.inner.fail(lease, failure, retention)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idem_core::backend::lifecycle::FENCING_MEMORY;

    use super::*;

    fn key(id: &str) -> Key {
        Key::new("store", id).expect("valid key")
    }

    fn claim_request(id: &str) -> ClaimRequest {
        ClaimRequest::new(key(id), Ttl::from_secs(30).expect("ttl"))
    }

    async fn acquire(store: &MemoryStore, id: &str) -> Lease {
        match store.claim(&claim_request(id)).await {
            Ok(Claim::Acquired(lease)) => lease,
            other => panic!("claim {id}: {other:?}"),
        }
    }

    fn open_entry(expires_at: u64) -> Entry {
        Entry::new(Phase::Vacant, 1, None, expires_at)
    }

    #[test]
    fn a_record_weighs_its_key_its_payload_and_the_overhead() {
        let finished = Entry::new(Phase::Completed(Bytes::from_static(b"12345")), 1, None, 0);
        let key = Key::new("ns", "abc").expect("valid key");
        assert_eq!(
            u64::from(weight(&key, &finished)),
            2 + 3 + 5 + RECORD_OVERHEAD
        );
        assert_eq!(
            u64::from(weight(&key, &open_entry(0))),
            2 + 3 + RECORD_OVERHEAD
        );
        let store = MemoryStore::new();
        assert_eq!(store.capacity(), 512 * 1024 * 1024);
        assert_eq!(MemoryStore::with_capacity(7).capacity(), 7);
        assert!(format!("{store:?}").contains("capacity: 536870912"));
    }

    /// The held bytes are exactly the records' weights: an open entry while claimed, the
    /// finished record alone once completed.
    #[tokio::test]
    async fn held_bytes_count_each_record_once() {
        let store = MemoryStore::new();
        assert_eq!(store.held_bytes(), 0);
        let lease = acquire(&store, "a").await;
        let open = u64::from(weight(&key("a"), &open_entry(0)));
        assert_eq!(store.held_bytes(), open);
        store
            .complete(
                &lease,
                Bytes::from_static(b"done"),
                Ttl::from_secs(60).expect("ttl"),
            )
            .await
            .expect("complete");
        store.run_pending_tasks().await;
        assert_eq!(
            store.held_bytes(),
            open + 4,
            "the open entry left the budget"
        );
    }

    /// Open entries past their expiry are dropped by the next write to their stripe, at
    /// most once a second, and their bytes return to the budget.
    #[test]
    fn a_sweep_drops_expired_open_entries_once_a_second() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        let (stale, live) = (key("stale"), key("live"));
        let mut stripe = Stripe::default();
        stripe.open.insert(stale.clone(), open_entry(10));
        stripe.open.insert(live.clone(), open_entry(5_000));
        let both = u64::from(weight(&stale, &open_entry(10)) + weight(&live, &open_entry(0)));
        records.open_bytes.fetch_add(both, Ordering::Relaxed);

        records.sweep(&mut stripe, 999, false);
        assert!(
            stripe.open.contains_key(&stale),
            "swept again within a second"
        );
        records.sweep(&mut stripe, 1_000, false);
        assert!(
            !stripe.open.contains_key(&stale),
            "an expired entry outlived its sweep"
        );
        assert!(stripe.open.contains_key(&live), "a live entry was swept");
        assert_eq!(
            records.open_bytes.load(Ordering::Relaxed),
            u64::from(weight(&live, &open_entry(0)))
        );
        // Forced (run_pending_tasks), it sweeps whenever asked.
        records.sweep(&mut stripe, 5_000, true);
        assert!(stripe.open.is_empty());
        assert_eq!(records.open_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(stripe.swept_at, 5_000);
    }

    /// A stripe gives back the room of the entries that left: once a sweep drops most of a
    /// big stripe's entries, its table shrinks to at most the floor it keeps
    /// ([`SHRINK_ABOVE`]), however many entries it once held, or the memory of a burst of
    /// claims stays held by empty tables that no capacity counts.
    #[test]
    fn a_stripe_emptied_by_a_sweep_gives_its_room_back() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        let mut stripe = Stripe::default();
        for i in 0..200 {
            let (key, entry) = (key(&format!("k{i}")), open_entry(10));
            records
                .open_bytes
                .fetch_add(u64::from(weight(&key, &entry)), Ordering::Relaxed);
            stripe.open.insert(key, entry);
        }
        assert!(stripe.open.capacity() > 4 * SHRINK_ABOVE, "the premise");
        records.sweep(&mut stripe, 1_000, true);
        assert!(stripe.open.is_empty(), "the premise: every entry expired");
        assert!(
            stripe.open.capacity() <= SHRINK_ABOVE,
            "an emptied stripe kept room for {} entries",
            stripe.open.capacity()
        );
    }

    /// A write sweeps its stripe on the clock reading its own step took: an open entry past
    /// its expiry is dropped, and its bytes return to the budget, by the next write to its
    /// stripe once a second has gone by since the store began, with no housekeeping run.
    #[tokio::test]
    async fn a_write_sweeps_its_stripe_on_its_own_clock_reading() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        let stripe_of = |key: &Key| (records.hasher.hash_one(key) as usize) % STRIPES;
        let stale = key("stale");
        let neighbour = (0..)
            .map(|i| key(&format!("neighbour-{i}")))
            .find(|candidate| stripe_of(candidate) == stripe_of(&stale))
            .expect("a key in the same stripe");
        let expired = open_entry(10);
        records
            .open_bytes
            .fetch_add(u64::from(weight(&stale, &expired)), Ordering::Relaxed);
        records.stripe(&stale).open.insert(stale.clone(), expired);
        // Past the first sweep's second on the store's clock (the stripe last swept at 0).
        // Bounded, so a clock that does not advance fails here instead of hanging the run.
        let waiting = std::time::Instant::now();
        while records.clock.now() < SWEEP_EVERY_MS {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the store's clock does not advance"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acquire(&store, neighbour.id()).await;
        assert!(
            !records.stripe(&stale).open.contains_key(&stale),
            "the write did not sweep its stripe"
        );
        assert_eq!(
            store.held_bytes(),
            u64::from(weight(&neighbour, &open_entry(0))),
            "the swept entry's bytes did not return to the budget"
        );
    }

    /// A full store sweeps every stripe (1024 locks) at most once a second across the
    /// store, not on every claim it refuses: an open entry that expired just after a full
    /// sweep stays until the next one is due.
    #[test]
    fn a_full_sweep_runs_at_most_once_a_second() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        // Past the store's first millisecond, so the first full sweep is not at the instant
        // the next is due from (0).
        while records.clock.now() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        records.sweep_all();
        let stale = key("stale");
        let expired = open_entry(0);
        records
            .open_bytes
            .fetch_add(u64::from(weight(&stale, &expired)), Ordering::Relaxed);
        records.stripe(&stale).open.insert(stale.clone(), expired);
        records.sweep_all();
        assert!(
            records.stripe(&stale).open.contains_key(&stale),
            "swept every stripe again within a second"
        );
    }

    /// A full sweep runs at the very millisecond it is due, not one later: an open entry
    /// that expired before then is dropped by a sweep on the clock reading it was put off
    /// to. Tried until one sweep starts and ends within the millisecond it was due at
    /// (bounded), since only then does its clock reading equal that instant.
    #[test]
    fn a_full_sweep_runs_at_the_millisecond_it_is_due() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        let stale = key("stale");
        for _ in 0..1_000 {
            let expired = open_entry(0);
            records
                .open_bytes
                .fetch_add(u64::from(weight(&stale, &expired)), Ordering::Relaxed);
            if let Some(old) = records.stripe(&stale).open.insert(stale.clone(), expired) {
                records
                    .open_bytes
                    .fetch_sub(u64::from(weight(&stale, &old)), Ordering::Relaxed);
            }
            let due = records.clock.now();
            records.next_full_sweep.store(due, Ordering::Relaxed);
            records.sweep_all();
            if records.clock.now() == due {
                assert!(
                    !records.stripe(&stale).open.contains_key(&stale),
                    "a full sweep due at {due} ms did not run at {due} ms"
                );
                assert_eq!(records.open_bytes.load(Ordering::Relaxed), 0);
                return;
            }
        }
        panic!("no full sweep ran within one millisecond in 1000 tries");
    }

    /// A claim's quick look (`peek`) finds finished records, so a replay is answered
    /// without the key's stripe; open entries are left to `update`.
    #[tokio::test]
    async fn a_quick_look_finds_finished_records_only() {
        let store = MemoryStore::new();
        let records = store.inner.map();
        let lease = acquire(&store, "done").await;
        acquire(&store, "open").await;
        store
            .complete(
                &lease,
                Bytes::from_static(b"r"),
                Ttl::from_secs(60).expect("ttl"),
            )
            .await
            .expect("complete");
        let finished = records.peek(&key("done")).await.expect("peek");
        assert_eq!(
            finished.map(|entry| entry.phase),
            Some(Phase::Completed(Bytes::from_static(b"r")))
        );
        assert_eq!(records.peek(&key("open")).await.expect("peek"), None);
    }

    /// A full store refuses new keys, but a key it holds (open or finished) always gets in.
    #[tokio::test]
    async fn a_full_store_admits_the_keys_it_holds() {
        // Room for exactly one open entry: held == capacity is full.
        let capacity = u64::from(weight(&key("a"), &open_entry(0)));
        let store = MemoryStore::with_capacity(capacity);
        let lease = acquire(&store, "a").await;
        assert_eq!(store.held_bytes(), capacity);
        assert!(
            matches!(
                store.claim(&claim_request("b")).await,
                Err(Error::Unavailable { .. })
            ),
            "a full store took a new key"
        );
        // The holder's own retried claim writes, so it is admitted: the key is held.
        let retry = claim_request("a").with_owner(lease.owner);
        assert_eq!(
            store.claim(&retry).await.expect("a held key gets in"),
            Claim::Acquired(lease.clone())
        );
        let records = store.inner.map();
        assert!(records.holds(&key("a")));
        assert!(!records.holds(&key("b")));
        store
            .complete(&lease, Bytes::new(), Ttl::from_secs(60).expect("ttl"))
            .await
            .expect("complete");
        store.run_pending_tasks().await;
        assert_eq!(
            store.held_bytes(),
            capacity,
            "still full, now with a finished record"
        );
        assert!(records.holds(&key("a")), "a finished key is held");
        records.admit(&key("a")).await.expect("a held finished key");
        assert!(records.admit(&key("b")).await.is_err());
    }

    /// A store over its capacity refuses new keys, as a full one does: being over is no
    /// reason to skip the check.
    #[tokio::test]
    async fn a_store_over_its_capacity_refuses_new_keys() {
        let capacity = u64::from(weight(&key("x"), &open_entry(0)));
        let store = MemoryStore::with_capacity(capacity);
        let records = store.inner.map();
        for held in [key("x"), key("y")] {
            let entry = open_entry(u64::MAX);
            records
                .open_bytes
                .fetch_add(u64::from(weight(&held, &entry)), Ordering::Relaxed);
            records.stripe(&held).open.insert(held.clone(), entry);
        }
        assert!(store.held_bytes() > capacity, "the premise");
        assert!(
            matches!(
                store.claim(&claim_request("new")).await,
                Err(Error::Unavailable { .. })
            ),
            "a store over its capacity took a new key"
        );
    }

    /// A store full of open entries that have all expired (lapsed claims, traces past
    /// their fencing memory) takes new keys again: a refused claim writes nothing, so no
    /// write sweeps the stripes for it, and the refusal must look past them itself.
    #[tokio::test]
    async fn a_store_full_of_expired_open_entries_takes_new_keys() {
        let held = key("old");
        let capacity = u64::from(weight(&held, &open_entry(0)));
        let store = MemoryStore::with_capacity(capacity);
        let records = store.inner.map();
        let expired = open_entry(1);
        records
            .open_bytes
            .fetch_add(u64::from(weight(&held, &expired)), Ordering::Relaxed);
        records.stripe(&held).open.insert(held.clone(), expired);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(records.clock.now() > 1, "the premise: the entry expired");
        assert!(
            matches!(
                store.claim(&claim_request("new")).await,
                Ok(Claim::Acquired(_))
            ),
            "an expired open entry kept a new key out"
        );
    }

    /// Finished records leave the store, and its budget, when their retention ends, also
    /// when the key was finished before (moka then updates its entry rather than creating
    /// it).
    #[tokio::test]
    async fn finished_records_expire_from_the_store() {
        let store = MemoryStore::new();
        let short = Ttl::from_millis(50).expect("ttl");
        let lease = acquire(&store, "k").await;
        store
            .complete(&lease, Bytes::from_static(b"first"), short)
            .await
            .expect("complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Its retention over, the key is claimed and finished again.
        let lease = acquire(&store, "k").await;
        store
            .complete(
                &lease,
                Bytes::from_static(b"second"),
                Ttl::from_millis(600).expect("ttl"),
            )
            .await
            .expect("complete");
        assert_eq!(
            store.claim(&claim_request("k")).await.expect("replay"),
            Claim::Completed(Bytes::from_static(b"second"))
        );
        // moka's timer wheel ticks about once a second.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        store.run_pending_tasks().await;
        assert_eq!(
            store.held_bytes(),
            0,
            "an expired record still takes memory"
        );
        assert!(
            FENCING_MEMORY > Duration::from_secs(2),
            "the open trace is not due yet"
        );
    }

    /// moka asks `expire_after_update` when a key is written over an entry that is still
    /// live by its timer (moka 0.12.16 asks `expire_after_create` over an expired one). In
    /// this store that is a finished record written where one still sits in moka, which only
    /// happens when a retention ends within the millisecond that a new claim of the key
    /// finishes, so no store-level test can time it: the rule is pinned here instead. The
    /// new entry expires at its own instant, as a created one does, whatever the old one had
    /// left: never `None` (kept forever, memory grows) nor zero (a replay lost at once).
    #[test]
    fn an_entry_written_over_a_live_one_expires_at_its_own_instant() {
        use moka::Expiry;

        let clock = Clock::new();
        let expiry = ClockExpiry(clock);
        let at = std::time::Instant::now();
        let entry = Entry::new(
            Phase::Completed(Bytes::from_static(b"second")),
            1,
            None,
            clock.now() + 5_000,
        );
        let old_left = Some(Duration::from_secs(60));
        let updated = expiry.expire_after_update(&key("k"), &entry, at, old_left);
        assert_eq!(updated, expiry.expire_after_create(&key("k"), &entry, at));
        let left = updated.expect("an updated entry expires");
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(5),
            "{left:?}"
        );
    }
}
