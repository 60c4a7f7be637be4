//! Stores over any map with an atomic per-key update: the lifecycle adapter, written once.
//!
//! A store that keeps records as Rust values (in a `HashMap` behind a lock, in a concurrent
//! cache, in an embedded engine with a per-key read-modify-write) only has to say how to
//! read a key and how to update one key atomically: implement [`EntryMap`] and wrap it in
//! [`LifecycleStore`], which runs the [`lifecycle`] state machine for every step of
//! [`IdempotencyStore`]. One-time tokens work the same way with [`TokenMap`] and
//! [`TokenMapStore`].
//!
//! The example of [`IdempotencyStore`] ("Implementing a custom store") is such a store over
//! a `Mutex<HashMap>`; `idem-memory` is one over a moka cache.
//!
//! [`lifecycle`]: crate::backend::lifecycle

use std::fmt::Debug;
use std::future::Future;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::lifecycle::{self, Entry, Step, Write};
use crate::claim::{Claim, ClaimRequest};
use crate::error::{Error, check_payload};
use crate::key::Key;
use crate::lease::{Lease, OwnerToken};
use crate::record::Record;
use crate::store::IdempotencyStore;
use crate::token::{Consumption, Scope, Token, TokenRecord, TokenStore};
use crate::ttl::Ttl;

/// A map from [`Key`] to [`lifecycle::Entry`] with an atomic per-key update: all a store
/// keeping Rust values has to provide. Wrap it in [`LifecycleStore`].
///
/// Expired entries (see [`Entry::is_expired`]) may be handed to `update` and `get`: the
/// lifecycle treats them as absent. A map may drop them whenever it likes.
pub trait EntryMap: Debug + Send + Sync + 'static {
    /// The map's clock: milliseconds from a fixed origin, the unit of
    /// [`Entry::expires_at`]. It must never go back.
    fn now(&self) -> u64;

    /// Runs `step` on the key's entry (`None` when there is none), atomically with every
    /// other `update` of the same key, applies the [`Write`] it returns and hands back its
    /// answer. `step` is plain computation: it never blocks and never awaits.
    fn update<T: Send>(
        &self,
        key: &Key,
        step: impl FnOnce(Option<&Entry>) -> Step<T> + Send,
    ) -> impl Future<Output = Result<T, Error>> + Send;

    /// A snapshot of the key's entry, without the serialization of `update`. Answers that
    /// change nothing (a replay, "in progress", a read) are decided on it.
    fn get(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>, Error>> + Send;

    /// A quick look before a claim: the key's entry when the map can tell cheaply. Unlike
    /// [`get`](Self::get), it may answer `None` for a key it holds: the claim then goes
    /// through [`update`](Self::update), which decides on the current entry, so only the
    /// shortcut for replays and "in progress" answers is missed. A map whose `get` pays
    /// for exactness on keys it does not hold (a second look under a lock, say) skips
    /// that here: most claims are of new keys. Default: [`get`](Self::get).
    fn peek(&self, key: &Key) -> impl Future<Output = Result<Option<Entry>, Error>> + Send {
        self.get(key)
    }

    /// Asked before a claim that would store a key the map may not hold yet: refuse here
    /// (with [`Error::Unavailable`]) to bound the map. Default: every key is admitted.
    fn admit(&self, key: &Key) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = key;
        std::future::ready(Ok(()))
    }
}

/// An [`IdempotencyStore`] over any [`EntryMap`]: each step is one [`EntryMap::update`]
/// running the [`lifecycle`] state machine, and answers that write
/// nothing are read from a [`EntryMap::get`] snapshot.
#[derive(Debug, Clone)]
pub struct LifecycleStore<M> {
    map: M,
    max_payload: usize,
}

impl<M: EntryMap> LifecycleStore<M> {
    /// The default largest payload: 16 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

