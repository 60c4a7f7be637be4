//! The one table type both stores hold: a pool, a table of one kind, and how calls on it
//! are bounded and retried; with the maintenance every table has (migrate, check, purge).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idem_core::Error;
use idem_sql::{CallPolicy, TableKind, TableName, purge};
use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, MySqlConnection};

use crate::errors::{from_sqlx, is_lock_conflict};
use crate::schema::{self, quoted};
use crate::statements::sql;

/// A table of one kind on a pool.
#[derive(Debug, Clone)]
pub(crate) struct MySqlTable {
    pub(crate) pool: MySqlPool,
    pub(crate) name: TableName,
    pub(crate) kind: &'static TableKind,
    pub(crate) policy: CallPolicy,
    purge: Arc<str>,
}

impl MySqlTable {
    pub(crate) fn new(pool: MySqlPool, name: TableName, kind: &'static TableKind) -> Self {
        Self {
            purge: purge_statement(&name),
            pool,
            name,
            kind,
            policy: CallPolicy::default(),
        }
    }

    /// The same pool and settings on another table of the same kind.
    pub(crate) fn renamed(&self, name: TableName) -> Self {
        Self {
            purge: purge_statement(&name),
            name,
            ..self.clone()
        }
    }

    pub(crate) async fn connection(&self) -> Result<PoolConnection<sqlx::MySql>, Error> {
        self.pool.acquire().await.map_err(from_sqlx)
    }

    /// Runs `op` within the statement timeout, again after a deadlock or lock wait timeout
    /// (autocommit statements roll back alone, so running them again is exactly a retry).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.policy
            .run(self.policy.timeout, is_lock_conflict, op)
            .await
    }

    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        schema::migrate(&mut conn, self.kind, &self.name).await
    }

    pub(crate) async fn check_schema(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        schema::check_version(&mut conn, self.kind, &self.name).await
    }

    pub(crate) fn migration_sql(&self) -> String {
        self.kind.migration_sql(&self.name)
    }

    pub(crate) async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        purge::in_batches(batch_size, |batch| {
            self.run(move || async move {
                let done = sqlx::query(sql(&self.purge))
                    .bind(batch)
                    .execute(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

/// Deletes up to `?` rows past `expires_at`, oldest first, on the `expires_at` index: the
/// purge of every idem-mysql table.
fn purge_statement(table: &TableName) -> Arc<str> {
    format!(
        "DELETE FROM {} WHERE expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT ?",
        quoted(table)
    )
    .into()
}

/// The pool the stores' `connect` makes:
/// - no ping per checkout (`test_before_acquire(false)`): sqlx's default sends one round
///   trip before every call, which costs as much as the call. What replaces it: a
///   connection the server dropped fails its one call with [`Error::Unavailable`], which
///   the executor retries, and sqlx discards it; connections are closed after 10 minutes
///   idle and 30 minutes of life, well inside the server's `wait_timeout` (8 h), so the
///   server rarely drops one first;
/// - the statement timeout to get a connection, and on every connection the server's own
///   bounds at [`CallPolicy::server_timeout`]: `innodb_lock_wait_timeout` (whole seconds,
///   rounded down, at least 1) and MariaDB's `max_statement_time` (MySQL 8 has no
///   equivalent for writes), so on a live server the server gives up first, with a clean
///   error on a connection that stays usable.
pub(crate) async fn connect_pool(url: &str, policy: CallPolicy) -> Result<MySqlPool, Error> {
    let options: MySqlConnectOptions = url.parse().map_err(from_sqlx)?;
    let timeout = policy.server_timeout();
    MySqlPoolOptions::new()
        .acquire_timeout(policy.timeout)
        .test_before_acquire(false)
        .idle_timeout(Duration::from_secs(600))
        .max_lifetime(Duration::from_secs(1800))
        .after_connect(move |conn, _| Box::pin(async move { bound_session(conn, timeout).await }))
        .connect_with(options)
        .await
        .map_err(from_sqlx)
}

/// Sets the session's server-side bounds; see [`connect_pool`].
async fn bound_session(conn: &mut MySqlConnection, timeout: Duration) -> Result<(), sqlx::Error> {
    let lock_wait = timeout.as_secs().max(1);
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET SESSION innodb_lock_wait_timeout = {lock_wait}"
    )))
    .await?;
    // MariaDB only; MySQL answers "unknown system variable" (1193), which is fine.
    let statement = timeout.as_secs_f64().max(0.001);
    if let Err(error) = conn
        .execute(sqlx::AssertSqlSafe(format!(
            "SET SESSION max_statement_time = {statement}"
        )))
        .await
    {
        tracing::debug!(%error, "idem-mysql: no max_statement_time on this server");
    }
    Ok(())
}
