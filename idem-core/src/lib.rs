//! # idem-core
//!
//! The contract of **idem**, the toolkit that makes APIs and message consumers idempotent:
//! a request or message that arrives twice (a double-clicked submit, a client retrying after
//! a timeout, a queue redelivering after a lost ack) takes effect once, and every repeat gets
//! the first result back.
//!
//! This crate holds what every backend shares: the [`IdempotencyStore`] trait, the
//! lifecycle of a key, [`Key`]s, [`Fingerprint`]s, the [`Error`] enum, and the
//! [`Idempotency`] executor. Applications usually depend on the `idem` facade, which picks a
//! backend by cargo feature; backends (`idem-memory`, `idem-redis`, `idem-mysql`, your own)
//! depend on this crate alone.
//!
//! ## The lifecycle
//!
//! ```text
//!             claim                 complete
//!   (free) ─────────▶ Claimed ─────────────────▶ Completed ──┐
//!      ▲                │ │      fail (permanent)            │ retention
//!      │   release,     │ └────────────────────▶ Failed ─────┤ expires
//!      │   lease expiry │                                    │
//!      └────────────────┴────────────────────────────────────┘
//! ```
//!
//! - **claim**: exactly one concurrent caller acquires a free key and gets a [`Lease`]
//!   (owner token + fencing number); the others learn it is in progress, or get the stored
//!   outcome.
//! - **Claimed**: the lease lasts its TTL unless renewed. When it lapses, the next claim takes
//!   the key over with a larger fencing number, and the old lease can no longer change it.
//! - **Completed / Failed**: the response or permanent failure is stored for a retention TTL
//!   and replayed byte for byte. A retryable failure releases the key instead.
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use idem_core::{Fingerprint, Idempotency, Key, Retryable};
//! use idem_memory::MemoryStore; // or idem-redis, idem-mysql, your own store
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Receipt { charge_id: u64 }
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! enum ChargeError { Declined }
//! impl Retryable for ChargeError {
//!     fn is_retryable(&self) -> bool { false }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let idem = Idempotency::new(MemoryStore::new());
//! let key = Key::new("charges", "order-1042")?;
//! let fingerprint = Some(Fingerprint::of(&("order-1042", 4_999))?);
//!
//! let runs = Arc::new(AtomicU32::new(0));
//! for _ in 0..3 {
//!     let runs = Arc::clone(&runs);
//!     // The operation owns what it uses: it runs to the end even if this caller goes away.
//!     let receipt = idem
//!         .execute(&key, fingerprint, move || async move {
//!             runs.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, ChargeError>(Receipt { charge_id: 77 })
//!         })
//!         .await
//!         .expect("charged");
//!     assert_eq!(receipt, Receipt { charge_id: 77 });
//! }
//! assert_eq!(runs.load(Ordering::SeqCst), 1); // the charge ran once; the repeats were replayed
//! # Ok::<(), idem_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## When a caller goes away
//!
//! Once a key is acquired and its operation started, a caller that goes away (its future
//! dropped: a timeout, a client that disconnected) never causes a second run. By default the
//! operation runs on a task of its own and finishes; its outcome is stored and replayed
//! ([`attempt::CancelPolicy::Detach`]). Operations known to have no effect until they
//! finish may opt into [`attempt::CancelPolicy::Release`] (the key is freed at once), the
//! only policy for operations that borrow from their caller
//! ([`Idempotency::execute_scoped`]). The [`attempt`] module is the engine behind both, for
//! every integration (executor, HTTP layer, message consumers).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod attempt;
pub mod backend;
mod claim;
mod config;
mod error;
mod executor;
mod fingerprint;
mod key;
mod lease;
mod record;
mod retryable;
mod store;
mod token;
mod ttl;

pub use claim::{Claim, ClaimRequest};
pub use config::{Config, WaitPolicy};
pub use error::{BoxError, Error, InputField, InvalidInput};
pub use executor::{ExecuteError, Execution, Idempotency};
pub use fingerprint::Fingerprint;
pub use key::{Key, MAX_KEY_LEN};
pub use lease::{Lease, OwnerToken};
pub use record::{Record, RecordState};
pub use retryable::Retryable;
pub use store::IdempotencyStore;
pub use token::{
    Consumption, MAX_TOKEN_LEN, Rejection, Scope, Token, TokenGenerator, TokenStore, Tokens,
    UuidV7Tokens,
};
pub use ttl::Ttl;

/// Re-exported so stores implement the trait with matching versions.
pub use async_trait::async_trait;
/// Re-exported: payloads are [`Bytes`].
pub use bytes::Bytes;
