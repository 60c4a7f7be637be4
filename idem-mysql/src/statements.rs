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

use idem_sql::{RecordStatements, SqlDialect, Statement, TableName};

use crate::schema::quoted;

/// The row's columns as the store reads them: times become microseconds from the
/// statement's instant, so no clock or time zone of the application is involved.
/// `trace_us` is `expires_at - lease_until`, which for a claimed row is the trace the
/// lifecycle keeps after the lease ([`idem_core::backend::lifecycle::trace_ttl`]).
/// `TIMESTAMPDIFF` is NULL for a zero date (DATETIME takes '0000-00-00' unless `sql_mode`
/// says `NO_ZERO_DATE`), which every comparison puts before any other time: such an
/// `expires_at` reads as expired (0), as the takeover and the purge treat it.
const COLUMNS: &str = "state, fingerprint, owner, fencing, \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) AS lease_left_us, \
     TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at) AS trace_us, \
     COALESCE(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at), \
       IF(expires_at <= UTC_TIMESTAMP(6), 0, NULL)) AS expires_left_us, \
     payload";

/// The row of one key.
const KEY: &str = "namespace = ? AND idem_key = ?";

/// The lifecycle's `is_held_by` on a remembered row: claimed by this owner with this
/// fencing number, the lease live or lapsed, as long as the row has not expired.
const HELD: &str = "namespace = ? AND idem_key = ? AND state = 1 AND owner = ? AND fencing = ? \
     AND expires_at > UTC_TIMESTAMP(6)";

/// The statements only MySQL has: those of `remove` (its own short transaction).
#[derive(Debug)]
pub struct MySqlExtra {
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
        // A key with a row fails with a duplicate key (1062), which leaves a caller's
        // transaction usable; `INSERT IGNORE` would turn other errors into warnings too.
        insert: Statement::new(insert),
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
            probe_locked: Statement::new(format!(
                "SELECT COALESCE(expires_at > UTC_TIMESTAMP(6) AND (state IN (3, 4) \
                 OR (state = 1 AND lease_until > UTC_TIMESTAMP(6))), 0) AS visible, \
                 COALESCE(state = 2 AND expires_at > UTC_TIMESTAMP(6), 0) AS vacant \
                 FROM {t} WHERE {KEY} FOR UPDATE"
            )),
            // Left-to-right SET again: `expires_at` is computed from the row as it was.
            // A claimed row's trace is `TIMESTAMPDIFF(lease_until, expires_at)`, which is
            // NULL for a NULL or zero-date `lease_until` (DATETIME takes '0000-00-00'
            // unless sql_mode says NO_ZERO_DATE): such a row is no entry, and is deleted
            // rather than failing on a NULL `expires_at` (1048).
            vacate: Statement::new(format!(
                "UPDATE {t} SET \
                 expires_at = TIMESTAMPADD(MICROSECOND, IF(state = 1, \
                   TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at), ?), UTC_TIMESTAMP(6)), \
                 state = 2, fingerprint = NULL, payload = NULL, lease_until = NULL \
                 WHERE {KEY} AND state IN (1, 3, 4) AND fencing >= 1 \
                 AND expires_at > UTC_TIMESTAMP(6) \
                 AND (state <> 1 OR TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at) > 0)"
            )),
            delete: Statement::new(format!(
                "DELETE FROM {t} WHERE {KEY} \
                 AND NOT (state = 2 AND expires_at > UTC_TIMESTAMP(6))"
            )),
        },
    }
}

/// Deletes up to `?` rows past `expires_at`, oldest first, on the `expires_at` index: the
/// one-statement purge of every idem-mysql table, as the README's event scheduler runs it.
/// The stores purge with [`crate::purge`] instead, which does not wait on a live row
/// locked by a transaction still open.
pub(crate) fn purge(table: &TableName) -> Statement {
    Statement::new(format!(
        "DELETE FROM {} WHERE expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT ?",
        quoted(table)
    ))
}
