//! The executor: runs an operation at most once per key and replays its outcome.
//!
//! The facade over the [engine](crate::attempt): the executor claims (waiting as the
//! [`WaitPolicy`](crate::WaitPolicy) says), replays what is stored, and runs the rest as an
//! [`Attempt`] whose settle step is the JSON codec.

mod codec;
pub(crate) mod json;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::attempt::{Attempt, AttemptError, Engine, LeaseHandle};
use crate::claim::Claim;
use crate::config::{Config, Settings};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::retryable::Retryable;
use crate::store::IdempotencyStore;
use codec::JsonSettle;

/// Runs operations at most once per key, on any [`IdempotencyStore`].
///
/// For each call [`execute`](Self::execute):
/// 1. claims the key with a fresh [`OwnerToken`](crate::OwnerToken) (a claim the store could
///    not answer is sent again by the same owner, so a claim applied whose reply was lost is
///    recognised);
/// 2. on a repeat, returns the stored success or permanent failure without running anything;
///    if the first request is still running, fails fast or waits, as
///    [`WaitPolicy`](crate::WaitPolicy) says;
/// 3. otherwise runs the operation, renewing the lease every third of its TTL on a task of
///    its own, so a live owner is never taken over;
/// 4. stores the serialized success, stores a permanent failure, or releases the key after a
///    retryable one ([`Retryable`]); a store that is unavailable is retried for as long as
///    the lease lasts.
///
/// # When the caller goes away
///
/// [`execute`](Self::execute) takes operations that can be spawned (`Send + 'static`) and,
/// by default ([`CancelPolicy::Detach`](crate::attempt::CancelPolicy::Detach)), runs them on
/// a task of their own: if the caller's future is dropped (a timeout, a client gone), the
/// operation still finishes and its outcome is stored; a repeat meanwhile gets
/// [`Error::InProgress`] (or waits), and the replay after. With
/// [`CancelPolicy::Release`](crate::attempt::CancelPolicy::Release) in the [`Config`], or
/// always with [`execute_scoped`](Self::execute_scoped) (for operations that borrow), a
/// dropped caller drops the operation and releases the key at once. A caller dropped while
/// its claim is on its way to the store never started the operation: if the store applied the
/// claim, the key is released at once too.
///
/// A panicking operation releases its key (under either policy), and the panic reaches the
/// caller. Once the operation has returned, nothing releases the key but a retryable failure:
/// a caller dropped while the outcome is written leaves the key to that write (finished on a
/// task of its own), or to the lease's end.
///
/// Cloning is cheap: clones share the store.
pub struct Idempotency<S> {
    engine: Engine<S>,
    settings: Settings,
}

/// The outcome of [`Idempotency::execute_outcome`]: the operation's result, and whether
/// it was replayed from the store rather than run by this call.
///
/// Only the executor makes one; read its fields, or match it with `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Execution<T, E> {
    /// The operation's success or permanent failure (a retryable failure is never replayed).
    pub result: Result<T, E>,
    /// `true` when this call found the outcome stored and did not run the operation.
    pub replayed: bool,
}

/// The error of [`Idempotency::execute`]: the operation's own error, idem's, or an
/// operation that ran but whose outcome could not be stored.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExecuteError<E, T> {
    /// The operation failed (now, or the first time, replayed). Never returned by the
    /// methods that return an [`Execution`], which carries the failure instead.
    Operation(E),
    /// idem could not run or replay the operation: in progress elsewhere, fingerprint
    /// mismatch, store unavailable, ...
    Idempotency(Error),
    /// The operation ran and returned `result`, but its outcome could not be stored (`error`
    /// is [`Error::NotRecorded`], with the cause: the lease was lost, the store stayed
    /// unavailable). Its effects happened; a later request may run it again once the lease
    /// ends.
    NotRecorded {
        /// What the operation returned.
        result: Result<T, E>,
        /// [`Error::NotRecorded`].
        error: Error,
    },
}

impl<E: fmt::Display, T> fmt::Display for ExecuteError<E, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operation(e) => write!(f, "operation failed: {e}"),
            Self::Idempotency(e) | Self::NotRecorded { error: e, .. } => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static, T: fmt::Debug> std::error::Error for ExecuteError<E, T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Operation(e) => Some(e),
            Self::Idempotency(e) | Self::NotRecorded { error: e, .. } => Some(e),
        }
    }
}

impl<E, T> From<Error> for ExecuteError<E, T> {
    fn from(error: Error) -> Self {
        Self::Idempotency(error)
    }
}

impl<S> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("engine", &self.engine)
            .field("settings", &self.settings)
            .finish()
    }
}

