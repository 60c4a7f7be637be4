//! The storage contract every backend implements.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::key::Key;
use crate::lease::Lease;
use crate::record::Record;
use crate::ttl::Ttl;

/// Where idempotency records live. Implement this trait, and nothing else, to add a backend;
/// then run the `idem-tests` conformance suite against it with one line.
///
/// # The contract
///
/// Every method is atomic with respect to every other call on the same key.
///
/// - [`claim`](Self::claim): exactly one of any number of concurrent claims of a free key
///   acquires it. A key is free when it was never seen, was released, its lease expired
///   without being finished, or its record outlived its retention. On a key that is not
///   free (claimed, completed, failed) the fingerprint is compared first: a stored
///   fingerprint that differs from the request's (`Some` vs `None` included) is
///   [`Error::FingerprintMismatch`] and changes nothing. A claim by the owner that already
///   holds the key (same [`OwnerToken`](crate::OwnerToken)) returns the same lease again
///   and extends it by `lease_ttl`.
/// - Fencing: each acquisition gets a fencing number greater than any the store issued
///   for the key before, as long as the store remembers the key. A store remembers a key
///   while it holds its record, and after the key was freed (a lease expired, a release,
///   a [`remove`](Self::remove)) for at least [`lifecycle::trace_ttl`] more: the longer of
///   the lease TTL and [`lifecycle::FENCING_MEMORY`] (60 s).
///
/// [`lifecycle::trace_ttl`]: crate::backend::lifecycle::trace_ttl
/// [`lifecycle::FENCING_MEMORY`]: crate::backend::lifecycle::FENCING_MEMORY
/// - [`complete`](Self::complete), [`fail`](Self::fail), [`renew`](Self::renew) and
///   [`release`](Self::release) apply only while the record is claimed by the lease's
///   owner with the lease's fencing number (a lapsed lease nobody took over still counts,
///   while the store remembers the key).
///   Otherwise they return [`Error::LeaseLost`] and change nothing.
/// - Finished records keep their payload byte for byte for their retention TTL, then the
///   key is free again.
/// - Payloads over the store's limit are [`Error::PayloadTooLarge`] and nothing is written.
/// - Anything found in the store that does not decode is [`Error::CorruptRecord`]; an
///   unreachable backend is [`Error::Unavailable`], with the driver error as `source`.
///
/// Keys, TTLs and fingerprints arrive validated ([`Key`], [`Ttl`]), so a store never has
/// to check them; it must store them faithfully: two different keys never share a record.
///
/// # Implementing a custom store
///
/// A store that answers every claim with "acquired" and keeps nothing compiles, and the
/// conformance suite rejects it; a real one keeps state. This one keeps it in a
/// `Mutex<HashMap>`: it says how to update one key atomically, and the core's
/// [`LifecycleStore`](crate::backend::LifecycleStore) runs the pure state machine in
/// [`lifecycle`](crate::backend::lifecycle) on it for every method of this trait:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Instant;
/// use idem_core::backend::{EntryMap, LifecycleStore};
/// use idem_core::backend::lifecycle::{Entry, Step};
/// use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Ttl};
///
/// #[derive(Debug)]
/// struct LockedMap {
///     started: Instant,
///     entries: Mutex<HashMap<Key, Entry>>,
/// }
///
/// impl EntryMap for LockedMap {
///     fn now(&self) -> u64 {
///         self.started.elapsed().as_millis() as u64
///     }
///
///     /// One update under the lock: the whole of this store's atomicity.
///     async fn update<T: Send>(
///         &self,
///         key: &Key,
///         step: impl FnOnce(Option<&Entry>) -> Step<T> + Send,
///     ) -> Result<T, Error> {
///         let mut entries = self.entries.lock().map_err(|_| Error::backend("poisoned"))?;
///         step(entries.get(key)).apply_to(&mut entries, key)
///     }
///
///     async fn get(&self, key: &Key) -> Result<Option<Entry>, Error> {
///         let entries = self.entries.lock().map_err(|_| Error::backend("poisoned"))?;
///         Ok(entries.get(key).cloned())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = LifecycleStore::new(LockedMap { started: Instant::now(), entries: Default::default() });
/// let request = ClaimRequest::new(Key::new("demo", "k1")?, Ttl::from_secs(30)?);
/// let Claim::Acquired(lease) = store.claim(&request).await? else { panic!("fresh key") };
/// store.complete(&lease, Bytes::from_static(b"done"), Ttl::from_secs(60)?).await?;
/// let again = ClaimRequest::new(Key::new("demo", "k1")?, Ttl::from_secs(30)?);
/// assert_eq!(store.claim(&again).await?, Claim::Completed(Bytes::from_static(b"done")));
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait IdempotencyStore: Debug + Send + Sync + 'static {
    /// Claims a key: acquires it, or reports who has it and how it ended.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error>;

    /// Stores the response of a finished operation, replayed to every repeat for `retention`.
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error>;

    /// Stores a permanent failure, replayed to every repeat for `retention`.
    ///
    /// A retryable failure is not stored: [`release`](Self::release) the lease instead, and
    /// the next request runs the operation again.
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error>;

    /// Extends a live lease to `ttl` from now, so a slow operation keeps its key.
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error>;

    /// Gives the key up without an outcome: the next claim acquires it, with a larger
    /// fencing number.
    async fn release(&self, lease: &Lease) -> Result<(), Error>;

    /// Reads a key's record, or `None` when the key is free.
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error>;

    /// Deletes a key's record whatever its state; says whether there was one (a live claim
    /// or a finished record: what [`read`](Self::read) would have shown). A current owner's
    /// lease is lost by this, and the key is free. The key's fencing number is remembered as
    /// after a release, so the next acquisition gets a larger one: the removed owner may
    /// still be running, and a downstream guard must keep accepting its successor.
    async fn remove(&self, key: &Key) -> Result<bool, Error>;

    /// [`claim`](Self::claim), for a caller that knows the store's type (the engine: its
    /// store is a type parameter). A store whose steps need no box of their own overrides
    /// this and the two below to hand back its future as it is; the default boxes, as the
    /// trait's methods do. Not part of the trait object (`dyn IdempotencyStore` calls
    /// [`claim`](Self::claim)), and never required: a store that does not override them
    /// behaves the same, one allocation per call dearer.
    fn claim_unboxed<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a
    where
        Self: Sized,
    {
        self.claim(request)
    }

    /// [`complete`](Self::complete), without the box where the store can; see
    /// [`claim_unboxed`](Self::claim_unboxed).
    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a
    where
        Self: Sized,
    {
        self.complete(lease, response, retention)
    }

    /// [`fail`](Self::fail), without the box where the store can; see
    /// [`claim_unboxed`](Self::claim_unboxed).
    fn fail_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a
    where
        Self: Sized,
    {
        self.fail(lease, failure, retention)
    }
}

macro_rules! forward_store {
    ($($ty:ty),+) => {$(
        #[async_trait]
        impl<T: IdempotencyStore + ?Sized> IdempotencyStore for $ty {
            async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
                (**self).claim(request).await
            }
            async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
                (**self).complete(lease, response, retention).await
            }
            async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
                (**self).fail(lease, failure, retention).await
            }
            async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
                (**self).renew(lease, ttl).await
            }
            async fn release(&self, lease: &Lease) -> Result<(), Error> {
                (**self).release(lease).await
            }
            async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
                (**self).read(key).await
            }
            async fn remove(&self, key: &Key) -> Result<bool, Error> {
                (**self).remove(key).await
            }
        }
    )+};
}

forward_store!(Arc<T>, Box<T>);
