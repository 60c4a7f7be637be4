#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod dialect;
mod errors;
mod purge;
mod schema;
mod statements;
mod token_schema;
mod token_statements;

pub use dialect::MySqlDialect;
pub use idem_sql::{FromTable, PurgeExpired, SqlBuilder, SqlStore, SqlTokenStore};
pub use schema::{DEFAULT_TABLE, SCHEMA_VERSION};
pub use statements::MySqlExtra;

/// An [`IdempotencyStore`](idem_core::IdempotencyStore) on MySQL 8 or MariaDB 10.11+, one
/// row per key in one InnoDB table: the shared [`SqlStore`] on [`MySqlDialect`]. See the
/// [crate docs](crate) for setup, the schema and the transactional mode.
///
/// Cloning is cheap: clones share the pool.
pub type MySqlStore = SqlStore<MySqlDialect>;

/// The MySQL/MariaDB [`TokenStore`](idem_core::TokenStore), for
/// [`Tokens`](idem_core::Tokens): one row per token in one InnoDB table, the shared
/// [`SqlTokenStore`] on [`MySqlDialect`]. See the [crate docs](crate#one-time-tokens).
pub type MySqlTokenStore = SqlTokenStore<MySqlDialect>;

/// The settings of a [`MySqlStore`] (from [`MySqlStore::builder`]) or a
/// [`MySqlTokenStore`] (from [`MySqlTokenStore::builder`]), then
/// [`connect`](SqlBuilder::connect) or [`build`](SqlBuilder::build).
pub type MySqlBuilder<S> = SqlBuilder<MySqlDialect, S>;

/// Re-exported so the pool, connections and transactions passed in match this crate's sqlx.
pub use sqlx;
