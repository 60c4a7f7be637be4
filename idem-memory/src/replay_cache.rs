//! Replays answered from process memory, in front of any store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Key, Lease, Record,
    RecordState, Ttl, async_trait,
};
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

/// Bytes one cached replay takes besides its key text and payload (moka's entry with
/// per-entry expiry and its place in the eviction order, the headers), counted against the
/// cache's capacity. Measured against the process RSS by `tests/replay_cache_footprint.rs`
/// (400, the figure before, let a full cache grow the process 1.18 times its capacity).
const CACHED_OVERHEAD: u64 = 480;

/// A store that answers replays of finished records from process memory and sends
/// everything else to the store behind it (Redis, MySQL, any [`IdempotencyStore`]).
///
/// A finished record (completed or failed) never changes until its retention ends or it is
/// removed, so a copy of it answers every repeat as the store would, without a round trip.
/// Only finished records are cached, never claims: whether a key is free or in progress is
/// always asked of the store, so exactly one caller still acquires a key across processes.
///
/// - **Filled** when a claim through this cache finds a finished record: the cache then
///   reads the record once (one more round trip, once per key and cache lifetime) to learn
///   its fingerprint and remaining retention.
/// - **Bounded** by the record's remaining retention (measured from before that read, so
///   the copy never outlives the record) and by the cache TTL, whichever ends first; and by
///   a capacity in bytes, past which moka evicts (an evicted replay is only a miss).
/// - **Removal**: [`remove`](IdempotencyStore::remove) through this instance drops the copy
///   at once (also when its caller stops waiting for it), and copies being filled
///   concurrently are discarded. A `remove` made
///   elsewhere (another process, or the store directly) is seen here only when the copy's
///   TTL ends: **for up to the cache TTL after a remote remove, this process may still
///   replay the removed outcome.** Keep the TTL short where records are removed by hand.
/// - [`read`](IdempotencyStore::read) and every lease operation go to the store.
///
/// ```
/// use idem_core::{Bytes, Claim, ClaimRequest, IdempotencyStore, Key, Ttl};
/// use idem_memory::{MemoryStore, ReplayCache};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // In production the store behind is a shared one (idem-redis, idem-mysql).
/// let store = ReplayCache::builder()
///     .ttl(std::time::Duration::from_secs(5))
///     .build(MemoryStore::new());
/// let key = Key::new("orders", "o-1")?;
/// let ttl = Ttl::from_secs(60)?;
/// let Claim::Acquired(lease) = store.claim(&ClaimRequest::new(key.clone(), ttl)).await? else {
///     unreachable!("a fresh key")
/// };
/// store.complete(&lease, Bytes::from_static(b"receipt"), ttl).await?;
/// for _ in 0..3 {
///     // The first repeat fills the cache; the next ones never reach the store.
///     let replay = store.claim(&ClaimRequest::new(key.clone(), ttl)).await?;
///     assert_eq!(replay, Claim::Completed(Bytes::from_static(b"receipt")));
/// }
/// # Ok::<(), idem_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ReplayCache<S> {
    inner: S,
    cache: Cache<Key, Finished, foldhash::fast::RandomState>,
    ttl: Duration,
    /// Bumped by every remove through this instance, before and after it reaches the store:
    /// a fill that started before a remove returned is not stored.
    removals: Arc<AtomicU64>,
}

/// A cached finished record.
#[derive(Clone)]
struct Finished {
    outcome: Outcome,
    fingerprint: Option<Fingerprint>,
    /// When the copy stops answering: the earlier of the record's end and the cache TTL.
    until: Instant,
}

#[derive(Clone)]
enum Outcome {
    Completed(Bytes),
    Failed(Bytes),
}

impl Outcome {
    fn bytes(&self) -> &Bytes {
        match self {
            Self::Completed(bytes) | Self::Failed(bytes) => bytes,
        }
    }
}

