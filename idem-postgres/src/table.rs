//! The one table type both stores hold: a pool, a table of one kind, and how calls on it
//! are bounded and retried; with the maintenance every table has (migrate, check, purge).

use std::future::Future;
use std::sync::Arc;

use idem_core::Error;
use idem_sql::{CallPolicy, TableKind, TableName, purge};
use sqlx::PgPool;
use sqlx::pool::PoolConnection;

use crate::errors::{from_sqlx, is_lock_conflict};
use crate::schema::{self, quoted};
use crate::statements::sql;

/// A table of one kind on a pool.
#[derive(Debug, Clone)]
pub(crate) struct PgTable {
    pub(crate) pool: PgPool,
    pub(crate) name: TableName,
    pub(crate) kind: &'static TableKind,
    pub(crate) policy: CallPolicy,
    purge: Arc<str>,
}

impl PgTable {
    pub(crate) fn new(
        pool: PgPool,
        name: TableName,
        kind: &'static TableKind,
        policy: CallPolicy,
    ) -> Self {
        let purge = purge_statement(&name);
        Self {
            pool,
            name,
            kind,
            policy,
            purge,
        }
    }

    pub(crate) async fn connection(&self) -> Result<PoolConnection<sqlx::Postgres>, Error> {
        self.pool.acquire().await.map_err(from_sqlx)
    }

    /// Runs `op` within the store's statement timeout, again after a lock conflict.
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
        schema::check(&mut conn, self.kind, &self.name).await
    }

    pub(crate) fn migration_sql(&self) -> String {
        self.kind.migration_sql(&self.name)
    }

    pub(crate) async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        purge::in_batches(batch_size, |batch| {
            self.run(move || async move {
                let done = sqlx::query(sql(&self.purge))
                    .bind(i64::from(batch))
                    .execute(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

/// Deletes up to `$1` rows past `expires_at`, oldest first, on the `expires_at` index.
/// PostgreSQL's DELETE has no LIMIT, so the rows are picked and locked in a subquery (their
/// `ctid` cannot change while we hold the lock); SKIP LOCKED lets concurrent purges and
/// live calls pass each other instead of queueing, and the outer condition re-checks the
/// expiry on the row it deletes. Works for both kinds of table.
fn purge_statement(table: &TableName) -> Arc<str> {
    let t = quoted(table);
    format!(
        "DELETE FROM {t} AS t USING (SELECT clock_timestamp() AS now) c \
         WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM {t} WHERE expires_at <= clock_timestamp() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)) AND t.expires_at <= c.now"
    )
    .into()
}
