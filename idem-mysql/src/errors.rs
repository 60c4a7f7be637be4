//! Which MySQL and MariaDB server errors mean what; idem-sql maps them to idem errors.

use sqlx::mysql::MySqlDatabaseError;

/// `ER_DUP_ENTRY`: the claimed key already has a row.
const DUPLICATE_KEY: u16 = 1062;
/// `ER_NET_PACKET_TOO_LARGE`: a statement longer than the server's `max_allowed_packet`
/// (a payload near it); the server refuses it and closes the connection.
const PACKET_TOO_LARGE: u16 = 1153;
/// `ER_LOCK_DEADLOCK`: InnoDB picked this statement's transaction as a deadlock victim.
const DEADLOCK: u16 = 1213;
/// `ER_LOCK_WAIT_TIMEOUT`: a row lock was held longer than `innodb_lock_wait_timeout`.
const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_CHECKREAD`: MariaDB's snapshot isolation (`innodb_snapshot_isolation`, the default
/// from 11.6 on) refused a locking read or a write of a row another transaction changed
/// after this one's snapshot ("try restarting transaction"): PostgreSQL's serialization
/// failure.
const RECORD_CHANGED: u16 = 1020;

/// Server errors after which the same call may succeed later, on MariaDB and MySQL 8:
/// - lock conflicts: deadlock (1213), lock wait timeout (1205), `NOWAIT` refused (3572),
///   a row changed since the snapshot (1020, MariaDB's snapshot isolation);
/// - the statement interrupted: `KILL QUERY` (1317 `ER_QUERY_INTERRUPTED`), MariaDB's
///   `max_statement_time` (1969 `ER_STATEMENT_TIMEOUT`), MySQL's `max_execution_time`
///   (3024 `ER_QUERY_TIMEOUT`);
/// - the server refusing or dropping connections: too many connections (1040, 1203),
///   shutting down (1053), the connection killed (1927), MySQL 8's idle disconnect (4031);
/// - a write refused because the server is read-only (1290 `ER_OPTION_PREVENTS_STATEMENT`
///   under `read_only`, 1836 `ER_READ_ONLY_MODE`): a replica, or a primary demoted by a
///   failover, until the application reaches the new primary.
///
/// An interrupted or refused statement changed nothing (InnoDB rolls the statement back), so running
/// it again, or letting the executor retry the outcome write, is safe; reporting it as
/// `Backend` made the executor give the key up and the operation run a second time.
const TRANSIENT: &[u16] = &[
    DEADLOCK,
    LOCK_WAIT_TIMEOUT,
    RECORD_CHANGED,
    3572,
    1317,
    1969,
    3024,
    1040,
    1203,
    1053,
    1927,
    4031,
    1290,
    1836,
];

/// Whether a server error number means "interrupted, or try again".
fn is_transient(number: u16) -> bool {
    TRANSIENT.contains(&number)
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

/// Whether the server refused a statement over its `max_allowed_packet`.
pub(crate) fn is_too_large(error: &sqlx::Error) -> bool {
    server_error(error) == Some(PACKET_TOO_LARGE)
}

/// Whether a server error means "interrupted, or try again" ([`TRANSIENT`]).
pub(crate) fn is_transient_error(error: &sqlx::Error) -> bool {
    server_error(error).is_some_and(is_transient)
}

/// Whether a server error is a deadlock, a lock wait timeout or a row changed since the
/// snapshot, which an autocommit statement can simply run again.
pub(crate) fn is_lock_conflict(error: &sqlx::Error) -> bool {
    server_error(error).is_some_and(|n| matches!(n, DEADLOCK | LOCK_WAIT_TIMEOUT | RECORD_CHANGED))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "interrupted / try again" codes of MariaDB and MySQL 8 are transient; errors a
    /// retry cannot fix are not.
    #[test]
    fn interrupted_statements_are_transient() {
        for number in [
            1317, 1969, 3024, 3572, 1205, 1213, 1020, 1040, 1053, 1927, 4031, 1290, 1836,
        ] {
            assert!(is_transient(number), "{number}");
        }
        for number in [1062, 1146, 1142, 1064, 1406, 1916] {
            assert!(!is_transient(number), "{number}");
        }
    }
}
