//! One attempt to run a message's operation, as the executor (on idem-core's lease
//! engine) reports it.
//!
//! This is the only place that talks to the executor. The engine renews the lease while
//! the operation runs, retries the outcome write while the lease is ours, and reports "ran
//! but not recorded" as its own result.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use idem_core::{Error, ExecuteError, Fingerprint, Idempotency, IdempotencyStore, Key, Retryable};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What happened to the operation, as far as the disposition cares.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// It ran now, and its outcome was stored (or its key released, after a retryable
    /// failure).
    Ran(Ran),
    /// An outcome was already stored; nothing ran.
    Replayed {
        /// Whether the stored outcome is a permanent failure.
        failed: bool,
    },
    /// It ran and ended as `ran` says, and its outcome could not be stored.
    RanNotRecorded {
        /// How it ended.
        ran: Ran,
        /// Why nothing was stored.
        error: Error,
    },
    /// It did not run; the error says why.
    NotRun(Error),
}

/// How an operation that ran now ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    Succeeded,
    FailedRetryably,
    FailedPermanently,
}

impl Ran {
    pub(crate) fn of<T, E: Retryable>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Succeeded,
            Err(error) if error.is_retryable() => Self::FailedRetryably,
            Err(_) => Self::FailedPermanently,
        }
    }
}

/// Runs `operation` through the executor, once per key.
pub(crate) async fn execute<S, T, E, F, Fut>(
    idem: &Idempotency<S>,
    key: &Key,
    fingerprint: Option<Fingerprint>,
    operation: F,
) -> Attempt
where
    S: IdempotencyStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + Retryable,
{
    // A replay returns what the first run returned without calling the operation: only
    // this flag tells a replay from a run.
    let ran = AtomicBool::new(false);
    let execution = idem
        .execute_scoped(key, fingerprint, || {
            ran.store(true, Ordering::Relaxed);
            operation()
        })
        .await;
    let ran = ran.load(Ordering::Relaxed);
    match execution {
        Ok(_) if ran => Attempt::Ran(Ran::Succeeded),
        Ok(_) => Attempt::Replayed { failed: false },
        Err(ExecuteError::Operation(error)) if ran => Attempt::Ran(Ran::of::<(), E>(&Err(error))),
        // Only permanent failures are stored, so only they are replayed.
        Err(ExecuteError::Operation(_)) => Attempt::Replayed { failed: true },
        Err(ExecuteError::NotRecorded { result, error }) => Attempt::RanNotRecorded {
            ran: Ran::of(&result),
            error,
        },
        Err(ExecuteError::Idempotency(error)) => Attempt::NotRun(error),
        // ExecuteError is non-exhaustive: whatever else comes, do not ack what may not
        // have taken effect.
        Err(_) => Attempt::NotRun(Error::backend("unknown executor outcome")),
    }
}
