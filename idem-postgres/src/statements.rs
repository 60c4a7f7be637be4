//! Every statement the record store sends, written out once per table name.
//!
//! Each statement reads the server's clock once: `clock_timestamp()` in a one-row subquery
//! `c`, so every comparison in the statement sees the same instant. Not `now()`, which is
//! the start of the transaction and would stand still through a long transaction of the
//! caller's in the transactional mode.
//!
//! Writes are conditional, and whether they matched (affected rows, or a `RETURNING` row)
//! is the verdict. In an `UPDATE`, every `SET` expression reads the row as it was.

use idem_sql::{RecordStatements, SqlDialect, Statement, TableName, TokenStatements};

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
/// lifecycle keeps after the lease. An infinite time (`timestamptz` holds `infinity`, the
/// store never writes it) reads as NULL, which does not decode where the row's state needs
/// it (`CorruptRecord`), instead of failing the statement ("cannot subtract infinite
/// timestamps"); but an `expires_at` of `-infinity` reads as expired (0), as the takeover
/// and the purge treat it (and idem-mysql a zero date).
///
/// An expired row is absent whatever it holds, so its state and fencing number, which
/// only PostgreSQL's wider signed columns could hold out of range, read as a vacant
/// trace's: the rest of an expired row is not looked at (`StoredRow::into_entry`).
const COLUMNS: &str = "CASE WHEN t.expires_at <= c.now THEN 2::smallint ELSE t.state END AS state, \
     t.fingerprint, t.owner, \
     CASE WHEN t.expires_at <= c.now THEN 0::bigint ELSE t.fencing END AS fencing, \
     CASE WHEN isfinite(t.lease_until) \
       THEN (extract(epoch FROM t.lease_until - c.now) * 1000000)::bigint END AS lease_left_us, \
     CASE WHEN isfinite(t.lease_until) AND isfinite(t.expires_at) \
       THEN (extract(epoch FROM t.expires_at - t.lease_until) * 1000000)::bigint END AS trace_us, \
     CASE WHEN isfinite(t.expires_at) \
       THEN (extract(epoch FROM t.expires_at - c.now) * 1000000)::bigint \
       WHEN t.expires_at <= c.now THEN 0::bigint END AS expires_left_us, \
     t.payload";

