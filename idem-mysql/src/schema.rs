//! The table: its name, its versioned DDL, and running that DDL.
//!
//! The schema version lives in the table's own comment (`idem-mysql schema v1`), so a
//! table created from the printed DDL by a DBA is recognised exactly like one created by
//! [`MySqlStore::migrate`](crate::MySqlStore::migrate), and no second bookkeeping table is
//! needed. sqlx's migrator is not used: it keeps one global `_sqlx_migrations` table per
//! database, which cannot hold the same migration twice for two idem tables of different
//! names.

use std::fmt;

use idem_core::{Error, InvalidInput};
use sqlx::{AssertSqlSafe, MySqlConnection};

use crate::errors::from_sqlx;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The table name used unless another is configured.
pub const DEFAULT_TABLE: &str = "idem_records";

/// MySQL and MariaDB refuse identifiers longer than this.
const MAX_IDENTIFIER_LEN: usize = 64;

/// What a table comment starts with when idem-mysql made the table.
const COMMENT_PREFIX: &str = "idem-mysql schema v";

/// A validated table name: 1 to 64 ASCII letters, digits and underscores.
///
/// Statements quote it in backticks as well, but restricting it to identifier characters is
/// what keeps a configured name from ever carrying SQL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TableName(String);

impl TableName {
    /// Validates a table name.
    pub(crate) fn new(name: &str) -> Result<Self, Error> {
        if name.is_empty() || name.len() > MAX_IDENTIFIER_LEN {
            return Err(InvalidInput::Other("a table name is 1 to 64 characters long").into());
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(InvalidInput::Other(
                "a table name holds only ASCII letters, digits and underscores",
            )
            .into());
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for use in SQL.
    pub(crate) fn quoted(&self) -> String {
        format!("`{}`", self.0)
    }
}

impl TableName {
    /// The name a `kind` table has unless another is configured.
    pub(crate) fn default_for(kind: &TableKind) -> Self {
        Self(kind.default_table.to_owned())
    }
}

impl Default for TableName {
    /// [`DEFAULT_TABLE`].
    fn default() -> Self {
        Self::default_for(&RECORDS)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableName({})", self.0)
    }
}

/// One step of a table's schema, applied to tables below its version.
pub(crate) struct Migration {
    pub(crate) version: u32,
    pub(crate) ddl: fn(&TableName) -> String,
}

/// A kind of table idem-mysql keeps (idempotency records, one-time tokens), each with a
/// schema history of its own. The kinds carry different comments, so a store pointed at a
/// table of the other kind refuses it instead of misreading its rows.
pub(crate) struct TableKind {
    /// What this kind's table comment says before the version number.
    pub(crate) comment_prefix: &'static str,
    /// How error messages name such a table.
    pub(crate) noun: &'static str,
    /// The store type that migrates it, for error messages.
    pub(crate) store: &'static str,
    /// The table's name unless another is configured; a valid [`TableName`].
    pub(crate) default_table: &'static str,
    /// The version this build reads and writes: the last migration's.
    pub(crate) version: u32,
    /// Every schema step in order. A later version appends a step of `ALTER TABLE`s that
    /// ends by setting the table comment to its version.
    pub(crate) migrations: &'static [Migration],
}

/// The idempotency records table of [`MySqlStore`](crate::MySqlStore).
pub(crate) const RECORDS: TableKind = TableKind {
    comment_prefix: COMMENT_PREFIX,
    noun: "an idem-mysql table",
    store: "MySqlStore",
    default_table: DEFAULT_TABLE,
    version: SCHEMA_VERSION,
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
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
  namespace VARBINARY(255) NOT NULL,
  idem_key VARBINARY(255) NOT NULL,
  state TINYINT UNSIGNED NOT NULL,
  fingerprint BINARY(32) NULL,
  owner BINARY(16) NOT NULL,
  fencing BIGINT UNSIGNED NOT NULL,
  lease_until DATETIME(6) NULL,
  expires_at DATETIME(6) NOT NULL,
  payload LONGBLOB NULL,
  PRIMARY KEY (namespace, idem_key),
  KEY expires_at_idx (expires_at)
) ENGINE=InnoDB COMMENT='{COMMENT_PREFIX}1'",
        table = table.quoted()
    )
}

