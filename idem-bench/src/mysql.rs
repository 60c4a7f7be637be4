//! MySQL/MariaDB's part of the SQL bench ([`crate::sql`]): the raw statements a
//! hand-written client would send.

use idem::mysql::MySqlDialect;
use idem_sql::Statement;

use crate::backend::Operation;
use crate::sql::{RawEngine, RawSql, SqlBench};

/// The MySQL section.
pub type Mysql = SqlBench<MySqlDialect>;

impl RawEngine for MySqlDialect {
    const BENCH_NAME: &'static str = "mysql";
    const URL_VAR: &'static str = "IDEM_MYSQL_URL";
    const DEFAULT_URL: &'static str = "mysql://root@127.0.0.1:3306/test";
    const QUOTE: char = '`';

    fn raw_sql(t: &str) -> RawSql {
        let insert = format!(
            "INSERT INTO {t} \
             (namespace, idem_key, state, fingerprint, owner, fencing, lease_until, expires_at, payload) \
             VALUES (?, ?, 1, NULL, ?, 1, TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
             TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), NULL)"
        );
        RawSql {
            // A duplicate key (1062) is the "nothing" here.
            insert_or_nothing: Statement::new(insert.clone()),
            insert: Statement::new(insert),
            select: Statement::new(format!(
                "SELECT state, fingerprint, owner, fencing, \
                 TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) AS lease_left_us, \
                 TIMESTAMPDIFF(MICROSECOND, lease_until, expires_at) AS trace_us, \
                 TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS expires_left_us, \
                 payload FROM {t} WHERE namespace = ? AND idem_key = ?"
            )),
            complete: Statement::new(format!(
                "UPDATE {t} SET state = ?, payload = ?, lease_until = NULL, \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                 WHERE namespace = ? AND idem_key = ? AND state = 1 AND owner = ? AND fencing = ? \
                 AND expires_at > UTC_TIMESTAMP(6)"
            )),
        }
    }

    fn seed_row(_: usize) -> String {
        "(?, ?, 1, NULL, ?, 1, TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)), \
         TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)))"
            .to_owned()
    }

    fn floor(operation: Operation) -> &'static str {
        match operation {
            Operation::ClaimNew => "INSERT",
            Operation::Replay => "INSERT + SELECT",
            Operation::Complete => "conditional UPDATE",
            Operation::Execute => "INSERT + conditional UPDATE",
        }
    }

    fn target(operation: Operation) -> Option<f64> {
        match operation {
            Operation::ClaimNew | Operation::Complete => Some(0.9),
            Operation::Replay => None,
            Operation::Execute => Some(0.85),
        }
    }
}
