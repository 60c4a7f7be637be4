//! The table: its name, its versioned DDL, and running that DDL.
//!
//! The schema version lives in the table's own comment (`idem-mysql schema v1`), so a
//! table created from the printed DDL by a DBA is recognised exactly like one created by
//! `migrate()`, and no second bookkeeping table is
//! needed. sqlx's migrator is not used: it keeps one global `_sqlx_migrations` table per
//! database, which cannot hold the same migration twice for two idem tables of different
//! names.

use idem_core::Error;
use idem_sql::{Migration, TableKind, TableName};
use sqlx::{AssertSqlSafe, MySqlConnection};

use idem_sql::SqlDialect;

use crate::MySqlDialect;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The table name used unless another is configured.
pub const DEFAULT_TABLE: &str = "idem_records";

/// MySQL and MariaDB refuse identifiers longer than this.
pub(crate) const MAX_TABLE_NAME: usize = 64;

/// What a table comment starts with when idem-mysql made the table.
const COMMENT_PREFIX: &str = "idem-mysql schema v";

/// A table name as MySQL quotes it.
pub(crate) fn quoted(table: &TableName) -> String {
    table.quoted('`')
}

/// The idempotency records table of [`MySqlStore`](crate::MySqlStore).
pub(crate) const RECORDS: TableKind = TableKind {
    comment_prefix: COMMENT_PREFIX,
    noun: "an idem-mysql table",
    store: "MySqlStore",
    default_table: DEFAULT_TABLE,
    migrations: &[Migration {
        version: 1,
        ddl: create_table_v1,
    }],
};

/// Version 1. Why each column is what it is:
/// - `namespace`, `idem_key`: `VARBINARY`, so keys compare byte for byte: no collation
///   folds case or accents, no PAD SPACE ignores trailing spaces, no normalisation.
///   255 + 255 bytes of primary key is far inside InnoDB's 3072-byte index limit.
/// - `state`: 1 claimed, 2 released (kept only to remember the fencing number),
///   3 completed, 4 failed.
/// - `lease_until`, `expires_at`: UTC, computed by the server (`UTC_TIMESTAMP(6)`), never by
///   the application. `DATETIME` rather than `TIMESTAMP`, which ends in 2038. A row counts
///   as absent from `expires_at` on; `expires_at` is indexed for `purge_expired`.
fn create_table_v1(table: &TableName) -> String {
    create_table(
        table,
        "  namespace VARBINARY(255) NOT NULL,
  idem_key VARBINARY(255) NOT NULL,
  state TINYINT UNSIGNED NOT NULL,
  fingerprint BINARY(32) NULL,
  owner BINARY(16) NOT NULL,
  fencing BIGINT UNSIGNED NOT NULL,
  lease_until DATETIME(6) NULL,
  expires_at DATETIME(6) NOT NULL,
  payload LONGBLOB NULL,
  PRIMARY KEY (namespace, idem_key),
  KEY expires_at_idx (expires_at)",
        COMMENT_PREFIX,
    )
}

/// Version 1 of either table: its columns and keys, in InnoDB, with the comment that names
/// the kind and the version.
pub(crate) fn create_table(table: &TableName, columns: &str, comment_prefix: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
{columns}
) ENGINE=InnoDB COMMENT='{comment_prefix}1'",
        quoted(table)
    )
}

/// How long `migrate` waits for another instance's migration of the same table.
const MIGRATION_LOCK_WAIT_SECS: u32 = 60;

/// The name of the server-wide lock that orders the migrations of `table` (bound) in the
/// connection's database: hashed, since MySQL takes lock names of at most 64 characters.
const MIGRATION_LOCK: &str =
    "CONCAT('idem-mysql migrate ', SHA1(CONCAT(IFNULL(DATABASE(), ''), '.', ?)))";

/// Runs the steps `table` still needs; a table already at the kind's version is left alone.
///
/// Under a named lock (`GET_LOCK`) for the table, so that instances starting together
/// migrate one after the other, as on PostgreSQL: a step that cannot run twice (`ADD
/// COLUMN`) would otherwise fail in every instance but the first, each having read the
/// same older version.
pub(crate) async fn migrate(
    conn: &mut MySqlConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<(), Error> {
    let acquired: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT GET_LOCK({MIGRATION_LOCK}, {MIGRATION_LOCK_WAIT_SECS})"
    )))
    .bind(table.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(MySqlDialect::error)?;
    if acquired != Some(1) {
        return Err(Error::unavailable(format!(
            "another migration of table {table} held its lock for {MIGRATION_LOCK_WAIT_SECS} s"
        )));
    }
    let migrated = run_pending(conn, kind, table).await;
    // Released whatever the steps did: the pooled connection outlives this call.
    let released = sqlx::query(AssertSqlSafe(format!(
        "SELECT RELEASE_LOCK({MIGRATION_LOCK})"
    )))
    .bind(table.as_str())
    .execute(&mut *conn)
    .await
    .map_err(MySqlDialect::error);
    migrated.and(released.map(drop))
}

/// The steps of [`migrate`], its lock held.
async fn run_pending(
    conn: &mut MySqlConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<(), Error> {
    let current = version(conn, kind, table).await?;
    for migration in kind.pending(current) {
        tracing::info!(table = %table, version = migration.version, "idem-mysql: migrating");
        sqlx::raw_sql(AssertSqlSafe((migration.ddl)(table)))
            .execute(&mut *conn)
            .await
            .map_err(MySqlDialect::error)?;
    }
    Ok(())
}

/// The schema version `table` carries in its comment, `None` when the table does not exist.
pub(crate) async fn version(
    conn: &mut MySqlConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<Option<u32>, Error> {
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_COMMENT AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(table.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(MySqlDialect::error)?;
    kind.version_in(table, comment.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_names_the_table_and_version() {
        let sql = RECORDS.migration_sql(&TableName::new("my_idem", MAX_TABLE_NAME).expect("valid"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `my_idem`"));
        assert!(sql.contains("COMMENT='idem-mysql schema v1'"));
        assert!(sql.trim_end().ends_with(';'));
    }

    #[test]
    fn every_kind_is_consistent() {
        for kind in [&RECORDS, &crate::token_schema::TOKENS] {
            assert!(
                TableName::new(kind.default_table, MAX_TABLE_NAME).is_ok(),
                "{}",
                kind.noun
            );
        }
        assert_eq!(RECORDS.version(), SCHEMA_VERSION);
        // Neither kind's comment reads as the other's, so neither store takes the other's table.
        assert!(
            !RECORDS
                .comment_prefix
                .starts_with(crate::token_schema::TOKENS.comment_prefix)
        );
        assert!(
            !crate::token_schema::TOKENS
                .comment_prefix
                .starts_with(RECORDS.comment_prefix)
        );
    }
}
