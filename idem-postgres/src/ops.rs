//! The lifecycle's transitions as statements on one connection, used both on pooled
//! connections and inside a caller's transaction.

use bytes::Bytes;
use idem_core::backend::lifecycle::Entry;
use idem_core::{ClaimRequest, Error, Key, Lease, Record, Ttl};
use idem_sql::row::{self, NOW, claim_spans, micros};
use idem_sql::{ClaimSteps, StoredRow};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::errors::from_sqlx;
use crate::statements::{Statements, sql};

/// The statements of a claim on one connection, for [`idem_sql::claim`].
pub(crate) struct OnConnection<'c> {
    pub(crate) conn: &'c mut PgConnection,
    pub(crate) statements: &'c Statements,
}

impl ClaimSteps for OnConnection<'_> {
    async fn insert(&mut self, request: &ClaimRequest) -> Result<bool, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let inserted = sqlx::query(sql(&self.statements.insert))
            .bind(request.key.namespace().as_bytes())
            .bind(request.key.id().as_bytes())
            .bind(request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]))
            .bind(&request.owner.as_bytes()[..])
            .bind(signed(lease_us))
            .bind(signed(life_us))
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(from_sqlx)?;
        Ok(inserted.is_some())
    }

    async fn select(&mut self, key: &Key) -> Result<Option<Entry>, Error> {
        select(self.conn, self.statements, key).await
    }

    /// `fencing` is a `bigint`.
    fn max_fencing(&self) -> u64 {
        idem_core::backend::lifecycle::MAX_SIGNED_FENCING
    }

    async fn take_over(&mut self, request: &ClaimRequest) -> Result<Option<u64>, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let row = sqlx::query(sql(&self.statements.take_over))
            .bind(&request.owner.as_bytes()[..])
            .bind(request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]))
            .bind(signed(lease_us))
            .bind(signed(life_us))
            .bind(request.key.namespace().as_bytes())
            .bind(request.key.id().as_bytes())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(from_sqlx)?;
        row.map(|row| row::fencing(column(&row, "fencing")?))
            .transpose()
    }
}

/// Reads a key's row as a lifecycle entry; `None` when there is no row.
async fn select(
    conn: &mut PgConnection,
    statements: &Statements,
    key: &Key,
) -> Result<Option<Entry>, Error> {
    let row = sqlx::query(sql(&statements.select))
        .bind(key.namespace().as_bytes())
        .bind(key.id().as_bytes())
        .fetch_optional(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    row.map(|row| decode(&row)?.into_entry()).transpose()
}

/// Decodes the columns of the statements' `COLUMNS`.
fn decode(row: &PgRow) -> Result<StoredRow, Error> {
    let state: i16 = column(row, "state")?;
    Ok(StoredRow {
        state: u8::try_from(state).map_err(|_| Error::corrupt(format!("unknown state {state}")))?,
        fingerprint: column(row, "fingerprint")?,
        owner: column(row, "owner")?,
        fencing: row::fencing(column(row, "fencing")?)?,
        lease_left_us: column(row, "lease_left_us")?,
        trace_us: column(row, "trace_us")?,
        expires_left_us: column(row, "expires_left_us")?,
        payload: column(row, "payload")?,
    })
}

fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|e| Error::corrupt_with(format!("column {name} did not decode"), e))
}

/// Microseconds as the `bigint` PostgreSQL binds (a `Ttl` is at most ten years).
fn signed(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(i64::MAX)
}

/// What a finished record holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Completed,
    Failed,
}

/// Completes or fails a held key.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    statements: &Statements,
    lease: &Lease,
    outcome: Outcome,
    payload: &Bytes,
    retention: Ttl,
) -> Result<(), Error> {
    let state = i16::from(match outcome {
        Outcome::Completed => row::state::COMPLETED,
        Outcome::Failed => row::state::FAILED,
    });
    let query = sqlx::query(sql(&statements.finish))
        .bind(state)
        .bind(payload.as_ref())
        .bind(signed(micros(retention.as_millis())));
    held(conn, bind_held(query, lease)).await
}

/// Extends a held lease to `ttl` from now.
pub(crate) async fn renew(
    conn: &mut PgConnection,
    statements: &Statements,
    lease: &Lease,
    ttl: Ttl,
) -> Result<(), Error> {
    let (lease_us, life_us) = claim_spans(ttl);
    let query = sqlx::query(sql(&statements.renew))
        .bind(signed(lease_us))
        .bind(signed(life_us));
    held(conn, bind_held(query, lease)).await
}

/// Frees a held key, keeping its fencing number for the lifecycle's trace.
pub(crate) async fn release(
    conn: &mut PgConnection,
    statements: &Statements,
    lease: &Lease,
) -> Result<(), Error> {
    held(
        conn,
        bind_held(sqlx::query(sql(&statements.release)), lease),
    )
    .await
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_held<'q>(query: Query<'q>, lease: &'q Lease) -> Query<'q> {
    // A fencing number past i64::MAX cannot be in the table: bound as -1, it matches nothing.
    query
        .bind(lease.key.namespace().as_bytes())
        .bind(lease.key.id().as_bytes())
        .bind(&lease.owner.as_bytes()[..])
        .bind(i64::try_from(lease.fencing).unwrap_or(-1))
}

/// Runs a transition conditioned on the lease still holding the row: no row matched means
/// the lease was lost, and nothing changed.
async fn held(conn: &mut PgConnection, query: Query<'_>) -> Result<(), Error> {
    let done = query.execute(&mut *conn).await.map_err(from_sqlx)?;
    match done.rows_affected() {
        0 => Err(Error::LeaseLost),
        _ => Ok(()),
    }
}

/// Reads a key's record as the lifecycle shows it.
pub(crate) async fn read(
    conn: &mut PgConnection,
    statements: &Statements,
    key: &Key,
) -> Result<Option<Record>, Error> {
    let entry = select(conn, statements, key).await?;
    Ok(entry.and_then(|e| e.record(key, NOW)))
}

/// Frees a key whatever it holds, leaving the fencing trace of
/// [`lifecycle::remove`](idem_core::backend::lifecycle::remove); whether it showed a record.
pub(crate) async fn remove(
    conn: &mut PgConnection,
    statements: &Statements,
    key: &Key,
) -> Result<bool, Error> {
    let finished_trace_us = idem_core::backend::lifecycle::trace_ttl(0).saturating_mul(1000);
    let row = sqlx::query(sql(&statements.remove))
        .bind(key.namespace().as_bytes())
        .bind(key.id().as_bytes())
        .bind(signed(finished_trace_us))
        .fetch_optional(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    match row {
        Some(row) => column(&row, "visible"),
        None => Ok(false),
    }
}
