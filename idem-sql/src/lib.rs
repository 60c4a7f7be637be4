//! # idem-sql
//!
//! What idem's SQL stores share, written once: `idem-mysql` (MySQL, MariaDB) and
//! `idem-postgres` (PostgreSQL) hold only their dialect ([`SqlDialect`]: statements,
//! driver types, error codes, the engine-shaped INSERT, takeover and remove) and name the
//! stores below on it (`MySqlStore = SqlStore<MySqlDialect>`).
//!
//! - [`SqlStore`], [`SqlTokenStore`], [`SqlBuilder`]: the record store (with its
//!   transactional mode, `claim_in`/`complete_in`/`fail_in`), the token store, and the one
//!   builder of both, over any [`SqlDialect`].
//! - [`Statement`], [`Arg`]: a statement's text and the order its placeholders take the
//!   arguments in, so the stores bind the same arguments on every engine.
//! - [`TableName`], [`TableKind`], [`Migration`]: validated table names and schema versions
//!   kept in the table comment, so the printed DDL and `migrate()` are one text.
//! - [`StoredRow`]: a row read with its times relative to the statement's instant, decoded
//!   into the lifecycle's entry, so `idem_core::backend::lifecycle` decides every rule.
//! - [`claim()`] over [`ClaimSteps`]: insert, else read and decide, then a conditional
//!   takeover; [`tokens`] the same for one-time tokens.
//! - [`CallPolicy`]: the time bound of every call (below the lease) and the retries after
//!   a lock conflict.
//! - [`PurgeExpired`]: the purge every SQL store offers, with [`purge::in_batches`].
//!
//! A store author adding another SQL engine with a sqlx driver implements [`SqlDialect`];
//! one without implements [`ClaimSteps`] and [`tokens::TokenSteps`] with its statements:
//!
//! ```
//! use idem_core::backend::lifecycle::Entry;
//! use idem_core::{Claim, ClaimRequest, Error, Key, Ttl};
//! use idem_sql::{ClaimSteps, Insertion, claim};
//!
//! /// A table of one row, to show the shape: a real store sends SQL.
//! struct OneRow(Option<Entry>);
//!
//! impl ClaimSteps for OneRow {
//!     async fn insert(&mut self, _: &ClaimRequest) -> Result<Insertion, Error> {
//!         Ok(match &self.0 {
//!             None => Insertion::Inserted,
//!             Some(entry) => Insertion::Existing(entry.clone()),
//!         })
//!     }
//!     async fn select(&mut self, _: &Key) -> Result<Option<Entry>, Error> {
//!         Ok(self.0.clone())
//!     }
//!     async fn take_over(&mut self, _: &ClaimRequest) -> Result<Option<u64>, Error> {
//!         Ok(None)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let request = ClaimRequest::new(Key::new("orders", "k1")?, Ttl::from_secs(30)?);
//! assert!(matches!(claim(&mut OneRow(None), &request).await?, Claim::Acquired(l) if l.fencing == 1));
//! # Ok::<(), Error>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

mod builder;
mod call;
mod claim;
mod dialect;
mod ops;
mod pooled;
pub mod purge;
pub mod row;
mod statement;
mod store;
mod table;
mod token_store;
pub mod tokens;
mod transaction;

pub use builder::{FromTable, SqlBuilder};
pub use call::{CallPolicy, CallTimedOut};
pub use claim::{ClaimSteps, Insertion, ROUNDS, claim};
pub use dialect::{Connection, Pool, Row, SqlDialect};
pub use purge::PurgeExpired;
pub use row::StoredRow;
pub use statement::{Arg, RecordStatements, Statement, TokenStatements};
pub use store::SqlStore;
pub use table::{Migration, TableKind, TableName};
pub use token_store::SqlTokenStore;
