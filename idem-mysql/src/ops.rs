//! The lifecycle's transitions as statements on one connection, used both on pooled
//! autocommit connections and inside a caller's transaction.

use bytes::Bytes;
use idem_core::backend::lifecycle::Entry;
use idem_core::{ClaimRequest, Error, Key, Lease, Record, Ttl};
use idem_sql::row::{NOW, claim_spans, micros, state};
use idem_sql::{ClaimSteps, StoredRow};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, Row};

use crate::errors::{from_sqlx, is_duplicate_key};
use crate::statements::{Statements, sql};

/// How a claim reads a row it could not insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// A plain read: on an autocommit connection every statement sees the latest commit.
    Latest,
    /// A shared-lock read: inside a transaction a plain read could see an older snapshot,
    /// and the failed INSERT already holds this shared lock, so it costs no new conflict.
    Locked,
}

/// The statements of a claim on one connection, for [`idem_sql::claim`].
pub(crate) struct OnConnection<'c> {
    pub(crate) conn: &'c mut MySqlConnection,
    pub(crate) statements: &'c Statements,
    pub(crate) reading: Reading,
}

impl ClaimSteps for OnConnection<'_> {
    /// Inserts a claimed row; `false` when the key already has one (1062).
    async fn insert(&mut self, request: &ClaimRequest) -> Result<bool, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let inserted = sqlx::query(sql(&self.statements.insert))
            .bind(request.key.namespace().as_bytes())
            .bind(request.key.id().as_bytes())
            .bind(request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]))
            .bind(&request.owner.as_bytes()[..])
            .bind(lease_us)
            .bind(life_us)
            .execute(&mut *self.conn)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(from_sqlx(e)),
        }
    }

    async fn select(&mut self, key: &Key) -> Result<Option<Entry>, Error> {
        select(self.conn, self.statements, key, self.reading).await
    }

    /// The takeover reports the new fencing number through `LAST_INSERT_ID(expr)`.
    async fn take_over(&mut self, request: &ClaimRequest) -> Result<Option<u64>, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let owner = &request.owner.as_bytes()[..];
        let fingerprint = request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]);
        let done = sqlx::query(sql(&self.statements.take_over))
            .bind(owner)
            .bind(owner)
            .bind(fingerprint)
            .bind(lease_us)
            .bind(life_us)
            .bind(request.key.namespace().as_bytes())
            .bind(request.key.id().as_bytes())
            .bind(owner)
            .bind(fingerprint)
            .bind(owner)
            .execute(&mut *self.conn)
            .await
            .map_err(from_sqlx)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        match done.last_insert_id() {
            // Fencing numbers start at 1; 0 means the server did not pass LAST_INSERT_ID on.
            0 => Err(Error::backend(
                "the server did not report the fencing number (LAST_INSERT_ID) of a takeover",
            )),
            fencing => Ok(Some(fencing)),
        }
    }
}

/// Reads a key's row as a lifecycle entry; `None` when there is no row.
pub(crate) async fn select(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    key: &Key,
    reading: Reading,
) -> Result<Option<Entry>, Error> {
    let text = match reading {
        Reading::Latest => &sql_for.select,
        Reading::Locked => &sql_for.select_locked,
    };
    let row = sqlx::query(sql(text))
        .bind(key.namespace().as_bytes())
        .bind(key.id().as_bytes())
        .fetch_optional(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    row.map(|row| decode(&row)?.into_entry()).transpose()
}

/// Decodes the columns of [`crate::statements`]' `COLUMNS`.
fn decode(row: &MySqlRow) -> Result<StoredRow, Error> {
    Ok(StoredRow {
        state: column(row, "state")?,
        fingerprint: column(row, "fingerprint")?,
        owner: column(row, "owner")?,
        fencing: column(row, "fencing")?,
        lease_left_us: column(row, "lease_left_us")?,
        trace_us: column(row, "trace_us")?,
        expires_left_us: column(row, "expires_left_us")?,
        payload: column(row, "payload")?,
    })
}

fn column<'r, T>(row: &'r MySqlRow, name: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
{
    row.try_get(name)
        .map_err(|e| Error::corrupt_with(format!("column {name} did not decode"), e))
}

/// What a finished record holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Completed,
    Failed,
}

