//! Every statement the store sends, written out once per table name.
//!
//! Each statement reads the clock once: MySQL and MariaDB evaluate `UTC_TIMESTAMP(6)` at the
//! start of a statement, so every mention in one statement is the same instant, and it is
//! the server's clock, shared by every application instance.
//!
//! Writes are conditional and their affected-row count is the verdict. sqlx always connects
//! with `CLIENT_FOUND_ROWS`, so "affected" means "matched by the WHERE clause", even when an
//! UPDATE happens to write the values a row already had (a same-owner re-claim within the
//! same microsecond, say).

use std::sync::atomic::{AtomicBool, Ordering};

use idem_sql::{RecordStatements, SqlDialect, Statement, TableName};

use crate::schema::quoted;

/// The row's columns as the store reads them: times become microseconds from the
/// statement's instant, so no clock or time zone of the application is involved.
/// `trace_us` is `expires_at - lease_until`, which for a claimed row is the trace the
/// lifecycle keeps after the lease ([`idem_core::backend::lifecycle::trace_ttl`]).
const COLUMNS: &str = "state, fingerprint, owner, fencing, \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) AS lease_left_us, \
     TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at) AS trace_us, \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS expires_left_us, \
     payload";

/// The row of one key.
const KEY: &str = "namespace = ? AND idem_key = ?";

/// The lifecycle's `is_held_by` on a remembered row: claimed by this owner with this
/// fencing number, the lease live or lapsed, as long as the row has not expired.
const HELD: &str = "namespace = ? AND idem_key = ? AND state = 1 AND owner = ? AND fencing = ? \
     AND expires_at > UTC_TIMESTAMP(6)";

/// The statements only MySQL has: those of `remove` (its own short transaction), and the
/// plain INSERT of a server without `INSERT ... RETURNING`.
#[derive(Debug)]
pub struct MySqlExtra {
    /// Claims a never-seen key, reading nothing back; a duplicate key (1062) means the key
    /// has a row. Binds: as [`RecordStatements::insert`].
    pub(crate) plain_insert: Statement,
    /// Whether the server takes `INSERT ... RETURNING` (MariaDB 10.5+); cleared the first
    /// time it refuses it (MySQL 8), and the claim then reads a row it could not insert
    /// with a second statement.
    pub(crate) returning: AtomicBool,
    /// Whether a key shows a record (a live claim or a finished key), and whether it is a
    /// live vacant trace already, locking its row. Binds: namespace, key.
    pub(crate) probe_locked: Statement,
    /// Frees a remembered key's row as a release does, whatever its phase: vacant, with
    /// its fencing number, for the claimed row's trace or, for a finished row, the bound
    /// trace µs. Binds: trace µs, namespace, key.
    pub(crate) vacate: Statement,
    /// Deletes a key's row unless it is a live vacant trace (a corrupt or expired row).
    /// Binds: namespace, key.
    pub(crate) delete: Statement,
}

impl MySqlExtra {
    /// Whether claims still try `INSERT ... RETURNING` (MariaDB 10.5+): cleared for good
    /// the first time the server refuses it.
    #[must_use]
    pub fn returning(&self) -> bool {
        self.returning.load(Ordering::Relaxed)
    }

    /// Makes claims take the two statements of a server without `INSERT ... RETURNING`
    /// (MySQL 8) from now on: a plain INSERT and, after a duplicate key, a SELECT. A server
    /// with RETURNING runs them as well, which is how the tests cover MySQL 8's path on
    /// MariaDB.
    pub fn without_returning(&self) {
        self.returning.store(false, Ordering::Relaxed);
    }
}

