//! What a store author needs, and an application does not: the rules of the lifecycle as a
//! pure state machine, the adapters that turn a map into a store, the shapes records are
//! kept in, and the payload check every store applies the same way.
//!
//! An application uses a store through [`Idempotency`](crate::Idempotency),
//! [`Tokens`](crate::Tokens) or an integration (HTTP, consumers) and never needs this
//! module. A new backend implements [`IdempotencyStore`](crate::IdempotencyStore) (and
//! [`TokenStore`](crate::TokenStore)), either by deciding in its own server (Lua, SQL) or,
//! for a store that keeps Rust values, by implementing [`EntryMap`] and [`TokenMap`] and
//! wrapping them in [`LifecycleStore`] and [`TokenMapStore`]. Either way the `idem-tests`
//! conformance suite holds it to the contract.
//!
//! - [`lifecycle`]: the state machine ([`Entry`](lifecycle::Entry),
//!   [`Phase`](lifecycle::Phase), [`Step`](lifecycle::Step), [`Write`](lifecycle::Write)),
//!   one pure function per store method, and the fencing memory
//!   ([`trace_ttl`](lifecycle::trace_ttl)).
//! - [`LifecycleStore`] over an [`EntryMap`], [`TokenMapStore`] over a [`TokenMap`]: the
//!   adapter, written once.
//! - [`TokenRecord`] and [`TokenEntry`]: what a token store keeps per token, and the
//!   consume rule ([`TokenRecord::consume`]).
//! - [`check_payload`]: the payload limit, enforced the same way everywhere.

mod adapter;
pub mod lifecycle;

pub use crate::error::check_payload;
pub use crate::token::TokenRecord;
pub use adapter::{EntryMap, LifecycleStore, TokenEntry, TokenMap, TokenMapStore};
