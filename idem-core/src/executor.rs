//! The executor: runs an operation at most once per key and replays its outcome.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::claim::{Claim, ClaimRequest};
use crate::config::{Config, Settings, WaitPolicy};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::lease::{Lease, OwnerToken};
use crate::record::RecordState;
use crate::retryable::Retryable;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// Runs operations at most once per key, on any [`IdempotencyStore`].
///
/// For each call [`execute`](Self::execute):
/// 1. claims the key with a fresh [`OwnerToken`];
/// 2. on a repeat, returns the stored success or permanent failure without running anything;
///    if the first request is still running, fails fast or waits, as [`WaitPolicy`] says;
/// 3. otherwise runs the operation, renewing the lease every third of its TTL so a live
///    owner is never taken over;
/// 4. stores the serialized success, stores a permanent failure, or releases the key after a
///    retryable one ([`Retryable`]).
///
/// If the operation panics or its future is dropped, the key is released at once (on the
/// Tokio runtime), and in any case no later than the end of its lease.
///
/// Cloning is cheap: clones share the store.
pub struct Idempotency<S> {
    store: Arc<S>,
    settings: Settings,
}

/// The outcome of [`Idempotency::execute_outcome`]: the operation's result, and whether
/// it was replayed from the store rather than run by this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution<T, E> {
    /// The operation's success or permanent failure (a retryable failure is never replayed).
    pub result: Result<T, E>,
    /// `true` when this call found the outcome stored and did not run the operation.
    pub replayed: bool,
}

/// The error of [`Idempotency::execute`]: the operation's own error, or idem's.
#[derive(Debug)]
pub enum ExecuteError<E> {
    /// The operation failed (now, or the first time, replayed).
    Operation(E),
    /// idem could not run or replay the operation: in progress elsewhere, fingerprint
    /// mismatch, lease lost, store unavailable, ...
    Idempotency(Error),
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operation(e) => write!(f, "operation failed: {e}"),
            Self::Idempotency(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Operation(e) => Some(e),
            Self::Idempotency(e) => Some(e),
        }
    }
}

impl<E> From<Error> for ExecuteError<E> {
    fn from(error: Error) -> Self {
        Self::Idempotency(error)
    }
}

/// What the executor writes for a failed key. A success is stored as the plain JSON of the
/// value; a failure carries this envelope so the executor can also record outcomes it could
/// not store, and a repeat gets a typed error instead of running the operation again.
#[derive(Serialize, Deserialize)]
enum StoredFailure<E> {
    Operation(E),
    TooLarge { size: usize, limit: usize },
    Unserializable { reason: String },
}

