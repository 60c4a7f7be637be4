//! MySQL and MariaDB as an [`SqlDialect`]: the driver's types, the statements, and the two
//! operations whose shape is MySQL's own.

use std::time::Duration;

use idem_core::{Error, Key};
use idem_sql::driver::{Query, column, query};
use idem_sql::row::micros;
use idem_sql::{
    Arg, CallPolicy, RecordStatements, SqlDialect, Statement, StoredRow, StoredToken, TableKind,
    TableName, TokenStatements,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{Executor, MySql, MySqlConnection, MySqlPool};

use crate::errors::{is_duplicate_key, is_lock_conflict, is_too_large, is_transient_error};
use crate::schema::{self, MAX_TABLE_NAME, RECORDS};
use crate::statements::{self, MySqlExtra};
use crate::token_schema::TOKENS;
use crate::token_statements;

/// MySQL 8 and MariaDB 10.11+, for [`SqlStore`](idem_sql::SqlStore): what
/// [`MySqlStore`](crate::MySqlStore) and [`MySqlTokenStore`](crate::MySqlTokenStore) are
/// made of. See the [crate docs](crate).
#[derive(Debug, Clone, Copy)]
pub struct MySqlDialect;

impl SqlDialect for MySqlDialect {
    type Db = MySql;
    type Extra = MySqlExtra;

    const NAME: &'static str = "idem-mysql";
    const MAX_TABLE_NAME: usize = MAX_TABLE_NAME;
    /// `fencing` is a `BIGINT UNSIGNED`.
    const MAX_FENCING: u64 = u64::MAX;
    const RECORDS: &'static TableKind = &RECORDS;
    const TOKENS: &'static TableKind = &TOKENS;

    fn record_statements(table: &TableName) -> RecordStatements<Self> {
        statements::records(table)
    }

    fn token_statements(table: &TableName) -> TokenStatements {
        token_statements::tokens(table)
    }

    fn purge_statement(table: &TableName) -> Statement {
        statements::purge(table)
    }

    /// Not `purge` in one statement, which waits on the lock of the first live row past
    /// the expired ones: a short transaction picks the expired rows no one else holds
    /// (`FOR UPDATE SKIP LOCKED`) and deletes them by key.
    async fn purge<'c>(
        conn: &'c mut MySqlConnection,
        table: &'c TableName,
        kind: &'static TableKind,
        _: &'c Statement,
        batch: u32,
    ) -> Result<u64, Error> {
        crate::purge::batch(conn, table, kind, batch).await
    }

    /// Integers unsigned, as the columns are.
    fn bind<'q>(query: Query<'q, Self>, arg: Arg<'q>) -> Query<'q, Self> {
        match arg {
            Arg::Bytes(bytes) => query.bind(bytes),
            Arg::MaybeBytes(bytes) => query.bind(bytes),
            Arg::Micros(n) | Arg::Fencing(n) => query.bind(n),
            Arg::State(state) => query.bind(state),
            Arg::Count(count) => query.bind(count),
        }
    }

    async fn execute<'c>(
        conn: &'c mut MySqlConnection,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> Result<u64, sqlx::Error> {
        let done = query::<Self>(statement, args).execute(&mut *conn).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_optional<'c>(
        conn: &'c mut MySqlConnection,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> Result<Option<MySqlRow>, sqlx::Error> {
        query::<Self>(statement, args)
            .fetch_optional(&mut *conn)
            .await
    }

    fn record(row: &MySqlRow) -> Result<StoredRow, Error> {
        Ok(StoredRow {
            state: column(row, "state")?,
            fingerprint: column(row, "fingerprint")?,
            owner: column(row, "owner")?,
            fencing: column(row, "fencing")?,
            lease_left_us: column(row, "lease_left_us")?,
            trace_us: column(row, "trace_us")?,
            expires_left_us: column(row, "expires_left_us")?,
            payload: column(row, "payload")?,
        })
    }

    fn token(row: &MySqlRow) -> Result<StoredToken, Error> {
        let used: i64 = column(row, "used")?;
        Ok(StoredToken {
            scope: column(row, "scope")?,
            used: used != 0,
            used_by: column(row, "used_by")?,
        })
    }

    /// The takeover reports the new fencing number through `LAST_INSERT_ID(expr)`.
    async fn take_over<'c>(
        conn: &'c mut MySqlConnection,
        statements: &'c RecordStatements<Self>,
        args: &'c [Arg<'c>],
    ) -> Result<Option<u64>, Error> {
        let done = query::<Self>(&statements.take_over, args)
            .execute(&mut *conn)
            .await
            .map_err(Self::error)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        match done.last_insert_id() {
            // Fencing numbers start at 1; 0 means the server did not pass LAST_INSERT_ID on.
            0 => Err(Error::backend(
                "the server did not report the fencing number (LAST_INSERT_ID) of a takeover",
            )),
            fencing => Ok(Some(fencing)),
        }
    }

    /// Frees a key whatever it holds, leaving the fencing trace of `lifecycle::remove`;
    /// whether it showed a record. A row that is no lifecycle entry (corrupt) or expired
    /// is deleted instead, which is how an operator clears a corrupt row. Runs in its own
    /// transaction so that the answer and the write see the same row.
    async fn remove<'c>(
        conn: &'c mut MySqlConnection,
        statements: &'c RecordStatements<Self>,
        key: &'c Key,
    ) -> Result<bool, Error> {
        let extra = &statements.extra;
        let row_key = [
            Arg::Bytes(key.namespace().as_bytes()),
            Arg::Bytes(key.id().as_bytes()),
        ];
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(Self::error)?;
        let probed = query::<Self>(&extra.probe_locked, &row_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::error)?
            .map(|row| {
                Ok::<_, Error>((
                    column::<_, i64>(&row, "visible")?,
                    column::<_, i64>(&row, "vacant")?,
                ))
            })
            .transpose()?;
        // A live vacant trace stays as it is; any other row is vacated, or deleted when it
        // is no lifecycle entry.
        if let Some((_, 0)) = probed {
            let vacate = [
                Arg::Micros(micros(idem_core::backend::lifecycle::trace_ttl(0))),
                row_key[0],
                row_key[1],
            ];
            let vacated = query::<Self>(&extra.vacate, &vacate)
                .execute(&mut *tx)
                .await
                .map_err(Self::error)?;
            if vacated.rows_affected() == 0 {
                query::<Self>(&extra.delete, &row_key)
                    .execute(&mut *tx)
                    .await
                    .map_err(Self::error)?;
            }
        }
        tx.commit().await.map_err(Self::error)?;
        Ok(probed.is_some_and(|(visible, _)| visible != 0))
    }

    async fn schema_version<'c>(
        conn: &'c mut MySqlConnection,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> Result<Option<u32>, Error> {
        schema::version(conn, kind, table).await
    }

    async fn migrate<'c>(
        conn: &'c mut MySqlConnection,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> Result<(), Error> {
        schema::migrate(conn, kind, table).await
    }

    /// The pool:
    /// - no ping per checkout (`test_before_acquire(false)`): sqlx's default sends one
    ///   round trip before every call, which costs as much as the call. What replaces it:
    ///   a ping only for a connection that sat idle a while
    ///   ([`alive_after_idle`](idem_sql::driver::alive_after_idle)), so one the server
    ///   ended meanwhile is replaced instead of failing a call (one ended within a second
    ///   of its last call still fails its next one with [`Error::Unavailable`]; a claim,
    ///   which its owner may send again, then runs on another connection); connections
    ///   are closed after 10 minutes idle and 30 minutes of life, well inside the
    ///   server's `wait_timeout` (8 h), so the server rarely drops one first;
    /// - the statement timeout to get a connection, and on every connection the server's
    ///   own bounds at [`CallPolicy::server_timeout`]: `innodb_lock_wait_timeout` (whole
    ///   seconds, rounded down, at least 1) and MariaDB's `max_statement_time` (MySQL 8
    ///   has no equivalent for writes), so on a live server the server gives up first,
    ///   with a clean error on a connection that stays usable.
    async fn connect(
        url: &str,
        policy: CallPolicy,
        max_connections: u32,
    ) -> Result<MySqlPool, Error> {
        let options: MySqlConnectOptions = url.parse().map_err(Self::error)?;
        let timeout = policy.server_timeout();
        MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(policy.acquire_timeout())
            .test_before_acquire(false)
            .before_acquire(idem_sql::driver::alive_after_idle::<Self::Db>)
            .idle_timeout(Duration::from_secs(600))
            .max_lifetime(Duration::from_secs(1800))
            .after_connect(move |conn, _| {
                Box::pin(async move { bound_session(conn, timeout).await })
            })
            .connect_with(options)
            .await
            .map_err(Self::error)
    }

    fn is_transient(error: &sqlx::Error) -> bool {
        is_transient_error(error)
    }

    fn is_lock_conflict(error: &sqlx::Error) -> bool {
        is_lock_conflict(error)
    }

    fn is_duplicate_key(error: &sqlx::Error) -> bool {
        is_duplicate_key(error)
    }

    /// `max_allowed_packet` (1153): a payload near it, under a store limit set above it.
    fn is_too_large(error: &sqlx::Error) -> bool {
        is_too_large(error)
    }
}

/// Sets the session's server-side bounds; see [`MySqlDialect::connect`].
async fn bound_session(conn: &mut MySqlConnection, timeout: Duration) -> Result<(), sqlx::Error> {
    let lock_wait = timeout.as_secs().max(1);
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET SESSION innodb_lock_wait_timeout = {lock_wait}"
    )))
    .await?;
    // MariaDB only; MySQL answers "unknown system variable" (1193), which is fine.
    let statement = timeout.as_secs_f64().max(0.001);
    if let Err(error) = conn
        .execute(sqlx::AssertSqlSafe(format!(
            "SET SESSION max_statement_time = {statement}"
        )))
        .await
    {
        tracing::debug!(%error, "idem-mysql: no max_statement_time on this server");
    }
    Ok(())
}
