#![doc = include_str!("../README.md")]
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

pub use attempt::WaitPolicy;
pub use claim::{Claim, ClaimRequest};
pub use config::{Config, ConfigBuilder};
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
