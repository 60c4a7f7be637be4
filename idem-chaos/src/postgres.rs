//! PostgreSQL scenarios, on the shared server (never stopped): the campaign kills only its
//! own connections, found by their application name, and locks only rows of its own table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use idem::postgres::PgStore;
use idem::postgres::sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use idem::postgres::sqlx::{self, ConnectOptions};

use crate::history::{ErrorKind, Fault, History};
use crate::scenarios::{Outcome, executor, pause_ms, run_name, with_faults};
use crate::servers::StartError;
use crate::workload::Workload;

/// The shared server: `IDEM_POSTGRES_URL`, or the one `.ci/services` starts.
fn url() -> String {
    std::env::var("IDEM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The campaign's own table and connections on the shared server; the table is dropped at
/// the end.
struct Ground {
    store: PgStore,
    app: String,
    table: String,
}

impl Ground {
    async fn new() -> Result<Self, StartError> {
        let run = run_name();
        let app = format!("idem-chaos-{run}");
        let table = format!("chaos_{run}");
        let options: PgConnectOptions = url().parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options.application_name(&app))
            .await?;
        let store = PgStore::builder().table(table.clone()).build(pool)?;
        store.migrate().await?;
        Ok(Self { store, app, table })
    }

    /// A connection of the fault injector's own, under another application name.
    async fn admin(&self) -> Result<PgConnection, StartError> {
        let options: PgConnectOptions = url().parse()?;
        Ok(options
            .application_name(&format!("{}-admin", self.app))
            .connect()
            .await?)
    }

    async fn drop_table(&self) {
        let drop = format!("DROP TABLE IF EXISTS \"{}\"", self.table);
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(self.store.pool())
            .await
        {
            eprintln!("dropping {}: {error}", self.table);
        }
    }
}

/// Holds row locks on up to `rows` claimed rows of `table` for a random time in `hold`
/// milliseconds; returns the key numbers locked and when the locks were taken.
async fn hold_locks(
    admin: &mut PgConnection,
    table: &str,
    rows: u32,
    hold: std::ops::Range<u64>,
    rng: &mut fastrand::Rng,
) -> Result<(Vec<u32>, Instant), sqlx::Error> {
    sqlx::raw_sql("BEGIN").execute(&mut *admin).await?;
    let query = format!(
        "SELECT convert_from(idem_key, 'UTF8') FROM \"{table}\" WHERE state = 1 LIMIT {rows} FOR UPDATE SKIP LOCKED"
    );
    let locked: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .fetch_all(&mut *admin)
        .await?;
    let from = Instant::now();
    pause_ms(rng, hold).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut *admin).await?;
    let keys = locked
        .iter()
        .filter_map(|k| k.rsplit('-').next()?.parse().ok())
        .collect();
    Ok((keys, from))
}

/// Cancels the query of one of the store's connections (`pg_cancel_backend`) or ends the
/// connection (`pg_terminate_backend`); returns what it did.
async fn kill_one(
    admin: &mut PgConnection,
    app: &str,
    rng: &mut fastrand::Rng,
) -> Result<Option<&'static str>, sqlx::Error> {
    let backends: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT pid, COALESCE(state = 'active', false) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(app)
    .fetch_all(&mut *admin)
    .await?;
    let active: Vec<i32> = backends
        .iter()
        .filter(|(_, a)| *a)
        .map(|(p, _)| *p)
        .collect();
    let (function, pid, what) = if rng.bool() {
        let Some((pid, _)) = backends.get(rng.usize(0..backends.len().max(1))) else {
            return Ok(None);
        };
        ("pg_terminate_backend", *pid, "terminate-backend")
    } else {
        let Some(pid) = active.get(rng.usize(0..active.len().max(1))) else {
            return Ok(None);
        };
        ("pg_cancel_backend", *pid, "cancel-backend")
    };
    let done: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {function}($1)")))
        .bind(pid)
        .fetch_one(&mut *admin)
        .await?;
    Ok(done.then_some(what))
}

/// Queries cancelled and connections terminated while short row locks make queries wait.
pub(crate) async fn postgres_kill(workload: &Workload) -> Outcome {
    let ground = Ground::new().await?;
    let (mut killer, mut locker) = (ground.admin().await?, ground.admin().await?);
    let history = Arc::new(History::new(workload.lease));
    let idem = executor(ground.store.clone(), workload)?;
    let (kills, locks) = (Arc::clone(&history), Arc::clone(&history));
    let (app, table, seed) = (ground.app.clone(), ground.table.clone(), workload.seed);
    with_faults(
        idem,
        workload,
        &run_name(),
        &history,
        move |stop| async move {
            let stop_locks = Arc::clone(&stop);
            let locker_task = tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ 0x96c5);
                while !stop_locks.load(Ordering::SeqCst) {
                    pause_ms(&mut rng, 20..120).await;
                    let Ok((keys, from)) =
                        hold_locks(&mut locker, &table, 4, 100..500, &mut rng).await
                    else {
                        continue;
                    };
                    for key in keys {
                        locks.fault(Fault::Outage {
                            what: "short-lock",
                            key: Some(key),
                            from,
                            to: Instant::now(),
                        });
                    }
                }
            });
            let mut rng = fastrand::Rng::with_seed(seed ^ 0x9411);
            while !stop.load(Ordering::SeqCst) {
                pause_ms(&mut rng, 20..150).await;
                match kill_one(&mut killer, &app, &mut rng).await {
                    Ok(Some(what)) => kills.fault(Fault::Instant { what }),
                    Ok(None) => {}
                    Err(e) => eprintln!("kill: {e}"),
                }
            }
            let _ = locker_task.await;
        },
    )
    .await;
    ground.drop_table().await;
    let mut summary = history.check("");
    summary.flag_kinds(&[ErrorKind::Backend, ErrorKind::Corrupt]);
    Ok(summary)
}

/// Row locks held on claimed rows, up to two leases.
pub(crate) async fn postgres_locks(workload: &Workload) -> Outcome {
    let ground = Ground::new().await?;
    let mut locker = ground.admin().await?;
    let history = Arc::new(History::new(workload.lease));
    let idem = executor(ground.store.clone(), workload)?;
    let locks = Arc::clone(&history);
    let (table, seed, lease) = (ground.table.clone(), workload.seed, workload.lease);
    with_faults(
        idem,
        workload,
        &run_name(),
        &history,
        move |stop| async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ 0x96c6);
            let longest = u64::try_from(lease.as_millis() * 2).unwrap_or(2000);
            while !stop.load(Ordering::SeqCst) {
                pause_ms(&mut rng, 50..300).await;
                let Ok((keys, from)) =
                    hold_locks(&mut locker, &table, 2, 300..longest, &mut rng).await
                else {
                    continue;
                };
                for key in keys {
                    locks.fault(Fault::Outage {
                        what: "row-lock",
                        key: Some(key),
                        from,
                        to: Instant::now(),
                    });
                }
            }
        },
    )
    .await;
    ground.drop_table().await;
    let mut summary = history.check("");
    summary.flag_kinds(&[ErrorKind::Backend, ErrorKind::Corrupt]);
    Ok(summary)
}
