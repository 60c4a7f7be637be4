//! The transactional mode: the claim and the outcome written in the caller's own
//! transaction, so they commit or roll back with the business rows.

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Lease, Ttl};

use crate::SqlDialect;
use crate::dialect::Connection;
use crate::ops::{self, OnConnection, Outcome, Reading};
use crate::store::SqlStore;

impl<D: SqlDialect> SqlStore<D> {
    /// Claims a key inside the caller's transaction (pass `&mut tx` for a
    /// `sqlx::Transaction`, or any `&mut` connection in a transaction).
    ///
    /// Same answers as [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim).
    /// The claim is visible to others only once the transaction commits. Until then its row
    /// is locked: a concurrent claim of the same key (transactional or not) waits for this
    /// transaction to end, then sees its outcome (or, after a rollback, a free key).
    ///
    /// Lock conflicts are not retried here: a deadlock (or a serialization failure) has
    /// aborted the whole transaction, so it comes back as [`Error::Unavailable`], and the
    /// caller rolls back and runs its transaction again from the start. The engine's notes
    /// (which locks a replay takes, what the takeover leaves in the session) are in its
    /// crate's docs.
    ///
    /// # Errors
    /// As [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim):
    /// [`Error::FingerprintMismatch`], [`Error::CorruptRecord`] for a row that does not
    /// decode; [`Error::Unavailable`] for a lost connection, a lock wait timeout or a
    /// deadlock: roll the transaction back (a deadlock already did; on InnoDB a lock wait
    /// timeout undoes only the statement) and run it again from the start.
    pub async fn claim_in(
        &self,
        conn: &mut Connection<D>,
        request: &ClaimRequest,
    ) -> Result<Claim, Error> {
        let mut steps = OnConnection::<D> {
            conn,
            statements: self.statements(),
            reading: Reading::Locked,
        };
        crate::claim(&mut steps, request).await
    }

    /// Completes a key inside the caller's transaction: the response is stored if, and
    /// when, the transaction commits.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease no longer holds the key;
    /// [`Error::PayloadTooLarge`] over the store's limit, with nothing written (over the
    /// server's own limit too, MySQL's `max_allowed_packet`, where the server also closes
    /// the connection, and the transaction with it);
    /// [`Error::Unavailable`] for a lost connection or a lock error that rolled the
    /// transaction back.
    pub async fn complete_in(
        &self,
        conn: &mut Connection<D>,
        lease: &Lease,
        response: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.finish_in(conn, lease, Outcome::Completed, &response, retention)
            .await
    }

    /// Stores a permanent failure inside the caller's transaction; see
    /// [`complete_in`](Self::complete_in).
    ///
    /// # Errors
    /// As [`complete_in`](Self::complete_in).
    pub async fn fail_in(
        &self,
        conn: &mut Connection<D>,
        lease: &Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.finish_in(conn, lease, Outcome::Failed, &failure, retention)
            .await
    }

    pub(crate) async fn finish_in(
        &self,
        conn: &mut Connection<D>,
        lease: &Lease,
        outcome: Outcome,
        payload: &Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.check_payload(payload)?;
        ops::finish(conn, self.statements(), lease, outcome, payload, retention).await
    }
}