    /// A store over `map`, accepting payloads up to [`Self::DEFAULT_MAX_PAYLOAD`].
    pub fn new(map: M) -> Self {
        Self {
            map,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Sets the largest payload accepted, in bytes. Default: [`Self::DEFAULT_MAX_PAYLOAD`].
    #[must_use]
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }

    /// The map underneath.
    pub fn map(&self) -> &M {
        &self.map
    }

    /// The largest payload accepted, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Runs one transition on `key` inside the map's atomic update, at the map's time then.
    async fn step<T: Send>(
        &self,
        key: &Key,
        transition: impl FnOnce(Option<&Entry>, u64) -> Step<T> + Send,
    ) -> Result<T, Error> {
        let map = &self.map;
        map.update(key, |current| transition(current, map.now()))
            .await
    }
}

/// The steps of [`IdempotencyStore`], also callable without the trait's boxed futures (a
/// store wrapping a `LifecycleStore` forwards to these and boxes once).
impl<M: EntryMap> LifecycleStore<M> {
    /// As [`IdempotencyStore::claim`].
    ///
    /// # Errors
    ///
    /// [`Error::FingerprintMismatch`] when the key holds a record with another fingerprint;
    /// [`Error::Unavailable`] when [`EntryMap::admit`] refuses a new key (a full map); any error of
    /// the map's [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        // Replays and "in progress" answers only read: decided on a snapshot, they need
        // neither the per-key serialization nor a write.
        if let Some(entry) = self.map.peek(&request.key).await? {
            let step = lifecycle::claim(Some(&entry), request, self.map.now());
            if step.write == Write::Keep {
                return step.answer;
            }
        }
        self.map.admit(&request.key).await?;
        self.step(&request.key, |current, now| {
            lifecycle::claim(current, request, now)
        })
        .await
    }

    /// As [`IdempotencyStore::complete`].
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] when `response` is over [`max_payload`](Self::max_payload),
    /// before the map is touched; [`Error::LeaseLost`] when `lease` no longer owns the key;
    /// [`Error::Unavailable`] or another error from the map's
    /// [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn complete(
        &self,
        lease: &Lease,
        response: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        check_payload(response.len(), self.max_payload)?;
        self.step(&lease.key, |current, now| {
            lifecycle::complete(current, lease, response, retention, now)
        })
        .await
    }

    /// As [`IdempotencyStore::fail`].
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] when `failure` is over [`max_payload`](Self::max_payload), before
    /// the map is touched; [`Error::LeaseLost`] when `lease` no longer owns the key;
    /// [`Error::Unavailable`] or another error from the map's
    /// [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        check_payload(failure.len(), self.max_payload)?;
        self.step(&lease.key, |current, now| {
            lifecycle::fail(current, lease, failure, retention, now)
        })
        .await
    }

    /// As [`IdempotencyStore::renew`].
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when `lease` no longer owns the key; [`Error::Unavailable`] or another
    /// error from the map's [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::renew(current, lease, ttl, now)
        })
        .await
    }

    /// As [`IdempotencyStore::release`].
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when `lease` no longer owns the key; [`Error::Unavailable`] or another
    /// error from the map's [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.step(&lease.key, |current, now| {
            lifecycle::release(current, lease, now)
        })
        .await
    }

    /// As [`IdempotencyStore::read`].
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or another error from the map's
    /// [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let now = self.map.now();
        Ok(self
            .map
            .get(key)
            .await?
            .and_then(|entry| entry.record(key, now)))
    }

    /// As [`IdempotencyStore::remove`].
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or another error from the map's
    /// [`EntryMap::get`]/[`EntryMap::update`], passed through.
    pub async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.step(key, |current, now| lifecycle::remove(current, key, now))
            .await
    }
}

#[async_trait]
impl<M: EntryMap> IdempotencyStore for LifecycleStore<M> {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        LifecycleStore::claim(self, request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        LifecycleStore::complete(self, lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        LifecycleStore::fail(self, lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        LifecycleStore::renew(self, lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        LifecycleStore::release(self, lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        LifecycleStore::read(self, key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        LifecycleStore::remove(self, key).await
    }

    fn claim_unboxed<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        LifecycleStore::claim(self, request)
    }

    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        LifecycleStore::complete(self, lease, response, retention)
    }

    fn fail_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        LifecycleStore::fail(self, lease, failure, retention)
    }
}

/// What a [`TokenMap`] keeps per token: the record and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenEntry {
    /// The token's scope and whether it was used.
    pub record: TokenRecord,
    /// When the token expires, in the map's milliseconds ([`TokenMap::now`]).
    pub expires_at: u64,
}

impl TokenEntry {
    /// `record`, kept until `expires_at` in the map's milliseconds: for a map that rebuilds
    /// entries from its own encoding.
    #[must_use]
    pub const fn new(record: TokenRecord, expires_at: u64) -> Self {
        Self { record, expires_at }
    }

