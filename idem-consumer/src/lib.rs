//! # idem-consumer
//!
//! Idempotent message consumers for **idem**: a message that a queue delivers twice (a
//! duplicate publish, a redelivery after a consumer crashed before its ack) takes effect
//! once. For each message the core runs the operation at most once per message ID and
//! answers a [`Disposition`]: ack, requeue with a delay, or dead-letter. The adapters
//! apply it on the broker: [`amqp`] (RabbitMQ through lapin, feature `lapin`) and
//! [`nats`] (NATS JetStream through async-nats, feature `nats`), each with a consume
//! loop that runs messages concurrently up to a limit and shuts down gracefully.
//!
//! ```
//! use idem_consumer::{AckReason, Consumer, Disposition};
//! use idem_core::{Idempotency, Retryable};
//! use idem_memory::MemoryStore; // or Redis, MySQL, your own store
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! struct Failed;
//! impl Retryable for Failed {
//!     fn is_retryable(&self) -> bool { true }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "orders")?;
//! let mut shipped = 0;
//! for _delivery in 0..2 {
//!     let disposition = consumer
//!         .handle("order-1042", None, || async {
//!             shipped += 1; // the business effect
//!             Ok::<_, Failed>(())
//!         })
//!         .await;
//!     assert!(matches!(disposition, Disposition::Ack { .. }));
//! }
//! assert_eq!(shipped, 1); // the redelivery was acked without running
//! # Ok::<(), idem_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## The disposition table
//!
//! Every decision, in the order they are checked. "Runs" means the operation is called.
//!
//! | situation | runs? | disposition | why |
//! |---|---|---|---|
//! | no ID where the [`IdSource`] looks | no | dead-letter ([`MissingId`](DeadLetterReason::MissingId)) | it cannot be deduplicated; a person must look, so it is kept, never dropped |
//! | the ID is not a valid key (over 255 bytes, control characters) | no | dead-letter ([`InvalidId`](DeadLetterReason::InvalidId)) | as above |
//! | delivered more often than [`Policy::max_deliveries`] (default 10), no outcome stored | no | dead-letter ([`Poison`](DeadLetterReason::Poison)) | it keeps failing or crashing consumers |
//! | … with an outcome stored after all | no | as for a repeat below | its acks were lost, it did not fail |
//! | a new ID; the operation succeeds | yes | **ack after the outcome is stored** ([`Processed`](AckReason::Processed)) | a crash before the ack leads to a replay, not a second run |
//! | a repeat of a stored success (duplicate publish, redelivery) | no | ack ([`Replayed`](AckReason::Replayed)) | it took effect already |
//! | in progress on another consumer (a live lease) | no | requeue after the lease's time left, 100 ms to [`Policy::max_in_progress_delay`] (5 s) ([`InProgressElsewhere`](RequeueReason::InProgressElsewhere)) | never acked (the other may still fail), never run (it may succeed) |
//! | the operation fails retryably ([`Retryable`](idem_core::Retryable)) | yes | requeue after [`Policy::retry_delay`] (1 s) ([`RetryableFailure`](RequeueReason::RetryableFailure)); the key is released | the next delivery runs it again |
//! | the store is unavailable (or fails) before the operation runs | no | requeue after [`Policy::unavailable_delay`] (1 s) ([`StoreUnavailable`](RequeueReason::StoreUnavailable)) | running without a claim could run it twice |
//! | the operation fails permanently | yes | dead-letter ([`PermanentFailure`](DeadLetterReason::PermanentFailure)); the failure is stored | retrying cannot help; a person must look |
//! | a repeat of a stored permanent failure | no | dead-letter again ([`PermanentFailure`](DeadLetterReason::PermanentFailure)) | the first may have crashed before dead-lettering: a copy too many in the dead-letter queue is harmless, a lost one is not |
//! | the same ID with another body (fingerprint mismatch) | no | dead-letter ([`IdReused`](DeadLetterReason::IdReused)) | two different messages share an ID: a producer bug |
//! | the stored outcome cannot be read back, or is too large to store | no | dead-letter ([`Unreadable`](DeadLetterReason::Unreadable)) | retrying cannot help |
//! | **ran but not recorded**: the operation ran, and its outcome could not be stored | yes | ack ([`RanNotRecorded`](AckReason::RanNotRecorded)), logged at `error` | its effect has happened; a redelivery would run it a second time once the lease lapses. The one case where a later duplicate of the same ID may run again; the [transactional mode](#exactly-once-effects) has no such case |
//!
//! How each adapter applies a disposition: see [`amqp`] and [`nats`].
//!
//! ## Where the ID comes from
//!
//! [`IdSource`]: the AMQP `message_id` property (RabbitMQ's default), a header (an AMQP
//! header or a NATS header), JetStream's `Nats-Msg-Id` (NATS's default), or, as an explicit
//! opt-in, the SHA-256 of the body. The body's fingerprint is stored with the claim, so the
//! same ID arriving with another body is caught instead of being taken for a repeat.
//!
//! ## Guarantees
//!
//! - **Any store** ([`Consumer`]): a message's operation runs once per ID, and a repeat is
//!   acked without running, as long as the store holds the outcome (its retention, 24 h by
//!   default). The ack happens after the outcome is stored, so a crash before the ack
//!   causes a replay, never a second run. Two windows remain, since the effect and the
//!   stored outcome are two writes: a crash in the middle of the operation (the lease
//!   lapses, the redelivery runs it again), and "ran but not recorded" above.
//! - **Exactly-once effects** ([`TransactionalConsumer`], feature `mysql`): the business
//!   rows, the claim and the outcome commit in one MySQL transaction, then the message is
//!   acked. **The effect happens once; the ack happens at least once.** A crash at any
//!   moment before the commit rolls all of it back; a crash after it leaves a replay.
//!
//! ## The consume loop
//!
//! [`amqp::consume`] and [`nats::consume`] take a handler `Fn(Message) -> impl
//! Future<Output = Disposition>` (usually a call to [`Consumer::handle_message`]), run at
//! most [`ConsumeOptions::concurrency`] messages at once (64 by default; the RabbitMQ
//! prefetch too), and stop when a shutdown future resolves: they take no new message,
//! let every message in flight finish and settle it (ack, requeue or dead-letter), and
//! leave the rest to the broker, which delivers them again. Nothing is lost.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod attempt;
mod consume;
mod consumer;
mod disposition;
mod message;
mod policy;
#[cfg(feature = "mysql")]
mod transactional;

#[cfg(feature = "lapin")]
#[cfg_attr(docsrs, doc(cfg(feature = "lapin")))]
pub mod amqp;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

pub use consume::{ConsumeError, ConsumeOptions, ConsumeSummary};
pub use consumer::Consumer;
pub use disposition::{AckReason, DeadLetterReason, Disposition, RequeueReason};
pub use message::{IdSource, Message, MissingId, NATS_MSG_ID};
pub use policy::Policy;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use transactional::TransactionalConsumer;
