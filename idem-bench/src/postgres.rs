//! PostgreSQL's part of the SQL bench ([`crate::sql`]): the raw statements a hand-written
//! client would send.

use idem::postgres::PgDialect;
use idem_sql::Statement;

use crate::backend::Operation;
use crate::sql::{RawEngine, RawSql, SqlBench};

/// The PostgreSQL section.
pub type Pg = SqlBench<PgDialect>;

impl RawEngine for PgDialect {
    const BENCH_NAME: &'static str = "postgres";
    const URL_VAR: &'static str = "IDEM_POSTGRES_URL";
    const DEFAULT_URL: &'static str = "postgres://postgres@127.0.0.1:5432/test";
    const QUOTE: char = '"';

    fn raw_sql(t: &str) -> RawSql {
        let insert = format!(
            "INSERT INTO {t} \
             (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at) \
             VALUES {}",
            Self::seed_row(0)
        );
        RawSql {
            insert_or_nothing: Statement::new(format!("{insert} ON CONFLICT DO NOTHING")),
            insert: Statement::new(insert),
            select: Statement::new(format!(
                "SELECT t.state, t.fingerprint, t.owner, t.fencing, \
                 (extract(epoch FROM t.lease_until - c.now) * 1000000)::bigint AS lease_left_us, \
                 (extract(epoch FROM t.expires_at - t.lease_until) * 1000000)::bigint AS trace_us, \
                 (extract(epoch FROM t.expires_at - c.now) * 1000000)::bigint AS expires_left_us, \
                 t.payload FROM {t} AS t, (SELECT clock_timestamp() AS now) c \
                 WHERE t.namespace = $1 AND t.idem_key = $2"
            )),
            complete: Statement::new(format!(
                "UPDATE {t} SET state = $1, payload = $2, lease_until = NULL, \
                 expires_at = clock_timestamp() + $3 * interval '1 microsecond' \
                 WHERE namespace = $4 AND idem_key = $5 AND state = 1 AND owner = $6 \
                 AND fencing = $7 AND expires_at > clock_timestamp()"
            )),
        }
    }

    fn seed_row(first: usize) -> String {
        let n = |k: usize| first + k + 1;
        format!(
            "(${}, ${}, 1, NULL, ${}, 1, clock_timestamp() + ${} * interval '1 microsecond', \
             clock_timestamp() + ${} * interval '1 microsecond')",
            n(0),
            n(1),
            n(2),
            n(3),
            n(4)
        )
    }

    fn floor(operation: Operation) -> &'static str {
        match operation {
            Operation::ClaimNew => "INSERT",
            Operation::Replay => "INSERT ON CONFLICT + SELECT",
            Operation::Complete => "conditional UPDATE",
            Operation::Execute => "INSERT + conditional UPDATE",
        }
    }

    /// Issue 14: claim new ≥ 0.90× a raw INSERT; execute ≥ 0.45× one raw INSERT, which
    /// against this two-statement floor is ≥ 0.9×.
    fn target(operation: Operation) -> Option<f64> {
        match operation {
            Operation::ClaimNew | Operation::Complete | Operation::Execute => Some(0.9),
            Operation::Replay => None,
        }
    }
}
