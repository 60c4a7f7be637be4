//! The token table: its versioned DDL, run by the shared migration of [`crate::schema`].

use idem_sql::{Migration, TableKind, TableName};

use crate::schema::{create_table, quoted};

/// The token table's name unless another is configured.
pub(crate) const DEFAULT_TABLE: &str = "idem_tokens";

/// What a token table's comment starts with. It differs from the records table's, so neither
/// store mistakes the other's table for its own.
const COMMENT_PREFIX: &str = "idem-mysql token schema v";

/// The one-time tokens table of [`MySqlTokenStore`](crate::MySqlTokenStore).
pub(crate) const TOKENS: TableKind = TableKind {
    comment_prefix: COMMENT_PREFIX,
    noun: "an idem-mysql token table",
    store: "MySqlTokenStore",
    default_table: DEFAULT_TABLE,
    migrations: &[
        Migration {
            version: 1,
            ddl: create_table_v1,
        },
        Migration {
            version: 2,
            ddl: add_consumer_v2,
        },
    ],
};

/// Version 1. Why each column is what it is:
/// - `token`: `VARBINARY(128)`, [`MAX_TOKEN_LEN`](idem_core::MAX_TOKEN_LEN) bytes compared
///   byte for byte, whatever the server's collation. The primary key, so issuing the same
///   token twice collides on it.
/// - `scope`: `VARBINARY(255)`, [`MAX_KEY_LEN`](idem_core::MAX_KEY_LEN) bytes, byte for byte
///   as well, so `alice` and `Alice` are different owners.
/// - `used_at`: NULL until consumed. A used row is kept until it expires, so a repeat is told
///   "already used" rather than "unknown".
/// - `expires_at`: UTC from the server's clock; the row counts as absent from then on, and
///   the index serves `purge_expired`.
fn create_table_v1(table: &TableName) -> String {
    create_table(
        table,
        "  token VARBINARY(128) NOT NULL,
  scope VARBINARY(255) NOT NULL,
  used_at DATETIME(6) NULL,
  expires_at DATETIME(6) NOT NULL,
  PRIMARY KEY (token),
  KEY expires_at_idx (expires_at)",
        COMMENT_PREFIX,
    )
}

/// Version 2: `used_by`, `BINARY(16)`, the [`OwnerToken`](idem_core::OwnerToken) of the
/// consume that used the token, written with `used_at`, so that consumer's resend (its
/// reply lost) is answered "consumed" again rather than "already used". NULL on a row used
/// before this version: used by no one known, so "already used" for everyone.
///
/// One `ALTER TABLE`, the column and the comment together, so a table has both or neither;
/// adding a NULL column is instant on MySQL 8 and MariaDB 10.3+, whatever the rows.
fn add_consumer_v2(table: &TableName) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN used_by BINARY(16) NULL AFTER used_at, \
         COMMENT='{COMMENT_PREFIX}2'",
        quoted(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::MAX_TABLE_NAME;

    #[test]
    fn ddl_names_the_table_and_version() {
        let sql =
            TOKENS.migration_sql(&TableName::new("my_tokens", MAX_TABLE_NAME).expect("valid"));
        assert_eq!(TOKENS.version(), 2);
        assert!(sql.starts_with("-- idem-mysql token schema v1\n"), "{sql}");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `my_tokens`"));
        assert!(sql.contains("token VARBINARY(128) NOT NULL"));
        assert!(sql.contains("COMMENT='idem-mysql token schema v1';"));
        assert!(sql.contains("\n-- idem-mysql token schema v2\nALTER TABLE `my_tokens` "));
        assert!(sql.contains("ADD COLUMN used_by BINARY(16) NULL"));
        assert!(sql.contains("COMMENT='idem-mysql token schema v2';"));
        assert!(sql.trim_end().ends_with(';'));
    }
}
