//! One attempt to run a message's operation, as the executor reports it.
//!
//! This is the only place that talks to the executor, so moving to another engine changes
//! this file alone.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use idem_core::{Error, Execution, Fingerprint, Idempotency, IdempotencyStore, Key, Retryable};
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
    /// It ran, and its outcome could not be stored.
    RanNotRecorded(Error),
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
    // The executor answers an error both when it never ran the operation and when it ran
    // it but could not store the outcome; only this flag tells the two apart.
    let ran = AtomicBool::new(false);
    let execution = idem
        .execute_outcome(key, fingerprint, || {
            ran.store(true, Ordering::Relaxed);
            operation()
        })
        .await;
    match execution {
        Ok(Execution {
            result,
            replayed: true,
        }) => Attempt::Replayed {
            failed: result.is_err(),
        },
        Ok(Execution { result, .. }) => Attempt::Ran(Ran::of(&result)),
        Err(error) if ran.load(Ordering::Relaxed) => Attempt::RanNotRecorded(error),
        Err(error) => Attempt::NotRun(error),
    }
}
