//! The transactional mode: the claim and the outcome written in the caller's own
//! transaction, so they commit or roll back with the business rows.

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Lease, Ttl};
use sqlx::PgConnection;

use crate::ops::{self, OnConnection, Outcome};
use crate::store::PgStore;

impl PgStore {
    /// Claims a key inside the caller's transaction (pass `&mut tx` for a
    /// `sqlx::Transaction<Postgres>`, or any `&mut PgConnection` in a transaction).
    ///
    /// Same answers as [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim). The
    /// claim is visible to others only once the transaction commits. Until then its row is
    /// locked: a concurrent claim of the same key (transactional or not) waits for this
    /// transaction to end, then sees its outcome (or, after a rollback, a free key). A
    /// claim that finds a committed row (a replay, a key in progress) takes no lock.
    ///
    /// Serialization failures (40001, under REPEATABLE READ or SERIALIZABLE when another
    /// transaction changed the row after this one's snapshot) and deadlocks (40P01) come
    /// back as [`Error::Unavailable`] and are not retried here: the transaction is aborted,
    /// so roll it back and run it again from the start. Under READ COMMITTED (the default)
    /// a claim never fails with 40001. The connection's own `statement_timeout` applies.
    ///
    /// # Errors
    /// As [`IdempotencyStore::claim`](idem_core::IdempotencyStore::claim).
    pub async fn claim_in(
        &self,
        conn: &mut PgConnection,
        request: &ClaimRequest,
    ) -> Result<Claim, Error> {
        let mut steps = OnConnection {
            conn,
            statements: self.statements(),
        };
        idem_sql::claim(&mut steps, request).await
    }

    /// Completes a key inside the caller's transaction: the response is stored if, and
    /// when, the transaction commits.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease no longer holds the key;
    /// [`Error::PayloadTooLarge`] over the store's limit, with nothing written.
    pub async fn complete_in(
        &self,
        conn: &mut PgConnection,
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
    /// As [`complete_in`](Self::complete_in).
    pub async fn fail_in(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.check_payload(&failure)?;
        let statements = self.statements();
        ops::finish(
            conn,
            statements,
            lease,
            Outcome::Failed,
            &failure,
            retention,
        )
        .await
    }
}
