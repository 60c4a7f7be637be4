//! The lifecycle's transitions as statements on one connection, used both on pooled
//! autocommit connections and inside a caller's transaction.

use std::sync::Arc;

use bytes::Bytes;
use idem_core::lifecycle::{self, Entry};
use idem_core::{Claim, ClaimRequest, Error, InvalidInput, Key, Lease, Record, Ttl};
use sqlx::{MySqlConnection, Row};

use crate::errors::{from_sqlx, is_duplicate_key};
use crate::row::{NOW, StoredRow};
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

/// How many read-then-write rounds a claim (or a token's consume) makes before it gives
/// up. A round fails only when another caller changed the row in between, so a second
/// round nearly always settles.
pub(crate) const ROUNDS: usize = 16;

/// Claims a key: INSERT for a never-seen key; otherwise read the row, let the lifecycle
/// decide, and take the row over with one conditional UPDATE when it says "acquire".
pub(crate) async fn claim(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    request: &ClaimRequest,
    reading: Reading,
) -> Result<Claim, Error> {
    for _ in 0..ROUNDS {
        if insert(conn, sql_for, request).await? {
            return Ok(Claim::Acquired(lease(request, 1)));
        }
        // The row vanished (removed, purged) since the INSERT saw it: insert again.
        let Some(entry) = select(conn, sql_for, &request.key, reading).await? else {
            continue;
        };
        let step = lifecycle::claim(Some(&entry), request, NOW);
        match step.answer {
            Ok(Claim::Acquired(_)) => {
                if let Some(fencing) = take_over(conn, sql_for, request).await? {
                    tracing::debug!(key = %request.key, fencing, "idem-mysql: took a free key over");
                    return Ok(Claim::Acquired(lease(request, fencing)));
                }
                // Another caller changed the row first: look again.
            }
            answer => return answer,
        }
    }
    Err(Error::unavailable(format!(
        "the claim of {} did not settle in {ROUNDS} rounds: the row kept changing",
        request.key
    )))
}

fn lease(request: &ClaimRequest, fencing: u64) -> Lease {
    Lease {
        key: request.key.clone(),
        owner: request.owner,
        fencing,
    }
}

/// The lease TTL and the whole life of a claimed row (lease + trace), in microseconds.
fn claim_spans(lease_ttl: Ttl) -> (u64, u64) {
    let lease = lease_ttl.as_millis();
    let life = lease.saturating_add(lifecycle::trace_ttl(lease));
    (micros(lease), micros(life))
}

/// Milliseconds as the microseconds `TIMESTAMPADD(MICROSECOND, ...)` takes.
pub(crate) fn micros(millis: u64) -> u64 {
    millis.saturating_mul(1000)
}

/// Inserts a claimed row; `false` when the key already has one.
async fn insert(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    request: &ClaimRequest,
) -> Result<bool, Error> {
    let (lease_us, life_us) = claim_spans(request.lease_ttl);
    let inserted = sqlx::query(sql(&sql_for.insert))
        .bind(request.key.namespace().as_bytes())
        .bind(request.key.id().as_bytes())
        .bind(request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]))
        .bind(&request.owner.as_bytes()[..])
        .bind(lease_us)
        .bind(life_us)
        .execute(&mut *conn)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(from_sqlx(e)),
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
    row.map(|row| StoredRow::decode(&row)?.into_entry())
        .transpose()
}

/// Takes a free row over; the new fencing number, or `None` when the row was no longer free
/// for this claim.
async fn take_over(
    conn: &mut MySqlConnection,
    sql_for: &Statements,
    request: &ClaimRequest,
) -> Result<Option<u64>, Error> {
    let (lease_us, life_us) = claim_spans(request.lease_ttl);
    let owner = &request.owner.as_bytes()[..];
    let fingerprint = request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]);
    let done = sqlx::query(sql(&sql_for.take_over))
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
        .execute(&mut *conn)
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
        Outcome::Completed => crate::statements::state::COMPLETED,
        Outcome::Failed => crate::statements::state::FAILED,
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
            .bind(micros(lifecycle::trace_ttl(0)))
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

/// Deletes expired rows in batches of `batch_size`, each its own short statement `purge`
/// (see [`statements::purge`](crate::statements::purge)); how many.
pub(crate) async fn purge_expired(
    conn: &mut MySqlConnection,
    purge: &Arc<str>,
    batch_size: u32,
) -> Result<u64, Error> {
    if batch_size == 0 {
        return Err(InvalidInput::Other("a purge batch holds at least one row").into());
    }
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sql(purge))
            .bind(batch_size)
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?
            .rows_affected();
        total += deleted;
        if deleted < u64::from(batch_size) {
            return Ok(total);
        }
    }
}
