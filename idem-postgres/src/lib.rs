#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod dialect;
mod errors;
mod schema;
mod statements;

pub use dialect::PgDialect;
pub use idem_sql::{FromTable, PurgeExpired, SqlBuilder, SqlStore, SqlTokenStore};
pub use schema::{DEFAULT_TABLE, SCHEMA_VERSION};
pub use statements::PgExtra;

/// An [`IdempotencyStore`](idem_core::IdempotencyStore) on PostgreSQL, one row per key in
/// one table: the shared [`SqlStore`] on [`PgDialect`]. See the [crate docs](crate) for
/// setup, the schema and the transactional mode.
///
/// Cloning is cheap: clones share the pool.
pub type PgStore = SqlStore<PgDialect>;

/// The PostgreSQL [`TokenStore`](idem_core::TokenStore), for [`Tokens`](idem_core::Tokens):
/// one row per token in one table, the shared [`SqlTokenStore`] on [`PgDialect`]. See the
/// [crate docs](crate#one-time-tokens).
pub type PgTokenStore = SqlTokenStore<PgDialect>;

/// The settings of a [`PgStore`] (from [`PgStore::builder`]) or a [`PgTokenStore`] (from
/// [`PgTokenStore::builder`]), then [`connect`](SqlBuilder::connect) or
/// [`build`](SqlBuilder::build).
pub type PgBuilder<S> = SqlBuilder<PgDialect, S>;

/// Re-exported so the pool, connections and transactions passed in match this crate's sqlx.
pub use sqlx;
