#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
// The crate docs link every adapter and the transactional mode; a build without one of
// their features (the default has RabbitMQ only) has nothing for those links to name.
// Docs built with every feature (docs.rs, the workspace's `cargo doc`) still check them.
#![cfg_attr(
    not(all(feature = "lapin", feature = "nats", feature = "mysql")),
    allow(rustdoc::broken_intra_doc_links)
)]

mod attempt;
// The loop machinery serves the adapters; without either it is unused.
#[cfg_attr(not(any(feature = "lapin", feature = "nats")), allow(dead_code))]
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

pub use consume::{ConsumeError, ConsumeFailure, ConsumeOptions, ConsumeSummary};
pub use consumer::Consumer;
pub use disposition::{AckReason, DeadLetterReason, Disposition, RequeueReason};
pub use message::{IdSource, Message, MissingId, NATS_MSG_ID};
pub use policy::Policy;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use transactional::TransactionalConsumer;
