//! The server the tests run against: [`MariaDb`], the [`TestServer`] of idem-sql's shared
//! suite (its pools and fixture SQL), and what the MySQL-only tests add.

use std::time::Duration;

use idem_mysql::MySqlDialect;
use idem_mysql::sqlx::mysql::{MySqlPoolOptions, MySqlRow};
use idem_mysql::sqlx::{self, AssertSqlSafe, MySqlPool, Row};
use idem_sql::testing::{StatementCounter, TestServer};

pub use idem_sql::testing::{
    LONG, RETENTION, SHARED_TABLE, acquired, key, namespace, request, shared_store, ttl,
};

/// MariaDB (or MySQL 8) at `IDEM_MYSQL_URL`.
pub struct MariaDb;

/// The session's `Questions` counter of a one-connection pool: statements the server ran
/// for it (prepares not included).
pub struct Questions(MySqlPool);

impl StatementCounter for Questions {
    async fn statements(&self) -> u64 {
        let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Questions'")
            .fetch_one(&self.0)
            .await
            .expect("read Questions");
        value.parse().expect("a number")
    }
}

pub fn url() -> String {
    std::env::var("IDEM_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A pool of up to `max` connections, or a panic that says how to start the server.
pub async fn pool(max: u32) -> MySqlPool {
    MariaDb::pool(max).await
}

/// Runs SQL text, for setting rows up by hand; the rows it affected.
pub async fn exec(pool: &MySqlPool, statement: String) -> u64 {
    MariaDb::exec(pool, statement).await
}

impl TestServer for MariaDb {
    type Dialect = MySqlDialect;
    type Counter = Questions;
    const QUOTE: char = '`';
    /// BEGIN, SELECT ... FOR UPDATE, COMMIT (the trace stays); with the UPDATE to a trace.
    const REMOVAL_STATEMENTS: [u64; 2] = [3, 4];
    /// BEGIN, SELECT ... FOR UPDATE SKIP LOCKED, COMMIT; with the DELETE by key.
    const PURGE_BATCH_STATEMENTS: [u64; 2] = [3, 4];

    fn url() -> String {
        url()
    }

    async fn pool(max: u32) -> MySqlPool {
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

    async fn counted_pool() -> (MySqlPool, Questions) {
        let pool = pool(1).await;
        (pool.clone(), Questions(pool))
    }

    fn unreachable_pool() -> MySqlPool {
        // Nothing listens on port 1 of the loopback.
        MySqlPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy("mysql://root@127.0.0.1:1/test")
            .expect("a well-formed URL")
    }

    /// `idem_t_<random>`; tables that earlier, crashed runs left behind are swept after ten
    /// minutes.
    async fn fresh_table(pool: &MySqlPool) -> String {
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'idem\\_t\\_%' \
             AND CREATE_TIME < NOW() - INTERVAL 10 MINUTE",
        )
        .fetch_all(pool)
        .await
        .expect("list stale tables");
        for table in stale {
            idem_sql::testing::drop_table::<Self>(pool, &table).await;
        }
        format!(
            "idem_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        )
    }

    async fn exec(pool: &MySqlPool, sql: String) -> u64 {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("run a test statement")
            .rows_affected()
    }

    async fn definition(pool: &MySqlPool, table: &str) -> String {
        let (_, ddl): (String, String) =
            sqlx::query_as(AssertSqlSafe(format!("SHOW CREATE TABLE `{table}`")))
                .fetch_one(pool)
                .await
                .expect("show create table");
        ddl.replace(table, "TABLE")
    }

    fn text(row: &MySqlRow) -> String {
        row.try_get(0).expect("a text column")
    }

    fn placeholder(_: usize) -> String {
        "?".into()
    }

    fn raw_row(table: &str) -> String {
        format!(
            "SELECT CAST(CONCAT_WS('|', state, IFNULL(HEX(fingerprint), '-'), HEX(owner), fencing, \
             IFNULL(lease_until, '-'), expires_at, IFNULL(HEX(payload), '-')) AS CHAR) \
             FROM `{table}` WHERE namespace = ? AND idem_key = ?"
        )
    }

    fn raw_token_row(table: &str) -> String {
        format!(
            "SELECT CAST(CONCAT_WS('|', HEX(scope), IFNULL(used_at, '-'), \
             IFNULL(HEX(used_by), '-'), expires_at) AS CHAR) FROM `{table}` WHERE token = ?"
        )
    }

    fn token_consumer_hex(table: &str) -> String {
        format!(
            "SELECT CAST(IFNULL(LOWER(HEX(used_by)), '-') AS CHAR) FROM `{table}` WHERE token = ?"
        )
    }

    fn kept_for_ms(table: &str) -> String {
        format!(
            "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) DIV 1000 AS CHAR) \
             FROM `{table}` WHERE namespace = ? AND idem_key = ?"
        )
    }

    fn token_kept_for_ms(table: &str) -> String {
        format!(
            "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) DIV 1000 AS CHAR) \
             FROM `{table}` WHERE token = ?"
        )
    }

    fn payload_hex(table: &str) -> String {
        format!(
            "SELECT CAST(LOWER(HEX(payload)) AS CHAR) FROM `{table}` \
             WHERE namespace = ? AND idem_key = ?"
        )
    }

    fn count_rows(table: &str, condition: &str) -> String {
        format!("SELECT CAST(COUNT(*) AS CHAR) FROM `{table}` WHERE {condition}")
    }

    fn orders_table(table: &str) -> String {
        format!(
            "CREATE TABLE `{table}` (client_key VARBINARY(64) PRIMARY KEY, amount INT NOT NULL, \
             fencing BIGINT UNSIGNED NOT NULL)"
        )
    }

    fn foreign_table(table: &str) -> String {
        format!("CREATE TABLE `{table}` (id INT PRIMARY KEY) COMMENT='not ours'")
    }

    fn set_comment(table: &str, comment: &str) -> String {
        format!("ALTER TABLE `{table}` COMMENT='{comment}'")
    }

    fn plant_lapsed_fencing(table: &str) -> String {
        format!(
            "UPDATE `{table}` SET fencing = ?, lease_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND \
             WHERE namespace = ? AND idem_key = ?"
        )
    }

    fn undecodable_scope(table: &str, token: &str) -> String {
        format!(
            "INSERT INTO `{table}` (token, scope, used_at, expires_at) \
             VALUES ('{token}', X'FF00', NULL, UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE)"
        )
    }

    const EXPIRE: &'static str = "expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND";

    fn corruptions() -> &'static [(&'static str, &'static str, bool)] {
        &[
            ("bad-state", "state = 9", false),
            ("no-payload", "payload = NULL", true),
            ("short-fingerprint", "fingerprint = x'0102'", false),
            ("no-lease", "lease_until = NULL", false),
            // A zero date, which DATETIME takes unless sql_mode says NO_ZERO_DATE.
            ("zero-lease", "lease_until = '0000-00-00 00:00:00'", false),
        ]
    }

    /// `BINARY(32)` pads short values, so a wrong-length fingerprint needs a wider column,
    /// as a hand-made or altered table may have.
    fn prepare_corruption(table: &str) -> Option<String> {
        Some(format!(
            "ALTER TABLE `{table}` MODIFY fingerprint VARBINARY(64) NULL"
        ))
    }

    /// `BINARY(16)` pads short consumers and refuses long ones, as for fingerprints.
    fn prepare_token_corruption(table: &str) -> Option<String> {
        Some(format!(
            "ALTER TABLE `{table}` MODIFY used_by VARBINARY(64) NULL"
        ))
    }
}