/// Completes or fails a held key.
pub(crate) async fn finish(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    lease: &Lease,
    outcome: Outcome,
    payload: &Bytes,
    retention: Ttl,
) -> Result<(), Error> {
    let state = match outcome {
        Outcome::Completed => state::COMPLETED,
        Outcome::Failed => state::FAILED,
    };
    let query = sqlx::query(sql(&sql_for.finish))
        .bind(state)
        .bind(payload.as_ref())
        .bind(micros(retention.as_millis()));
    held(conn, bind_held(query, lease)).await
}

/// Extends a held lease to `ttl` from now.
pub(crate) async fn renew(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    lease: &Lease,
    ttl: Ttl,
) -> Result<(), Error> {
    let (lease_us, life_us) = claim_spans(ttl);
    let query = sqlx::query(sql(&sql_for.renew))
        .bind(lease_us)
        .bind(life_us);
    held(conn, bind_held(query, lease)).await
}

/// Frees a held key, keeping its fencing number for the lifecycle's trace.
pub(crate) async fn release(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    lease: &Lease,
) -> Result<(), Error> {
    held(conn, bind_held(sqlx::query(sql(&sql_for.release)), lease)).await
}

type Query<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

fn bind_held<'q>(query: Query<'q>, lease: &'q Lease) -> Query<'q> {
    query
        .bind(lease.key.namespace().as_bytes())
        .bind(lease.key.id().as_bytes())
        .bind(&lease.owner.as_bytes()[..])
        .bind(lease.fencing)
}

/// Runs a transition conditioned on the lease still holding the row: no row matched means
/// the lease was lost, and nothing changed.
async fn held(conn: &mut MySqlConnection, query: Query<'_>) -> Result<(), Error> {
    let done = query.execute(&mut *conn).await.map_err(from_sqlx)?;
    match done.rows_affected() {
        0 => Err(Error::LeaseLost),
        _ => Ok(()),
    }
}

/// Reads a key's record as the lifecycle shows it.
pub(crate) async fn read(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    key: &Key,
) -> Result<Option<Record>, Error> {
    let entry = select(conn, sql_for, key, Reading::Latest).await?;
    Ok(entry.and_then(|e| e.record(key, NOW)))
}

/// Frees a key whatever it holds, leaving the fencing trace of
/// [`lifecycle::remove`]; whether it showed a record. A row that is no lifecycle entry
/// (corrupt) or expired is deleted instead, which is how an operator clears a corrupt row.
/// Runs in its own transaction so that the answer and the write see the same row.
pub(crate) async fn remove(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    key: &Key,
) -> Result<bool, Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    let probed = sqlx::query(sql(&sql_for.probe_locked))
        .bind(key.namespace().as_bytes())
        .bind(key.id().as_bytes())
        .fetch_optional(&mut *tx)
        .await
        .map_err(from_sqlx)?
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get::<i64, _>("visible")?,
                row.try_get::<i64, _>("vacant")?,
            ))
        })
        .transpose()
        .map_err(from_sqlx)?;
    let visible = probed.map(|(visible, _)| visible);
    // A live vacant trace stays as it is; any other row is vacated, or deleted when it is
    // no lifecycle entry.
    if let Some((_, 0)) = probed {
        let vacated = sqlx::query(sql(&sql_for.vacate))
            .bind(micros(idem_core::backend::lifecycle::trace_ttl(0)))
            .bind(key.namespace().as_bytes())
            .bind(key.id().as_bytes())
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        if vacated.rows_affected() == 0 {
            sqlx::query(sql(&sql_for.delete))
                .bind(key.namespace().as_bytes())
                .bind(key.id().as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        }
    }
    tx.commit().await.map_err(from_sqlx)?;
    Ok(visible.is_some_and(|v| v != 0))
}
