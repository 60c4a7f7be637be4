//! Redis errors sorted into idem's: worth retrying later, or not.

use std::io;
use std::time::Duration;

use idem_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// [`Error::Unavailable`] for what may pass (no connection, timeouts, a server loading,
/// failing over, busy, out of memory, or refusing writes until its replicas catch up or
/// until it can persist again);
/// [`Error::Backend`] for the rest (permissions, authentication, a bad URL, script errors).
/// The Redis error is kept as the source.
pub(crate) fn from_redis(err: RedisError) -> Error {
    if is_transient(&err) {
        Error::unavailable(err)
    } else {
        Error::backend(err)
    }
}

fn is_transient(err: &RedisError) -> bool {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return true;
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        // NOREPLICAS: a primary with `min-replicas-to-write` refused the write (nothing was
        // written) until enough replicas are back.
        _ => matches!(err.code(), Some("BUSY" | "OOM" | "NOREPLICAS" | "MISCONF")),
    }
}

/// [`from_redis`], except that a command on a key of another Redis type (`WRONGTYPE`, from a
/// plain command or a script's `redis.call`) means the record under an idem key is not one
/// of ours: [`Error::CorruptRecord`].
pub(crate) fn from_record_call(err: RedisError) -> Error {
    if err.code() == Some("WRONGTYPE") {
        tracing::warn!(error = %err, "corrupt idem record in Redis");
        return Error::corrupt_with("the key holds a value of another type", err);
    }
    from_redis(err)
}

/// Whether `err` is a server's refusal of a command that may write, for want of memory
/// (`OOM`, with `maxmemory-policy noeviction`), of replicas (`NOREPLICAS`, with
/// `min-replicas-to-write`) or of a disk (`MISCONF`: its last snapshot failed, with
/// `stop-writes-on-bgsave-error`): the server still serves what it holds.
pub(crate) fn is_write_refused(err: &Error) -> bool {
    let Error::Unavailable { source } = err else {
        return false;
    };
    source
        .downcast_ref::<RedisError>()
        .is_some_and(|err| matches!(err.code(), Some("OOM" | "NOREPLICAS" | "MISCONF")))
}

/// The error of a call that outlived the store's deadline, as Redis's own timeouts report.
pub(crate) fn deadline_passed(deadline: Duration) -> Error {
    Error::unavailable(timed_out(deadline))
}

/// The Redis error of a call that outlived `deadline`: an I/O timeout, which
/// [`from_redis`] sorts as [`Error::Unavailable`].
pub(crate) fn timed_out(deadline: Duration) -> RedisError {
    RedisError::from(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no reply from Redis within {deadline:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_transient() {
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(from_redis(refused), Error::Unavailable { .. }));
        assert!(matches!(
            deadline_passed(Duration::from_secs(1)),
            Error::Unavailable { .. }
        ));
    }

    #[test]
    fn configuration_errors_are_not() {
        let bad_url = RedisError::from((ErrorKind::InvalidClientConfig, "bad URL"));
        assert!(matches!(from_redis(bad_url), Error::Backend { .. }));
    }
}