impl<S> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            settings: self.settings.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// An executor with the default [`Config`].
    pub fn new(store: S) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// An executor over a store already in an `Arc`.
    pub fn from_arc(store: Arc<S>) -> Self {
        let settings = Settings::try_from(Config::default())
            .unwrap_or_else(|_| unreachable!("the default config is valid"));
        Self { store, settings }
    }

    /// An executor with `config`; fails with [`Error::InvalidInput`] on zero TTLs or a bad
    /// backoff.
    pub fn with_config(store: S, config: Config) -> Result<Self, Error> {
        Ok(Self {
            store: Arc::new(store),
            settings: Settings::try_from(config)?,
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs `operation` once for `key`; every repeat gets the same outcome back.
    ///
    /// `fingerprint` identifies the request: a repeat with a different one fails with
    /// [`Error::FingerprintMismatch`] instead of replaying another request's result.
    pub async fn execute<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<T, ExecuteError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        match self.execute_outcome(key, fingerprint, operation).await {
            Ok(execution) => execution.result.map_err(ExecuteError::Operation),
            Err(error) => Err(ExecuteError::Idempotency(error)),
        }
    }

    /// Like [`execute`](Self::execute), and also says whether the outcome was replayed
    /// (for an `Idempotent-Replayed` header, say).
    pub async fn execute_outcome<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        self.execute_traced(key, fingerprint, |_: &Lease| operation())
            .await
    }

    /// Like [`execute_outcome`](Self::execute_outcome), handing the operation its
    /// [`Lease`], so it can guard its own writes with the fencing number.
    pub async fn execute_with_lease<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        self.execute_traced(key, fingerprint, |lease: &Lease| operation(lease.clone()))
            .await
    }

    /// Runs in a span; the operation borrows the lease, so only callers that want it
    /// pay for a copy.
    async fn execute_traced<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, Error>
    where
        F: FnOnce(&Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        let span = tracing::info_span!(
            "idem.execute",
            namespace = key.namespace(),
            outcome = field::Empty,
            fencing = field::Empty,
            elapsed_us = field::Empty,
        );
        // The fields are recorded inside the instrumented future, while the span is open and
        // entered: subscribers that finish a span on its last exit see them too.
        async {
            let started = Instant::now();
            let result = self.run(key, fingerprint, operation).await;
            let span = tracing::Span::current();
            span.record("outcome", outcome_label(&result));
            let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            span.record("elapsed_us", elapsed_us);
            result
        }
        .instrument(span)
        .await
    }

    async fn run<T, E, F, Fut>(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Result<Execution<T, E>, Error>
    where
        F: FnOnce(&Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        let request = ClaimRequest {
            key: key.clone(),
            owner: OwnerToken::random(),
            lease_ttl: self.settings.lease_ttl,
            fingerprint,
        };
        let lease = match self.claim_or_wait(&request).await? {
            Claim::Acquired(lease) => lease,
            Claim::Completed(response) => return replay_success(&response),
            Claim::Failed(failure) => return replay_failure(&failure),
            Claim::InProgress { retry_after } => return Err(Error::InProgress { retry_after }),
        };
        tracing::Span::current().record("fencing", lease.fencing);

        let guard = ReleaseOnDrop {
            store: &self.store,
            lease: &lease,
            armed: true,
        };
        let result = self.run_renewing(&lease, operation(&lease)).await;
        let recorded = self.record(&lease, &result).await;
        guard.disarm();
        recorded?;
        Ok(Execution {
            result,
            replayed: false,
        })
    }

    /// Claims, and while the key is in progress elsewhere waits as the policy says.
    async fn claim_or_wait(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let WaitPolicy::Wait {
            timeout,
            initial_backoff,
            max_backoff,
        } = self.settings.wait
        else {
            return self.store.claim(request).await;
        };
        // A timeout too long to represent as an instant (`Duration::MAX`, say) never ends.
        let deadline = Instant::now().checked_add(timeout);
        let mut backoff = initial_backoff;
        loop {
            let claim = self.store.claim(request).await?;
            let Claim::InProgress { retry_after } = claim else {
                return Ok(claim);
            };
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(claim),
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            // Poll no later than the lease's end, so a crashed owner is taken over promptly.
            let pause = backoff
                .min(retry_after.max(Duration::from_millis(1)))
                .min(left);
            tokio::time::sleep(pause).await;
            backoff = backoff.saturating_mul(2).min(max_backoff);
        }
    }

    /// Runs the operation while renewing its lease; renewal stops when it finishes or is
    /// dropped, since both live in this one future.
    async fn run_renewing<Fut: Future>(&self, lease: &Lease, operation: Fut) -> Fut::Output {
        tokio::select! {
            biased;
            output = operation => output,
            never = self.keep_renewed(lease) => match never {},
        }
    }

    async fn keep_renewed(&self, lease: &Lease) -> Infallible {
        let every = self.settings.renew_every;
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.store.renew(lease, self.settings.lease_ttl).await {
                Ok(()) => tracing::trace!(fencing = lease.fencing, "lease renewed"),
                Err(Error::LeaseLost) => {
                    tracing::warn!(
                        fencing = lease.fencing,
                        "lease lost while the operation runs; its outcome will not be stored"
                    );
                    return std::future::pending().await;
                }
                Err(error) => tracing::warn!(%error, "renewing the lease failed; retrying"),
            }
        }
    }

    /// Stores what the operation produced, or frees the key after a retryable failure.
    async fn record<T, E>(&self, lease: &Lease, result: &Result<T, E>) -> Result<(), Error>
    where
        T: Serialize,
        E: Serialize + Retryable,
    {
        match result {
            Ok(value) => self.store_success(lease, value).await,
            Err(error) if error.is_retryable() => {
                // The caller gets its operation's error either way; a failed release only
                // means the key frees itself when the lease runs out.
                if let Err(release) = self.store.release(lease).await {
                    tracing::warn!(error = %release, "releasing after a retryable failure failed; the lease will expire");
                }
                Ok(())
            }
            Err(error) => {
                self.store_failure(lease, &StoredFailure::Operation(error))
                    .await
            }
        }
    }

    /// Stores a success. One that cannot be stored, because it does not serialize or is over
    /// the executor's or the store's limit, is recorded as a marker instead, so repeats get a
    /// typed error rather than run the operation again.
    async fn store_success<T: Serialize>(&self, lease: &Lease, value: &T) -> Result<(), Error> {
        let retention = self.settings.success_retention;
        self.store_encoded(
            lease,
            Outcome::Completed,
            serde_json::to_vec(value),
            retention,
        )
        .await
    }

    /// Stores a permanent failure, or a marker when it cannot be stored (as for successes).
    async fn store_failure<E: Serialize>(
        &self,
        lease: &Lease,
        envelope: &StoredFailure<E>,
    ) -> Result<(), Error> {
        let retention = self.settings.failure_retention;
        self.store_encoded(
            lease,
            Outcome::Failed,
            serde_json::to_vec(envelope),
            retention,
        )
        .await
    }

    /// Writes an encoded outcome, or the marker that says why it could not be.
    async fn store_encoded(
        &self,
        lease: &Lease,
        outcome: Outcome,
        encoded: Result<Vec<u8>, serde_json::Error>,
        retention: Ttl,
    ) -> Result<(), Error> {
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => return self.store_unserializable(lease, &error).await,
        };
        let (size, limit) = (bytes.len(), self.settings.max_payload);
        if size > limit {
            return self.store_too_large(lease, size, limit).await;
        }
        match self
            .write_outcome(lease, outcome, Bytes::from(bytes), retention)
            .await
        {
            Err(Error::PayloadTooLarge { size, limit }) => {
                self.store_too_large(lease, size, limit).await
            }
            stored => stored,
        }
    }

    async fn store_too_large(&self, lease: &Lease, size: usize, limit: usize) -> Result<(), Error> {
        tracing::warn!(
            size,
            limit,
            "outcome too large to store; repeats get PayloadTooLarge"
        );
        self.store_marker(lease, &StoredFailure::TooLarge { size, limit })
            .await
    }

    async fn store_unserializable(
        &self,
        lease: &Lease,
        error: &serde_json::Error,
    ) -> Result<(), Error> {
        let reason = error.to_string();
        self.store_marker(lease, &StoredFailure::Unserializable { reason })
            .await
    }

    /// Stores an envelope that holds no operation error: a few dozen bytes that always
    /// serialize, under any sane payload limit.
    async fn store_marker(&self, lease: &Lease, marker: &StoredFailure<()>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(marker).map_err(|e| Error::Serialization {
            source: Box::new(e),
        })?;
        let retention = self.settings.failure_retention;
        self.write_outcome(lease, Outcome::Failed, Bytes::from(bytes), retention)
            .await
    }

    /// Writes an outcome, retrying a few times while the store is unavailable: the
    /// operation has run, and an outcome left unstored lets the key run again once its
    /// lease ends.
    async fn write_outcome(
        &self,
        lease: &Lease,
        outcome: Outcome,
        payload: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            let written = match outcome {
                Outcome::Completed => self.store.complete(lease, payload.clone(), retention).await,
                Outcome::Failed => self.store.fail(lease, payload.clone(), retention).await,
            };
            match written {
                Err(Error::Unavailable { source }) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(attempt, error = %source, "storing the outcome failed; retrying");
                    tokio::time::sleep(WRITE_BACKOFF * attempt).await;
                    attempt += 1;
                }
                // An earlier attempt may have been applied and only its reply lost: then
                // the key holds this outcome under this lease's fencing number.
                Err(Error::LeaseLost)
                    if attempt > 1 && self.holds(lease, outcome, &payload).await =>
                {
                    return Ok(());
                }
                written => return written,
            }
        }
    }

    /// Whether the key holds `payload` as its `outcome`, written under `lease`.
    async fn holds(&self, lease: &Lease, outcome: Outcome, payload: &Bytes) -> bool {
        let Ok(Some(record)) = self.store.read(&lease.key).await else {
            return false;
        };
        record.fencing == lease.fencing
            && match (outcome, record.state) {
                (Outcome::Completed, RecordState::Completed { response }) => response == payload,
                (Outcome::Failed, RecordState::Failed { failure }) => failure == payload,
                _ => false,
            }
    }
}

