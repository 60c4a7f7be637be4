//! PostgreSQL as an [`SqlDialect`]: the driver's types, the statements, and the two
//! operations whose shape is PostgreSQL's own.

use idem_core::{Error, Key};
use idem_sql::driver::{Query, column, query};
use idem_sql::row::{self, micros};
use idem_sql::{
    Arg, CallPolicy, RecordStatements, SqlDialect, Statement, StoredRow, StoredToken, TableKind,
    TableName, TokenStatements,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::errors::{is_lock_conflict, is_transient_error};
use crate::schema::{self, MAX_TABLE_NAME, RECORDS, TOKENS};
use crate::statements::{self, PgExtra};

/// The largest `statement_timeout` PostgreSQL takes, in milliseconds: an `int`.
const MAX_STATEMENT_TIMEOUT_MS: u128 = i32::MAX as u128;

/// PostgreSQL, for [`SqlStore`](idem_sql::SqlStore): what [`PgStore`](crate::PgStore) and
/// [`PgTokenStore`](crate::PgTokenStore) are made of. See the [crate docs](crate).
#[derive(Debug, Clone, Copy)]
pub struct PgDialect;

impl SqlDialect for PgDialect {
    type Db = Postgres;
    type Extra = PgExtra;

    const NAME: &'static str = "idem-postgres";
    /// 1 GiB less 64 KiB: the server reads no protocol message (the statement's `Bind`,
    /// the payload with the other arguments) over 1 GiB − 2 bytes, and a `bytea` holds less
    /// than 1 GiB. It ends the connection on a larger one, which the store reported as
    /// [`Error::Unavailable`], so the executor tried the write again and again and left the
    /// key to run once more. 64 KiB leaves room for the rest of the statement: a key
    /// and an owner are a few hundred bytes.
    const MAX_PAYLOAD: usize = (1 << 30) - (64 << 10);
    const MAX_TABLE_NAME: usize = MAX_TABLE_NAME;
    /// `fencing` is a `bigint`.
    const MAX_FENCING: u64 = idem_core::backend::lifecycle::MAX_SIGNED_FENCING;
    const RECORDS: &'static TableKind = &RECORDS;
    const TOKENS: &'static TableKind = &TOKENS;

    fn record_statements(table: &TableName) -> RecordStatements<Self> {
        statements::records(table)
    }

    fn token_statements(table: &TableName) -> TokenStatements {
        statements::tokens(table)
    }

    fn purge_statement(table: &TableName) -> Statement {
        statements::purge(table)
    }

    /// `bigint` and `smallint`. A span past `i64::MAX` µs cannot come from a `Ttl` (at most
    /// ten years); a fencing number past it cannot be in the table, and bound as -1 it
    /// matches nothing.
    fn bind<'q>(query: Query<'q, Self>, arg: Arg<'q>) -> Query<'q, Self> {
        match arg {
            Arg::Bytes(bytes) => query.bind(bytes),
            Arg::MaybeBytes(bytes) => query.bind(bytes),
            Arg::Micros(us) => query.bind(i64::try_from(us).unwrap_or(i64::MAX)),
            Arg::Fencing(fencing) => query.bind(i64::try_from(fencing).unwrap_or(-1)),
            Arg::State(state) => query.bind(i16::from(state)),
            Arg::Count(count) => query.bind(i64::from(count)),
        }
    }

    async fn execute<'c>(
        conn: &'c mut PgConnection,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> Result<u64, sqlx::Error> {
        let done = query::<Self>(statement, args).execute(&mut *conn).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_optional<'c>(
        conn: &'c mut PgConnection,
        statement: &'c Statement,
        args: &'c [Arg<'c>],
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query::<Self>(statement, args)
            .fetch_optional(&mut *conn)
            .await
    }

    fn record(row: &PgRow) -> Result<StoredRow, Error> {
        let state: i16 = column(row, "state")?;
        Ok(StoredRow {
            state: u8::try_from(state)
                .map_err(|_| Error::corrupt(format!("unknown state {state}")))?,
            fingerprint: column(row, "fingerprint")?,
            owner: column(row, "owner")?,
            fencing: row::fencing(column(row, "fencing")?)?,
            lease_left_us: column(row, "lease_left_us")?,
            trace_us: column(row, "trace_us")?,
            expires_left_us: column(row, "expires_left_us")?,
            payload: column(row, "payload")?,
        })
    }

    fn token(row: &PgRow) -> Result<StoredToken, Error> {
        Ok(StoredToken {
            scope: column(row, "scope")?,
            used: column(row, "used")?,
            used_by: column(row, "used_by")?,
        })
    }

    /// The takeover returns the new fencing number.
    async fn take_over<'c>(
        conn: &'c mut PgConnection,
        statements: &'c RecordStatements<Self>,
        args: &'c [Arg<'c>],
    ) -> Result<Option<u64>, Error> {
        let row = query::<Self>(&statements.take_over, args)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Self::error)?;
        row.map(|row| row::fencing(column(&row, "fencing")?))
            .transpose()
    }

    /// `lifecycle::remove` in one statement.
    async fn remove<'c>(
        conn: &'c mut PgConnection,
        statements: &'c RecordStatements<Self>,
        key: &'c Key,
    ) -> Result<bool, Error> {
        let args = [
            Arg::Bytes(key.namespace().as_bytes()),
            Arg::Bytes(key.id().as_bytes()),
            Arg::Micros(micros(idem_core::backend::lifecycle::trace_ttl(0))),
        ];
        let row = query::<Self>(&statements.extra.remove, &args)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Self::error)?;
        match row {
            Some(row) => column(&row, "visible"),
            None => Ok(false),
        }
    }

    async fn schema_version<'c>(
        conn: &'c mut PgConnection,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> Result<Option<u32>, Error> {
        schema::version(conn, kind, table).await
    }

    async fn migrate<'c>(
        conn: &'c mut PgConnection,
        kind: &'static TableKind,
        table: &'c TableName,
    ) -> Result<(), Error> {
        schema::migrate(conn, kind, table).await
    }

    /// The pool: no ping per checkout, only after an idle spell
    /// ([`alive_after_idle`](idem_sql::driver::alive_after_idle): a connection the server
    /// ended while idle is replaced rather than failing a call), at most the
    /// statement timeout to get a connection, and `statement_timeout` on the server at
    /// [`CallPolicy::server_timeout`], at most the largest the server takes (2^31−1 ms,
    /// about 24.8 days: past it the server refuses every connection).
    async fn connect(url: &str, policy: CallPolicy, max_connections: u32) -> Result<PgPool, Error> {
        let options: PgConnectOptions = url.parse().map_err(Self::error)?;
        let timeout_ms = policy
            .server_timeout()
            .as_millis()
            .clamp(1, MAX_STATEMENT_TIMEOUT_MS)
            .to_string();
        let options = options.options([("statement_timeout", timeout_ms.as_str())]);
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(policy.acquire_timeout())
            .test_before_acquire(false)
            .before_acquire(idem_sql::driver::alive_after_idle::<Self::Db>)
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

    /// Never: every INSERT says `ON CONFLICT DO NOTHING`, and a conflict matches no row.
    fn is_duplicate_key(_: &sqlx::Error) -> bool {
        false
    }
}
