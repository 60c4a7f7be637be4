//! The executor's rules, checked on a store: what `Idempotency` (and the engine under it,
//! [`idem_core::attempt`]) promises holds on every backend, faults included.
//!
//! Each check is a plain `pub async fn`, listed in [`EXECUTOR_CHECKS`];
//! [`executor_conformance!`](crate::executor_conformance) stamps out one `#[test]` per check
//! in an `executor_conformance` module:
//!
//! ```
//! # mod hidden {
//! # use idem_memory::MemoryStore as MyStore;
//! async fn make_store() -> MyStore {
//!     MyStore::new()
//! }
//!
//! idem_tests::executor_conformance!(make_store);
//! # }
//! ```
//!
//! Leases are `short_ttl` long (a few hundred milliseconds) where time matters, so the checks
//! are quick; every wait for a condition has a deadline of seconds, for busy machines.

mod cancel;
mod faults;
mod lease;
mod runs;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem_core::attempt::CancelPolicy;
use idem_core::{Config, Error, ExecuteError, Execution, Idempotency, Key, Retryable, WaitPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use cancel::{
    cancel_during_write_keeps_the_key, drop_outside_runtime, dropped_caller_runs_once,
};
pub use faults::{lost_write_reply_is_recognised, unavailable_claim_is_retried_by_its_owner};
pub use lease::{
    blocking_operation_keeps_its_key, long_operation_keeps_its_key,
    lost_lease_is_told_and_not_recorded,
};
pub use runs::{
    one_run_under_concurrency, panic_frees_the_key, permanent_failure_replays,
    retryable_failure_reruns,
};

use crate::Store;
use crate::context::{Ctx, Doing, ensure};

/// Calls back `$callback!` with the arguments given and the name of every executor check:
/// the one list both [`EXECUTOR_CHECKS`] and [`executor_conformance!`] are made from.
///
/// [`executor_conformance!`]: crate::executor_conformance
#[doc(hidden)]
#[macro_export]
macro_rules! __with_executor_check_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { [$($args)*]
            one_run_under_concurrency
            retryable_failure_reruns
            permanent_failure_replays
            panic_frees_the_key
            dropped_caller_runs_once
            cancel_during_write_keeps_the_key
            drop_outside_runtime
            blocking_operation_keeps_its_key
            long_operation_keeps_its_key
            lost_lease_is_told_and_not_recorded
            lost_write_reply_is_recognised
            unavailable_claim_is_retried_by_its_owner
        }
    };
}

/// Stamps out one `#[test]` per executor check in an `executor_conformance` module:
/// `idem_tests::executor_conformance!(make_store);`, or with [`Capabilities`] as a second
/// argument, as for [`conformance!`](crate::conformance).
///
/// [`Capabilities`]: crate::Capabilities
#[macro_export]
macro_rules! executor_conformance {
    ($factory:expr $(,)?) => {
        $crate::executor_conformance!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $capabilities:expr $(,)?) => {
        $crate::__with_executor_check_names!(__conformance_tests {
            executor_conformance executor_checks ($factory) ($capabilities)
        });
    };
}

crate::__with_executor_check_names!(__check_list {
    EXECUTOR_CHECKS Store, executor_checks, "Every executor check, in order."
});

/// The operation's error in the checks: `Transient` is retried, `Permanent` replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpError {
    Transient,
    Permanent(String),
}

impl Retryable for OpError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient)
    }
}

pub(crate) type Executor = Idempotency<Store>;
pub(crate) type Outcome<T> = Result<T, ExecuteError<OpError, T>>;
pub(crate) type Executed<T> = Result<Execution<T, OpError>, ExecuteError<OpError, T>>;

/// The longest a check waits for something that should happen soon.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// An executor on the check's store.
pub(crate) fn executor(
    store: Store,
    lease: Duration,
    wait: WaitPolicy,
    cancel_policy: CancelPolicy,
) -> Result<Executor, String> {
    let config = Config::builder()
        .lease_ttl(lease)
        .success_retention(crate::context::RETENTION)
        .failure_retention(crate::context::RETENTION)
        .wait(wait)
        .cancel_policy(cancel_policy)
        .build()
        .doing("configuring the executor")?;
    Idempotency::with_config(store, config).doing("building the executor")
}

/// The default executor for a check: fail fast, detach.
pub(crate) fn detached(ctx: &Ctx, lease: Duration) -> Result<Executor, String> {
    detached_on(Arc::clone(&ctx.store), lease)
}

/// The default executor on another store (a wrapper of the check's).
pub(crate) fn detached_on(store: Store, lease: Duration) -> Result<Executor, String> {
    executor(store, lease, WaitPolicy::FailFast, CancelPolicy::Detach)
}

pub(crate) fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub(crate) fn count(runs: &AtomicUsize) -> usize {
    runs.load(Ordering::SeqCst)
}

/// One execution whose operation counts its run and returns `value` at once.
pub(crate) async fn run_counted<T>(
    idem: &Executor,
    key: &Key,
    runs: &Arc<AtomicUsize>,
    value: T,
) -> Executed<T>
where
    T: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let runs = Arc::clone(runs);
    idem.execute_outcome(key, None, move || async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    })
    .await
}

/// Repeats the request until it is no longer in progress, then insists on a replay of
/// `expected`.
pub(crate) async fn expect_replay_after<T>(
    idem: &Executor,
    key: &Key,
    runs: &Arc<AtomicUsize>,
    expected: T,
    other: T,
) -> Result<(), String>
where
    T: Serialize
        + serde::de::DeserializeOwned
        + Send
        + PartialEq
        + std::fmt::Debug
        + Clone
        + 'static,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match run_counted(idem, key, runs, other.clone()).await {
            Err(ExecuteError::Idempotency(Error::InProgress { .. }))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Execution {
                result: Ok(value),
                replayed: true,
                ..
            }) if value == expected => return Ok(()),
            other => {
                return Err(format!(
                    "a repeat after the first run finished should replay {expected:?}, got {other:?}"
                ));
            }
        }
    }
}

/// [`expect_replay_after`], then insists the operation ran exactly once.
pub(crate) async fn expect_replayed_once(
    idem: &Executor,
    key: &Key,
    runs: &Arc<AtomicUsize>,
    expected: u64,
    other: u64,
) -> Result<(), String> {
    expect_replay_after(idem, key, runs, expected, other).await?;
    ensure!(count(runs) == 1, "the operation ran {} times", count(runs));
    Ok(())
}

/// Insists the repeat finds the key in progress.
pub(crate) fn expect_in_progress<V: std::fmt::Debug, T: std::fmt::Debug>(
    what: &str,
    outcome: &Result<V, ExecuteError<OpError, T>>,
) -> Result<(), String> {
    ensure!(
        matches!(
            outcome,
            Err(ExecuteError::Idempotency(Error::InProgress { .. }))
        ),
        "{what}: expected InProgress, got {outcome:?}"
    );
    Ok(())
}

/// Waits until the store reports the key free.
pub(crate) async fn await_free(ctx: &Ctx, key: &Key, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match ctx.read(key).await? {
            None => return Ok(()),
            Some(record) if Instant::now() >= deadline => {
                return Err(format!(
                    "the key is still held after {within:?}: {record:?}"
                ));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
