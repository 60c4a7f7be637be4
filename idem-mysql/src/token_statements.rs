//! Every statement the token store sends, written out once per table name.
//!
//! As for records, each statement reads the server's clock once (`UTC_TIMESTAMP(6)` is fixed
//! at the start of a statement), and a write's affected-row count is its verdict: sqlx
//! connects with `CLIENT_FOUND_ROWS`, so "affected" means "matched by the WHERE clause".

use idem_sql::{Statement, TableName, TokenStatements};

use crate::schema::quoted;

/// A token that is still usable: not expired, on the server's clock.
const LIVE: &str = "expires_at > UTC_TIMESTAMP(6)";

/// The statements for one token table.
pub(crate) fn tokens(table: &TableName) -> TokenStatements {
    let t = quoted(table);
    TokenStatements {
        insert: Statement::new(format!(
            "INSERT INTO {t} (token, scope, used_at, expires_at) \
             VALUES (?, ?, NULL, TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)))"
        )),
        // The WHERE clause sees the row as it is before the SET list changes it.
        replace_expired: Statement::reordered(
            format!(
                "UPDATE {t} SET scope = ?, used_at = NULL, used_by = NULL, \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                 WHERE token = ? AND NOT ({LIVE})"
            ),
            &[1, 2, 0],
        ),
        consume: Statement::reordered(
            format!(
                "UPDATE {t} SET used_at = UTC_TIMESTAMP(6), used_by = ? \
                 WHERE token = ? AND scope = ? AND used_at IS NULL AND {LIVE}"
            ),
            &[2, 0, 1],
        ),
        inspect: Statement::new(format!(
            "SELECT scope, CAST(used_at IS NOT NULL AS SIGNED) AS used, used_by \
             FROM {t} WHERE token = ? AND {LIVE}"
        )),
    }
}
