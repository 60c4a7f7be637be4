#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

// The surface is listed, not globbed, so that what the facade promises is a decision.

// Making an operation idempotent: the executor, its keys, settings and errors.
#[doc(inline)]
pub use idem_core::{
    BoxError, Config, ConfigBuilder, Error, ExecuteError, Execution, Fingerprint, Idempotency,
    InputField, InvalidInput, Key, MAX_KEY_LEN, Retryable, Ttl, WaitPolicy,
};

// One-time tokens: issued by the server, consumed once.
#[doc(inline)]
pub use idem_core::{
    Consumption, MAX_TOKEN_LEN, Rejection, Scope, Token, TokenGenerator, Tokens, UuidV7Tokens,
};

// The store contract: the traits every store implements, and what their methods take and
// give (a store's `read`, the transactional `claim_in` of the SQL stores, a lease's
// fencing number). Payloads are `Bytes`.
#[doc(inline)]
pub use idem_core::{
    Bytes, Claim, ClaimRequest, IdempotencyStore, Lease, OwnerToken, Record, RecordState,
    TokenStore, async_trait,
};

/// The engine that runs one acquired attempt: the [`CancelPolicy`](attempt::CancelPolicy)
/// of [`Config`], the [`LeaseHandle`](attempt::LeaseHandle) an operation gets from
/// [`Idempotency::execute_with_lease`], and what integrations (HTTP, consumers) build on.
#[doc(inline)]
pub use idem_core::attempt;

/// For store authors only: the lifecycle state machine, the adapters over a map, the
/// stored token shape and the payload check. Applications never need it.
#[doc(inline)]
pub use idem_core::backend;

/// The in-memory store.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    #[doc(inline)]
    pub use idem_memory::*;
}

#[cfg(feature = "memory")]
#[doc(inline)]
pub use idem_memory::MemoryStore;

/// The Redis store.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    #[doc(inline)]
    pub use idem_redis::*;
}

/// HTTP endpoints made idempotent by the `Idempotency-Key` header: a tower layer (axum
/// included) on any store, following the IETF draft and ahead of Stripe where they differ.
///
/// The application states whose keys they are (its authenticated principal, or an explicit
/// global scope); retries get the first response byte for byte with
/// `Idempotent-Replayed: true`; the same key on another request is 422; a duplicate while
/// the first runs is 409 with a useful `Retry-After`, or waits for the replay; which
/// statuses are stored is a documented policy; the layer's own answers are
/// `application/problem+json` with a `type` link. The crate docs of [`idem_http`] hold the
/// table of behaviours, next to the draft's wording and Stripe's.
///
/// ```
/// # #[cfg(feature = "memory")] { // the example's store
/// use idem::MemoryStore;
/// use idem::http::{IdempotencyLayer, KeyScope};
///
/// /// Set by your auth layer: `request.extensions_mut().insert(Account(..))`.
/// #[derive(Clone)]
/// struct Account(String);
///
/// let layer = IdempotencyLayer::builder(
///     MemoryStore::new(),
///     KeyScope::principal(|account: &Account| account.0.clone()),
/// )
/// .require_key(true)
/// .build()?;
/// // axum: Router::new().route("/payments", post(charge)).layer(layer).layer(auth)
/// # let _ = layer;
/// # }
/// # Ok::<(), idem::Error>(())
/// ```
///
/// `cargo run --example http_server` serves a payments API with it; the README shows the
/// curl commands for a first request, a replay, a 422 and a 409.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http {
    #[doc(inline)]
    pub use idem_http::*;
}

/// Idempotent message consumers: the disposition of every message, the RabbitMQ and NATS
/// adapters.
#[cfg(feature = "consumer")]
#[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
pub mod consumer {
    #[doc(inline)]
    pub use idem_consumer::*;
}

/// The MySQL/MariaDB store.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql {
    #[doc(inline)]
    pub use idem_mysql::*;
}

/// The PostgreSQL store.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    #[doc(inline)]
    pub use idem_postgres::*;
}

/// The README's examples, compiled and run as doctests so the README never lies. They use
/// every store, so they run when the `memory`, `redis`, `mysql` and `postgres` features are on,
/// as they are in `cargo test --workspace` (idem-bench turns them on).
#[cfg(all(
    doctest,
    feature = "memory",
    feature = "redis",
    feature = "mysql",
    feature = "postgres"
))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
