//! Waiting for replicas after a finish (`WAIT`), for records that must survive a failover.

use std::time::Duration;

use idem_core::{Error, InvalidInput};
use redis::{Cmd, Value};

use crate::reply::unexpected;

/// How many replicas must acknowledge a finished record, and how long to wait for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replication {
    replicas: u32,
    timeout: Duration,
}

impl Replication {
    /// Checked against the response timeout: Redis answers `WAIT` once its timeout passes,
    /// and that answer must arrive before the client gives up on the call.
    pub(crate) fn new(
        replicas: u32,
        timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, Error> {
        if replicas == 0 {
            return Err(InvalidInput::Other("wait_for_replicas needs at least one replica").into());
        }
        if timeout < Duration::from_millis(1) || timeout >= response_timeout {
            return Err(InvalidInput::Other(
                "the replica wait must be at least 1 ms and shorter than the response timeout",
            )
            .into());
        }
        Ok(Self { replicas, timeout })
    }

    /// `WAIT replicas timeout-ms`, sent right behind the finish script, with what is left of
    /// the timeout once `spent` has gone on the call (a first send that found the script
    /// unloaded already waited: one finish waits one timeout in all, as its deadline allows).
    pub(crate) fn wait(&self, spent: Duration) -> Cmd {
        let left = self.timeout.saturating_sub(spent);
        let mut wait = redis::cmd("WAIT");
        // At least 1 ms: `WAIT n 0` would block forever.
        wait.arg(self.replicas)
            .arg(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1));
        wait
    }

    /// What `WAIT` answered: enough replicas, or [`ReplicasNotReached`].
    pub(crate) fn check(&self, reply: Value) -> Result<(), Error> {
        let Value::Int(acknowledged) = reply else {
            return Err(unexpected(format!("WAIT answered {reply:?}")));
        };
        let acknowledged = u32::try_from(acknowledged).unwrap_or(0);
        if acknowledged >= self.replicas {
            return Ok(());
        }
        tracing::warn!(
            acknowledged,
            wanted = self.replicas,
            "a finished idem record reached fewer Redis replicas than asked for"
        );
        Err(Error::backend(ReplicasNotReached {
            wanted: self.replicas,
            acknowledged,
            timeout: self.timeout,
        }))
    }
}

/// The source of the [`Error::Backend`] of a complete or fail made with
/// [`wait_for_replicas`](crate::RedisStoreBuilder::wait_for_replicas), when fewer replicas
/// than asked for acknowledged the finished record in time.
///
/// The record is written on the primary, and a repeat of the request replays it while that
/// server keeps it; what is not confirmed is that it would survive a failover. The error is
/// `Backend`, not `Unavailable`, on purpose: writing the outcome again cannot help (the
/// lease is spent, so a second finish is `LeaseLost`). The executor writes once and hands
/// the operation's value back as `ExecuteError::NotRecorded`, whose cause is this
/// `Backend` error: the effects happened, and the key runs again only if a failover loses
/// the record.
#[derive(Debug, thiserror::Error)]
#[error(
    "{acknowledged} of {wanted} Redis replicas acknowledged the finished record within {timeout:?}"
)]
#[non_exhaustive]
pub struct ReplicasNotReached {
    /// The replicas asked for.
    pub wanted: u32,
    /// The replicas that acknowledged the write in time.
    pub acknowledged: u32,
    /// How long the store waited.
    pub timeout: Duration,
}
