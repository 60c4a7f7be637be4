//! Every statement the record store sends, written out once per table name.
//!
//! Each statement reads the server's clock once: `clock_timestamp()` in a one-row subquery
//! `c`, so every comparison in the statement sees the same instant. Not `now()`, which is
//! the start of the transaction and would stand still through a long transaction of the
//! caller's in the transactional mode.
//!
//! Writes are conditional, and whether they matched (affected rows, or a `RETURNING` row)
//! is the verdict. In an `UPDATE`, every `SET` expression reads the row as it was.

use std::sync::Arc;

use idem_sql::TableName;
use sqlx::AssertSqlSafe;

use crate::schema::quoted;

/// The statement's instant, read once.
const CLOCK: &str = "(SELECT clock_timestamp() AS now) c";

/// A span in microseconds (a bound `bigint`) as an interval.
macro_rules! micros {
    ($n:literal) => {
        concat!("($", $n, " * interval '1 microsecond')")
    };
}

/// The row's columns as the store reads them: times become microseconds from the
/// statement's instant, so no clock or time zone of the application is involved.
/// `trace_us` is `expires_at - lease_until`, which for a claimed row is the trace the
/// lifecycle keeps after the lease.
const COLUMNS: &str = "t.state, t.fingerprint, t.owner, t.fencing, \
     (extract(epoch FROM t.lease_until - c.now) * 1000000)::bigint AS lease_left_us, \
     (extract(epoch FROM t.expires_at - t.lease_until) * 1000000)::bigint AS trace_us, \
     (extract(epoch FROM t.expires_at - c.now) * 1000000)::bigint AS expires_left_us, \
     t.payload";

/// The statements for one table.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Claims a never-seen key; a row comes back only if it was inserted. Binds: namespace,
    /// key, fingerprint, owner, lease µs, lease + trace µs.
    pub(crate) insert: Arc<str>,
    /// Reads a key's row. Binds: namespace, key.
    pub(crate) select: Arc<str>,
    /// Acquires a row the lifecycle says is free for this claim, re-checking that under the
    /// row lock, and returns the new fencing number. Binds: owner, fingerprint, lease µs,
    /// lease + trace µs, namespace, key.
    pub(crate) take_over: Arc<str>,
    /// Completes or fails. Binds: state, payload, retention µs, then the lease.
    pub(crate) finish: Arc<str>,
    /// Extends a lease. Binds: lease µs, lease + trace µs, then the lease.
    pub(crate) renew: Arc<str>,
    /// Releases a lease. Binds: the lease.
    pub(crate) release: Arc<str>,
    /// Deletes a key's row and says whether it showed a record. Binds: namespace, key.
    pub(crate) remove: Arc<str>,
}

