//! What every idem-mysql test needs: the server, pools, fresh tables and keys.

use std::time::Duration;

use idem_core::{Claim, ClaimRequest, Key, Lease, Ttl};
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, AssertSqlSafe, MySqlPool};
use idem_mysql::{MySqlStore, PurgeExpired};

/// The shared table of tests that isolate themselves by namespace.
pub const SHARED_TABLE: &str = "idem_test_records";

/// The payload limit the tests configure.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

pub fn url() -> String {
    std::env::var("IDEM_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A pool of up to `max` connections, or a panic that says how to start the server.
pub async fn pool(max: u32) -> MySqlPool {
    let url = url();
    match MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(error) => panic!(
            "cannot reach MariaDB/MySQL at {url} (IDEM_MYSQL_URL): {error}\n\
             Start it with: mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld && \
             start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql"
        ),
    }
}

/// A store on the shared, migrated table over a pool of several connections.
pub async fn shared_store() -> MySqlStore {
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .max_payload(MAX_PAYLOAD)
        .build(pool(8).await)
        .expect("valid table name");
    store.migrate().await.expect("migrate the shared table");
    // Keeps the shared table small; expired rows already count as absent to every test.
    store
        .purge_expired(10_000)
        .await
        .expect("purge the shared table");
    store
}

/// A table of the test's own, dropped by [`drop_table`]; tables that earlier, crashed runs
/// left behind are swept here after ten minutes.
pub async fn fresh_table(pool: &MySqlPool) -> String {
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'idem\\_t\\_%' \
         AND CREATE_TIME < NOW() - INTERVAL 10 MINUTE",
    )
    .fetch_all(pool)
    .await
    .expect("list stale tables");
    for table in stale {
        drop_table(pool, &table).await;
    }
    format!(
        "idem_t_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

pub async fn drop_table(pool: &MySqlPool, table: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS `{table}`")))
        .execute(pool)
        .await
        .expect("drop a test table");
}

/// A store on a fresh, migrated table of its own.
pub async fn own_store(max_connections: u32) -> MySqlStore {
    let pool = pool(max_connections).await;
    let table = fresh_table(&pool).await;
    let store = MySqlStore::builder()
        .table(&table)
        .build(pool)
        .expect("valid table name");
    store.migrate().await.expect("migrate");
    store
}

/// A namespace no other test uses.
pub fn namespace(test: &str) -> String {
    format!("idem-mysql.{test}.{}", uuid::Uuid::new_v4().simple())
}

pub fn key(namespace: &str, id: &str) -> Key {
    Key::new(namespace, id).expect("valid key")
}

pub fn ttl(duration: Duration) -> Ttl {
    Ttl::new(duration).expect("valid TTL")
}

pub const LONG: Duration = Duration::from_secs(30);
pub const RETENTION: Duration = Duration::from_secs(60);

pub fn request(key: &Key, lease: Duration) -> ClaimRequest {
    ClaimRequest::new(key.clone(), ttl(lease))
}

pub fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Runs one SQL statement with values bound, for setting rows up by hand.
pub async fn exec(pool: &MySqlPool, statement: String) -> u64 {
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(pool)
        .await
        .expect("run a test statement")
        .rows_affected()
}

/// A key's raw row, every column, as one string: to show that a call changed nothing.
pub async fn raw_row(store: &MySqlStore, key: &Key) -> Option<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(CONCAT_WS('|', state, IFNULL(HEX(fingerprint), '-'), HEX(owner), fencing, \
         IFNULL(lease_until, '-'), expires_at, IFNULL(HEX(payload), '-')) AS CHAR) \
         FROM `{}` WHERE namespace = ? AND idem_key = ?",
        store.table()
    )))
    .bind(key.namespace().as_bytes())
    .bind(key.id().as_bytes())
    .fetch_optional(store.pool())
    .await
    .expect("read a raw row")
}

/// The session's `Questions` counter: statements the server ran for this connection.
pub async fn questions(pool: &MySqlPool) -> u64 {
    let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Questions'")
        .fetch_one(pool)
        .await
        .expect("read Questions");
    value.parse().expect("a number")
}

/// Statements `call` sent, net of the counter's own query.
pub async fn count<F: std::future::Future>(pool: &MySqlPool, call: F) -> (u64, F::Output) {
    let a = questions(pool).await;
    let b = questions(pool).await;
    let output = call.await;
    let c = questions(pool).await;
    ((c - b) - (b - a), output)
}

/// A table's `SHOW CREATE TABLE`, its name replaced by `TABLE`, to compare two tables.
pub async fn show_create(pool: &MySqlPool, table: &str) -> String {
    let (_, ddl): (String, String) =
        sqlx::query_as(AssertSqlSafe(format!("SHOW CREATE TABLE `{table}`")))
            .fetch_one(pool)
            .await
            .expect("show create table");
    ddl.replace(table, "TABLE")
}
