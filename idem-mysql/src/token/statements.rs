//! Every statement the token store sends, written out once per table name.
//!
//! As for records, each statement reads the server's clock once (`UTC_TIMESTAMP(6)` is fixed
//! at the start of a statement), and a write's affected-row count is its verdict: sqlx
//! connects with `CLIENT_FOUND_ROWS`, so "affected" means "matched by the WHERE clause".

use std::sync::Arc;

use idem_sql::TableName;

use crate::schema::quoted;

/// A token that is still usable: not expired, on the server's clock.
const LIVE: &str = "expires_at > UTC_TIMESTAMP(6)";

/// The statements for one token table.
#[derive(Debug)]
pub(crate) struct TokenStatements {
    /// Stores a new token. Binds: token, scope, TTL µs.
    pub(crate) insert: Arc<str>,
    /// Reissues a token whose row has expired; a live row matches nothing, so it is never
    /// overwritten. Binds: scope, TTL µs, token.
    pub(crate) replace_expired: Arc<str>,
    /// Uses a token up: the whole consume rule in one WHERE clause, re-checked under the row
    /// lock, so of concurrent consumes exactly one matches. Binds: token, scope.
    pub(crate) consume: Arc<str>,
    /// A live token's scope and whether it was used, to say why a consume matched nothing.
    /// Binds: token.
    pub(crate) inspect: Arc<str>,
}

impl TokenStatements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = quoted(table);
        Self {
            insert: format!(
                "INSERT INTO {t} (token, scope, used_at, expires_at) \
                 VALUES (?, ?, NULL, TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)))"
            )
            .into(),
            // The WHERE clause sees the row as it is before the SET list changes it.
            replace_expired: format!(
                "UPDATE {t} SET scope = ?, used_at = NULL, \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6)) \
                 WHERE token = ? AND NOT ({LIVE})"
            )
            .into(),
            consume: format!(
                "UPDATE {t} SET used_at = UTC_TIMESTAMP(6) \
                 WHERE token = ? AND scope = ? AND used_at IS NULL AND {LIVE}"
            )
            .into(),
            inspect: format!(
                "SELECT scope, CAST(used_at IS NOT NULL AS SIGNED) AS used \
                 FROM {t} WHERE token = ? AND {LIVE}"
            )
            .into(),
        }
    }
}
