//! idem-mysql against raw sqlx.
//!
//! Each side gets a pool of its own with the same settings: [`POOL_SIZE`] connections, all
//! opened up front, checked out without a ping (as `MySqlStore::connect` makes them), so a
//! checkout is an in-process queue pop and the floor is the statements on a held
//! connection, not a pool's round trips (sqlx's default pings on every checkout, which
//! costs as much as a primary-key SELECT). Each run creates two tables: idem's, made
//! by `migrate()`, and the raw side's, made from the very same DDL
//! (`MySqlStore::migration_sql_for`), so both write rows of the same columns under the same
//! primary key. The raw side sends what a hand-written client would send for the same
//! round trips, writing the same column values; both tables are dropped at the end, whether
//! or not the run succeeded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem::mysql::MySqlStore;
use idem::{Error, Ttl};
use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};

use crate::backend::{BenchBackend, NAMESPACE, Operation, payload};
use crate::measure::Mode;
use crate::settings::Settings;

/// Connections in each side's pool: fewer than the throughput tasks, as in a service where
/// requests outnumber connections.
const POOL_SIZE: u32 = 16;

/// How to start the shared server, for the error when it is not there.
const START_MARIADB: &str = "mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld && \
     start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql";

/// `ER_DUP_ENTRY`.
const DUPLICATE_KEY: u16 = 1062;

/// How many rows one setup INSERT writes.
const BATCH: usize = 500;

/// The raw side's statements on its table.
struct RawSql {
    /// A claimed row, as idem's first claim writes it. Binds: namespace, key, owner,
    /// lease µs, life µs.
    insert: Arc<str>,
    /// What idem's replay reads after the INSERT failed: the same columns. Binds: namespace,
    /// key.
    select: Arc<str>,
    /// Completes a claimed row if this owner still holds it, as idem's complete does. Binds:
    /// payload, retention µs, namespace, key, owner, fencing.
    complete: Arc<str>,
    table: String,
}

impl RawSql {
    fn new(table: String) -> Self {
        let t = format!("`{table}`");
        Self {
            insert: format!(
                "INSERT INTO {t} \
                 (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at, payload) \
                 VALUES (?, ?, 1, NULL, ?, 1, TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
                 TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), NULL)"
            )
            .into(),
            select: format!(
                "SELECT state, fingerprint, owner, fencing, \
                 TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) AS lease_left_us, \
                 TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at) AS trace_us, \
                 TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS expires_left_us, \
                 payload FROM {t} WHERE namespace = ? AND idem_key = ?"
            )
            .into(),
            complete: format!(
                "UPDATE {t} SET state = 3, payload = ?, lease_until = NULL, \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                 WHERE namespace = ? AND idem_key = ? AND state = 1 AND owner = ? AND fencing = ? \
                 AND expires_at > UTC_TIMESTAMP(6)"
            )
            .into(),
            table,
        }
    }
}

/// The MySQL store and a raw pool of its own, each with its own table.
pub struct Mysql {
    store: MySqlStore,
    raw: MySqlPool,
    sql: RawSql,
    ttl: Ttl,
    /// What a completed call stores and a replay returns.
    payload: Bytes,
    /// The owner of every raw row.
    owner: [u8; 16],
}

impl Mysql {
    fn micros(&self) -> u64 {
        self.ttl.as_millis().saturating_mul(1000)
    }

    /// A connection of the raw pool, as idem's store takes one per call.
    async fn raw_connection(&self) -> Result<PoolConnection<MySql>, Error> {
        self.raw.acquire().await.map_err(driver)
    }

    /// Inserts a claimed raw row for `key`; `false` when the key already has one.
    async fn raw_insert(&self, conn: &mut MySqlConnection, key: &str) -> Result<bool, Error> {
        let inserted = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.insert)))
            .bind(NAMESPACE.as_bytes())
            .bind(key.as_bytes())
            .bind(&self.owner[..])
            .bind(self.micros())
            .bind(self.micros().saturating_mul(2))
            .execute(conn)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if server_error(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(driver(e)),
        }
    }
}

