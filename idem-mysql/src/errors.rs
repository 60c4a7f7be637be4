//! sqlx errors as idem errors, and which server errors mean what.

use std::future::Future;
use std::time::Duration;

use idem_core::Error;
use sqlx::mysql::MySqlDatabaseError;

/// `ER_DUP_ENTRY`: the claimed key already has a row.
const DUPLICATE_KEY: u16 = 1062;
/// `ER_LOCK_DEADLOCK`: InnoDB picked this statement's transaction as a deadlock victim.
const DEADLOCK: u16 = 1213;
/// `ER_LOCK_WAIT_TIMEOUT`: a row lock was held longer than `innodb_lock_wait_timeout`.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// Server errors after which the same call may succeed later: lock conflicts, and the
/// server refusing or dropping connections (too many connections, shutting down, the
/// connection killed, MySQL 8's idle disconnect).
const TRANSIENT: &[u16] = &[DEADLOCK, LOCK_WAIT_TIMEOUT, 1040, 1053, 1927, 4031];

/// Maps a sqlx error to the idem error a caller acts on; the sqlx error stays the source.
pub(crate) fn from_sqlx(error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::unavailable(error),
        sqlx::Error::Database(_)
            if server_error(&error).is_some_and(|n| TRANSIENT.contains(&n)) =>
        {
            Error::unavailable(error)
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::corrupt_with("a stored column did not decode", error)
        }
        _ => Error::backend(error),
    }
}

/// The MySQL error number of a server error.
fn server_error(error: &sqlx::Error) -> Option<u16> {
    error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
        .map(MySqlDatabaseError::number)
}

/// Whether an INSERT failed because the key already has a row.
pub(crate) fn is_duplicate_key(error: &sqlx::Error) -> bool {
    server_error(error) == Some(DUPLICATE_KEY)
}

/// Runs `op`, and again after a deadlock or a lock wait timeout, at most `retries` more
/// times. Only for autocommit statements: those roll back alone, so running them again is
/// exactly a retry.
pub(crate) async fn retry_lock_conflicts<T, F, Fut>(retries: u32, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(error) if attempt < retries && is_lock_conflict(&error) => {
                attempt += 1;
                tracing::debug!(%error, attempt, "idem-mysql: lock conflict, running again");
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether an idem error is a deadlock or lock wait timeout, which an autocommit statement
/// can simply run again.
fn is_lock_conflict(error: &Error) -> bool {
    let Error::Unavailable { source } = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(server_error)
        .is_some_and(|n| n == DEADLOCK || n == LOCK_WAIT_TIMEOUT)
}
