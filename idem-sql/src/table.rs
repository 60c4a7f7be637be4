//! Table names and versioned schemas: the parts of a migration every SQL engine shares.
//!
//! The schema version lives in the table's own comment (`idem-mysql schema v1`,
//! `idem-postgres schema v1`), so a table created from the printed DDL by a DBA is
//! recognised exactly like one created by `migrate()`, and no second bookkeeping table is
//! needed. sqlx's migrator is not used: it keeps one global `_sqlx_migrations` table per
//! database, which cannot hold the same migration twice for two idem tables of different
//! names.

use std::fmt;

use idem_core::{Error, InvalidInput};

/// A validated table name: 1 to `max` ASCII letters, digits and underscores.
///
/// Statements quote it as well, but restricting it to identifier characters is what keeps a
/// configured name from ever carrying SQL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// Validates a table name of at most `max` bytes (the engine's identifier limit, less
    /// whatever the store appends to name its indexes).
    ///
    /// # Errors
    ///
    /// [`InvalidInput::Other`] for an empty name, one over `max` bytes, or one holding anything but
    /// ASCII letters, digits and underscores.
    pub fn new(name: &str, max: usize) -> Result<Self, Error> {
        if name.is_empty() || name.len() > max {
            return Err(InvalidInput::Other("a table name is too short or too long").into());
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(InvalidInput::Other(
                "a table name holds only ASCII letters, digits and underscores",
            )
            .into());
        }
        Ok(Self(name.to_owned()))
    }

    /// The default table of `kind`, trusted as valid: each store holds its kinds to that in
    /// a unit test.
    #[must_use]
    pub fn default_for(kind: &TableKind) -> Self {
        Self(kind.default_table.to_owned())
    }

    /// The name as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name between `quote`s, as the engine's SQL names it (`` ` `` or `"`). Safe: the
    /// name holds no quote character.
    #[must_use]
    pub fn quoted(&self, quote: char) -> String {
        format!("{quote}{}{quote}", self.0)
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
#[derive(Debug)]
pub struct Migration {
    /// The version the table is at once the step ran.
    pub version: u32,
    /// The step's DDL for a table of that name; it ends by setting the table comment to
    /// `comment_prefix` + `version`.
    pub ddl: fn(&TableName) -> String,
}

/// A kind of table a store keeps (idempotency records, one-time tokens), each with a schema
/// history of its own. The kinds carry different comments, so a store pointed at a table of
/// the other kind refuses it instead of misreading its rows.
#[derive(Debug)]
pub struct TableKind {
    /// What this kind's table comment says before the version number.
    pub comment_prefix: &'static str,
    /// How error messages name such a table.
    pub noun: &'static str,
    /// The store type that migrates it, for error messages.
    pub store: &'static str,
    /// The table's name unless another is configured; a valid [`TableName`].
    pub default_table: &'static str,
    /// Every schema step in order; the last one's version is the one this build reads and
    /// writes.
    pub migrations: &'static [Migration],
}

impl TableKind {
    /// The version this build reads and writes: the last migration's.
    #[must_use]
    pub const fn version(&self) -> u32 {
        match self.migrations.last() {
            Some(last) => last.version,
            None => 0,
        }
    }

    /// The whole DDL for a table called `table`, one block per version, each statement
    /// ending in `;`: the text to hand to a DBA or a migration tool. `migrate()` runs
    /// exactly these blocks.
    #[must_use]
    pub fn migration_sql(&self, table: &TableName) -> String {
        self.migrations
            .iter()
            .map(|m| {
                format!(
                    "-- {}{}\n{};\n",
                    self.comment_prefix,
                    m.version,
                    (m.ddl)(table)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The steps a table at `current` (0: no table) still needs, in order.
    pub fn pending(&self, current: Option<u32>) -> impl Iterator<Item = &'static Migration> {
        let current = current.unwrap_or(0);
        self.migrations.iter().filter(move |m| m.version > current)
    }

    /// The schema version a table's `comment` names (`None`: no such table); a comment of
    /// another kind or of no idem table is [`Error::Backend`].
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the table exists but its comment names no version of this kind.
    pub fn version_in(
        &self,
        table: &TableName,
        comment: Option<&str>,
    ) -> Result<Option<u32>, Error> {
        comment
            .map(|comment| {
                comment
                    .strip_prefix(self.comment_prefix)
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| {
                        Error::backend(format!(
                            "table {table} exists but is not {} (its comment is {comment:?})",
                            self.noun
                        ))
                    })
            })
            .transpose()
    }

    /// Fails unless the table is at this build's version.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the table does not exist (`found` is `None`) or is at another
    /// version; the message says how to migrate.
    pub fn check(&self, table: &TableName, found: Option<u32>) -> Result<(), Error> {
        let store = self.store;
        match found {
            Some(v) if v == self.version() => Ok(()),
            None => Err(Error::backend(format!(
                "table {table} does not exist: run {store}::migrate() or apply {store}::migration_sql()"
            ))),
            Some(other) => Err(Error::backend(format!(
                "table {table} has {}{other}; this build uses v{}",
                self.comment_prefix,
                self.version()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers() {
        for name in ["idem_records", "t", "A1_b2", &"x".repeat(64)] {
            assert_eq!(
                TableName::new(name, 64).map(|t| t.0).ok().as_deref(),
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
            "t\"; DROP TABLE x; --",
            "db.table",
            "tàble",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(TableName::new(name, 64), Err(Error::InvalidInput(_))),
                "{name:?} should be refused"
            );
        }
    }

    fn ddl(table: &TableName) -> String {
        format!("CREATE TABLE {}", table.quoted('"'))
    }

    const KIND: TableKind = TableKind {
        comment_prefix: "idem-test schema v",
        noun: "an idem test table",
        store: "TestStore",
        default_table: "t",
        migrations: &[Migration { version: 1, ddl }],
    };

    #[test]
    fn versions_come_from_the_comment() {
        let t = TableName::new("t", 64).expect("valid");
        assert_eq!(KIND.version_in(&t, None).ok(), Some(None));
        assert_eq!(
            KIND.version_in(&t, Some("idem-test schema v1")).ok(),
            Some(Some(1))
        );
        assert!(KIND.version_in(&t, Some("not ours")).is_err());
        assert!(KIND.version_in(&t, Some("idem-test schema vX")).is_err());
        assert!(KIND.check(&t, Some(1)).is_ok());
        assert!(KIND.check(&t, Some(2)).is_err());
        assert!(KIND.check(&t, None).is_err());
        assert_eq!(KIND.pending(None).count(), 1);
        assert_eq!(KIND.pending(Some(1)).count(), 0);
        assert_eq!(
            KIND.migration_sql(&t),
            "-- idem-test schema v1\nCREATE TABLE \"t\";\n"
        );
    }
}