/// A pool of [`POOL_SIZE`] connections, all open before any timing starts.
async fn pool(url: &str) -> Result<MySqlPool, Error> {
    let unreachable = |reason: String| {
        Error::unavailable(format!(
            "cannot reach MariaDB at {url} ({reason}); start it with: {START_MARIADB} \
             (or set IDEM_MYSQL_URL)"
        ))
    };
    // One plain connection first: the pool would retry a refused connection until its
    // acquire timeout and then report only the timeout.
    let probe = <MySqlConnection as sqlx::Connection>::connect(url);
    let probe = tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .map_err(|_| unreachable("no answer in 3 s".to_owned()))?
        .map_err(|e| unreachable(e.to_string()))?;
    sqlx::Connection::close(probe).await.map_err(driver)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(POOL_SIZE)
        .min_connections(POOL_SIZE)
        .acquire_timeout(MySqlStore::ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect(url)
        .await
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

async fn connect(url: &str) -> Result<Mysql, Error> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let store = MySqlStore::builder()
        .table(format!("idem_bench_{run}"))
        .build(pool(url).await?)?;
    let bench = Mysql {
        store,
        raw: pool(url).await?,
        sql: RawSql::new(format!("idem_bench_raw_{run}")),
        ttl: Ttl::from_secs(600)?,
        payload: payload(),
        owner: *uuid::Uuid::new_v4().as_bytes(),
    };
    let created = async {
        bench.store.migrate().await?;
        create_raw_table(&bench).await
    }
    .await;
    if let Err(e) = created {
        // The tables made so far go with the failure.
        let _ = bench.close().await;
        return Err(e);
    }
    Ok(bench)
}

/// The raw table: idem's DDL under another name, so the row shapes are the same.
async fn create_raw_table(bench: &Mysql) -> Result<(), Error> {
    let ddl = MySqlStore::migration_sql_for(&bench.sql.table)?;
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&bench.raw)
        .await
        .map(drop)
        .map_err(driver)
}

/// Drops both tables of the run; tries the second even when the first fails.
async fn drop_tables(bench: &Mysql) -> Result<(), Error> {
    let mut outcome = Ok(());
    for table in [bench.store.table(), bench.sql.table.as_str()] {
        let dropped = sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS `{table}`")))
            .execute(&bench.raw)
            .await;
        if let Err(e) = dropped {
            outcome = Err(driver(e));
        }
    }
    outcome
}

fn driver(error: sqlx::Error) -> Error {
    Error::backend(error)
}

/// The MySQL error number of a server error.
fn server_error(error: &sqlx::Error) -> Option<u16> {
    error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
        .map(MySqlDatabaseError::number)
}

/// Key number `i` under `tag`: idem's key id and the raw side's `idem_key` are these bytes.
fn key_id(tag: &str, i: usize) -> String {
    format!("{tag}:{i}")
}

impl Mysql {
    /// Completes the claimed raw row `key` if the raw owner still holds it.
    async fn raw_update(&self, conn: &mut MySqlConnection, key: &str) -> Result<(), Error> {
        let completed = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete)))
            .bind(self.payload.as_ref())
            .bind(self.micros())
            .bind(NAMESPACE.as_bytes())
            .bind(key.as_bytes())
            .bind(&self.owner[..])
            .bind(1_u64)
            .execute(conn)
            .await
            .map_err(driver)?;
        match completed.rows_affected() {
            1 => Ok(()),
            _ => Err(Error::backend("raw conditional UPDATE matched no row")),
        }
    }

    /// The raw replay's read: the row idem's replay reads, its payload taken out.
    async fn raw_read_payload(
        &self,
        conn: &mut MySqlConnection,
        key: &str,
    ) -> Result<Vec<u8>, Error> {
        use sqlx::Row as _;
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.select)))
            .bind(NAMESPACE.as_bytes())
            .bind(key.as_bytes())
            .fetch_optional(conn)
            .await
            .map_err(driver)?
            .ok_or_else(|| Error::backend("raw replay found no row"))?;
        match row.try_get::<u8, _>("state").map_err(driver)? {
            3 => row.try_get("payload").map_err(driver),
            other => Err(Error::backend(format!(
                "raw replay found state {other}, not completed"
            ))),
        }
    }
}

