//! idem-mysql against raw sqlx.
//!
//! Each side gets a pool of its own with the same settings: [`POOL_SIZE`] connections, all
//! opened up front, otherwise the settings `MySqlStore::connect` uses (its acquire timeout,
//! sqlx's defaults: a checkout pings the connection, and so does its return). Each run creates two tables: idem's, made
//! by `migrate()`, and the raw side's, made from the very same DDL
//! (`MySqlStore::migration_sql_for`), so both write rows of the same columns under the same
//! primary key. The raw side sends what a hand-written client would send for the same
//! round trips, writing the same column values; both tables are dropped at the end, whether
//! or not the run succeeded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use idem::mysql::MySqlStore;
use idem::{ClaimRequest, Error, Idempotency, IdempotencyStore, Key, Lease, Ttl};
use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};

use crate::Settings;
use crate::claims::{acquire_fresh, claim_replay, execute_noop, expect_lease};
use crate::measure::{compare, keys_needed, throughput};
use crate::report::{Mode, Row};

const BACKEND: &str = "mysql";
const NAMESPACE: &str = "bench";

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

struct Bench {
    store: MySqlStore,
    idem: Idempotency<MySqlStore>,
    raw: MySqlPool,
    sql: RawSql,
    ttl: Ttl,
    /// What a completed call stores and a replay returns.
    payload: Bytes,
    /// The owner of every raw row.
    owner: [u8; 16],
}

impl Bench {
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

/// Measures every MySQL row; both tables are dropped afterwards even when a measurement
/// fails.
pub async fn run(settings: &Settings) -> Result<Vec<Row>, Error> {
    let url = std::env::var("IDEM_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let bench = Arc::new(connect(&url).await?);
    let rows = async {
        bench.store.migrate().await?;
        create_raw_table(&bench).await?;
        measure_all(&bench, settings).await
    }
    .await;
    let dropped = drop_tables(&bench).await;
    bench.raw.close().await;
    bench.store.pool().close().await;
    let rows = rows?;
    dropped?;
    Ok(rows)
}

async fn measure_all(bench: &Arc<Bench>, settings: &Settings) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for mode in settings.modes() {
        rows.push(claim_new(bench, settings, mode).await?);
        rows.push(replay(bench, settings, mode).await?);
        rows.push(complete(bench, settings, mode).await?);
        rows.push(execute(bench, settings, mode).await?);
    }
    Ok(rows)
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

async fn connect(url: &str) -> Result<Bench, Error> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let store = MySqlStore::from_pool(pool(url).await?).with_table(&format!("idem_bench_{run}"))?;
    Ok(Bench {
        idem: Idempotency::new(store.clone()),
        store,
        raw: pool(url).await?,
        sql: RawSql::new(format!("idem_bench_raw_{run}")),
        ttl: Ttl::from_secs(600)?,
        payload: Bytes::from(vec![b'x'; 100]),
        owner: *uuid::Uuid::new_v4().as_bytes(),
    })
}

/// The raw table: idem's DDL under another name, so the row shapes are the same.
async fn create_raw_table(bench: &Bench) -> Result<(), Error> {
    let ddl = MySqlStore::migration_sql_for(&bench.sql.table)?;
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&bench.raw)
        .await
        .map(drop)
        .map_err(driver)
}

/// Drops both tables of the run; tries the second even when the first fails.
async fn drop_tables(bench: &Bench) -> Result<(), Error> {
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

fn key(tag: &str, i: usize) -> Result<Key, Error> {
    Key::new(NAMESPACE, key_id(tag, i))
}

/// A tag for the keys of one measurement, so no two measurements share a key.
fn fresh_tag() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string()[..8].into()
}

async fn claim_new(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = fresh_tag();
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&tag_i, i));
            async move { acquire_fresh(&b.store, k?, b.ttl).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), key_id(&tag_r, i));
            async move {
                let mut conn = r.raw_connection().await?;
                match r.raw_insert(&mut conn, &k).await? {
                    true => Ok(()),
                    false => Err(Error::backend("raw INSERT of a new key hit a duplicate")),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "claim new", mode, Some(0.9), figures))
}

async fn replay(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = fresh_tag();
    let lease = expect_lease(
        bench
            .store
            .claim(&ClaimRequest::new(key(&tag, 0)?, bench.ttl))
            .await?,
    )?;
    bench
        .store
        .complete(&lease, bench.payload.clone(), bench.ttl)
        .await?;
    insert_completed_raw(bench, &key_id(&tag, 0)).await?;
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |_| {
            // Both sides build their key per call, as a request handler would.
            let (b, k) = (Arc::clone(&b), key(&tag_i, 0));
            async move { claim_replay(&b.store, k?, b.ttl).await }
        },
        move |_| {
            let (r, k) = (Arc::clone(&r), key_id(&tag_r, 0));
            async move {
                // One connection for both statements, as idem's claim does.
                let mut conn = r.raw_connection().await?;
                if r.raw_insert(&mut conn, &k).await? {
                    return Err(Error::backend("raw replay inserted a new row"));
                }
                raw_read_payload(&r, &mut conn, &k).await.map(drop)
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "replay claim", mode, None, figures))
}

