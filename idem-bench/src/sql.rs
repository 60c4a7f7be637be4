//! idem's SQL stores against raw sqlx, written once over the engine.
//!
//! Each side gets a pool of its own with the same settings: [`POOL_SIZE`] connections, all
//! opened up front, checked out without a ping (as the stores' `connect` makes them), so a
//! checkout is an in-process queue pop and the floor is the statements on a held
//! connection, not a pool's round trips (sqlx's default pings on every checkout, which
//! costs as much as a primary-key SELECT). Each run creates two tables from the very same
//! DDL: idem's, and the raw side's under another name, so both write rows of the same
//! columns under the same primary key. The raw side sends what a hand-written client would
//! send for the same round trips, writing the same column values, bound as the engine's
//! driver takes them; both tables are dropped at the end, whether or not the run succeeded.
//!
//! What differs between engines (the statements' text, names, targets) is a
//! [`RawEngine`], implemented in `mysql.rs` and `postgres.rs`.

use std::time::Duration;

use bytes::Bytes;
use idem::{Error, Ttl};
use idem_sql::{Arg, SqlDialect, SqlStore, Statement};
use sqlx::pool::{PoolConnection, PoolOptions};

use crate::backend::{BenchBackend, Operation, payload};
use crate::keys::NAMESPACE;
use crate::measure::Mode;
use crate::settings::Settings;

/// Connections in each side's pool: fewer than the throughput tasks, as in a service where
/// requests outnumber connections.
const POOL_SIZE: u32 = 16;

/// How many rows one setup INSERT writes.
const BATCH: usize = 500;

/// The raw side's statements on its table, each in the order of the binds its doc names.
pub struct RawSql {
    /// A claimed row, as idem's first claim writes it; fails on a duplicate. Binds:
    /// namespace, key, owner, lease µs, life µs.
    pub insert: Statement,
    /// The same, doing nothing on a duplicate (where the engine fails, a duplicate error
    /// says the same). Binds: as `insert`.
    pub insert_or_nothing: Statement,
    /// What idem's replay reads: the same columns. Binds: namespace, key.
    pub select: Statement,
    /// Completes a claimed row if this owner still holds it, as idem's complete does.
    /// Binds: state, payload, retention µs, namespace, key, owner, fencing.
    pub complete: Statement,
}

/// One engine's part of the bench: its raw statements and what the rows say of it.
pub trait RawEngine: SqlDialect {
    /// The section's name in `--backends`.
    const BENCH_NAME: &'static str;
    /// The environment variable of the server's URL.
    const URL_VAR: &'static str;
    /// The URL unless the variable is set.
    const DEFAULT_URL: &'static str;
    /// How the engine's SQL quotes a table name.
    const QUOTE: char;

    /// The raw statements on `table` (already quoted).
    fn raw_sql(table: &str) -> RawSql;

    /// One row of the seeding INSERT's `VALUES`, its five binds (namespace, key, owner,
    /// lease µs, life µs) starting at argument number `first` (0-based).
    fn seed_row(first: usize) -> String;

    /// What the floor of `operation` does, in a few words.
    fn floor(operation: Operation) -> &'static str;

    /// The least acceptable idem/floor ratio of `operation`, if any.
    fn target(operation: Operation) -> Option<f64>;
}

/// An SQL store and a raw pool of its own, each with its own table.
pub struct SqlBench<E: RawEngine> {
    store: SqlStore<E>,
    raw: sqlx::Pool<E::Db>,
    sql: RawSql,
    raw_table: String,
    ttl: Ttl,
    /// What a completed call stores and a replay returns.
    payload: Bytes,
    /// The owner of every raw row.
    owner: [u8; 16],
}

/// Key number `i` under `tag`: idem's key id and the raw side's `idem_key` are these bytes.
fn key_id(tag: &str, i: usize) -> String {
    format!("{tag}:{i}")
}

fn driver(error: sqlx::Error) -> Error {
    Error::backend(error)
}

