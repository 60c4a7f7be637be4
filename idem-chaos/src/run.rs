//! What every scenario shares: the executor the callers use, running the load beside its
//! faults, and the verdict.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem::{Config, Error, Idempotency, IdempotencyStore};

use crate::history::{ErrorKind, History, Summary};
use crate::servers::StartError;
use crate::workload::{self, Workload};

pub(crate) type Outcome = Result<Summary, StartError>;

/// The executor the callers share: the scenario's lease and cancel policy, fail fast on
/// `InProgress`.
pub(crate) fn executor<S: IdempotencyStore>(
    store: S,
    workload: &Workload,
) -> Result<Idempotency<S>, Error> {
    let config = Config::builder()
        .lease_ttl(workload.lease)
        .cancel_policy(workload.cancel_policy)
        .build()?;
    Idempotency::with_config(store, config)
}

/// A name no earlier run of the campaign used, for keys and tables.
pub(crate) fn run_name() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Runs the load, under a run name of its own, and, alongside, `faults` until the load is
/// done.
pub(crate) async fn with_faults<S, F, Fut>(
    idem: Idempotency<S>,
    workload: &Workload,
    history: &Arc<History>,
    faults: F,
) where
    S: IdempotencyStore,
    F: FnOnce(Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let injector = tokio::spawn(faults(Arc::clone(&stop)));
    workload::drive(idem, workload, &run_name(), history).await;
    stop.store(true, Ordering::SeqCst);
    if injector.await.is_err() {
        history.panicked();
    }
}

/// Sleeps a random time in `range` milliseconds.
pub(crate) async fn pause_ms(rng: &mut fastrand::Rng, range: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.u64(range))).await;
}

/// The history's verdict, with `Backend` and `Corrupt` answers flagged: no fault a scenario
/// injects may turn into either.
pub(crate) fn verdict(history: &History) -> Summary {
    let mut summary = history.check("");
    summary.flag_kinds(&[ErrorKind::Backend, ErrorKind::Corrupt]);
    summary
}