/// The raw replay's read: the row idem's replay reads, its payload taken out.
async fn raw_read_payload(
    bench: &Bench,
    conn: &mut MySqlConnection,
    key: &str,
) -> Result<Vec<u8>, Error> {
    use sqlx::Row as _;
    let row = sqlx::query(AssertSqlSafe(Arc::clone(&bench.sql.select)))
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

/// The raw row a replay reads: completed, with the payload.
async fn insert_completed_raw(bench: &Bench, key: &str) -> Result<(), Error> {
    let mut conn = bench.raw_connection().await?;
    if !bench.raw_insert(&mut conn, key).await? {
        return Err(Error::backend("the raw replay key was already there"));
    }
    let completed = sqlx::query(AssertSqlSafe(Arc::clone(&bench.sql.complete)))
        .bind(bench.payload.as_ref())
        .bind(bench.micros())
        .bind(NAMESPACE.as_bytes())
        .bind(key.as_bytes())
        .bind(&bench.owner[..])
        .bind(1_u64)
        .execute(&mut *conn)
        .await
        .map_err(driver)?;
    match completed.rows_affected() {
        1 => Ok(()),
        _ => Err(Error::backend("the raw replay row was not completed")),
    }
}

async fn complete(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = fresh_tag();
    let needed = keys_needed(settings, mode);
    let leases = Arc::new(claim_all(bench, &tag, needed, settings.tasks).await?);
    insert_claimed_raw(bench, &tag, needed).await?;
    let (b, r) = (Arc::clone(bench), Arc::clone(bench));
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, leases) = (Arc::clone(&b), Arc::clone(&leases));
            async move {
                let lease = leases.get(i).ok_or_else(|| Error::backend("no lease"))?;
                b.store.complete(lease, b.payload.clone(), b.ttl).await
            }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), key_id(&tag, i));
            async move {
                let mut conn = r.raw_connection().await?;
                let completed = sqlx::query(AssertSqlSafe(Arc::clone(&r.sql.complete)))
                    .bind(r.payload.as_ref())
                    .bind(r.micros())
                    .bind(NAMESPACE.as_bytes())
                    .bind(k.as_bytes())
                    .bind(&r.owner[..])
                    .bind(1_u64)
                    .execute(&mut *conn)
                    .await
                    .map_err(driver)?;
                match completed.rows_affected() {
                    1 => Ok(()),
                    _ => Err(Error::backend("raw conditional UPDATE matched no row")),
                }
            }
        },
    )
    .await?;
    // Both sides send one UPDATE with the same WHERE clause to rows of the same shape.
    Ok(Row::new(BACKEND, "complete", mode, Some(0.9), figures))
}

/// Claims keys `0..count` under `tag` through the store, `tasks` at a time (more would wait
/// on the pool past its acquire timeout), and hands back their leases in order.
async fn claim_all(
    bench: &Arc<Bench>,
    tag: &Arc<str>,
    count: usize,
    tasks: usize,
) -> Result<Vec<Lease>, Error> {
    let slots = Arc::new(Mutex::new(vec![None; count]));
    let (b, t, s) = (Arc::clone(bench), Arc::clone(tag), Arc::clone(&slots));
    throughput(count, tasks, move |i| {
        let (b, k, s) = (Arc::clone(&b), key(&t, i), Arc::clone(&s));
        async move {
            let lease = expect_lease(b.store.claim(&ClaimRequest::new(k?, b.ttl)).await?)?;
            let mut slots = s
                .lock()
                .map_err(|_| Error::backend("a claim task panicked"))?;
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(lease);
            }
            Ok::<_, Error>(())
        }
    })
    .await?;
    let slots = std::mem::take(
        &mut *slots
            .lock()
            .map_err(|_| Error::backend("a claim task panicked"))?,
    );
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| Error::backend("a key was not claimed")))
        .collect()
}

/// Writes the raw side's claimed rows `0..count` under `tag`, [`BATCH`] rows per INSERT.
async fn insert_claimed_raw(bench: &Bench, tag: &str, count: usize) -> Result<(), Error> {
    let micros = bench.micros();
    for start in (0..count).step_by(BATCH) {
        let end = (start + BATCH).min(count);
        let mut insert = sqlx::QueryBuilder::new(format!(
            "INSERT INTO `{}` (namespace, idem_key, state, fingerprint, owner, fencing, \
             lease_until, expires_at, payload) ",
            bench.sql.table
        ));
        insert.push_values(start..end, |mut values, i| {
            values
                .push_bind(NAMESPACE.as_bytes())
                .push_bind(key_id(tag, i).into_bytes())
                .push("1, NULL")
                .push_bind(&bench.owner[..])
                .push("1, TIMESTAMPADD(MICROSECOND, ")
                .push_bind_unseparated(micros)
                .push_unseparated(", UTC_TIMESTAMP(6)), TIMESTAMPADD(MICROSECOND, ")
                .push_bind_unseparated(micros.saturating_mul(2))
                .push_unseparated(", UTC_TIMESTAMP(6)), NULL");
        });
        insert.build().execute(&bench.raw).await.map_err(driver)?;
    }
    Ok(())
}

async fn execute(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = fresh_tag();
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&tag_i, i));
            async move { execute_noop(&b.idem, k?).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), key_id(&tag_r, i));
            async move {
                let mut conn = r.raw_connection().await?;
                match r.raw_insert(&mut conn, &k).await? {
                    true => Ok(()),
                    false => Err(Error::backend("raw INSERT of a new key hit a duplicate")),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "execute", mode, Some(0.45), figures))
}