/// The lifecycle's `is_held_by` on a remembered row, its binds from `$n` on: claimed by this
/// owner with this fencing number, the lease live or lapsed, as long as the row has not
/// expired. Binds: namespace, key, owner, fencing.
fn held(n: u8) -> String {
    format!(
        "t.namespace = ${} AND t.idem_key = ${} AND t.state = 1 AND t.owner = ${} \
         AND t.fencing = ${} AND t.expires_at > c.now",
        n,
        n + 1,
        n + 2,
        n + 3
    )
}

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = quoted(table);
        Self {
            insert: format!(
                "INSERT INTO {t} \
                 (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at) \
                 SELECT $1, $2, 1, $3, $4, 1, c.now + {}, c.now + {} FROM {CLOCK} \
                 ON CONFLICT DO NOTHING RETURNING fencing",
                micros!(5),
                micros!(6),
            )
            .into(),
            select: format!(
                "SELECT {COLUMNS} FROM {t} AS t, {CLOCK} \
                 WHERE t.namespace = $1 AND t.idem_key = $2"
            )
            .into(),
            // The WHERE clause is the lifecycle's claim rule. Under READ COMMITTED a row
            // changed by a concurrent transaction is re-checked in its latest version once
            // that commits, so of many claimers that read the same free row exactly one
            // matches it. A key at 2^63−1 is refused before this statement runs
            // (`CorruptRecord`, see `idem_core::backend::lifecycle::next_fencing`); the ELSE only
            // keeps the CASE from overflowing.
            take_over: format!(
                "UPDATE {t} AS t SET \
                 fencing = CASE \
                   WHEN t.expires_at <= c.now THEN 1 \
                   WHEN t.state = 1 AND t.owner = $1 THEN t.fencing \
                   WHEN t.fencing < 9223372036854775807 THEN t.fencing + 1 \
                   ELSE t.fencing END, \
                 state = 1, owner = $1, fingerprint = $2, payload = NULL, \
                 lease_until = c.now + {}, expires_at = c.now + {} \
                 FROM {CLOCK} \
                 WHERE t.namespace = $5 AND t.idem_key = $6 AND (t.expires_at <= c.now \
                   OR t.state = 2 \
                   OR (t.state = 1 AND t.owner = $1 AND t.fingerprint IS NOT DISTINCT FROM $2) \
                   OR (t.state = 1 AND t.owner <> $1 AND t.lease_until <= c.now)) \
                 RETURNING t.fencing",
                micros!(3),
                micros!(4),
            )
            .into(),
            finish: format!(
                "UPDATE {t} AS t SET state = $1, payload = $2, lease_until = NULL, \
                 expires_at = c.now + {} FROM {CLOCK} WHERE {}",
                micros!(3),
                held(4)
            )
            .into(),
            renew: format!(
                "UPDATE {t} AS t SET lease_until = c.now + {}, expires_at = c.now + {} \
                 FROM {CLOCK} WHERE {}",
                micros!(1),
                micros!(2),
                held(3)
            )
            .into(),
            // `expires_at - lease_until` of a claimed row is trace_ttl(lease TTL), exactly
            // what the lifecycle keeps after a release.
            release: format!(
                "UPDATE {t} AS t SET state = 2, fingerprint = NULL, payload = NULL, \
                 expires_at = c.now + (t.expires_at - t.lease_until), lease_until = NULL \
                 FROM {CLOCK} WHERE {}",
                held(1)
            )
            .into(),
            // One statement, lifecycle::remove: the row, locked, becomes a vacant trace that
            // keeps its fencing number (for the claimed row's own trace, or $3 µs for a
            // finished one); a live trace stays as it is; a row that is no lifecycle entry
            // (or expired) is deleted. The answer is computed on the row as it was.
            remove: format!(
                "WITH old AS (SELECT t.state, t.lease_until, t.expires_at, c.now \
                   FROM {t} AS t, {CLOCK} \
                   WHERE t.namespace = $1 AND t.idem_key = $2 FOR UPDATE), \
                 vacated AS (UPDATE {t} AS t SET state = 2, fingerprint = NULL, payload = NULL, \
                   expires_at = old.now + CASE WHEN t.state = 1 \
                     THEN t.expires_at - t.lease_until ELSE {} END, \
                   lease_until = NULL \
                   FROM old WHERE t.namespace = $1 AND t.idem_key = $2 \
                   AND old.expires_at > old.now AND old.state IN (1, 3, 4) \
                   AND (old.state <> 1 OR COALESCE(old.lease_until < old.expires_at, false)) \
                   RETURNING 1), \
                 deleted AS (DELETE FROM {t} AS t USING old \
                   WHERE t.namespace = $1 AND t.idem_key = $2 \
                   AND NOT (old.expires_at > old.now AND (old.state = 2 \
                     OR old.state IN (3, 4) \
                     OR (old.state = 1 AND COALESCE(old.lease_until < old.expires_at, false)))) \
                   RETURNING 1) \
                 SELECT COALESCE(old.expires_at > old.now AND (old.state IN (3, 4) \
                   OR (old.state = 1 AND old.lease_until > old.now)), false) AS visible, \
                   (SELECT count(*) FROM vacated) + (SELECT count(*) FROM deleted) AS written \
                 FROM old",
                micros!(3)
            )
            .into(),
        }
    }
}

/// The statements of the token store.
#[derive(Debug)]
pub(crate) struct TokenStatements {
    /// Stores a new token, unless it has a row. Binds: token, scope, TTL µs.
    pub(crate) insert: Arc<str>,
    /// Reissues a token whose row has expired; a live row matches nothing. Binds: token,
    /// scope, TTL µs.
    pub(crate) replace_expired: Arc<str>,
    /// Uses a token up: the whole consume rule in one WHERE clause, re-checked under the
    /// row lock, so of concurrent consumes exactly one matches. Binds: token, scope.
    pub(crate) consume: Arc<str>,
    /// A live token's scope and whether it was used. Binds: token.
    pub(crate) inspect: Arc<str>,
}

impl TokenStatements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = quoted(table);
        Self {
            insert: format!(
                "INSERT INTO {t} (token, scope, used_at, expires_at) \
                 SELECT $1, $2, NULL, c.now + {} FROM {CLOCK} ON CONFLICT DO NOTHING",
                micros!(3)
            )
            .into(),
            replace_expired: format!(
                "UPDATE {t} AS t SET scope = $2, used_at = NULL, expires_at = c.now + {} \
                 FROM {CLOCK} WHERE t.token = $1 AND t.expires_at <= c.now",
                micros!(3)
            )
            .into(),
            consume: format!(
                "UPDATE {t} AS t SET used_at = c.now FROM {CLOCK} \
                 WHERE t.token = $1 AND t.scope = $2 AND t.used_at IS NULL AND t.expires_at > c.now"
            )
            .into(),
            inspect: format!(
                "SELECT t.scope, t.used_at IS NOT NULL AS used FROM {t} AS t, {CLOCK} \
                 WHERE t.token = $1 AND t.expires_at > c.now"
            )
            .into(),
        }
    }
}

/// A statement as sqlx takes it. The text is built only from constants and a validated
/// [`TableName`], and every value travels as a bound parameter.
pub(crate) fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(text))
}
