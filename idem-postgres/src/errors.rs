//! Which SQLSTATEs mean what; idem-sql maps them to idem errors.

/// `serialization_failure`: a REPEATABLE READ or SERIALIZABLE transaction saw a concurrent
/// change; the whole transaction must run again.
const SERIALIZATION_FAILURE: &str = "40001";
/// `deadlock_detected`: this statement's transaction was picked as a deadlock victim.
const DEADLOCK: &str = "40P01";
/// `lock_not_available`: a row lock was not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// `read_only_sql_transaction`: a write on a read-only server or session.
const READ_ONLY: &str = "25006";

/// SQLSTATEs after which the same call may succeed later: lock conflicts and serialization
/// failures, a statement cancelled (`statement_timeout`, `pg_cancel_backend`), the server
/// shutting down or terminating the connection (`pg_terminate_backend`), refusing
/// connections, out of resources, or an idle session timed out; and a write refused because
/// the server is read-only (`read_only_sql_transaction`: a standby, or a primary demoted by a
/// failover), which changed nothing and may succeed once the application reaches the new
/// primary.
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        SERIALIZATION_FAILURE
            | DEADLOCK
            | LOCK_NOT_AVAILABLE
            | "57014"
            | "57P01"
            | "57P02"
            | "57P03"
            | "57P05"
            | "25P03"
            | READ_ONLY
    ) || code.starts_with("08")
        || code.starts_with("53")
}

/// The SQLSTATE of a server error.
fn sqlstate(error: &sqlx::Error) -> Option<&str> {
    error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .map(sqlx::postgres::PgDatabaseError::code)
}

/// Whether a server error means the same call may succeed later.
pub(crate) fn is_transient_error(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(is_transient)
}

/// Whether a server error is a deadlock, a lock timeout or a serialization failure, which a
/// statement on its own (autocommit) can simply run again.
pub(crate) fn is_lock_conflict(error: &sqlx::Error) -> bool {
    sqlstate(error)
        .is_some_and(|code| matches!(code, SERIALIZATION_FAILURE | DEADLOCK | LOCK_NOT_AVAILABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in [
            "40001", "40P01", "55P03", "57014", "57P01", "08006", "53300", "25006",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "42501"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
