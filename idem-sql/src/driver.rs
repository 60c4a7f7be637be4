//! The glue between the stores and a sqlx driver that is the same on every engine: binding a
//! [`Statement`], decoding a column, and which driver errors mean what. A dialect adds only
//! its own types ([`SqlDialect::bind`]) and its server's error codes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use idem_core::Error;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use crate::{Arg, SqlDialect, Statement};

/// A statement of dialect `D` ready to run.
pub type Query<'q, D> =
    sqlx::query::Query<'q, <D as SqlDialect>::Db, <<D as SqlDialect>::Db as Database>::Arguments>;

/// `statement` with `args` bound in its placeholders' order, each as `D` binds it.
pub fn query<'q, D: SqlDialect>(statement: &'q Statement, args: &'q [Arg<'q>]) -> Query<'q, D> {
    statement
        .binds(args)
        .fold(sqlx::query(statement.sql()), D::bind)
}

/// The column `name` of a row.
///
/// # Errors
/// [`Error::CorruptRecord`] when it does not decode as a `T`, the driver's error as `source`.
pub fn column<'r, R, T>(row: &'r R, name: &str) -> Result<T, Error>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'n> &'n str: ColumnIndex<R>,
{
    row.try_get(name)
        .map_err(|e| Error::corrupt_with(format!("column {name} did not decode"), e))
}

/// A driver error as the idem error a caller acts on, the driver's error as `source`: the
/// connection or pool failing, or a server error `transient` accepts, is
/// [`Error::Unavailable`] (the same call may succeed later); a value that does not decode is
/// [`Error::CorruptRecord`]; anything else is [`Error::Backend`].
pub fn from_sqlx(error: sqlx::Error, transient: fn(&sqlx::Error) -> bool) -> Error {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::unavailable(error),
        sqlx::Error::Database(_) if transient(&error) => Error::unavailable(error),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::corrupt_with("a stored column did not decode", error)
        }
        _ => Error::backend(error),
    }
}

/// Whether an idem error is a lock conflict of `D` ([`SqlDialect::is_lock_conflict`]),
/// which a statement on its own (autocommit) may simply run again.
pub fn is_lock_conflict<D: SqlDialect>(error: &Error) -> bool {
    let Error::Unavailable { source } = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .is_some_and(D::is_lock_conflict)
}

/// How long a connection of a pool made by a store's `connect` may sit idle before
/// [`alive_after_idle`] pings it on its way out of the pool: one second.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The `before_acquire` check of the pools a store's `connect` makes: a connection idle for
/// [`PING_AFTER_IDLE`] or longer is pinged, and one the server ended meanwhile (a restart,
/// an idle-session timeout, a kill) is closed, so the pool hands out another instead of
/// letting the call fail. Without it every dead connection failed one call with
/// [`Error::Unavailable`], and most calls cannot simply run again on another connection:
/// a write whose reply was lost may have taken effect (a consumed token, a stored
/// outcome), so only the claim, which its owner may send again, is retried that way.
///
/// Why only after an idle spell: a ping costs a round trip, as much as the call. Under load
/// connections go back out within milliseconds and are never pinged; the pool hands its
/// idle connections out oldest first, so a pool of `n` pings only below about `n` calls a
/// second, when a round trip more costs the server nothing it lacks. A connection ended
/// less than a second after its last call still fails its next one.
pub fn alive_after_idle<DB: Database>(
    conn: &mut DB::Connection,
    meta: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if meta.idle_for < PING_AFTER_IDLE {
            return Ok(true);
        }
        match sqlx::Connection::ping(conn).await {
            Ok(()) => Ok(true),
            Err(error) => {
                tracing::debug!(%error, "idem-sql: an idle connection is dead, taking another");
                Ok(false)
            }
        }
    })
}
