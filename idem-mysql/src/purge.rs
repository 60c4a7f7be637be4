//! The purge on InnoDB: pick the expired rows no one holds, then delete them by key.
//!
//! One `DELETE ... WHERE expires_at <= now ORDER BY expires_at LIMIT n` reads the
//! `expires_at` index up to the first live row and locks it too (REPEATABLE READ and READ
//! COMMITTED alike), so a live row in a transaction still open (a claim of the
//! transactional mode, say) held every batch up for the lock wait timeout, while the batch
//! held the expired rows it had locked, and claims of those keys waited behind it. Here
//! the expired rows are picked with `FOR UPDATE SKIP LOCKED`, which passes a locked row
//! instead of waiting for it, and deleted by primary key, which locks nothing else: four
//! round trips a batch (begin, pick, delete, commit) instead of one.

use idem_core::Error;
use idem_sql::driver::{column, query};
use idem_sql::{Arg, SqlDialect, Statement, TableKind, TableName};
use sqlx::MySqlConnection;

use crate::MySqlDialect;
use crate::schema::quoted;
use crate::token_schema::TOKENS;

/// The most keys one DELETE names: far below the 65,535 placeholders a statement takes.
const KEYS_PER_DELETE: usize = 1_000;

/// The primary key columns of a table of `kind`.
fn key_columns(kind: &TableKind) -> &'static [&'static str] {
    if kind.comment_prefix == TOKENS.comment_prefix {
        &["token"]
    } else {
        &["namespace", "idem_key"]
    }
}

/// Picks up to `?` expired rows, oldest first, locking them and passing any row another
/// transaction holds.
fn pick(table: &TableName, keys: &[&str]) -> Statement {
    Statement::new(format!(
        "SELECT {} FROM {} WHERE expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT ? \
         FOR UPDATE SKIP LOCKED",
        keys.join(", "),
        quoted(table)
    ))
}

/// Deletes `rows` rows by key. They are locked by this transaction and were expired when
/// picked, and an expired row changes only by a write, which the lock keeps out: no need
/// to read their expiry again (which would send the server down the `expires_at` index).
/// Each key is spelled out as equalities: MariaDB runs a prepared row constructor
/// (`(namespace, idem_key) IN ((?, ?))`) as a scan of the whole table, locking every row.
fn delete(table: &TableName, keys: &[&str], rows: usize) -> Statement {
    let one = keys
        .iter()
        .map(|key| format!("{key} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ");
    Statement::new(format!(
        "DELETE FROM {} WHERE ({one}){}",
        quoted(table),
        format!(" OR ({one})").repeat(rows.saturating_sub(1))
    ))
}

/// Deletes up to `batch` expired rows of `table`, a table of `kind`: how many.
pub(crate) async fn batch(
    conn: &mut MySqlConnection,
    table: &TableName,
    kind: &TableKind,
    batch: u32,
) -> Result<u64, Error> {
    let keys = key_columns(kind);
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(MySqlDialect::error)?;
    let picked = query::<MySqlDialect>(&pick(table, keys), &[Arg::Count(batch)])
        .fetch_all(&mut *tx)
        .await
        .map_err(MySqlDialect::error)?;
    let mut values = Vec::with_capacity(picked.len() * keys.len());
    for row in &picked {
        for key in keys {
            values.push(column::<_, Vec<u8>>(row, key)?);
        }
    }
    let mut deleted = 0;
    for chunk in values.chunks(KEYS_PER_DELETE * keys.len()) {
        let args: Vec<Arg<'_>> = chunk.iter().map(|v| Arg::Bytes(v)).collect();
        let statement = delete(table, keys, chunk.len() / keys.len());
        deleted += MySqlDialect::execute(&mut tx, &statement, &args)
            .await
            .map_err(MySqlDialect::error)?;
    }
    tx.commit().await.map_err(MySqlDialect::error)?;
    Ok(deleted)
}
