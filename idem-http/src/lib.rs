#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod body;
mod builder;
mod estimate;
mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
mod handler_run;
mod header;
mod key_header;
mod layer;
mod policy;
pub mod problem;
mod record;
mod scope;
mod service;
mod settings;
mod settle;
mod unwind;

pub use body::ResponseBody;
pub use builder::IdempotencyLayerBuilder;
pub use header::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use idem_core::WaitPolicy;
pub use idem_core::attempt::{CancelPolicy, LeaseHandle};
pub use layer::IdempotencyLayer;
pub use policy::{OversizedResponse, Storage};
pub use scope::KeyScope;
pub use service::{IdempotencyService, ResponseFuture};