/// The whole DDL for a `kind` table called `table`, one statement per version, each ending
/// in `;`: the text to hand to a DBA or a migration tool. [`migrate`] runs exactly these
/// statements.
pub(crate) fn migration_sql(kind: &TableKind, table: &TableName) -> String {
    kind.migrations
        .iter()
        .map(|m| {
            format!(
                "-- {}{}\n{};\n",
                kind.comment_prefix,
                m.version,
                (m.ddl)(table)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Brings `table` up to the kind's version; a table already there is left alone.
pub(crate) async fn migrate(
    conn: &mut MySqlConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<(), Error> {
    let current = version(conn, kind, table).await?.unwrap_or(0);
    for migration in kind.migrations.iter().filter(|m| m.version > current) {
        tracing::info!(table = %table, version = migration.version, "idem-mysql: migrating");
        sqlx::raw_sql(AssertSqlSafe((migration.ddl)(table)))
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
    }
    check_version(conn, kind, table).await
}

/// Fails unless `table` exists at the kind's version.
pub(crate) async fn check_version(
    conn: &mut MySqlConnection,
    kind: &TableKind,
    table: &TableName,
) -> Result<(), Error> {
    let store = kind.store;
    match version(conn, kind, table).await? {
        Some(v) if v == kind.version => Ok(()),
        None => Err(Error::backend(format!(
            "table {table} does not exist: run {store}::migrate() or apply {store}::migration_sql()"
        ))),
        Some(other) => Err(Error::backend(format!(
            "table {table} has {}{other}; this build uses v{}",
            kind.comment_prefix, kind.version
        ))),
    }
}

/// The schema version `table` carries in its comment, `None` when the table does not exist.
async fn version(
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
    .map_err(from_sqlx)?;
    comment
        .map(|comment| {
            comment
                .strip_prefix(kind.comment_prefix)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| {
                    Error::backend(format!(
                        "table {table} exists but is not {} (its comment is {comment:?})",
                        kind.noun
                    ))
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers() {
        for name in ["idem_records", "t", "A1_b2", &"x".repeat(64)] {
            assert_eq!(
                TableName::new(name).map(|t| t.0).ok().as_deref(),
                Some(name)
            );
        }
    }

    #[test]
    fn rejects_anything_else() {
        for name in [
            "",
            "a-b",
            "a b",
            "t`; DROP TABLE x; --",
            "db.table",
            "tàble",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(TableName::new(name), Err(Error::InvalidInput(_))),
                "{name:?} should be refused"
            );
        }
    }

    #[test]
    fn ddl_names_the_table_and_version() {
        let sql = migration_sql(&RECORDS, &TableName::new("my_idem").expect("valid"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `my_idem`"));
        assert!(sql.contains("COMMENT='idem-mysql schema v1'"));
        assert!(sql.trim_end().ends_with(';'));
    }

    #[test]
    fn every_kind_is_consistent() {
        for kind in [&RECORDS, &crate::token::TOKENS] {
            let last = kind.migrations.last().map(|m| m.version);
            assert_eq!(last, Some(kind.version), "{}", kind.noun);
            assert!(TableName::new(kind.default_table).is_ok(), "{}", kind.noun);
        }
        // Neither kind's comment reads as the other's, so neither store takes the other's table.
        assert!(
            !RECORDS
                .comment_prefix
                .starts_with(crate::token::TOKENS.comment_prefix)
        );
        assert!(
            !crate::token::TOKENS
                .comment_prefix
                .starts_with(RECORDS.comment_prefix)
        );
    }
}
