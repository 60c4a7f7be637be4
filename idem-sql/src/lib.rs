//! # idem-sql
//!
//! What idem's SQL stores share, written once: `idem-mysql` (MySQL, MariaDB) and
//! `idem-postgres` (PostgreSQL) hold only their dialect's statements and their driver's
//! error codes, and run the same algorithm over them.
//!
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
//! This crate speaks to no database itself; a store author adding another SQL engine
//! implements [`ClaimSteps`] and [`tokens::TokenSteps`] with its statements:
//!
//! ```
//! use idem_core::backend::lifecycle::Entry;
//! use idem_core::{Claim, ClaimRequest, Error, Key, Ttl};
//! use idem_sql::{ClaimSteps, claim};
//!
//! /// A table of one row, to show the shape: a real store sends SQL.
//! struct OneRow(Option<Entry>);
//!
//! impl ClaimSteps for OneRow {
//!     async fn insert(&mut self, _: &ClaimRequest) -> Result<bool, Error> {
//!         Ok(self.0.is_none())
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

mod call;
mod claim;
pub mod purge;
pub mod row;
mod table;
pub mod tokens;

pub use call::{CallPolicy, CallTimedOut};
pub use claim::{ClaimSteps, ROUNDS, claim};
pub use purge::PurgeExpired;
pub use row::StoredRow;
pub use table::{Migration, TableKind, TableName};