/// The statement only PostgreSQL has: `remove` in one statement.
#[derive(Debug)]
pub struct PgExtra {
    /// Frees a key's row and says whether it showed a record. Binds: namespace, key,
    /// trace µs of a finished row.
    pub(crate) remove: Statement,
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

/// The statements for one table.
/// Generic over the dialect only so this module need not name [`PgDialect`](crate::PgDialect),
/// which names it back.
pub(crate) fn records<D: SqlDialect<Extra = PgExtra>>(table: &TableName) -> RecordStatements<D> {
    let t = quoted(table);
    let select = format!(
        "SELECT {COLUMNS} FROM {t} AS t, {CLOCK} WHERE t.namespace = $1 AND t.idem_key = $2"
    );
    RecordStatements {
        // A key with a row matches nothing: no error, so a caller's transaction stays
        // usable and the server logs nothing; the claim then reads the row with `select`.
        insert: Statement::new(format!(
            "INSERT INTO {t} \
                 (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at) \
                 SELECT $1, $2, 1, $3, $4, 1, c.now + {}, c.now + {} FROM {CLOCK} \
                 ON CONFLICT DO NOTHING",
            micros!(5),
            micros!(6),
        )),
        // Under READ COMMITTED each statement sees the latest commit; a claim that
        // finds a committed row (a replay, a key in progress) takes no lock.
        select_locked: Statement::new(select.clone()),
        select: Statement::new(select),
        // The WHERE clause is the lifecycle's claim rule. Under READ COMMITTED a row
        // changed by a concurrent transaction is re-checked in its latest version once
        // that commits, so of many claimers that read the same free row exactly one
        // matches it. A key at 2^63−1 is refused before this statement runs
        // (`CorruptRecord`, see `idem_core::backend::lifecycle::next_fencing`); the ELSE
        // only keeps the CASE from overflowing.
        take_over: Statement::new(format!(
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
        )),
        finish: Statement::new(format!(
            "UPDATE {t} AS t SET state = $1, payload = $2, lease_until = NULL, \
                 expires_at = c.now + {} FROM {CLOCK} WHERE {}",
            micros!(3),
            held(4)
        )),
        renew: Statement::new(format!(
            "UPDATE {t} AS t SET lease_until = c.now + {}, expires_at = c.now + {} \
                 FROM {CLOCK} WHERE {}",
            micros!(1),
            micros!(2),
            held(3)
        )),
        // `expires_at - lease_until` of a claimed row is trace_ttl(lease TTL), exactly
        // what the lifecycle keeps after a release.
        release: Statement::new(format!(
            "UPDATE {t} AS t SET state = 2, fingerprint = NULL, payload = NULL, \
                 expires_at = c.now + (t.expires_at - t.lease_until), lease_until = NULL \
                 FROM {CLOCK} WHERE {}",
            held(1)
        )),
        // One statement, lifecycle::remove: the row, locked, becomes a vacant trace that
        // keeps its fencing number (for the claimed row's own trace, or $3 µs for a
        // finished one); a live trace stays as it is; a row that is no lifecycle entry
        // (or expired) is deleted. The answer is computed on the row as it was. A
        // fencing number below 1 (the signed column can hold a negative one, which does
        // not decode) or an infinite time is no entry either: kept as a trace, it would
        // leave the key corrupt after the removal that is meant to clear it (as
        // idem-mysql's `fencing >= 1`).
        extra: PgExtra {
            remove: Statement::new(format!(
                "WITH old AS (SELECT t.state, t.fencing, t.lease_until, t.expires_at, c.now \
                   FROM {t} AS t, {CLOCK} \
                   WHERE t.namespace = $1 AND t.idem_key = $2 FOR UPDATE), \
                 vacated AS (UPDATE {t} AS t SET state = 2, fingerprint = NULL, payload = NULL, \
                   expires_at = old.now + CASE WHEN t.state = 1 \
                     THEN t.expires_at - t.lease_until ELSE {} END, \
                   lease_until = NULL \
                   FROM old WHERE t.namespace = $1 AND t.idem_key = $2 \
                   AND old.expires_at > old.now AND isfinite(old.expires_at) \
                   AND old.state IN (1, 3, 4) AND old.fencing >= 1 \
                   AND (old.state <> 1 OR COALESCE(isfinite(old.lease_until) \
                     AND old.lease_until < old.expires_at, false)) \
                   RETURNING 1), \
                 deleted AS (DELETE FROM {t} AS t USING old \
                   WHERE t.namespace = $1 AND t.idem_key = $2 \
                   AND NOT (old.expires_at > old.now AND isfinite(old.expires_at) \
                     AND (old.state = 2 AND old.fencing >= 0 \
                     OR old.fencing >= 1 AND (old.state IN (3, 4) \
                     OR (old.state = 1 AND COALESCE(isfinite(old.lease_until) \
                       AND old.lease_until < old.expires_at, false))))) \
                   RETURNING 1) \
                 SELECT COALESCE(old.expires_at > old.now AND (old.state IN (3, 4) \
                   OR (old.state = 1 AND old.lease_until > old.now)), false) AS visible, \
                   (SELECT count(*) FROM vacated) + (SELECT count(*) FROM deleted) AS written \
                 FROM old",
                micros!(3)
            )),
        },
    }
}

/// The statements of the token store.
pub(crate) fn tokens(table: &TableName) -> TokenStatements {
    let t = quoted(table);
    TokenStatements {
        insert: Statement::new(format!(
            "INSERT INTO {t} (token, scope, used_at, expires_at) \
             SELECT $1, $2, NULL, c.now + {} FROM {CLOCK} ON CONFLICT DO NOTHING",
            micros!(3)
        )),
        replace_expired: Statement::new(format!(
            "UPDATE {t} AS t SET scope = $2, used_at = NULL, used_by = NULL, \
             expires_at = c.now + {} \
             FROM {CLOCK} WHERE t.token = $1 AND t.expires_at <= c.now",
            micros!(3)
        )),
        // An infinite expiry (`timestamptz` holds `infinity`; a `Ttl` is at most ten years,
        // so the store never writes it) is no token of the store's: consuming does not
        // match it, and `inspect` reads its scope as NULL, which does not decode
        // (`CorruptRecord`), as an infinite time in the records table. Consumed, it would
        // be kept, marked, forever, never purged.
        consume: Statement::new(format!(
            "UPDATE {t} AS t SET used_at = c.now, used_by = $3 FROM {CLOCK} \
             WHERE t.token = $1 AND t.scope = $2 AND t.used_at IS NULL AND t.expires_at > c.now \
             AND isfinite(t.expires_at)"
        )),
        inspect: Statement::new(format!(
            "SELECT CASE WHEN isfinite(t.expires_at) THEN t.scope END AS scope, \
             t.used_at IS NOT NULL AS used, t.used_by FROM {t} AS t, {CLOCK} \
             WHERE t.token = $1 AND t.expires_at > c.now"
        )),
    }
}

/// Deletes up to `$1` rows past `expires_at`, oldest first, on the `expires_at` index.
/// PostgreSQL's DELETE has no LIMIT, so the rows are picked and locked in a subquery (their
/// `ctid` cannot change while we hold the lock); SKIP LOCKED lets concurrent purges and
/// live calls pass each other instead of queueing, and the outer condition re-checks the
/// expiry on the row it deletes. Works for both kinds of table.
pub(crate) fn purge(table: &TableName) -> Statement {
    let t = quoted(table);
    Statement::new(format!(
        "DELETE FROM {t} AS t USING (SELECT clock_timestamp() AS now) c \
         WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM {t} WHERE expires_at <= clock_timestamp() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)) AND t.expires_at <= c.now"
    ))
}
