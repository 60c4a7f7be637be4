//! # idem-memory
//!
//! The embedded default store of [idem](https://docs.rs/idem): records in process memory,
//! in a [moka](https://docs.rs/moka) cache with per-entry expiry. Pick it for a single
//! process, for tests, and to start with; pick `idem-redis` or `idem-mysql` when several
//! processes must agree on one key.
//!
//! ```
//! use idem_core::{Idempotency, Key, Retryable};
//! use idem_memory::MemoryStore;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! struct Rejected;
//! impl Retryable for Rejected {
//!     fn is_retryable(&self) -> bool { false }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let idem = Idempotency::new(MemoryStore::new());
//! let key = Key::new("signups", "form-7f3a")?;
//! let first: u64 = idem.execute(&key, None, || async { Ok::<_, Rejected>(42) }).await.unwrap();
//! let again: u64 = idem.execute(&key, None, || async { Ok::<_, Rejected>(0) }).await.unwrap();
//! assert_eq!((first, again), (42, 42));
//! # Ok::<(), idem_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Atomicity
//!
//! [`MemoryStore`] is the core's [`LifecycleStore`](idem_core::backend::LifecycleStore) over
//! a moka cache: every transition runs the core's [`lifecycle`](idem_core::backend::lifecycle) state
//! machine on the key's entry while holding the key's lock stripe (one of [`STRIPES`]
//! mutexes, never held across an await), so steps on one key are serialized: one winner
//! per key, and no lost updates. Replays and reads take no lock.

//! ## When it is full
//!
//! The store is bounded by bytes of process memory ([`MemoryStore::with_capacity`]): each
//! record counts its key, its payload and [`RECORD_OVERHEAD`] for the bookkeeping, a figure
//! measured against the process's resident memory, so a 512 MiB store grows the process by
//! about 512 MiB when full. It never evicts to make
//! room: a live claim evicted would let a second caller run the operation while the first
//! still runs, and a completed record evicted would run it again on the next repeat, both
//! silently. Instead, when the bytes held reach the capacity, claims of *new* keys fail with
//! [`Error::Unavailable`](idem_core::Error::Unavailable) (source: [`StoreFull`]) until expired records are dropped; keys
//! already held can still be completed, failed, renewed, released and replayed. The bound is
//! soft by the payloads of claims in flight. This is Redis's `noeviction` policy.
//!
//! ## Replays of a remote store, from memory
//!
//! [`ReplayCache`] puts this crate's moka in front of any store (Redis, MySQL): finished
//! records, immutable until their retention ends, are replayed from process memory without
//! a round trip; claims always go to the shared store. A `remove` made by another process
//! is seen after at most the cache's TTL.
//!
//! ## One-time tokens
//!
//! [`MemoryTokenStore`] keeps the tokens of the token flow ([`idem_core::Tokens`]) the same
//! way (the core's [`TokenMapStore`](idem_core::backend::TokenMapStore) over moka), with one
//! atomic consume per token, and is bounded by bytes too.
#![deny(missing_docs)]

mod clock;
mod full;
mod replay_cache;
mod store;
mod token;

pub use full::StoreFull;
pub use replay_cache::{ReplayCache, ReplayCacheBuilder};
pub use store::{MemoryStore, RECORD_OVERHEAD, Records, STRIPES};
pub use token::{MemoryTokenStore, TOKEN_OVERHEAD, Tokens};