/// What a claim led to: an attempt to run, or a stored outcome.
enum Started<S: IdempotencyStore, T, E> {
    Acquired(Attempt<S>),
    Replayed(Execution<T, E>),
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// An executor with the default [`Config`].
    ///
    /// To share one store between executors (and with the HTTP layer or a consumer), clone
    /// the store: every store of idem is cheap to clone and its clones share the records. An
    /// `Arc<S>` is a store too, but one that reaches `S` through the trait's boxed futures,
    /// which costs one allocation per step that `S`'s own unboxed steps avoid
    /// ([`IdempotencyStore::claim_unboxed`]).
    pub fn new(store: S) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// An executor over a store already in an `Arc`.
    pub fn from_arc(store: Arc<S>) -> Self {
        Self::with_settings(store, Settings::default())
    }

    /// An executor with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when a TTL of `config` is zero or out of range, or its backoff is
    /// not usable.
    pub fn with_config(store: S, config: Config) -> Result<Self, Error> {
        Ok(Self::with_settings(
            Arc::new(store),
            Settings::try_from(config)?,
        ))
    }

    fn with_settings(store: Arc<S>, settings: Settings) -> Self {
        let engine =
            Engine::new(store, settings.lease_ttl).with_cancel_policy(settings.cancel_policy);
        Self { engine, settings }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &S {
        self.engine.store()
    }

    /// The engine the executor runs its attempts on.
    #[must_use]
    pub fn engine(&self) -> &Engine<S> {
        &self.engine
    }

    /// Runs `operation` once for `key`; every repeat gets the same outcome back.
    ///
    /// `fingerprint` identifies the request: a repeat with a different one fails with
    /// [`Error::FingerprintMismatch`] instead of replaying another request's result.
    ///
    /// The operation's future must be `Send + 'static` (move what it needs into it): it may
    /// run on a task of its own, to the end, even if this call's future is dropped (see
    /// [When the caller goes away](Self#when-the-caller-goes-away)). For an operation that
    /// borrows, use [`execute_scoped`](Self::execute_scoped).
    ///
    /// # Errors
    ///
    /// - [`ExecuteError::Operation`]: the operation failed, now or the first time (replayed).
    /// - [`ExecuteError::Idempotency`]: it did not run: [`Error::FingerprintMismatch`] (the key was
    ///   used with another request), [`Error::InProgress`] (another caller holds the key and the
    ///   [`WaitPolicy`](crate::WaitPolicy) ran out), [`Error::Unavailable`] or another store error,
    ///   [`Error::PayloadTooLarge`] when the first run's outcome was over
    ///   [`Config::max_payload`] (a marker was stored in its place), or
    ///   [`Error::Serialization`] when a stored outcome does not decode into `T`/`E` or the
    ///   first run's could not be stored as itself (a NaN, say).
    /// - [`ExecuteError::NotRecorded`]: it ran, with its result, but the outcome could not be
    ///   stored (the lease was lost, the store stayed unavailable, the payload was refused).
    pub async fn execute<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<T, ExecuteError<E, T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Retryable + Send + 'static,
    {
        let execution = self.execute_outcome(key, fingerprint, operation).await?;
        execution.result.map_err(ExecuteError::Operation)
    }

    /// Like [`execute`](Self::execute), and also says whether the outcome was replayed
    /// (for an `Idempotent-Replayed` header, say).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), except that the operation's own failure is in the
    /// [`Execution`], never [`ExecuteError::Operation`].
    pub async fn execute_outcome<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, ExecuteError<E, T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Retryable + Send + 'static,
    {
        // Not through `execute_with_lease`: an operation that takes no handle gets none made.
        self.run_or_replay(key, fingerprint, |attempt| {
            attempt.run(operation(), JsonSettle::new(&self.settings))
        })
        .await
    }

    /// Like [`execute_outcome`](Self::execute_outcome), handing the operation its
    /// [`LeaseHandle`]: the lease's fencing number, to guard its own writes with, and
    /// whether the lease was lost while it runs, so a long job can stop.
    ///
    /// # Errors
    ///
    /// As [`execute_outcome`](Self::execute_outcome).
    pub async fn execute_with_lease<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, ExecuteError<E, T>>
    where
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Retryable + Send + 'static,
    {
        self.run_or_replay(key, fingerprint, |attempt| {
            let operation = operation(attempt.lease_handle());
            attempt.run(operation, JsonSettle::new(&self.settings))
        })
        .await
    }

    /// Like [`execute`](Self::execute), for an operation that borrows from its caller (and
    /// so need not be `Send` or `'static`). It runs inside this call's future: dropping that
    /// future before the operation returned drops the operation and releases the key at once
    /// ([`CancelPolicy::Release`](crate::attempt::CancelPolicy::Release)), whatever the
    /// [`Config`] says.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn execute_scoped<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<T, ExecuteError<E, T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        let execution = self
            .run_or_replay(key, fingerprint, |attempt| {
                attempt.run_scoped(operation(), JsonSettle::new(&self.settings))
            })
            .await?;
        execution.result.map_err(ExecuteError::Operation)
    }

