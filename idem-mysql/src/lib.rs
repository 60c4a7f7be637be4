//! # idem-mysql
//!
//! The MySQL / MariaDB store of **idem**: idempotency records as rows of one InnoDB table,
//! through sqlx.
//!
//! Pick it when the service already has MySQL 8 or MariaDB 10.11+ and either wants no extra
//! moving part (no Redis), or wants what only a SQL store gives: **the claim and the
//! business write committed together** in one transaction (see [Transactional
//! mode](#transactional-mode)), so a crash can never leave a charge without its
//! idempotency record or the reverse.
//!
//! ## Setup
//!
//! ```no_run
//! use idem_core::{Idempotency, Key, Retryable};
//! use idem_mysql::MySqlStore;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Declined;
//! impl Retryable for Declined {
//!     fn is_retryable(&self) -> bool { false }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MySqlStore::builder()
//!     .table("idem_records")            // the default
//!     .max_payload(1024 * 1024)         // default 4 MiB
//!     .connect("mysql://app:secret@127.0.0.1:3306/shop")
//!     .await?;
//! store.migrate().await?;               // creates the table once; harmless afterwards
//!
//! let idem = Idempotency::new(store);
//! let key = Key::new("charges", "order-1042")?;
//! let charged = idem
//!     .execute(&key, None, || async { Ok::<u64, Declined>(77) }) // runs once per key
//!     .await;
//! assert!(matches!(charged, Ok(77)));
//! # Ok(()) }
//! ```
//!
//! [`SqlBuilder::build`] (or [`MySqlStore::from_pool`], every default) takes the
//! application's existing `MySqlPool` instead, and [`sqlx`] is re-exported so the versions
//! always match. The settings and their defaults are [`SqlBuilder`]'s, the same for
//! idem-postgres.
//!
//! ## The table
//!
//! [`MySqlStore::migration_sql`] prints exactly the DDL that [`MySqlStore::migrate`] runs,
//! for teams that apply schema changes themselves:
//!
//! ```text
//! CREATE TABLE IF NOT EXISTS `idem_records` (
//!   namespace VARBINARY(255) NOT NULL,
//!   idem_key VARBINARY(255) NOT NULL,
//!   state TINYINT UNSIGNED NOT NULL,      -- 1 claimed, 2 released, 3 completed, 4 failed
//!   fingerprint BINARY(32) NULL,
//!   owner BINARY(16) NOT NULL,
//!   fencing BIGINT UNSIGNED NOT NULL,
//!   lease_until DATETIME(6) NULL,         -- UTC, while claimed
//!   expires_at DATETIME(6) NOT NULL,      -- UTC; the row counts as absent from then on
//!   payload LONGBLOB NULL,
//!   PRIMARY KEY (namespace, idem_key),
//!   KEY expires_at_idx (expires_at)
//! ) ENGINE=InnoDB COMMENT='idem-mysql schema v1'
//! ```
//!
//! - Keys are `VARBINARY`: compared byte for byte, so `Key` ≠ `key`, `k` ≠ `k ` and a
//!   precomposed `é` ≠ a decomposed one, whatever the server's collation.
//! - The schema version is the table comment. `migrate` creates the table if it is missing
//!   and fails on a table of the same name that is not at this version, so running it at
//!   every start is harmless; [`MySqlStore::check_schema`] only checks. sqlx's migrator is
//!   not used, since its one `_sqlx_migrations` table per database cannot track two idem
//!   tables of different names.
//! - Times are the server's (`UTC_TIMESTAMP(6)` and `TIMESTAMPADD`), never the application's,
//!   so instances with skewed clocks agree on when a lease ends.
//!
//! ## How each call maps to SQL
//!
//! - **claim** of a new key is one `INSERT`. On MariaDB it is `INSERT ... ON DUPLICATE KEY
//!   UPDATE ... RETURNING`: a key that has a row is left as it is and its row comes back
//!   in the same statement, so a replay is one round trip; on MySQL 8, which has no
//!   `RETURNING`, a duplicate key (1062) costs a second statement to read the row. The
//!   rules of [`idem_core::backend::lifecycle`] then decide (in progress, completed, failed,
//!   fingerprint mismatch). A lapsed lease, a released key or an expired record is
//!   taken over by one conditional `UPDATE` whose WHERE clause re-checks the rule under the
//!   row lock; its affected-row count picks the single winner, and it hands back the new
//!   fencing number through `LAST_INSERT_ID(expr)`; a key at 2^64−1 is refused with
//!   [`Error::CorruptRecord`](idem_core::Error::CorruptRecord), as on every store.
//! - **complete**, **fail**, **renew**, **release** are one `UPDATE` each, conditioned on
//!   state, owner token, fencing number and the row not having expired; no row matched is
//!   [`Error::LeaseLost`](idem_core::Error::LeaseLost), with nothing changed.
//! - Round trips per call, as the test suite counts them on the server (MariaDB): a first
//!   claim 1, a replay 1, a takeover 2; complete, fail, renew, release and read 1 each; remove 4
//!   (its own short transaction, so the answer and the deletion see the same row).
//! - Every call is bounded by a statement timeout ([`SqlBuilder::statement_timeout`],
//!   default 5 s; keep it below your lease TTL), so a renewal stuck behind a row lock
//!   gives up while its lease is still its own. Pools made by [`SqlBuilder::connect`] set
//!   the server's own bounds too (`innodb_lock_wait_timeout`, MariaDB's
//!   `max_statement_time`) and check connections out without a ping.
//! - Deadlocks (1213) and lock wait timeouts (1205) on pooled connections are retried a
//!   bounded number of times ([`SqlBuilder::lock_retries`]); interrupted statements
//!   (`KILL QUERY` 1317, MariaDB's `max_statement_time` 1969, MySQL's
//!   `max_execution_time` 3024), pool timeouts and lost connections are
//!   [`Error::Unavailable`](idem_core::Error::Unavailable) with the sqlx error as source,
//!   so the executor retries them; rows that do not decode are
//!   [`Error::CorruptRecord`](idem_core::Error::CorruptRecord).
//!
//! ## Transactional mode
//!
//! [`MySqlStore::claim_in`], [`MySqlStore::complete_in`] and [`MySqlStore::fail_in`] run on
//! the caller's own connection, inside its transaction. The business rows and the
//! idempotency record then commit together or not at all: after a rollback the key is free
//! again and no business row exists.
//!
//! ```no_run
//! use idem_core::{Claim, ClaimRequest, Key, Ttl};
//! use idem_mysql::{MySqlStore, sqlx};
//!
//! # async fn run(store: MySqlStore) -> Result<(), Box<dyn std::error::Error>> {
//! let request = ClaimRequest::new(Key::new("orders", "client-key-1")?, Ttl::from_secs(30)?);
//! let mut tx = store.pool().begin().await?;
//! match store.claim_in(&mut tx, &request).await? {
//!     Claim::Acquired(lease) => {
//!         // Guard the business write with the fencing number, if it may race a
//!         // takeover after a long pause.
//!         sqlx::query("INSERT INTO orders (client_key, amount, fencing) VALUES (?, ?, ?)")
//!             .bind("client-key-1")
//!             .bind(4_999)
//!             .bind(lease.fencing)
//!             .execute(&mut *tx)
//!             .await?;
//!         store
//!             .complete_in(&mut tx, &lease, "order 1042".into(), Ttl::from_secs(86_400)?)
//!             .await?;
//!         tx.commit().await?; // the order and its idempotency record, together
//!     }
//!     Claim::Completed(response) => { /* replay `response`; nothing was written */ }
//!     Claim::Failed(failure) => { /* replay the permanent failure */ }
//!     Claim::InProgress { retry_after } => { /* 409 Conflict, Retry-After */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Taking over a lapsed or released key reports the new fencing number through
//! `LAST_INSERT_ID(expr)`, so it also sets the session's `LAST_INSERT_ID()`: read any value
//! of your own from it before claiming, or after your next auto-increment insert.
//!
//! Locking: the claim's row is locked until the transaction ends. A concurrent claim of
//! the same key, transactional or not, waits on that lock, then sees the committed outcome
//! (and replays it) or, after a rollback, a free key. Keep such transactions short;
//! a wait longer than `innodb_lock_wait_timeout` (50 s by default) fails. In this mode
//! lock errors are not retried: InnoDB rolls back the whole transaction of a deadlock
//! victim, so the error ([`Error::Unavailable`](idem_core::Error::Unavailable)) means:
//! run the transaction again.
//!
//! ## One-time tokens
//!
//! [`MySqlTokenStore`] keeps the tokens of [`idem_core::Tokens`] (issue one with the form,
//! consume it once with the submission) in a table of its own, `idem_tokens` by default.
//! It can share the application's pool, or a [`MySqlStore`]'s:
//!
//! ```no_run
//! use idem_core::{Consumption, Scope, Tokens};
//! use idem_mysql::MySqlTokenStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MySqlTokenStore::builder()
//!     .table("idem_tokens")              // the default
//!     .connect("mysql://app:secret@127.0.0.1:3306/shop")
//!     .await?;
//! store.migrate().await?;                 // harmless when the table is there
//!
//! let tokens = Tokens::new(store);
//! let alice = Scope::new("user:alice")?;
//! let token = tokens.issue(&alice).await?; // hand it out with the form
//! match tokens.consume(&alice, token.as_str()).await? {
//!     Consumption::Consumed => { /* run the business: this happens once per token */ }
//!     Consumption::Rejected(why) => { /* a repeat, expired, or not alice's: answer `why` */ }
//! }
//! # Ok(()) }
//! ```
//!
//! The table, as [`MySqlTokenStore::migration_sql`] prints it:
//!
//! ```text
//! CREATE TABLE IF NOT EXISTS `idem_tokens` (
//!   token VARBINARY(128) NOT NULL,
//!   scope VARBINARY(255) NOT NULL,
//!   used_at DATETIME(6) NULL,             -- UTC; NULL until consumed
//!   expires_at DATETIME(6) NOT NULL,      -- UTC; the token is unknown from then on
//!   PRIMARY KEY (token),
//!   KEY expires_at_idx (expires_at)
//! ) ENGINE=InnoDB COMMENT='idem-mysql token schema v1'
//! ```
//!
//! Issuing is one `INSERT`; a token already stored is refused with
//! [`Error::TokenCollision`](idem_core::Error::TokenCollision) unless its row
//! has expired, which one `UPDATE` conditioned on the expiry then replaces (a refusal costs
//! three statements). Consuming is one conditional `UPDATE` that marks the token used; its
//! affected-row count picks the one winner of concurrent consumes, and a rejection costs one
//! more `SELECT` to tell why. Used tokens stay, marked, until they expire;
//! [`PurgeExpired::purge_expired`] reclaims their rows like the records' below.
//!
//! ## Expiry and purging
//!
//! A row past `expires_at` already counts as absent: claims take it over, reads return
//! `None`. [`PurgeExpired::purge_expired`] (both stores implement it) reclaims the space
//! in bounded batches. Run it on a schedule, from one instance or from all (concurrent
//! purges are harmless):
//!
//! ```no_run
//! use idem_mysql::PurgeExpired;
//! # async fn run(store: idem_mysql::MySqlStore) {
//! let purger = store.clone();
//! tokio::spawn(async move {
//!     let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
//!     loop {
//!         every.tick().await;
//!         if let Err(error) = purger.purge_expired(1_000).await {
//!             tracing::warn!(%error, "purging expired idempotency records failed");
//!         }
//!     }
//! });
//! # }
//! ```
//!
//! or in the database itself, with the event scheduler:
//! `CREATE EVENT idem_purge ON SCHEDULE EVERY 5 MINUTE DO DELETE FROM idem_records WHERE
//! expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT 10000;`
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod dialect;
mod errors;
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
