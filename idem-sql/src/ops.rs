//! The lifecycle's transitions as statements on one connection, used both on pooled
//! autocommit connections and inside a caller's transaction.

use bytes::Bytes;
use idem_core::backend::lifecycle::Entry;
use idem_core::{ClaimRequest, Error, Key, Lease, Record, Ttl};

use crate::SqlDialect;
use crate::claim::ClaimSteps;
use crate::dialect::Connection;
use crate::row::{NOW, claim_spans, micros, state};
use crate::statement::{Arg, RecordStatements, Statement};

/// How a claim reads a row it could not insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// A plain read: on an autocommit connection every statement sees the latest commit.
    Latest,
    /// A locking read: inside a transaction a plain read could see an older snapshot.
    Locked,
}

/// The statements of a claim on one connection, for [`crate::claim()`].
pub(crate) struct OnConnection<'c, D: SqlDialect> {
    pub(crate) conn: &'c mut Connection<D>,
    pub(crate) statements: &'c RecordStatements<D>,
    pub(crate) reading: Reading,
}

fn bytes(value: &[u8]) -> Arg<'_> {
    Arg::Bytes(value)
}

fn fingerprint(request: &ClaimRequest) -> Arg<'_> {
    Arg::MaybeBytes(request.fingerprint.as_ref().map(|f| &f.as_bytes()[..]))
}

impl<D: SqlDialect> ClaimSteps for OnConnection<'_, D> {
    /// A key with a row matches nothing (PostgreSQL's `ON CONFLICT DO NOTHING`) or is
    /// refused as a duplicate key (MySQL, whose `INSERT IGNORE` would turn other errors
    /// into warnings too); a refused statement leaves a caller's transaction usable.
    async fn insert(&mut self, request: &ClaimRequest) -> Result<bool, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let args = [
            bytes(request.key.namespace().as_bytes()),
            bytes(request.key.id().as_bytes()),
            fingerprint(request),
            bytes(&request.owner.as_bytes()[..]),
            Arg::Micros(lease_us),
            Arg::Micros(life_us),
        ];
        match D::execute(self.conn, &self.statements.insert, &args).await {
            Ok(inserted) => Ok(inserted > 0),
            Err(error) if D::is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(D::error(error)),
        }
    }

    async fn select(&mut self, key: &Key) -> Result<Option<Entry>, Error> {
        let statement = match self.reading {
            Reading::Latest => &self.statements.select,
            Reading::Locked => &self.statements.select_locked,
        };
        select::<D>(self.conn, statement, key).await
    }

    async fn take_over(&mut self, request: &ClaimRequest) -> Result<Option<u64>, Error> {
        let (lease_us, life_us) = claim_spans(request.lease_ttl);
        let args = [
            bytes(&request.owner.as_bytes()[..]),
            fingerprint(request),
            Arg::Micros(lease_us),
            Arg::Micros(life_us),
            bytes(request.key.namespace().as_bytes()),
            bytes(request.key.id().as_bytes()),
        ];
        D::take_over(self.conn, self.statements, &args).await
    }

    fn max_fencing(&self) -> u64 {
        D::MAX_FENCING
    }
}

/// Reads a key's row as a lifecycle entry; `None` when there is no row.
async fn select<D: SqlDialect>(
    conn: &mut Connection<D>,
    statement: &Statement,
    key: &Key,
) -> Result<Option<Entry>, Error> {
    let args = [
        bytes(key.namespace().as_bytes()),
        bytes(key.id().as_bytes()),
    ];
    let row = D::fetch_optional(conn, statement, &args)
        .await
        .map_err(D::error)?;
    row.map(|row| D::record(&row)?.into_entry()).transpose()
}

/// What a finished record holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Completed,
    Failed,
}

/// Completes or fails a held key.
pub(crate) async fn finish<D: SqlDialect>(
    conn: &mut Connection<D>,
    statements: &RecordStatements<D>,
    lease: &Lease,
    outcome: Outcome,
    payload: &Bytes,
    retention: Ttl,
) -> Result<(), Error> {
    let state = match outcome {
        Outcome::Completed => state::COMPLETED,
        Outcome::Failed => state::FAILED,
    };
    let args = [
        Arg::State(state),
        bytes(payload),
        Arg::Micros(micros(retention.as_millis())),
        bytes(lease.key.namespace().as_bytes()),
        bytes(lease.key.id().as_bytes()),
        bytes(&lease.owner.as_bytes()[..]),
        Arg::Fencing(lease.fencing),
    ];
    match D::execute(conn, &statements.finish, &args).await {
        // The server takes no payload this large, whatever the store's own limit says:
        // refused as that limit refuses it, with nothing written, so the executor stores
        // a marker instead of leaving the key to run again once its lease ends. The
        // server's limit (less the statement around the payload) is below `size`; its
        // error does not say by how much.
        Err(error) if D::is_too_large(&error) => Err(Error::PayloadTooLarge {
            size: payload.len(),
            limit: payload.len().saturating_sub(1),
        }),
        written => verdict::<D>(written),
    }
}

/// Extends a held lease to `ttl` from now.
pub(crate) async fn renew<D: SqlDialect>(
    conn: &mut Connection<D>,
    statements: &RecordStatements<D>,
    lease: &Lease,
    ttl: Ttl,
) -> Result<(), Error> {
    let (lease_us, life_us) = claim_spans(ttl);
    let args = [
        Arg::Micros(lease_us),
        Arg::Micros(life_us),
        bytes(lease.key.namespace().as_bytes()),
        bytes(lease.key.id().as_bytes()),
        bytes(&lease.owner.as_bytes()[..]),
        Arg::Fencing(lease.fencing),
    ];
    held::<D>(conn, &statements.renew, &args).await
}

/// Frees a held key, keeping its fencing number for the lifecycle's trace.
pub(crate) async fn release<D: SqlDialect>(
    conn: &mut Connection<D>,
    statements: &RecordStatements<D>,
    lease: &Lease,
) -> Result<(), Error> {
    let args = [
        bytes(lease.key.namespace().as_bytes()),
        bytes(lease.key.id().as_bytes()),
        bytes(&lease.owner.as_bytes()[..]),
        Arg::Fencing(lease.fencing),
    ];
    held::<D>(conn, &statements.release, &args).await
}

/// Runs a transition conditioned on the lease still holding the row: no row matched means
/// the lease was lost, and nothing changed.
async fn held<D: SqlDialect>(
    conn: &mut Connection<D>,
    statement: &Statement,
    args: &[Arg<'_>],
) -> Result<(), Error> {
    verdict::<D>(D::execute(conn, statement, args).await)
}

/// A conditional transition's verdict from the rows it matched.
fn verdict<D: SqlDialect>(matched: Result<u64, sqlx::Error>) -> Result<(), Error> {
    match matched.map_err(D::error)? {
        0 => Err(Error::LeaseLost),
        _ => Ok(()),
    }
}

/// Reads a key's record as the lifecycle shows it.
pub(crate) async fn read<D: SqlDialect>(
    conn: &mut Connection<D>,
    statements: &RecordStatements<D>,
    key: &Key,
) -> Result<Option<Record>, Error> {
    let entry = select::<D>(conn, &statements.select, key).await?;
    Ok(entry.and_then(|e| e.record(key, NOW)))
}
