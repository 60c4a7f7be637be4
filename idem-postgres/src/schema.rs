//! The two tables, their versioned DDL, and running it.
//!
//! The version lives in the table comment (`COMMENT ON TABLE ... IS 'idem-postgres schema
//! v1'`), as for idem-mysql; see [`idem_sql::TableKind`].

use idem_core::Error;
use idem_sql::{Migration, TableKind, TableName};
use sqlx::{AssertSqlSafe, PgConnection, Row};

use idem_sql::SqlDialect;

use crate::PgDialect;

/// The records table's schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The records table's name unless another is configured.
pub const DEFAULT_TABLE: &str = "idem_records";

/// PostgreSQL truncates identifiers at 63 bytes; a table name leaves room for the index
/// name made from it (`<table>_expires_at`).
pub(crate) const MAX_TABLE_NAME: usize = 52;

/// How a configured table name is quoted: as written, case kept, never a keyword.
pub(crate) fn quoted(table: &TableName) -> String {
    table.quoted('"')
}

/// The idempotency records table of [`PgStore`](crate::PgStore).
pub(crate) const RECORDS: TableKind = TableKind {
    comment_prefix: "idem-postgres schema v",
    noun: "an idem-postgres records table",
    store: "PgStore",
    default_table: DEFAULT_TABLE,
    migrations: &[Migration {
        version: 1,
        ddl: records_v1,
    }],
};

/// The one-time tokens table of [`PgTokenStore`](crate::PgTokenStore).
pub(crate) const TOKENS: TableKind = TableKind {
    comment_prefix: "idem-postgres token schema v",
    noun: "an idem-postgres token table",
    store: "PgTokenStore",
    default_table: "idem_tokens",
    migrations: &[
        Migration {
            version: 1,
            ddl: tokens_v1,
        },
        Migration {
            version: 2,
            ddl: tokens_v2,
        },
    ],
};

/// Version 1 of the records table. Why each column is what it is:
/// - `namespace`, `idem_key`: `bytea`, compared byte for byte: no collation folds case or
///   accents, no normalisation. [`Key`](idem_core::Key) bounds each to 255 bytes.
/// - `state`: 1 claimed, 2 released (kept only to remember the fencing number), 3 completed,
///   4 failed.
/// - `fencing`: `bigint`; a takeover at 2^63−1 is refused (`CorruptRecord`) rather than
///   hand the same number to a second owner.
/// - `lease_until`, `expires_at`: `timestamptz` from the server's `clock_timestamp()`. A row
///   counts as absent from `expires_at` on; the index serves `purge_expired`.
fn records_v1(table: &TableName) -> String {
    create_table(
        table,
        "  namespace bytea NOT NULL,
  idem_key bytea NOT NULL,
  state smallint NOT NULL,
  fingerprint bytea NULL,
  owner bytea NOT NULL,
  fencing bigint NOT NULL,
  lease_until timestamptz NULL,
  expires_at timestamptz NOT NULL,
  payload bytea NULL,
  PRIMARY KEY (namespace, idem_key)",
        RECORDS.comment_prefix,
    )
}

/// Version 1 of the token table: `token` (at most 128 bytes) and `scope` byte for byte,
/// `used_at` NULL until consumed (a used row stays until it expires, so a repeat is told
/// "already used"), `expires_at` from the server's clock, indexed for `purge_expired`.
fn tokens_v1(table: &TableName) -> String {
    create_table(
        table,
        "  token bytea NOT NULL,
  scope bytea NOT NULL,
  used_at timestamptz NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (token)",
        TOKENS.comment_prefix,
    )
}

/// Version 2 of the token table: `used_by`, the 16 bytes of the
/// [`OwnerToken`](idem_core::OwnerToken) whose consume used the token, written with
/// `used_at`, so that consumer's resend (its reply lost) is answered "consumed" again
/// rather than "already used". NULL on a row used before this version: used by no one
/// known, so "already used" for everyone. Adding a NULL column rewrites no row.
fn tokens_v2(table: &TableName) -> String {
    let t = quoted(table);
    format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS used_by bytea NULL;
COMMENT ON TABLE {t} IS '{}2'",
        TOKENS.comment_prefix
    )
}

/// Version 1 of either table: its `columns`, the `expires_at` index `purge_expired` runs on,
/// and the comment that names the kind and the version.
fn create_table(table: &TableName, columns: &str, comment_prefix: &str) -> String {
    let t = quoted(table);
    let index = quoted_index(table);
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
{columns}
);
CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);
COMMENT ON TABLE {t} IS '{comment_prefix}1'"
    )
}