    /// Claims the key, in one traced execution: replays what is stored, or hands the
    /// acquired attempt to `run`.
    async fn run_or_replay<T, E, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        run: impl FnOnce(Attempt<S>) -> Fut,
    ) -> Result<Execution<T, E>, ExecuteError<E, T>>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
        Fut: Future<Output = Result<Result<T, E>, AttemptError<Result<T, E>>>>,
    {
        self.traced(key, |traced| async move {
            match self.start(key, fingerprint, traced).await? {
                Started::Acquired(attempt) => ran(run(attempt).await),
                Started::Replayed(execution) => Ok(execution),
            }
        })
        .await
    }

    /// Runs one execution in an `idem.execute` span. The fields are recorded inside the
    /// instrumented future, while the span is open and entered: subscribers that finish a
    /// span on its last exit see them too. `execution` is told whether the span is
    /// recorded, and so whether the current span is its own.
    async fn traced<T, E, Fut>(
        &self,
        key: &Key,
        execution: impl FnOnce(bool) -> Fut,
    ) -> Result<Execution<T, E>, ExecuteError<E, T>>
    where
        Fut: Future<Output = Result<Execution<T, E>, ExecuteError<E, T>>>,
    {
        if !tracing::level_enabled!(tracing::Level::INFO) {
            // No subscriber takes INFO spans, so not even a disabled span is built: with
            // tracing's `log` feature on (sqlx turns it on), one still records its fields for
            // a `log` logger, about 150 instructions per execute. A `log` logger without a
            // tracing subscriber therefore sees no `idem.execute` line; warnings still reach it.
            return execution(false).await;
        }
        let span = tracing::info_span!(
            "idem.execute",
            namespace = key.namespace(),
            outcome = field::Empty,
            fencing = field::Empty,
            elapsed_us = field::Empty,
        );
        if span.is_disabled() {
            // Nobody listens: the span, its timing and its fields would go nowhere.
            return execution(false).await;
        }
        let execution = execution(true);
        async {
            let started = Instant::now();
            let result = execution.await;
            let span = tracing::Span::current();
            span.record("outcome", outcome_label(&result));
            let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            span.record("elapsed_us", elapsed_us);
            result
        }
        .instrument(span)
        .await
    }

    /// Claims the key (waiting as the policy says) and replays what is stored; the fencing
    /// number of a lease goes to the `idem.execute` span when it is `traced`.
    async fn start<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        traced: bool,
    ) -> Result<Started<S, T, E>, Error> {
        let claimed = self
            .engine
            .claim_fresh(key.clone(), fingerprint, self.settings.wait)
            .await?;
        match claimed {
            Claim::Acquired(lease) => {
                if traced {
                    tracing::Span::current().record("fencing", lease.fencing);
                }
                Ok(Started::Acquired(self.engine.attempt(lease)))
            }
            Claim::Completed(response) => codec::replay_success(&response).map(Started::Replayed),
            Claim::Failed(failure) => codec::replay_failure(&failure).map(Started::Replayed),
            Claim::InProgress { retry_after } => Err(Error::InProgress { retry_after }),
        }
    }
}

/// The execution of an attempt that ran.
fn ran<T, E>(
    attempt: Result<Result<T, E>, AttemptError<Result<T, E>>>,
) -> Result<Execution<T, E>, ExecuteError<E, T>> {
    match attempt {
        Ok(result) => Ok(Execution {
            result,
            replayed: false,
        }),
        Err(AttemptError::NotRecorded { output, error }) => Err(ExecuteError::NotRecorded {
            result: output,
            error,
        }),
    }
}

fn outcome_label<T, E>(result: &Result<Execution<T, E>, ExecuteError<E, T>>) -> &'static str {
    match result {
        Ok(Execution { replayed: true, .. }) => "replayed",
        Ok(_) => "executed",
        Err(ExecuteError::NotRecorded { .. }) => "not_recorded",
        Err(ExecuteError::Idempotency(Error::InProgress { .. })) => "in_progress",
        Err(ExecuteError::Idempotency(Error::FingerprintMismatch)) => "mismatch",
        Err(ExecuteError::Idempotency(Error::LeaseLost)) => "lease_lost",
        Err(_) => "error",
    }
}