/// Settings of a [`ReplayCache`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ReplayCacheBuilder {
    ttl: Duration,
    capacity: u64,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ReplayCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl ReplayCache<()> {
    /// The default TTL of a cached replay: 5 seconds, the longest a remote `remove` goes
    /// unseen.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
    /// The default capacity: 64 MiB of cached replays.
    pub const DEFAULT_CAPACITY: u64 = 64 * 1024 * 1024;

    /// Settings, all at their defaults.
    pub fn builder() -> ReplayCacheBuilder {
        ReplayCacheBuilder {
            ttl: Self::DEFAULT_TTL,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }
}

impl ReplayCacheBuilder {
    /// How long a cached replay answers at most, and so the longest a `remove` made
    /// elsewhere goes unseen here. Default: [`ReplayCache::DEFAULT_TTL`]. Zero caches
    /// nothing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most bytes of cached replays (keys, payloads, bookkeeping) kept; past it the
    /// least useful are evicted. Default: [`ReplayCache::DEFAULT_CAPACITY`].
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// The cache in front of `inner`.
    pub fn build<S: IdempotencyStore>(self, inner: S) -> ReplayCache<S> {
        let cache = Cache::builder()
            .max_capacity(self.capacity)
            .weigher(weight)
            .expire_after(UntilExpiry)
            .build_with_hasher(foldhash::fast::RandomState::default());
        ReplayCache {
            inner,
            cache,
            ttl: self.ttl,
            removals: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S: IdempotencyStore> ReplayCache<S> {
    /// A cache with the default settings in front of `inner`.
    pub fn new(inner: S) -> Self {
        ReplayCache::builder().build(inner)
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The cached answer to `request`, if there is a live copy of its record (moka hands
    /// out no copy past its `until`: see [`UntilExpiry`]).
    fn cached(&self, request: &ClaimRequest) -> Option<Result<Claim, Error>> {
        let finished = self.cache.get(&request.key)?;
        // As the store would: a different request under the key is refused, not replayed.
        if finished.fingerprint != request.fingerprint {
            return Some(Err(Error::FingerprintMismatch));
        }
        Some(Ok(match finished.outcome {
            Outcome::Completed(bytes) => Claim::Completed(bytes),
            Outcome::Failed(bytes) => Claim::Failed(bytes),
        }))
    }

    /// The claim: the cached copy if there is one; else the store's answer (its claim
    /// without the trait's box), keeping a copy of a finished record.
    async fn claim_through(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        if let Some(answer) = self.cached(request) {
            return answer;
        }
        let removals = self.removals.load(Ordering::Acquire);
        let claim = self.inner.claim_unboxed(request).await?;
        if matches!(claim, Claim::Completed(_) | Claim::Failed(_)) {
            self.fill(&request.key, removals).await;
        }
        Ok(claim)
    }

    /// Reads `key`'s record and keeps a copy if it is finished and no remove through this
    /// instance started since `removals` was read. Best effort: a failed read only means
    /// the next repeat asks the store again.
    async fn fill(&self, key: &Key, removals: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let asked = Instant::now();
        let Ok(Some(record)) = self.inner.read(key).await else {
            return;
        };
        let outcome = match record.state {
            RecordState::Completed { response } => Outcome::Completed(response),
            RecordState::Failed { failure } => Outcome::Failed(failure),
            RecordState::Claimed { .. } => return,
        };
        // Stores count the time left in whole milliseconds from a clock read in whole
        // milliseconds, which overstates it by up to one: less that, the copy ends no later
        // than the record.
        let left = record.expires_in.saturating_sub(Duration::from_millis(1));
        let finished = Finished {
            outcome,
            fingerprint: record.fingerprint,
            until: asked + left.min(self.ttl),
        };
        let removals_now = &self.removals;
        self.cache
            .entry_by_ref(key)
            // Serialized with the drop in `remove`, so a copy is either stored before that
            // drop (and dropped by it) or sees the removal and is not stored. (moka's sync
            // cache: the closure is short and never awaits, and a replay served from the copy
            // then costs no more than one from the in-memory store.)
            .and_compute_with(|_| {
                if removals_now.load(Ordering::Acquire) == removals {
                    Op::Put(finished)
                } else {
                    Op::Nop
                }
            });
        // moka evicts past the capacity only when it next runs its housekeeping, which it
        // schedules by the number of writes, not their bytes: until then, a few dozen large
        // copies would stay over it many times. A fill is rare (once per key), and already
        // took a round trip: it brings the cache back within its capacity at once.
        self.cache.run_pending_tasks();
    }
}

/// What a copy counts against the capacity: its key text, its payload and the overhead.
fn weight(key: &Key, finished: &Finished) -> u32 {
    let bytes = (key.namespace().len() + key.id().len()) as u64
        + finished.outcome.bytes().len() as u64
        + CACHED_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Each copy expires at its own `until`.
struct UntilExpiry;

impl Expiry<Key, Finished> for UntilExpiry {
    fn expire_after_create(&self, _: &Key, finished: &Finished, now: Instant) -> Option<Duration> {
        Some(finished.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        finished: &Finished,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(finished.until.saturating_duration_since(now))
    }
}

#[async_trait]
impl<S: IdempotencyStore> IdempotencyStore for ReplayCache<S> {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.claim_through(request).await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner
            .complete_unboxed(lease, response, retention)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail_unboxed(lease, failure, retention).await
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
        self.removals.fetch_add(1, Ordering::AcqRel);
        // The copy goes when the remove returns, and also when its caller goes away first:
        // the remove may have applied all the same.
        let _forget = Forget {
            cache: &self.cache,
            removals: &self.removals,
            key,
        };
        self.inner.remove(key).await
    }

    fn claim_unboxed<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        self.claim_through(request)
    }

    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.inner.complete_unboxed(lease, response, retention)
    }

    fn fail_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.inner.fail_unboxed(lease, failure, retention)
    }
}

/// The end of a remove through the cache, however it ends: drops the key's copy.
struct Forget<'a> {
    cache: &'a Cache<Key, Finished, foldhash::fast::RandomState>,
    removals: &'a AtomicU64,
    key: &'a Key,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        // Bumped again once the remove has applied: a fill that started while it was on its
        // way (after the first bump) may have read the record before it applied, and its
        // copy may arrive after the drop below; this bump makes that fill discard it.
        self.removals.fetch_add(1, Ordering::AcqRel);
        self.cache
            .entry_by_ref(self.key)
            .and_compute_with(|_| Op::Remove);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn key() -> Key {
        Key::new("replay", "k-1").expect("valid key")
    }

    fn ttl() -> Ttl {
        Ttl::from_secs(60).expect("valid ttl")
    }

    /// A cache whose store behind holds `key()` completed with `payload`, and the cache
    /// filled from it.
    async fn filled(
        builder: ReplayCacheBuilder,
        payload: &'static [u8],
    ) -> ReplayCache<MemoryStore> {
        let cache = builder.build(MemoryStore::new());
        let request = ClaimRequest::new(key(), ttl());
        let Ok(Claim::Acquired(lease)) = cache.claim(&request).await else {
            panic!("a fresh key")
        };
        cache
            .complete(&lease, Bytes::from_static(payload), ttl())
            .await
            .expect("complete");
        cache.claim(&request).await.expect("the repeat fills");
        cache.cache.run_pending_tasks();
        cache
    }

    /// A copy counts its key, its payload and the overhead against the capacity.
    #[tokio::test]
    async fn a_cached_replay_weighs_its_key_its_payload_and_the_overhead() {
        let cache = filled(ReplayCache::builder(), b"receipt").await;
        assert_eq!(
            cache.cache.policy().max_capacity(),
            Some(64 * 1024 * 1024),
            "the default capacity is 64 MiB"
        );
        assert_eq!(
            cache.cache.weighted_size(),
            ("replay".len() + "k-1".len() + "receipt".len()) as u64 + CACHED_OVERHEAD
        );
        let shown = format!("{cache:?}");
        assert!(
            shown.contains("ttl: 5s") && shown.contains("cached: 1"),
            "{shown}"
        );
    }

    /// A capacity that holds exactly one copy keeps it; one byte less keeps nothing, and
    /// the replay then comes from the store.
    #[tokio::test]
    async fn the_capacity_bounds_the_copies_by_their_weight() {
        let weight = ("replay".len() + "k-1".len() + "receipt".len()) as u64 + CACHED_OVERHEAD;
        let fits = filled(ReplayCache::builder().capacity(weight), b"receipt").await;
        assert!(
            fits.cache.contains_key(&key()),
            "a copy that fits was dropped"
        );
        let over = filled(ReplayCache::builder().capacity(weight - 1), b"receipt").await;
        assert!(
            !over.cache.contains_key(&key()),
            "a copy over the capacity was kept"
        );
    }

    /// Copies filled one after another never hold more than the capacity, however few of
    /// them it takes: not only once moka gets round to its housekeeping.
    #[tokio::test]
    async fn filled_copies_never_hold_more_than_the_capacity() {
        let capacity = 1 << 20;
        let cache = ReplayCache::builder()
            .capacity(capacity)
            .build(MemoryStore::new());
        let payload = Bytes::from(vec![7; 256 * 1024]);
        for i in 0..32 {
            let request = ClaimRequest::new(
                Key::new("replay", format!("big-{i}")).expect("valid key"),
                ttl(),
            );
            let Ok(Claim::Acquired(lease)) = cache.claim(&request).await else {
                panic!("a fresh key")
            };
            cache
                .complete(&lease, payload.clone(), ttl())
                .await
                .expect("complete");
            cache.claim(&request).await.expect("the repeat fills");
            let held: u64 = cache
                .cache
                .iter()
                .map(|(key, finished)| u64::from(weight(&key, &finished)))
                .sum();
            assert!(held <= capacity, "{held} bytes held after {} fills", i + 1);
        }
    }

    /// moka asks `expire_after_update` when a copy is written over a live one (two fills
    /// of a key racing): the new copy still ends at its own `until`, never `None` (kept past
    /// the record) nor zero.
    #[test]
    fn a_copy_written_over_a_live_one_ends_at_its_own_until() {
        let now = Instant::now();
        let finished = Finished {
            outcome: Outcome::Completed(Bytes::from_static(b"x")),
            fingerprint: None,
            until: now + Duration::from_secs(5),
        };
        let updated =
            UntilExpiry.expire_after_update(&key(), &finished, now, Some(Duration::from_secs(60)));
        assert_eq!(updated, Some(Duration::from_secs(5)));
        assert_eq!(
            updated,
            UntilExpiry.expire_after_create(&key(), &finished, now)
        );
    }
}
