//! PostgreSQL scenarios, on the shared server (never stopped): the campaign kills only its
//! own connections, found by their application name, and locks only rows of its own table.
//! The scenarios themselves are the SQL ones of `sql.rs`.

use std::time::Duration;

use idem::postgres::PgStore;
use idem::postgres::sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use idem::postgres::sqlx::{self, ConnectOptions, PgPool};

use crate::run::{Outcome, run_name};
use crate::servers::StartError;
use crate::sql::{self, SqlFaults};
use crate::workload::Workload;

/// The shared server: `IDEM_POSTGRES_URL`, or the one `.ci/services` starts.
fn url() -> String {
    std::env::var("IDEM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The campaign's own table and connections on the shared server; the table is dropped at
/// the end.
struct Ground {
    pool: PgPool,
    app: String,
    table: String,
}

/// A migrated store on a table of the run's own, its connections named after the run.
async fn ground() -> Result<(PgStore, Ground), StartError> {
    let run = run_name();
    let app = format!("idem-chaos-{run}");
    let table = format!("chaos_{run}");
    let options: PgConnectOptions = url().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.application_name(&app))
        .await?;
    let store = PgStore::builder()
        .table(table.clone())
        .build(pool.clone())?;
    store.migrate().await?;
    Ok((store, Ground { pool, app, table }))
}

impl SqlFaults for Ground {
    type Admin = PgConnection;
    const SALTS: [u64; 3] = [0x96c5, 0x9411, 0x96c6];

    /// Under another application name than the store's.
    async fn admin(&self) -> Result<PgConnection, StartError> {
        let options: PgConnectOptions = url().parse()?;
        Ok(options
            .application_name(&format!("{}-admin", self.app))
            .connect()
            .await?)
    }

    async fn lock_claimed(
        &self,
        admin: &mut PgConnection,
        rows: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::raw_sql("BEGIN").execute(&mut *admin).await?;
        let query = format!(
            "SELECT convert_from(idem_key, 'UTF8') FROM \"{}\" WHERE state = 1 LIMIT {rows} FOR UPDATE SKIP LOCKED",
            self.table
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_all(&mut *admin)
            .await
    }

    async fn unlock(admin: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *admin).await?;
        Ok(())
    }

    /// Cancels the query of one of the store's connections (`pg_cancel_backend`) or ends
    /// the connection (`pg_terminate_backend`).
    async fn kill_one(
        &self,
        admin: &mut PgConnection,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<&'static str>, sqlx::Error> {
        let backends: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, COALESCE(state = 'active', false) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&self.app)
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

    async fn clean_up(&self) {
        let drop = format!("DROP TABLE IF EXISTS \"{}\"", self.table);
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&self.pool)
            .await
        {
            eprintln!("dropping {}: {error}", self.table);
        }
    }
}

/// Queries cancelled and connections terminated while short row locks make queries wait.
pub(crate) async fn postgres_kill(workload: &Workload) -> Outcome {
    let (store, ground) = ground().await?;
    sql::kills(store, ground, workload).await
}

/// Row locks held on claimed rows, up to two leases.
pub(crate) async fn postgres_locks(workload: &Workload) -> Outcome {
    let (store, ground) = ground().await?;
    sql::locks(store, ground, workload).await
}
