//! The hook a backend gives the fault checks: ways to break its own storage, and to look
//! into it, that no store-independent check can reach. Like `object_store`'s integration tests, the checks in
//! [`sabotage_checks`](crate::sabotage_checks) are plain `pub async fn`s taking what they
//! need, here a [`Sabotage`] (or [`TokenSabotage`]) of the store under test;
//! [`fault_conformance!`](crate::fault_conformance) and
//! [`token_fault_conformance!`](crate::token_fault_conformance) stamp out one `#[test]` per
//! check.
//!
//! ```
//! # mod hidden {
//! use std::time::Duration;
//!
//! use idem_core::{Key, async_trait};
//! use idem_tests::{Sabotage, Store};
//!
//! #[derive(Debug)]
//! struct MySabotage {
//!     store: Store, // and whatever reaches the store's raw storage: a connection, the table
//! }
//!
//! #[async_trait]
//! impl Sabotage for MySabotage {
//!     fn store(&self) -> Store {
//!         self.store.clone()
//!     }
//!
//!     async fn corrupt_record(&self, key: &Key) -> Result<(), idem_core::BoxError> {
//!         // Write bytes the store cannot decode where it keeps `key`'s record.
//!         # let _ = key;
//!         Ok(())
//!     }
//!
//!     async fn unreachable_store(&self) -> Result<Store, idem_core::BoxError> {
//!         // The same kind of store, pointed at a server that does not answer.
//!         Ok(self.store.clone())
//!     }
//!
//!     async fn kept_for(&self, key: &Key) -> Result<Option<Duration>, idem_core::BoxError> {
//!         // How long the storage itself will keep what it holds for `key`: its expiry.
//!         # let _ = key;
//!         Ok(None)
//!     }
//! }
//!
//! async fn make_sabotage() -> MySabotage {
//!     # let store: Store = std::sync::Arc::new(idem_memory::MemoryStore::new());
//!     MySabotage { store }
//! }
//!
//! idem_tests::fault_conformance!(make_sabotage);
//! # }
//! ```
//!
//! The in-memory store implements neither hook: it keeps typed Rust values (nothing it holds
//! is ever decoded, so nothing can fail to decode) and has no server (nothing can be
//! unreachable), so the two sentences these checks pin do not apply to it.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{BoxError, Key, Token, async_trait};

use crate::{SharedTokenStore, Store};

/// Breaks an [`IdempotencyStore`](idem_core::IdempotencyStore)'s storage on demand, for
/// the fault checks.
#[async_trait]
pub trait Sabotage: std::fmt::Debug + Send + Sync + 'static {
    /// The store under test.
    fn store(&self) -> Store;

    /// Replaces the record [`store`](Self::store) keeps for `key` (the check made one: a
    /// claim, a finished record, or the trace a released key leaves) with bytes the store
    /// cannot decode, as a bad write by
    /// another program, a disk fault or an old layout would leave them.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from writing; the check reports it.
    async fn corrupt_record(&self, key: &Key) -> Result<(), BoxError>;

    /// A store of the same kind and settings as [`store`](Self::store) whose server does
    /// not answer: a server stopped after connecting, or a closed port.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from making one; the check reports it.
    async fn unreachable_store(&self) -> Result<Store, BoxError>;

    /// How much longer [`store`](Self::store) keeps what it holds for `key` (its record,
    /// or the trace of a freed key that carries its fencing number), as the storage itself
    /// says, not the store's calls: the key's `PTTL` in Redis, the row's expiry column in
    /// SQL. `None` when it holds nothing for the key; [`Duration::MAX`] when it never
    /// expires. Lets [`trace_lifetime`](crate::sabotage_checks::trace_lifetime) see the
    /// whole fencing memory of a freed key without waiting it out.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from looking; the check reports it.
    async fn kept_for(&self, key: &Key) -> Result<Option<Duration>, BoxError>;
}

/// Breaks a [`TokenStore`](idem_core::TokenStore)'s storage on demand, as [`Sabotage`].
#[async_trait]
pub trait TokenSabotage: std::fmt::Debug + Send + Sync + 'static {
    /// The token store under test.
    fn store(&self) -> SharedTokenStore;

    /// Replaces the record [`store`](Self::store) keeps for `token` (the check issued it)
    /// with bytes the store cannot decode.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from writing; the check reports it.
    async fn corrupt_token(&self, token: &Token) -> Result<(), BoxError>;

    /// A token store of the same kind and settings whose server does not answer.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from making one; the check reports it.
    async fn unreachable_store(&self) -> Result<SharedTokenStore, BoxError>;

    /// How much longer [`store`](Self::store) keeps `token` (unused, or its used mark), as
    /// the storage itself says, not the store's calls: the key's `PTTL` in Redis, the row's
    /// expiry column in SQL. `None` when it holds nothing for the token; [`Duration::MAX`]
    /// when it never expires. Lets
    /// [`token_lifetime`](crate::sabotage_checks::token_lifetime) see a whole long TTL
    /// without waiting it out.
    ///
    /// Default: [`Duration::MAX`], which tells the check nothing (a hook that does not say
    /// passes it); wire it so that a store cutting long lifetimes short is caught.
    ///
    /// # Errors
    ///
    /// Whatever kept the hook from looking; the check reports it.
    async fn kept_for(&self, token: &Token) -> Result<Option<Duration>, BoxError> {
        let _ = token;
        Ok(Some(Duration::MAX))
    }
}

/// The sabotage hook of the store under test, shared by a check's tasks.
pub type SharedSabotage = Arc<dyn Sabotage>;

/// The sabotage hook of the token store under test.
pub type SharedTokenSabotage = Arc<dyn TokenSabotage>;

/// Calls back `$callback!` with the name of every fault check of a store.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_fault_check_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { [$($args)*]
            corrupt_record
            unavailable_backend
            trace_lifetime
        }
    };
}

/// Calls back `$callback!` with the name of every fault check of a token store.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_token_fault_check_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { [$($args)*]
            corrupt_token
            unavailable_token_backend
            token_lifetime
        }
    };
}

/// Stamps out one `#[test]` per fault check in a `fault_conformance` module, from a factory
/// of the store's [`Sabotage`]: `idem_tests::fault_conformance!(make_sabotage);`, or with
/// [`Capabilities`](crate::Capabilities) as a second argument.
#[macro_export]
macro_rules! fault_conformance {
    ($factory:expr $(,)?) => {
        $crate::fault_conformance!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $capabilities:expr $(,)?) => {
        $crate::__with_fault_check_names!(__conformance_tests {
            fault_conformance sabotage_checks ($factory) ($capabilities)
        });
    };
}

/// Stamps out one `#[test]` per token fault check in a `token_fault_conformance` module,
/// from a factory of the token store's [`TokenSabotage`].
#[macro_export]
macro_rules! token_fault_conformance {
    ($factory:expr $(,)?) => {
        $crate::token_fault_conformance!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $capabilities:expr $(,)?) => {
        $crate::__with_token_fault_check_names!(__conformance_tests {
            token_fault_conformance sabotage_checks ($factory) ($capabilities)
        });
    };
}