    /// Whether the token is still usable at `now`.
    #[must_use]
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// A map from [`Token`] to [`TokenEntry`] with an atomic per-token update. Wrap it in
/// [`TokenMapStore`].
pub trait TokenMap: Debug + Send + Sync + 'static {
    /// The map's clock: milliseconds from a fixed origin. It must never go back.
    fn now(&self) -> u64;

    /// Runs `step` on the token's entry, atomically with every other `update` of the same
    /// token; stores the entry it returns (`None`: leave the map as it is) and hands back
    /// its answer.
    fn update<T: Send>(
        &self,
        token: &Token,
        step: impl FnOnce(Option<&TokenEntry>) -> (T, Option<TokenEntry>) + Send,
    ) -> impl Future<Output = Result<T, Error>> + Send;

    /// Asked before a token is issued: refuse here (with [`Error::Unavailable`]) to bound
    /// the map. Default: every token is admitted.
    fn admit(&self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// A [`TokenStore`] over any [`TokenMap`]: issue and consume are one atomic update each,
/// running [`TokenRecord::consume`].
#[derive(Debug, Clone)]
pub struct TokenMapStore<M> {
    map: M,
}

impl<M: TokenMap> TokenMapStore<M> {
    /// A token store over `map`.
    pub fn new(map: M) -> Self {
        Self { map }
    }

    /// The map underneath.
    pub fn map(&self) -> &M {
        &self.map
    }
}

#[async_trait]
impl<M: TokenMap> TokenStore for TokenMapStore<M> {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.map.admit().await?;
        let map = &self.map;
        map.update(token, |current| {
            let now = map.now();
            if current.is_some_and(|entry| entry.is_live(now)) {
                return (Err(Error::TokenCollision), None);
            }
            let entry = TokenEntry::new(
                TokenRecord::issued(scope.clone()),
                now.saturating_add(ttl.as_millis()),
            );
            (Ok(()), Some(entry))
        })
        .await?
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        let map = &self.map;
        map.update(token, |current| {
            let live = current.filter(|entry| entry.is_live(map.now()));
            let (consumption, write) =
                TokenRecord::consume(live.map(|e| &e.record), scope, consumer);
            // The used mark keeps the token's own expiry.
            let write = write
                .zip(live)
                .map(|(record, entry)| TokenEntry::new(record, entry.expires_at));
            (consumption, write)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::backend::lifecycle::Phase;
    use crate::token::TokenGenerator;

    /// A map on a hand-moved clock that counts admissions and can refuse them.
    #[derive(Debug, Default)]
    struct TestMap {
        entries: Mutex<HashMap<Key, Entry>>,
        tokens: Mutex<HashMap<Token, TokenEntry>>,
        now: AtomicU64,
        admitted: AtomicUsize,
        full: AtomicBool,
    }

    impl TestMap {
        fn admission(&self) -> Result<(), Error> {
            self.admitted.fetch_add(1, Ordering::SeqCst);
            if self.full.load(Ordering::SeqCst) {
                return Err(Error::unavailable("full"));
            }
            Ok(())
        }
    }

    impl EntryMap for TestMap {
        fn now(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        async fn update<T: Send>(
            &self,
            key: &Key,
            step: impl FnOnce(Option<&Entry>) -> Step<T> + Send,
        ) -> Result<T, Error> {
            let mut entries = self.entries.lock().expect("not poisoned");
            step(entries.get(key)).apply_to(&mut entries, key)
        }
        async fn get(&self, key: &Key) -> Result<Option<Entry>, Error> {
            Ok(self.entries.lock().expect("not poisoned").get(key).cloned())
        }
        async fn admit(&self, _key: &Key) -> Result<(), Error> {
            self.admission()
        }
    }

    impl TokenMap for TestMap {
        fn now(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        async fn update<T: Send>(
            &self,
            token: &Token,
            step: impl FnOnce(Option<&TokenEntry>) -> (T, Option<TokenEntry>) + Send,
        ) -> Result<T, Error> {
            let mut tokens = self.tokens.lock().expect("not poisoned");
            let (answer, write) = step(tokens.get(token));
            if let Some(entry) = write {
                tokens.insert(token.clone(), entry);
            }
            Ok(answer)
        }
        async fn admit(&self) -> Result<(), Error> {
            self.admission()
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn key() -> Key {
        Key::new("adapter", "k").expect("valid key")
    }

    fn ttl(ms: u64) -> Ttl {
        Ttl::from_millis(ms).expect("ttl")
    }

    fn acquired(claim: Result<Claim, Error>) -> Lease {
        match claim {
            Ok(Claim::Acquired(lease)) => lease,
            other => panic!("expected an acquisition, got {other:?}"),
        }
    }

    #[test]
    fn payloads_are_limited_before_anything_is_written() {
        block_on(async {
            let store = LifecycleStore::new(TestMap::default());
            assert_eq!(store.max_payload(), 16 * 1024 * 1024);
            assert_eq!(
                LifecycleStore::<TestMap>::DEFAULT_MAX_PAYLOAD,
                16 * 1024 * 1024
            );
            let store = store.with_max_payload(4);
            assert_eq!(store.max_payload(), 4);
            let lease = acquired(store.claim(&ClaimRequest::new(key(), ttl(1_000))).await);
            for result in [
                store
                    .complete(&lease, Bytes::from_static(b"12345"), ttl(1_000))
                    .await,
                store
                    .fail(&lease, Bytes::from_static(b"12345"), ttl(1_000))
                    .await,
            ] {
                assert!(matches!(
                    result,
                    Err(Error::PayloadTooLarge { size: 5, limit: 4 })
                ));
            }
            let entry = store.map().entries.lock().expect("not poisoned")[&key()].clone();
            assert!(matches!(entry.phase, Phase::Claimed { .. }), "{entry:?}");
            store
                .fail(&lease, Bytes::from_static(b"1234"), ttl(1_000))
                .await
                .expect("at the limit");
            assert_eq!(
                store.read(&key()).await.expect("read").map(|r| r.state),
                Some(crate::RecordState::Failed {
                    failure: Bytes::from_static(b"1234")
                })
            );
        });
    }

    /// Answers that write nothing come from the snapshot, without asking for admission: a
    /// full map still replays and still says "in progress"; anything that writes is admitted
    /// first.
    #[test]
    fn only_claims_that_write_are_admitted() {
        block_on(async {
            let store = LifecycleStore::new(TestMap::default());
            let map = store.map();
            let admitted = || map.admitted.load(Ordering::SeqCst);
            let request = ClaimRequest::new(key(), ttl(1_000));
            let lease = acquired(store.claim(&request).await);
            assert_eq!(admitted(), 1);
            map.full.store(true, Ordering::SeqCst);
            let other = ClaimRequest::new(key(), ttl(1_000));
            assert_eq!(
                store
                    .claim(&other)
                    .await
                    .expect("answered from the snapshot"),
                Claim::InProgress {
                    retry_after: Duration::from_millis(1_000)
                }
            );
            assert_eq!(admitted(), 1, "an answer that writes nothing was admitted");
            // The holder's retry writes (its lease is extended), so it is admitted.
            assert!(matches!(
                store.claim(&request).await,
                Err(Error::Unavailable { .. })
            ));
            assert_eq!(admitted(), 2);
            map.full.store(false, Ordering::SeqCst);
            store
                .complete(&lease, Bytes::from_static(b"ok"), ttl(5_000))
                .await
                .expect("complete");
            map.full.store(true, Ordering::SeqCst);
            assert_eq!(
                store.claim(&other).await.expect("a replay"),
                Claim::Completed(Bytes::from_static(b"ok"))
            );
            assert_eq!(admitted(), 2);
        });
    }

    /// Every step through the trait object reaches the lifecycle, at the map's time.
    #[test]
    fn the_trait_runs_every_step_on_the_map() {
        block_on(async {
            let store = LifecycleStore::new(TestMap::default());
            let dyn_store: &dyn IdempotencyStore = &store;
            let request = ClaimRequest::new(key(), ttl(1_000));
            let lease = acquired(dyn_store.claim(&request).await);
            store.map().now.store(400, Ordering::SeqCst);
            let record = dyn_store.read(&key()).await.expect("read").expect("held");
            assert_eq!(record.expires_in, Duration::from_millis(600));
            dyn_store.renew(&lease, ttl(2_000)).await.expect("renew");
            let record = dyn_store.read(&key()).await.expect("read").expect("held");
            assert_eq!(record.expires_in, Duration::from_millis(2_000));
            dyn_store.release(&lease).await.expect("release");
            assert_eq!(dyn_store.read(&key()).await.expect("read"), None);
            assert!(matches!(
                dyn_store.release(&lease).await,
                Err(Error::LeaseLost)
            ));
            let lease = acquired(dyn_store.claim(&request).await);
            assert_eq!(lease.fencing, 2);
            dyn_store
                .complete(&lease, Bytes::from_static(b"a"), ttl(1_000))
                .await
                .expect("complete");
            assert!(matches!(
                dyn_store.fail(&lease, Bytes::new(), ttl(1_000)).await,
                Err(Error::LeaseLost)
            ));
            assert!(matches!(
                dyn_store.renew(&lease, ttl(1_000)).await,
                Err(Error::LeaseLost)
            ));
            assert!(dyn_store.remove(&key()).await.expect("remove"));
            assert!(!dyn_store.remove(&key()).await.expect("remove"));
            let lease = acquired(dyn_store.claim(&request).await);
            assert_eq!(lease.fencing, 3, "the removal left its trace");
            dyn_store
                .fail(&lease, Bytes::from_static(b"f"), ttl(1_000))
                .await
                .expect("fail");
            assert_eq!(
                dyn_store.claim(&request).await.expect("replay"),
                Claim::Failed(Bytes::from_static(b"f"))
            );
            // Inherent forms, as used by wrapping stores.
            assert!(store.remove(&key()).await.expect("remove"));
            assert!(!store.remove(&key()).await.expect("remove"));
            let lease = acquired(store.claim(&request).await);
            store.renew(&lease, ttl(3_000)).await.expect("renew");
            let record = store.read(&key()).await.expect("read").expect("held");
            assert_eq!(record.expires_in, Duration::from_millis(3_000));
            store.release(&lease).await.expect("release");
            assert_eq!(store.read(&key()).await.expect("read"), None);
        });
    }

    /// A claim answered from the snapshot is decided at the map's time, like one that
    /// writes: "in progress" with the lease's time left then, a lapsed lease free for
    /// another owner, a finished key replayed only until its retention ends.
    #[test]
    fn a_claim_is_decided_at_the_maps_time() {
        block_on(async {
            let store = LifecycleStore::new(TestMap::default());
            let clock = &store.map().now;
            let holder = ClaimRequest::new(key(), ttl(1_000));
            let lease = acquired(store.claim(&holder).await);
            clock.store(400, Ordering::SeqCst);
            let other = ClaimRequest::new(key(), ttl(1_000));
            assert_eq!(
                store.claim(&other).await.expect("answered"),
                Claim::InProgress {
                    retry_after: Duration::from_millis(600)
                }
            );
            clock.store(1_000, Ordering::SeqCst);
            let taken = acquired(store.claim(&other).await);
            assert_eq!(
                taken.fencing,
                lease.fencing + 1,
                "the lapsed lease is taken over"
            );
            store
                .complete(&taken, Bytes::from_static(b"ok"), ttl(5_000))
                .await
                .expect("complete");
            clock.store(5_999, Ordering::SeqCst);
            assert_eq!(
                store.claim(&holder).await.expect("a replay"),
                Claim::Completed(Bytes::from_static(b"ok"))
            );
            clock.store(6_000, Ordering::SeqCst);
            assert_eq!(
                acquired(store.claim(&holder).await).fencing,
                1,
                "the retention ended: a new key"
            );
        });
    }

    /// The unboxed steps the executor calls on a concrete store run the same transitions as
    /// the boxed ones: a claim acquires and later replays, completing stores a response
    /// and failing a failure (not one for the other), and a lost lease is still refused.
    #[test]
    fn the_unboxed_steps_claim_complete_and_fail_like_the_boxed_ones() {
        block_on(async {
            let store = LifecycleStore::new(TestMap::default());
            let done = ClaimRequest::new(key(), ttl(1_000));
            let lease = acquired(store.claim_unboxed(&done).await);
            assert_eq!(lease.fencing, 1);
            store
                .complete_unboxed(&lease, Bytes::from_static(b"ok"), ttl(5_000))
                .await
                .expect("the holder completes");
            assert_eq!(
                store.read(&key()).await.expect("read").map(|r| r.state),
                Some(crate::RecordState::Completed {
                    response: Bytes::from_static(b"ok")
                })
            );
            assert_eq!(
                store.claim_unboxed(&done).await.expect("a replay"),
                Claim::Completed(Bytes::from_static(b"ok"))
            );
            assert!(matches!(
                store
                    .complete_unboxed(&lease, Bytes::new(), ttl(5_000))
                    .await,
                Err(Error::LeaseLost)
            ));

            let failing = Key::new("adapter", "failing").expect("valid key");
            let request = ClaimRequest::new(failing.clone(), ttl(1_000));
            let lease = acquired(store.claim_unboxed(&request).await);
            store
                .fail_unboxed(&lease, Bytes::from_static(b"no"), ttl(5_000))
                .await
                .expect("the holder fails");
            assert_eq!(
                store.read(&failing).await.expect("read").map(|r| r.state),
                Some(crate::RecordState::Failed {
                    failure: Bytes::from_static(b"no")
                })
            );
            assert!(matches!(
                store.fail_unboxed(&lease, Bytes::new(), ttl(5_000)).await,
                Err(Error::LeaseLost)
            ));
        });
    }

    #[test]
    fn tokens_live_until_their_expiry_and_keep_it_when_used() {
        block_on(async {
            let store = TokenMapStore::new(TestMap::default());
            let map = store.map();
            let token = Token::parse(&crate::UuidV7Tokens.generate(), &crate::UuidV7Tokens)
                .expect("well formed");
            let alice = Scope::new("alice").expect("valid");
            map.now.store(100, Ordering::SeqCst);
            store
                .issue(&token, &alice, ttl(1_000))
                .await
                .expect("issue");
            assert_eq!(map.admitted.load(Ordering::SeqCst), 1);
            let entry = map.tokens.lock().expect("not poisoned")[&token].clone();
            assert_eq!(entry.expires_at, 1_100);
            assert!(entry.is_live(1_099));
            assert!(!entry.is_live(1_100));
            assert!(matches!(
                store.issue(&token, &alice, ttl(5_000)).await,
                Err(Error::TokenCollision)
            ));
            let consumer = OwnerToken::random();
            assert_eq!(
                store
                    .consume(&token, &alice, &consumer)
                    .await
                    .expect("answered"),
                Consumption::Consumed
            );
            let used = map.tokens.lock().expect("not poisoned")[&token].clone();
            assert_eq!(
                used.record,
                TokenRecord::used(alice.clone(), Some(consumer))
            );
            assert_eq!(used.expires_at, 1_100, "the used mark keeps the expiry");
            assert_eq!(
                store
                    .consume(&token, &alice, &consumer)
                    .await
                    .expect("answered"),
                Consumption::Consumed,
                "the consumer's own resend"
            );
            assert_eq!(
                map.tokens.lock().expect("not poisoned")[&token],
                used,
                "a resend writes nothing"
            );
            assert_eq!(
                store
                    .consume(&token, &alice, &OwnerToken::random())
                    .await
                    .expect("answered"),
                Consumption::Rejected(crate::Rejection::AlreadyUsed)
            );
            // At its expiry the token is unknown, and may be issued again.
            map.now.store(1_100, Ordering::SeqCst);
            assert_eq!(
                store
                    .consume(&token, &alice, &consumer)
                    .await
                    .expect("answered"),
                Consumption::Rejected(crate::Rejection::Unknown)
            );
            store
                .issue(&token, &alice, ttl(1_000))
                .await
                .expect("an expired token's ID is free");
            map.full.store(true, Ordering::SeqCst);
            let other = Token::parse(&crate::UuidV7Tokens.generate(), &crate::UuidV7Tokens)
                .expect("well formed");
            assert!(matches!(
                store.issue(&other, &alice, ttl(1_000)).await,
                Err(Error::Unavailable { .. })
            ));
            assert!(
                !map.tokens
                    .lock()
                    .expect("not poisoned")
                    .contains_key(&other)
            );
        });
    }
}
