//! How a SQL store bounds each call and runs it again after a lock conflict.

use std::future::Future;
use std::time::Duration;

use idem_core::Error;

/// The longest wait for a pooled connection given to sqlx, which adds it to the clock and
/// panics past the clock's range (`Duration::MAX`, say).
const LONGEST_ACQUIRE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The time bound and the retries of every call a SQL store makes on its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// How many times a statement that hit a deadlock or a lock wait timeout is run again,
    /// while the server's bound of the retry ([`server_timeout`](Self::server_timeout))
    /// still ends within the [`timeout`](Self::timeout).
    pub lock_retries: u32,
    /// The longest a call may take in all, retries included, before it is
    /// [`Error::Unavailable`]. Keep it below the shortest lease TTL in use, so that no
    /// call outwaits its lease: a renewal stuck behind a row lock must give up while the
    /// lease is still its own.
    pub timeout: Duration,
}

impl CallPolicy {
    /// Three retries after a lock conflict.
    pub const DEFAULT_LOCK_RETRIES: u32 = 3;

    /// Five seconds: far below the executor's 30 s lease, far above a healthy statement.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The bound to give the server itself (`statement_timeout`, `max_statement_time`):
    /// nine tenths of [`timeout`](Self::timeout), so that on a live server the server
    /// cancels a stuck statement first and answers with a clean error on a connection that
    /// stays usable, while the store's own bound still catches a server that does not
    /// answer at all.
    #[must_use]
    pub fn server_timeout(&self) -> Duration {
        self.timeout.mul_f64(0.9)
    }

    /// The bound to give the pool for getting a connection: the
    /// [`timeout`](Self::timeout), at most a year, a deadline the pool can compute (it
    /// panicked on `Duration::MAX`, a caller's "no bound"); every call stays bounded by the
    /// timeout itself.
    #[must_use]
    pub fn acquire_timeout(&self) -> Duration {
        self.timeout.min(LONGEST_ACQUIRE)
    }

    /// Runs `op` within `bound` (the [`timeout`](Self::timeout), or a caller's own), and again after an error `is_lock_conflict` accepts, at most
    /// [`lock_retries`](Self::lock_retries) more times, and only while the server's own
    /// bound of the next attempt ([`server_timeout`](Self::server_timeout)) still ends
    /// within `bound`. Only for statements that roll back alone (autocommit), so that
    /// running them again is exactly a retry.
    ///
    /// # Errors
    ///
    /// What `op` returned last, when it is not a lock conflict or the retries are used up;
    /// [`Error::Unavailable`] when `bound` ran out first.
    pub async fn run<T, F, Fut>(
        &self,
        bound: Duration,
        is_lock_conflict: fn(&Error) -> bool,
        mut op: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let retries = self.lock_retries;
        let started = tokio::time::Instant::now();
        let attempts = async {
            let mut attempt = 0;
            loop {
                let backoff = Duration::from_millis(5 << (attempt + 1).min(6));
                match op().await {
                    Err(error)
                        if attempt < retries
                            && is_lock_conflict(&error)
                            && self.outlives_nothing(started.elapsed() + backoff, bound) =>
                    {
                        attempt += 1;
                        tracing::debug!(%error, attempt, "idem-sql: lock conflict, running again");
                        tokio::time::sleep(backoff).await;
                    }
                    outcome => return outcome,
                }
            }
        };
        match tokio::time::timeout(bound, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::unavailable(CallTimedOut(bound))),
        }
    }
}

impl CallPolicy {
    /// Whether an attempt started `at` into a call bounded by `bound` ends, on the server,
    /// within the bound: the server gives a statement up to
    /// [`server_timeout`](Self::server_timeout), and stops waiting for no client. A retry past that point
    /// could still apply after the call was reported [`Error::Unavailable`] (a token
    /// consumed, and its retry refused as already used), so the conflict is reported
    /// instead: the statement it ended had changed nothing.
    pub(crate) fn outlives_nothing(&self, at: Duration, bound: Duration) -> bool {
        at.saturating_add(self.server_timeout()) <= bound
    }
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            lock_retries: Self::DEFAULT_LOCK_RETRIES,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// A call that did not finish within its bound: the `source` of its
/// [`Error::Unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimedOut(pub Duration);

impl std::fmt::Display for CallTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the database did not answer within {:?}", self.0)
    }
}

impl std::error::Error for CallTimedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(error: &Error) -> bool {
        matches!(error, Error::Unavailable { .. })
    }

    #[tokio::test]
    async fn retries_conflicts_a_bounded_number_of_times() {
        let policy = CallPolicy {
            lock_retries: 2,
            timeout: Duration::from_secs(10),
        };
        let mut runs = 0;
        let outcome: Result<(), Error> = policy
            .run(policy.timeout, conflict, || {
                runs += 1;
                async { Err(Error::unavailable("deadlock")) }
            })
            .await;
        assert!(outcome.is_err());
        assert_eq!(runs, 3);
        let mut runs = 0;
        let outcome: Result<(), Error> = policy
            .run(policy.timeout, conflict, || {
                runs += 1;
                async { Err(Error::backend("no")) }
            })
            .await;
        assert!(matches!(outcome, Err(Error::Backend { .. })));
        assert_eq!(runs, 1);
    }

    #[tokio::test]
    async fn a_call_past_its_bound_is_unavailable() {
        let policy = CallPolicy::default();
        let outcome: Result<(), Error> = policy
            .run(Duration::from_millis(10), conflict, || {
                std::future::pending()
            })
            .await;
        match outcome {
            Err(Error::Unavailable { source }) => assert!(source.is::<CallTimedOut>()),
            other => panic!("{other:?}"),
        }
    }
}
