//! # idem-postgres
//!
//! The PostgreSQL store of **idem**: idempotency records as rows of one table, through sqlx.
//!
//! Pick it when the service already keeps its data in PostgreSQL and wants no extra moving
//! part (no Redis), or wants what only a SQL store gives: **the claim and the business
//! write committed together** in one transaction (see [Transactional
//! mode](#transactional-mode)), so a crash can never leave a charge without its idempotency
//! record or the reverse.
//!
//! ## Setup
//!
//! ```no_run
//! use idem_core::{Idempotency, Key, Retryable};
//! use idem_postgres::PgStore;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Declined;
//! impl Retryable for Declined {
//!     fn is_retryable(&self) -> bool { false }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::builder()
//!     .table("idem_records")          // the default
//!     .max_payload(1024 * 1024)       // default 4 MiB
//!     .connect("postgres://app:secret@127.0.0.1:5432/shop")
//!     .await?;
//! store.migrate().await?;             // creates the table once; harmless afterwards
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
//! [`PgBuilder::build`] takes the application's existing `PgPool` instead, and [`sqlx`] is
//! re-exported so the versions always match.
//!
//! ## The table
//!
//! [`PgStore::migration_sql`] prints exactly the DDL that [`PgStore::migrate`] runs, for
//! teams that apply schema changes themselves:
//!
//! ```text
//! CREATE TABLE IF NOT EXISTS "idem_records" (
//!   namespace bytea NOT NULL,
//!   idem_key bytea NOT NULL,
//!   state smallint NOT NULL,          -- 1 claimed, 2 released, 3 completed, 4 failed
//!   fingerprint bytea NULL,
//!   owner bytea NOT NULL,
//!   fencing bigint NOT NULL,
//!   lease_until timestamptz NULL,     -- while claimed
//!   expires_at timestamptz NOT NULL,  -- the row counts as absent from then on
//!   payload bytea NULL,
//!   PRIMARY KEY (namespace, idem_key)
//! );
//! CREATE INDEX IF NOT EXISTS "idem_records_expires_at" ON "idem_records" (expires_at);
//! COMMENT ON TABLE "idem_records" IS 'idem-postgres schema v1'
//! ```
//!
//! - Keys are `bytea`: compared byte for byte, so `Key` ≠ `key`, `k` ≠ `k ` and a
//!   precomposed `é` ≠ a decomposed one, whatever the database's collation.
//! - The schema version is the table comment. `migrate` creates the table if it is missing
//!   (one transaction) and fails on a table of the same name that is not at this version;
//!   [`PgStore::check_schema`] only checks.
//! - Times are the server's, read once per statement from `clock_timestamp()`, never the
//!   application's, so instances with skewed clocks agree on when a lease ends. Not
//!   `now()`: that is the start of the transaction, and would stand still through a long
//!   transaction in the transactional mode.
//!
//! ## How each call maps to SQL
//!
//! - **claim** of a new key is one `INSERT ... ON CONFLICT DO NOTHING RETURNING`. On a
//!   conflict the row is read and the rules of [`idem_core::backend::lifecycle`] decide (in
//!   progress, completed, failed, fingerprint mismatch). A lapsed lease, a released key or
//!   an expired record is taken over by one conditional `UPDATE ... RETURNING` whose WHERE
//!   clause re-checks "free" under the row lock and hands out the next fencing number
//!   (a key at 2^63−1 is refused with [`Error::CorruptRecord`](idem_core::Error::CorruptRecord),
//!   as on every store).
//! - **complete**, **fail**, **renew**, **release** are one conditional `UPDATE` each; no
//!   row matched is [`Error::LeaseLost`](idem_core::Error::LeaseLost), with nothing
//!   changed. **remove** is one `DELETE ... RETURNING`.
//! - Statements per call: a first claim 1, a replay 2, a takeover 3; complete, fail, renew,
//!   release, read and remove 1 each.
//! - Every call is bounded by the statement timeout (default 5 s; keep it below your
//!   lease TTL, 30 s in the executor by default), so no call waits longer than its lease;
//!   pools made by
//!   [`PgBuilder::connect`] also set it as the server's `statement_timeout`. Deadlocks
//!   (40P01), serialization failures (40001) and lock timeouts (55P03) on pooled
//!   connections are run again a bounded number of times within that bound; cancelled
//!   statements, terminated or refused connections and pool timeouts are
//!   [`Error::Unavailable`](idem_core::Error::Unavailable) with the sqlx error as source;
//!   rows that do not decode are [`Error::CorruptRecord`](idem_core::Error::CorruptRecord).
//! - Pools made by [`PgBuilder::connect`] check connections out without a ping: a
//!   connection the server dropped fails its one call with `Unavailable` (which the
//!   executor retries) and is discarded, instead of every call paying a round trip.
//!
//! ## Transactional mode
//!
//! [`PgStore::claim_in`], [`PgStore::complete_in`] and [`PgStore::fail_in`] run on the
//! caller's own connection, inside its transaction. The business rows and the idempotency
//! record then commit together or not at all: after a rollback the key is free again and
//! no business row exists.
//!
//! ```no_run
//! use idem_core::{Claim, ClaimRequest, Key, Ttl};
//! use idem_postgres::{PgStore, sqlx};
//!
//! # async fn run(store: PgStore) -> Result<(), Box<dyn std::error::Error>> {
//! let request = ClaimRequest::new(Key::new("orders", "client-key-1")?, Ttl::from_secs(30)?);
//! let mut tx = store.pool().begin().await?;
//! match store.claim_in(&mut tx, &request).await? {
//!     Claim::Acquired(lease) => {
//!         sqlx::query("INSERT INTO orders (client_key, amount, fencing) VALUES ($1, $2, $3)")
//!             .bind("client-key-1")
//!             .bind(4_999)
//!             .bind(lease.fencing as i64)
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
//! Locking: a claim that inserts or takes over the row holds its lock until the transaction
//! ends. A concurrent claim of the same key, transactional or not, waits on that lock
//! (bounded by its statement timeout), then sees the committed outcome (and replays it) or,
//! after a rollback, a free key. Keep such transactions short. In this mode nothing is
//! retried: a serialization failure (40001) or deadlock (40P01) aborted the transaction,
//! so it comes back as [`Error::Unavailable`](idem_core::Error::Unavailable), meaning: roll
//! back and run the transaction again.
//!
//! ## One-time tokens
//!
//! [`PgTokenStore`] keeps the tokens of [`idem_core::Tokens`] in a table of its own,
//! `idem_tokens` by default, and can share a [`PgStore`]'s pool:
//!
//! ```no_run
//! use idem_core::{Consumption, Scope, Tokens};
//! use idem_postgres::{PgStore, PgTokenStore};
//!
//! # async fn run(records: PgStore) -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgTokenStore::builder().build(records.pool().clone())?;
//! store.migrate().await?;
//! let tokens = Tokens::new(store);
//! let alice = Scope::new("user:alice")?;
//! let token = tokens.issue(&alice).await?;
//! assert_eq!(tokens.consume(&alice, token.as_str()).await?, Consumption::Consumed);
//! # Ok(()) }
//! ```
//!
//! ## Expiry and purging
//!
//! A row past `expires_at` already counts as absent. [`PurgeExpired::purge_expired`]
//! reclaims the space in bounded batches (`FOR UPDATE SKIP LOCKED`, so concurrent purges
//! and live calls pass each other); run it on a schedule, from one instance or from all:
//!
//! ```no_run
//! use idem_postgres::{PgStore, PurgeExpired};
//! # async fn run(store: PgStore) {
//! tokio::spawn(async move {
//!     let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
//!     loop {
//!         every.tick().await;
//!         if let Err(error) = store.purge_expired(1_000).await {
//!             tracing::warn!(%error, "purging expired idempotency records failed");
//!         }
//!     }
//! });
//! # }
//! ```
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
