//! The transactional mode: the claim and the outcome written in the caller's own
//! transaction, so they commit or roll back with the business rows.

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Lease, Ttl};
use sqlx::MySqlConnection;

use crate::ops::{self, OnConnection, Outcome, Reading};
use crate::store::MySqlStore;

impl MySqlStore {
    /// Claims a key inside the caller's transaction (pass `&mut tx` for a
    /// `sqlx::Transaction`, or any `&mut MySqlConnection` in a transaction).
    ///
    /// Same answers as [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim).
    /// The claim is visible to others only once the transaction commits; until then the
    /// row is locked, so a concurrent claim of the same key waits for this transaction to
    /// end and then sees its outcome (or, after a rollback, a free key). The row lock is
    /// held until commit or rollback even when the answer is not `Acquired`.
    ///
    /// Taking over a lapsed or released key reports the new fencing number through
    /// `LAST_INSERT_ID(expr)`, so it also sets the session's `LAST_INSERT_ID()`: read any
    /// value of your own from it before claiming, or after your next auto-increment insert.
    ///
    /// Lock errors are not retried here: a deadlock (1213) has rolled the whole
    /// transaction back, so it comes back as [`Error::Unavailable`] and the caller must run
    /// its transaction again from the start.
    ///
    /// # Errors
    ///
    /// As [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim):
    /// [`Error::FingerprintMismatch`], [`Error::CorruptRecord`] for a row that does not decode;
    /// [`Error::Unavailable`] for a lost connection, a lock wait timeout or a deadlock (the
    /// transaction is then rolled back: run it again from the start).
    pub async fn claim_in(
        &self,
        conn: &mut MySqlConnection,
        request: &ClaimRequest,
    ) -> Result<Claim, Error> {
        let mut steps = OnConnection {
            conn,
            statements: self.statements(),
            reading: Reading::Locked,
        };
        idem_sql::claim(&mut steps, request).await
    }

    /// Completes a key inside the caller's transaction: the response is stored if, and
    /// when, the transaction commits. [`Error::LeaseLost`] when the lease no longer holds
    /// the key; [`Error::PayloadTooLarge`] over the store's limit, with nothing written.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease no longer holds the key; [`Error::PayloadTooLarge`] over
    /// the store's limit, with nothing written; [`Error::Unavailable`] for a lost connection or a
    /// lock error that rolled the transaction back.
    pub async fn complete_in(
        &self,
        conn: &mut MySqlConnection,
        lease: &Lease,
        response: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.check_payload(&response)?;
        let statements = self.statements();
        ops::finish(
            conn,
            statements,
            lease,
            Outcome::Completed,
            &response,
            retention,
        )
        .await
    }

    /// Stores a permanent failure inside the caller's transaction; see
    /// [`complete_in`](Self::complete_in).
    ///
    /// # Errors
    ///
    /// As [`complete_in`](Self::complete_in).
    pub async fn fail_in(
        &self,
        conn: &mut MySqlConnection,
        lease: &Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.check_payload(&failure)?;
        ops::finish(
            conn,
            self.statements(),
            lease,
            Outcome::Failed,
            &failure,
            retention,
        )
        .await
    }
}