/// How often an outcome is written before a store that stays unavailable wins.
const WRITE_ATTEMPTS: u32 = 3;
/// The pause before the second attempt; the third waits twice as long.
const WRITE_BACKOFF: Duration = Duration::from_millis(50);

/// Which of the two finished states an outcome is written as.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Completed,
    Failed,
}

fn replay_success<T: DeserializeOwned, E>(response: &[u8]) -> Result<Execution<T, E>, Error> {
    Ok(Execution {
        result: Ok(decode(response, "response")?),
        replayed: true,
    })
}

fn replay_failure<T, E: DeserializeOwned>(failure: &[u8]) -> Result<Execution<T, E>, Error> {
    let envelope = decode(failure, "failure")?;
    match envelope {
        StoredFailure::Operation(error) => Ok(Execution {
            result: Err(error),
            replayed: true,
        }),
        StoredFailure::TooLarge { size, limit } => Err(Error::PayloadTooLarge { size, limit }),
        StoredFailure::Unserializable { reason } => Err(Error::Serialization {
            source: reason.into(),
        }),
    }
}

/// Decodes a stored outcome. Bytes that are not JSON were never written by the executor: a
/// corrupt record. JSON of another shape means the caller's type is not the one stored (it
/// changed between deployments, or the key is shared by two operations): a serialization
/// error, as [`Error::Serialization`] documents.
fn decode<V: DeserializeOwned>(stored: &[u8], what: &str) -> Result<V, Error> {
    serde_json::from_slice(stored).map_err(|error| match error.classify() {
        Category::Data => Error::Serialization {
            source: Box::new(error),
        },
        Category::Syntax | Category::Eof | Category::Io => {
            Error::corrupt_with(format!("the stored {what} is not JSON"), error)
        }
    })
}