impl BenchBackend for Mysql {
    type Store = MySqlStore;
    const NAME: &'static str = "mysql";

    async fn connect(_: &Settings) -> Result<Self, Error> {
        let url = std::env::var("IDEM_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        connect(&url).await
    }

    fn store(&self) -> &MySqlStore {
        &self.store
    }

    fn ttl(&self) -> Ttl {
        self.ttl
    }

    fn floor(&self, operation: Operation) -> &'static str {
        match operation {
            Operation::ClaimNew => "INSERT",
            Operation::Replay => "INSERT + SELECT",
            Operation::Complete => "conditional UPDATE",
            Operation::Execute => "INSERT + conditional UPDATE",
        }
    }

    fn target(&self, operation: Operation, _: Mode) -> Option<f64> {
        match operation {
            Operation::ClaimNew | Operation::Complete => Some(0.9),
            Operation::Replay => None,
            Operation::Execute => Some(0.85),
        }
    }

    async fn raw_claim_new(&self, tag: &str, i: usize) -> Result<(), Error> {
        let mut conn = self.raw_connection().await?;
        match self.raw_insert(&mut conn, &key_id(tag, i)).await? {
            true => Ok(()),
            false => Err(Error::backend("raw INSERT of a new key hit a duplicate")),
        }
    }

    /// The raw row a replay reads: completed, with the payload.
    async fn raw_seed_replay(&self, tag: &str) -> Result<(), Error> {
        let key = key_id(tag, 0);
        let mut conn = self.raw_connection().await?;
        if !self.raw_insert(&mut conn, &key).await? {
            return Err(Error::backend("the raw replay key was already there"));
        }
        self.raw_update(&mut conn, &key).await
    }

    async fn raw_replay(&self, tag: &str) -> Result<(), Error> {
        let key = key_id(tag, 0);
        // One connection for both statements, as idem's claim does.
        let mut conn = self.raw_connection().await?;
        if self.raw_insert(&mut conn, &key).await? {
            return Err(Error::backend("raw replay inserted a new row"));
        }
        self.raw_read_payload(&mut conn, &key).await.map(drop)
    }

    /// Writes the claimed rows, [`BATCH`] per INSERT.
    async fn raw_seed_claimed(&self, tag: &str, count: usize) -> Result<(), Error> {
        let micros = self.micros();
        for start in (0..count).step_by(BATCH) {
            let end = (start + BATCH).min(count);
            let mut insert = sqlx::QueryBuilder::new(format!(
                "INSERT INTO `{}` (namespace, idem_key, state, fingerprint, owner, fencing, \
                 lease_until, expires_at, payload) ",
                self.sql.table
            ));
            insert.push_values(start..end, |mut values, i| {
                values
                    .push_bind(NAMESPACE.as_bytes())
                    .push_bind(key_id(tag, i).into_bytes())
                    .push("1, NULL")
                    .push_bind(&self.owner[..])
                    .push("1, TIMESTAMPADD(MICROSECOND, ")
                    .push_bind_unseparated(micros)
                    .push_unseparated(", UTC_TIMESTAMP(6)), TIMESTAMPADD(MICROSECOND, ")
                    .push_bind_unseparated(micros.saturating_mul(2))
                    .push_unseparated(", UTC_TIMESTAMP(6)), NULL");
            });
            insert.build().execute(&self.raw).await.map_err(driver)?;
        }
        Ok(())
    }

    async fn raw_complete(&self, tag: &str, i: usize) -> Result<(), Error> {
        let mut conn = self.raw_connection().await?;
        self.raw_update(&mut conn, &key_id(tag, i)).await
    }

    /// Drops both tables and closes both pools.
    async fn close(&self) -> Result<(), Error> {
        let dropped = drop_tables(self).await;
        self.raw.close().await;
        self.store.pool().close().await;
        dropped
    }
}