/// A pool of [`POOL_SIZE`] connections without pings, all open before any timing starts.
async fn pool<E: RawEngine>(url: &str) -> Result<sqlx::Pool<E::Db>, Error> {
    let unreachable = |reason: String| {
        Error::unavailable(format!(
            "cannot reach the {} server at {url} ({reason}); start it with: bash \
             .ci/services {} (or set {})",
            E::BENCH_NAME,
            E::BENCH_NAME,
            E::URL_VAR
        ))
    };
    let connecting = PoolOptions::<E::Db>::new()
        .max_connections(POOL_SIZE)
        .min_connections(POOL_SIZE)
        .acquire_timeout(SqlStore::<E>::ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect(url);
    // Bounded: a pool retries a refused connection until its acquire timeout, and then
    // reports only the timeout.
    let pool = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| unreachable("no answer in 10 s".to_owned()))?
        .map_err(|e| unreachable(e.to_string()))?;
    // min_connections is filled in the background: wait until it is, so neither side pays
    // for connecting inside a measurement.
    for _ in 0..100 {
        if pool.size() >= POOL_SIZE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(pool)
}

impl<E: RawEngine> SqlBench<E> {
    fn micros(&self) -> u64 {
        self.ttl.as_millis().saturating_mul(1000)
    }

    /// A connection of the raw pool, as idem's store takes one per call.
    async fn raw_connection(&self) -> Result<PoolConnection<E::Db>, Error> {
        self.raw.acquire().await.map_err(driver)
    }

    /// Inserts a claimed raw row for `key` with `statement`; whether it inserted one.
    async fn raw_insert(
        &self,
        conn: &mut PoolConnection<E::Db>,
        statement: &Statement,
        key: &str,
    ) -> Result<bool, Error> {
        let args = [
            Arg::Bytes(NAMESPACE.as_bytes()),
            Arg::Bytes(key.as_bytes()),
            Arg::Bytes(&self.owner),
            Arg::Micros(self.micros()),
            Arg::Micros(self.micros().saturating_mul(2)),
        ];
        match E::execute(&mut *conn, statement, &args).await {
            Ok(inserted) => Ok(inserted == 1),
            Err(e) if E::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(driver(e)),
        }
    }

    /// Completes the claimed raw row `key` if the raw owner still holds it.
    async fn raw_update(&self, conn: &mut PoolConnection<E::Db>, key: &str) -> Result<(), Error> {
        let args = [
            Arg::State(idem_sql::row::state::COMPLETED),
            Arg::Bytes(&self.payload),
            Arg::Micros(self.micros()),
            Arg::Bytes(NAMESPACE.as_bytes()),
            Arg::Bytes(key.as_bytes()),
            Arg::Bytes(&self.owner),
            Arg::Fencing(1),
        ];
        match E::execute(&mut *conn, &self.sql.complete, &args)
            .await
            .map_err(driver)?
        {
            1 => Ok(()),
            _ => Err(Error::backend("raw conditional UPDATE matched no row")),
        }
    }

    /// The raw replay's read: the row idem's replay reads, its payload taken out.
    async fn raw_read_payload(
        &self,
        conn: &mut PoolConnection<E::Db>,
        key: &str,
    ) -> Result<Vec<u8>, Error> {
        let args = [Arg::Bytes(NAMESPACE.as_bytes()), Arg::Bytes(key.as_bytes())];
        let row = E::fetch_optional(&mut *conn, &self.sql.select, &args)
            .await
            .map_err(driver)?
            .ok_or_else(|| Error::backend("raw replay found no row"))?;
        let row = E::record(&row)?;
        match (row.state, row.payload) {
            (idem_sql::row::state::COMPLETED, Some(payload)) => Ok(payload),
            (other, _) => Err(Error::backend(format!(
                "raw replay found state {other}, not completed"
            ))),
        }
    }

    /// Drops both tables of the run; tries the second even when the first fails.
    async fn drop_tables(&self) -> Result<(), Error> {
        let mut outcome = Ok(());
        let mut conn = self.raw_connection().await?;
        for table in [self.store.table(), self.raw_table.as_str()] {
            let quote = E::QUOTE;
            let statement = Statement::new(format!("DROP TABLE IF EXISTS {quote}{table}{quote}"));
            if let Err(e) = E::execute(&mut *conn, &statement, &[]).await {
                outcome = Err(driver(e));
            }
        }
        outcome
    }
}

impl<E: RawEngine> BenchBackend for SqlBench<E> {
    type Store = SqlStore<E>;
    const NAME: &'static str = E::BENCH_NAME;

    async fn connect(_: &Settings) -> Result<Self, Error> {
        let url = std::env::var(E::URL_VAR).unwrap_or_else(|_| E::DEFAULT_URL.to_owned());
        let run = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let store = SqlStore::<E>::builder()
            .table(format!("idem_bench_{run}"))
            .build(pool::<E>(&url).await?)?;
        let raw = pool::<E>(&url).await?;
        let raw_table = format!("idem_bench_raw_{run}");
        let quote = E::QUOTE;
        let bench = Self {
            sql: E::raw_sql(&format!("{quote}{raw_table}{quote}")),
            store,
            // The raw table: idem's DDL under another name, so the row shapes are the same.
            raw_table,
            raw,
            ttl: Ttl::from_secs(600)?,
            payload: payload(),
            owner: *uuid::Uuid::new_v4().as_bytes(),
        };
        let created = async {
            bench.store.migrate().await?;
            SqlStore::<E>::builder()
                .table(bench.raw_table.clone())
                .build(bench.raw.clone())?
                .migrate()
                .await
        }
        .await;
        if let Err(e) = created {
            // The tables made so far go with the failure.
            let _ = bench.close().await;
            return Err(e);
        }
        Ok(bench)
    }

    fn store(&self) -> &SqlStore<E> {
        &self.store
    }

    fn ttl(&self) -> Ttl {
        self.ttl
    }

    fn floor(&self, operation: Operation) -> &'static str {
        E::floor(operation)
    }

    fn target(&self, operation: Operation, _: Mode) -> Option<f64> {
        E::target(operation)
    }

    async fn raw_claim_new(&self, tag: &str, i: usize) -> Result<(), Error> {
        let mut conn = self.raw_connection().await?;
        match self
            .raw_insert(&mut conn, &self.sql.insert, &key_id(tag, i))
            .await?
        {
            true => Ok(()),
            false => Err(Error::backend("raw INSERT of a new key inserted nothing")),
        }
    }

    /// The raw row a replay reads: completed, with the payload.
    async fn raw_seed_replay(&self, tag: &str) -> Result<(), Error> {
        let key = key_id(tag, 0);
        let mut conn = self.raw_connection().await?;
        if !self.raw_insert(&mut conn, &self.sql.insert, &key).await? {
            return Err(Error::backend("the raw replay key was already there"));
        }
        self.raw_update(&mut conn, &key).await
    }

    async fn raw_replay(&self, tag: &str) -> Result<(), Error> {
        let key = key_id(tag, 0);
        // One connection for both statements, as idem's claim does.
        let mut conn = self.raw_connection().await?;
        if self
            .raw_insert(&mut conn, &self.sql.insert_or_nothing, &key)
            .await?
        {
            return Err(Error::backend("raw replay inserted a new row"));
        }
        self.raw_read_payload(&mut conn, &key).await.map(drop)
    }

    /// Writes the claimed rows, [`BATCH`] per INSERT.
    async fn raw_seed_claimed(&self, tag: &str, count: usize) -> Result<(), Error> {
        let micros = self.micros();
        let mut conn = self.raw_connection().await?;
        for start in (0..count).step_by(BATCH) {
            let end = (start + BATCH).min(count);
            let keys: Vec<String> = (start..end).map(|i| key_id(tag, i)).collect();
            let rows: Vec<String> = (0..keys.len()).map(|r| E::seed_row(r * 5)).collect();
            let statement = Statement::new(format!(
                "INSERT INTO {q}{}{q} (namespace, idem_key, state, fingerprint, owner, fencing, \
                 lease_until, expires_at) VALUES {}",
                self.raw_table,
                rows.join(", "),
                q = E::QUOTE,
            ));
            let args: Vec<Arg<'_>> = keys
                .iter()
                .flat_map(|key| {
                    [
                        Arg::Bytes(NAMESPACE.as_bytes()),
                        Arg::Bytes(key.as_bytes()),
                        Arg::Bytes(&self.owner),
                        Arg::Micros(micros),
                        Arg::Micros(micros.saturating_mul(2)),
                    ]
                })
                .collect();
            E::execute(&mut *conn, &statement, &args)
                .await
                .map_err(driver)?;
        }
        Ok(())
    }

    async fn raw_complete(&self, tag: &str, i: usize) -> Result<(), Error> {
        let mut conn = self.raw_connection().await?;
        self.raw_update(&mut conn, &key_id(tag, i)).await
    }

    /// Drops both tables and closes both pools.
    async fn close(&self) -> Result<(), Error> {
        let dropped = self.drop_tables().await;
        self.raw.close().await;
        self.store.pool().close().await;
        dropped
    }
}
