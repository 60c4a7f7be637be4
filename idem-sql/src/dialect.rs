//! What one SQL engine adds to the shared store: its driver, its statements, its error codes
//! and the few operations whose shape is the engine's own.

use std::fmt::Debug;
use std::future::Future;

use idem_core::{Error, Key};
use sqlx::Database;

use crate::driver::Query;
use crate::statement::{Arg, RecordStatements, Statement, TokenStatements};
use crate::tokens::StoredToken;
use crate::{CallPolicy, StoredRow, TableKind, TableName};

/// A connection of the dialect's driver: pooled, or the caller's own in a transaction.
pub type Connection<D> = <<D as SqlDialect>::Db as Database>::Connection;

/// A row as the dialect's driver returns it.
pub type Row<D> = <<D as SqlDialect>::Db as Database>::Row;

/// A pool of the dialect's driver.
pub type Pool<D> = sqlx::Pool<<D as SqlDialect>::Db>;

/// One SQL engine (MySQL/MariaDB, PostgreSQL): everything [`SqlStore`](crate::SqlStore),
/// [`SqlTokenStore`](crate::SqlTokenStore) and [`SqlBuilder`](crate::SqlBuilder) need to
/// know about it. The stores, the claim rounds, the bounds and retries, the maintenance and
/// the transactional mode are written once over this trait.
///
/// What differs between engines, and only that, is here:
/// - the driver ([`Db`](Self::Db)) and how a value is bound ([`execute`](Self::execute),
///   [`fetch_optional`](Self::fetch_optional)): placeholders (`?` or `$n`, see
///   [`Statement`]), unsigned or signed integers;
/// - the statements' text ([`record_statements`](Self::record_statements),
///   [`token_statements`](Self::token_statements)), the tables' DDL ([`RECORDS`](Self::RECORDS),
///   [`TOKENS`](Self::TOKENS)) and how a schema version is read and migrated;
/// - the two operations whose shape is the engine's: the takeover (how it hands back the
///   new fencing number) and `remove`;
/// - which server errors mean "a duplicate key", "a lock conflict" and "try again later".
pub trait SqlDialect: Debug + Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Database;

    /// The dialect's own statements: those of [`remove`](Self::remove), and any its
    /// [`take_over`](Self::take_over) needs.
    type Extra: Debug + Send + Sync;

    /// How log lines and errors name the crate (`idem-mysql`).
    const NAME: &'static str;

    /// The longest table name the engine takes, less what the store appends to name its
    /// indexes.
    const MAX_TABLE_NAME: usize;

    /// The largest fencing number the engine's column holds: a takeover past it is refused
    /// with [`Error::CorruptRecord`] (see `idem_core::backend::lifecycle::next_fencing`).
    const MAX_FENCING: u64;

    /// The largest payload the engine takes in one statement, whatever a store's own limit
    /// says: a store's limit above it is this one, so a larger payload is refused with
    /// [`Error::PayloadTooLarge`] before it is sent, instead of a failure the executor takes
    /// for a lost connection. No limit by default.
    const MAX_PAYLOAD: usize = usize::MAX;

    /// The records table.
    const RECORDS: &'static TableKind;

    /// The one-time tokens table.
    const TOKENS: &'static TableKind;

    /// The record store's statements on `table`.
    fn record_statements(table: &TableName) -> RecordStatements<Self>;

    /// The token store's statements on `table`.
    fn token_statements(table: &TableName) -> TokenStatements;

    /// Deletes up to [`Arg::Count`] expired rows of `table` (either kind), oldest first.
    fn purge_statement(table: &TableName) -> Statement;

    /// Deletes up to `batch` expired rows of `table`, a table of `kind`, oldest first: how
    /// many. By default one statement, `purge` (what
    /// [`purge_statement`](Self::purge_statement) made for the table); a dialect whose
    /// single statement would wait on the locks of live rows does it its own way.
    ///
    /// # Errors
    /// The driver's errors, as [`error`](Self::error) maps them.
    fn purge<'c>(
        conn: &'c mut Connection<Self>,
        table: &'c TableName,
        kind: &'static TableKind,
        purge: &'c Statement,
        batch: u32,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'c {
        let _ = (table, kind);
        async move {
            let args = [Arg::Count(batch)];
            Self::execute(conn, purge, &args).await.map_err(Self::error)
        }
    }

    /// Binds one argument as the driver takes it (MySQL keeps integers unsigned,
    /// PostgreSQL binds them as `bigint`/`smallint`); see [`driver::query`](crate::driver::query).
    fn bind<'q>(query: Query<'q, Self>, arg: Arg<'q>) -> Query<'q, Self>;

    /// Runs a write; how many rows it matched.
    fn execute<'c>(
        conn: &'c mut Connection<Self>,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c;

    /// Runs a read of at most one row.
    fn fetch_optional<'c>(
        conn: &'c mut Connection<Self>,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> impl Future<Output = Result<Option<Row<Self>>, sqlx::Error>> + Send + 'c;

    /// A record row, as [`RecordStatements::select`] reads it.
    ///
    /// # Errors
    /// [`Error::CorruptRecord`] for a column that does not decode.
    fn record(row: &Row<Self>) -> Result<StoredRow, Error>;

    /// A token row, as [`TokenStatements::inspect`] reads it: its scope's bytes, whether
    /// it was used, and by whom.
    ///
    /// # Errors
    /// [`Error::CorruptRecord`] for a column that does not decode.
    fn token(row: &Row<Self>) -> Result<StoredToken, Error>;

    /// The takeover ([`RecordStatements::take_over`], its arguments given): the new
    /// fencing number, or `None` when the row no longer was free.
    fn take_over<'c>(
        conn: &'c mut Connection<Self>,
        statements: &'c RecordStatements<Self>,
        args: &'c [Arg<'c>],
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send + 'c;

    /// `lifecycle::remove` on `key`'s row: whether it showed a record.
    fn remove<'c>(
        conn: &'c mut Connection<Self>,
        statements: &'c RecordStatements<Self>,
        key: &'c Key,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'c;

    /// The schema version `table` carries, `None` when there is no such table.
    fn schema_version<'c>(
        conn: &'c mut Connection<Self>,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> impl Future<Output = Result<Option<u32>, Error>> + Send + 'c;

    /// Runs the pending migrations of `kind` on `table`.
    fn migrate<'c>(
        conn: &'c mut Connection<Self>,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'c;

    /// Connects the pool a store's `connect` makes: no ping per checkout but after an idle
    /// spell ([`driver::alive_after_idle`](crate::driver::alive_after_idle)), `policy.timeout`
    /// to get a connection, the server's own statement bounds at
    /// [`CallPolicy::server_timeout`].
    fn connect(
        url: &str,
        policy: CallPolicy,
        max_connections: u32,
    ) -> impl Future<Output = Result<Pool<Self>, Error>> + Send;

    /// Whether a server error means the same call may succeed later: a lock conflict, the
    /// statement interrupted, the server refusing or dropping connections.
    fn is_transient(error: &sqlx::Error) -> bool;

    /// Whether a server error is a lock conflict (a deadlock, a lock wait timeout, a
    /// serialization failure) that a statement on its own (autocommit) may simply run
    /// again.
    fn is_lock_conflict(error: &sqlx::Error) -> bool;

    /// Whether a driver error says the key (or token) already has a row.
    fn is_duplicate_key(error: &sqlx::Error) -> bool;

    /// Whether a driver error says the server takes no statement as large as the one sent
    /// (MySQL's `max_allowed_packet`), which an outcome write then reports as
    /// [`Error::PayloadTooLarge`]. None by default.
    #[must_use]
    fn is_too_large(error: &sqlx::Error) -> bool {
        let _ = error;
        false
    }

    /// A driver error as the idem error a caller acts on, the driver's error as `source`
    /// ([`driver::from_sqlx`](crate::driver::from_sqlx) with [`is_transient`](Self::is_transient)).
    fn error(error: sqlx::Error) -> Error {
        crate::driver::from_sqlx(error, Self::is_transient)
    }
}
