//! The SQL fault scenarios, written once over the engine: row locks held on claimed rows,
//! and the store's queries and connections killed while short locks make queries wait. An
//! engine ([`SqlFaults`]) says how to lock rows and kill a connection; MariaDB's is in
//! `scenarios.rs`, PostgreSQL's in `postgres.rs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use idem::IdempotencyStore;

use crate::history::{Fault, History};
use crate::run::{Outcome, executor, pause_ms, verdict, with_faults};
use crate::servers::StartError;
use crate::workload::Workload;

/// What the SQL scenarios need of an engine, on the campaign's own table.
pub(crate) trait SqlFaults: Send + Sync + 'static {
    /// A connection of the fault injector's own.
    type Admin: Send + 'static;

    /// The seeds' salts of the short locks, the kills and the long locks, so each engine's
    /// run draws its own sequence.
    const SALTS: [u64; 3];

    /// A connection of the injector's own, which the kills never pick.
    fn admin(&self) -> impl Future<Output = Result<Self::Admin, StartError>> + Send;

    /// Begins a transaction and locks up to `rows` claimed rows of the table, skipping
    /// locked ones; their keys.
    fn lock_claimed<'a>(
        &'a self,
        admin: &'a mut Self::Admin,
        rows: u32,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send + 'a;

    /// Rolls the locking transaction back.
    fn unlock(admin: &mut Self::Admin) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Kills one of the store's connections, or the query it runs; what it did, `None`
    /// when there was nothing to kill.
    fn kill_one<'a>(
        &'a self,
        admin: &'a mut Self::Admin,
        rng: &'a mut fastrand::Rng,
    ) -> impl Future<Output = Result<Option<&'static str>, sqlx::Error>> + Send + 'a;

    /// Cleans up after the scenario (a table on a shared server); nothing by default.
    fn clean_up(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Holds row locks on up to `rows` claimed rows for a random time in `hold` milliseconds;
/// the key numbers locked and when the locks were taken.
pub(crate) async fn hold_locks<F: SqlFaults>(
    faults: &F,
    admin: &mut F::Admin,
    rows: u32,
    hold: std::ops::Range<u64>,
    rng: &mut fastrand::Rng,
) -> Result<(Vec<u32>, Instant), sqlx::Error> {
    let locked = faults.lock_claimed(admin, rows).await?;
    let from = Instant::now();
    pause_ms(rng, hold).await;
    F::unlock(admin).await?;
    let keys = locked
        .iter()
        .filter_map(|k| k.rsplit('-').next()?.parse().ok())
        .collect();
    Ok((keys, from))
}

/// Records each locked key as an outage of `what` from `from` until now.
fn locked(history: &History, what: &'static str, keys: Vec<u32>, from: Instant) {
    for key in keys {
        history.fault(Fault::Outage {
            what,
            key: Some(key),
            from,
            to: Instant::now(),
        });
    }
}

/// Queries and connections of the store killed while short row locks (below any lock wait
/// timeout) keep queries waiting, so there are queries to interrupt.
pub(crate) async fn kills<S: IdempotencyStore, F: SqlFaults>(
    store: S,
    faults: F,
    workload: &Workload,
) -> Outcome {
    let faults = Arc::new(faults);
    let (mut killer, mut locker) = (faults.admin().await?, faults.admin().await?);
    let history = Arc::new(History::new(workload.lease));
    let idem = executor(store, workload)?;
    let (kills, locks) = (Arc::clone(&history), Arc::clone(&history));
    let (injector, seed) = (Arc::clone(&faults), workload.seed);
    let [short_salt, kill_salt, _] = F::SALTS;
    with_faults(idem, workload, &history, move |stop| async move {
        let stop_locks = Arc::clone(&stop);
        let lock_faults = Arc::clone(&injector);
        let locker_task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ short_salt);
            while !stop_locks.load(Ordering::SeqCst) {
                pause_ms(&mut rng, 20..120).await;
                match hold_locks(&*lock_faults, &mut locker, 4, 100..500, &mut rng).await {
                    Ok((keys, from)) => locked(&locks, "short-lock", keys, from),
                    Err(e) => eprintln!("lock: {e}"),
                }
            }
        });
        let mut rng = fastrand::Rng::with_seed(seed ^ kill_salt);
        while !stop.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 20..150).await;
            match injector.kill_one(&mut killer, &mut rng).await {
                Ok(Some(what)) => kills.fault(Fault::Instant { what }),
                Ok(None) => {}
                Err(e) => eprintln!("kill: {e}"),
            }
        }
        let _ = locker_task.await;
    })
    .await;
    faults.clean_up().await;
    Ok(verdict(&history))
}

/// Row locks held on claimed rows, up to two leases.
pub(crate) async fn locks<S: IdempotencyStore, F: SqlFaults>(
    store: S,
    faults: F,
    workload: &Workload,
) -> Outcome {
    let faults = Arc::new(faults);
    let mut locker = faults.admin().await?;
    let history = Arc::new(History::new(workload.lease));
    let idem = executor(store, workload)?;
    let locks = Arc::clone(&history);
    let injector = Arc::clone(&faults);
    let (seed, lease) = (workload.seed, workload.lease);
    let [_, _, long_salt] = F::SALTS;
    with_faults(idem, workload, &history, move |stop| async move {
        let mut rng = fastrand::Rng::with_seed(seed ^ long_salt);
        let longest = u64::try_from(lease.as_millis() * 2).unwrap_or(2000);
        while !stop.load(Ordering::SeqCst) {
            pause_ms(&mut rng, 50..300).await;
            if let Ok((keys, from)) =
                hold_locks(&*injector, &mut locker, 2, 300..longest, &mut rng).await
            {
                locked(&locks, "row-lock", keys, from);
            }
        }
    })
    .await;
    faults.clean_up().await;
    Ok(verdict(&history))
}