fn outcome_label<T, E>(result: &Result<Execution<T, E>, Error>) -> &'static str {
    match result {
        Ok(Execution { replayed: true, .. }) => "replayed",
        Ok(_) => "executed",
        Err(Error::InProgress { .. }) => "in_progress",
        Err(Error::FingerprintMismatch) => "mismatch",
        Err(Error::LeaseLost) => "lease_lost",
        Err(_) => "error",
    }
}

/// Releases the lease if the operation never finished: its future was dropped, or it
/// panicked (drops run while unwinding).
///
/// It borrows the store and lease and copies them only when it has to release: the happy
/// path pays nothing for it.
struct ReleaseOnDrop<'a, S: IdempotencyStore> {
    store: &'a Arc<S>,
    lease: &'a Lease,
    armed: bool,
}

impl<S: IdempotencyStore> ReleaseOnDrop<'_, S> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl<S: IdempotencyStore> Drop for ReleaseOnDrop<'_, S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let lease = self.lease.clone();
        tracing::warn!(
            namespace = lease.key.namespace(),
            "operation cancelled or panicked; releasing its key"
        );
        // Without a runtime the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(self.store);
            runtime.spawn(async move {
                if let Err(error) = store.release(&lease).await {
                    tracing::debug!(%error, "releasing an abandoned lease failed; it will expire");
                }
            });
        }
    }
}