/// The statements for one table.
/// Generic over the dialect only so this module need not name [`MySqlDialect`](crate::MySqlDialect),
/// which names it back.
pub(crate) fn records<D: SqlDialect<Extra = MySqlExtra>>(table: &TableName) -> RecordStatements<D> {
    let t = quoted(table);
    let select = format!("SELECT {COLUMNS} FROM {t} WHERE {KEY}");
    let insert = format!(
        "INSERT INTO {t} \
         (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at, payload) \
         VALUES (?, ?, 1, ?, ?, 1, \
         TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
         TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), NULL)"
    );
    RecordStatements {
        // One statement for a claim and for a replay (MariaDB): a key with a row is left
        // as it is (the no-op UPDATE takes its row lock, so the row read is the latest
        // commit, inside a transaction too) and RETURNING reads it back. `fresh` tells an
        // inserted row from an existing one: only a row this statement wrote has exactly
        // this owner, fingerprint and lease on this statement's clock (an earlier claim of
        // the same owner ended its lease at another microsecond).
        insert: Statement::reordered(
            format!(
                "{insert} ON DUPLICATE KEY UPDATE namespace = namespace \
                 RETURNING {COLUMNS}, CAST(COALESCE(state = 1 AND fencing = 1 AND owner = ? \
                   AND fingerprint <=> ? \
                   AND lease_until = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                   AND expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), 0) \
                   AS SIGNED) AS fresh"
            ),
            &[0, 1, 2, 3, 4, 5, 3, 2, 4, 5],
        ),
        // Inside a transaction a plain read could see an older snapshot; the failed INSERT
        // already holds this shared lock, so it costs no new conflict.
        select_locked: Statement::new(format!("{select} LOCK IN SHARE MODE")),
        select: Statement::new(select),
        // The SET list is evaluated left to right on the changing row, so `fencing` is
        // computed first, from the row as it was. The WHERE clause is the lifecycle's
        // claim rule, re-checked under the row lock at the server's time, so of many
        // claimers that read the same free row exactly one matches it. Every branch of
        // the CASE is unsigned: with a signed `1` among them the CASE is signed, and
        // 2^63 overflows it (error 1916), so a key at 2^63−1 could never be taken over.
        // A key at 2^64−1 is refused before this statement runs (`CorruptRecord`, see
        // `idem_core::backend::lifecycle::next_fencing`); the ELSE only keeps the CASE
        // total. The new number comes back through `LAST_INSERT_ID(expr)`.
        take_over: Statement::reordered(
            format!(
                "UPDATE {t} SET \
                 fencing = LAST_INSERT_ID(CASE \
                   WHEN expires_at <= UTC_TIMESTAMP(6) THEN CAST(1 AS UNSIGNED) \
                   WHEN state = 1 AND owner = ? THEN fencing \
                   WHEN fencing < 18446744073709551615 THEN fencing + 1 \
                   ELSE fencing END), \
                 state = 1, owner = ?, fingerprint = ?, payload = NULL, \
                 lease_until = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                 WHERE {KEY} AND (expires_at <= UTC_TIMESTAMP(6) \
                   OR state = 2 \
                   OR (state = 1 AND owner = ? AND fingerprint <=> ?) \
                   OR (state = 1 AND owner <> ? AND lease_until <= UTC_TIMESTAMP(6)))"
            ),
            &[0, 0, 1, 2, 3, 4, 5, 0, 1, 0],
        ),
        finish: Statement::new(format!(
            "UPDATE {t} SET state = ?, payload = ?, lease_until = NULL, \
             expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) WHERE {HELD}"
        )),
        renew: Statement::new(format!(
            "UPDATE {t} SET \
             lease_until = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
             expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) WHERE {HELD}"
        )),
        // `expires_at - lease_until` of a claimed row is trace_ttl(lease TTL), exactly
        // what the lifecycle keeps after a release; it is read before `lease_until` is
        // cleared (left-to-right SET).
        release: Statement::new(format!(
            "UPDATE {t} SET state = 2, fingerprint = NULL, payload = NULL, \
             expires_at = TIMESTAMPADD(MICROSECOND, \
               TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at), UTC_TIMESTAMP(6)), \
             lease_until = NULL WHERE {HELD}"
        )),
        extra: MySqlExtra {
            plain_insert: Statement::new(insert),
            returning: AtomicBool::new(true),
            probe_locked: Statement::new(format!(
                "SELECT COALESCE(expires_at > UTC_TIMESTAMP(6) AND (state IN (3, 4) \
                 OR (state = 1 AND lease_until > UTC_TIMESTAMP(6))), 0) AS visible, \
                 COALESCE(state = 2 AND expires_at > UTC_TIMESTAMP(6), 0) AS vacant \
                 FROM {t} WHERE {KEY} FOR UPDATE"
            )),
            // Left-to-right SET again: `expires_at` is computed from the row as it was.
            vacate: Statement::new(format!(
                "UPDATE {t} SET \
                 expires_at = TIMESTAMPADD(MICROSECOND, IF(state = 1, \
                   TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at), ?), UTC_TIMESTAMP(6)), \
                 state = 2, fingerprint = NULL, payload = NULL, lease_until = NULL \
                 WHERE {KEY} AND state IN (1, 3, 4) AND fencing >= 1 \
                 AND expires_at > UTC_TIMESTAMP(6) \
                 AND (state <> 1 OR lease_until IS NOT NULL AND lease_until < expires_at)"
            )),
            delete: Statement::new(format!(
                "DELETE FROM {t} WHERE {KEY} \
                 AND NOT (state = 2 AND expires_at > UTC_TIMESTAMP(6))"
            )),
        },
    }
}

/// Deletes up to `?` rows past `expires_at`, oldest first, on the `expires_at` index: the
/// purge of every idem-mysql table.
pub(crate) fn purge(table: &TableName) -> Statement {
    Statement::new(format!(
        "DELETE FROM {} WHERE expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT ?",
        quoted(table)
    ))
}