fn quoted_index(table: &TableName) -> String {
    format!("\"{table}_expires_at\"")
}

/// Runs the steps `table` still needs; a table already at the kind's version is left alone.
///
/// One transaction under an advisory lock named after the table, so that instances
/// starting together migrate one after the other (concurrent `CREATE TABLE IF NOT EXISTS`
/// can otherwise fail on PostgreSQL's catalog), and a failed step leaves nothing half done.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<(), Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(PgDialect::error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("idem-postgres migrate {table}"))
        .execute(&mut *tx)
        .await
        .map_err(PgDialect::error)?;
    let current = version(&mut tx, kind, table).await?;
    let mut migrated = false;
    for migration in kind.pending(current) {
        tracing::info!(table = %table, version = migration.version, "idem-postgres: migrating");
        sqlx::raw_sql(AssertSqlSafe((migration.ddl)(table)))
            .execute(&mut *tx)
            .await
            .map_err(PgDialect::error)?;
        migrated = true;
    }
    if migrated {
        // Dropping the transaction rolls the steps back: nothing is left half made.
        check_index(&mut tx, table).await?;
    }
    tx.commit().await.map_err(PgDialect::error)
}

/// Fails unless the relation named for `table`'s `expires_at` index is that index:
/// `CREATE INDEX IF NOT EXISTS` skips without a word when another relation already holds
/// the name (a table called `<table>_expires_at`, say), which would leave `purge_expired`
/// scanning the whole table instead of a short range of its index.
async fn check_index(conn: &mut PgConnection, table: &TableName) -> Result<(), Error> {
    let index = quoted_index(table);
    let on_table: Option<bool> = sqlx::query_scalar(
        "SELECT i.indrelid = to_regclass($1) FROM pg_index i WHERE i.indexrelid = to_regclass($2)",
    )
    .bind(quoted(table))
    .bind(&index)
    .fetch_optional(&mut *conn)
    .await
    .map_err(PgDialect::error)?;
    match on_table {
        Some(true) => Ok(()),
        _ => Err(Error::backend(format!(
            "relation {index} already exists and is not the expires_at index of table {table}: \
             choose another table name"
        ))),
    }
}

/// The schema version `table` carries in its comment, `None` when the table does not exist
/// (on the connection's `search_path`, as the statements resolve it).
pub(crate) async fn version(
    conn: &mut PgConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<Option<u32>, Error> {
    let row = sqlx::query(
        "SELECT r.oid IS NOT NULL AS present, obj_description(r.oid, 'pg_class') AS comment \
         FROM (SELECT to_regclass($1) AS oid) r",
    )
    .bind(quoted(table))
    .fetch_one(&mut *conn)
    .await
    .map_err(PgDialect::error)?;
    let present: bool = row.try_get("present").map_err(PgDialect::error)?;
    let comment: Option<String> = row.try_get("comment").map_err(PgDialect::error)?;
    if !present {
        return Ok(None);
    }
    kind.version_in(table, Some(comment.as_deref().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_names_the_table_index_and_version() {
        let t = TableName::new("My_idem", MAX_TABLE_NAME).expect("valid");
        let sql = RECORDS.migration_sql(&t);
        assert!(sql.starts_with("-- idem-postgres schema v1\n"), "{sql}");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"My_idem\""));
        assert!(sql.contains("CREATE INDEX IF NOT EXISTS \"My_idem_expires_at\" ON \"My_idem\""));
        assert!(sql.contains("COMMENT ON TABLE \"My_idem\" IS 'idem-postgres schema v1';"));
        let sql = TOKENS.migration_sql(&t);
        assert!(sql.contains("COMMENT ON TABLE \"My_idem\" IS 'idem-postgres token schema v1';"));
        assert!(sql.contains(
            "\n-- idem-postgres token schema v2\nALTER TABLE \"My_idem\" ADD COLUMN IF NOT EXISTS used_by bytea NULL;\n\
             COMMENT ON TABLE \"My_idem\" IS 'idem-postgres token schema v2';"
        ));
        assert_eq!(TOKENS.version(), 2);
    }

    #[test]
    fn kinds_are_consistent() {
        for kind in [&RECORDS, &TOKENS] {
            assert!(TableName::new(kind.default_table, MAX_TABLE_NAME).is_ok());
        }
        assert_eq!(RECORDS.version(), SCHEMA_VERSION);
        assert!(!RECORDS.comment_prefix.starts_with(TOKENS.comment_prefix));
        assert!(!TOKENS.comment_prefix.starts_with(RECORDS.comment_prefix));
    }
}
