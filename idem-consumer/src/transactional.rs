//! Exactly-once effects: the business write, the claim and the outcome in one MySQL
//! transaction, committed before the message is acked.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use idem_core::{Claim, ClaimRequest, Config, Error, Fingerprint, Key, Lease, Retryable, Ttl};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::{Connection, MySqlConnection};
use serde::Serialize;

use crate::attempt::{Attempt, Ran};
use crate::consumer::dispose;
use crate::disposition::Disposition;
use crate::message::{Delivery, Message};
use crate::policy::{Policy, Stored};

/// A consumer whose operation writes its business rows in the same MySQL/MariaDB
/// transaction as the claim and the outcome (idem-mysql's transactional mode).
///
/// The guarantee, precisely: **the effect happens once; the ack happens at least once.**
/// The transaction commits the business rows and the stored outcome together or not at
/// all, and the message is acked only after the commit. A crash before the commit rolls
/// everything back, so the redelivery runs it as if for the first time; a crash between
/// the commit and the ack leaves the outcome stored, so the redelivery is a replay and is
/// acked without running. Nothing here can run an effect twice, whatever the moment of
/// the crash; the only repeat is the ack.
///
/// How one message runs:
/// 1. `BEGIN`; claim the key (`claim_in`). Completed or failed: replay (rollback, nothing
///    written). In progress: requeue. A concurrent transaction on the same key waits on
///    its row lock and then sees the committed outcome.
/// 2. `SAVEPOINT`; run the operation on the transaction's connection.
/// 3. Success: `complete_in` (after an operation that outlasted the lease, the key is
///    claimed again in the transaction first: the row stays locked, so no one else can
///    have it), `COMMIT`, ack. Permanent failure: roll back to the savepoint
///    (the business writes go, the claim stays), `fail_in`, `COMMIT`, dead-letter.
///    Retryable failure: `ROLLBACK` of everything, requeue.
///
/// A message past the poison limit runs nothing: its key is claimed in a transaction that
/// is rolled back, so it too waits for a transaction still running the message, and is
/// dead-lettered as poison only when that finds no outcome.
///
/// The operation must write through the connection it is given, and only there: a write
/// elsewhere (another pool, an HTTP call) is not part of the transaction.
pub struct TransactionalConsumer {
    store: Arc<MySqlStore>,
    namespace: Arc<str>,
    policy: Policy,
    lease_ttl: Ttl,
    success_retention: Ttl,
    failure_retention: Ttl,
}

impl Clone for TransactionalConsumer {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            namespace: Arc::clone(&self.namespace),
            policy: self.policy,
            lease_ttl: self.lease_ttl,
            success_retention: self.success_retention,
            failure_retention: self.failure_retention,
        }
    }
}

impl fmt::Debug for TransactionalConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalConsumer")
            .field("store", &self.store)
            .field("namespace", &self.namespace)
            .field("policy", &self.policy)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl TransactionalConsumer {
    /// A consumer on `store` whose message IDs are keys in `namespace`, with the lease and
    /// retention times of [`Config::default`] and the default [`Policy`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `namespace` is not a valid key namespace.
    pub fn new(store: MySqlStore, namespace: &str) -> Result<Self, Error> {
        Self::with_config(store, namespace, &Config::default())
    }

    /// Like [`new`](Self::new), with the lease TTL and retentions of `config` (its wait
    /// policy and payload limit do not apply: the store's own limit does). Fails with
    /// [`Error::InvalidInput`] on a bad namespace or a zero TTL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `namespace` is not a valid key namespace, or a TTL of `config`
    /// is zero or out of range.
    pub fn with_config(store: MySqlStore, namespace: &str, config: &Config) -> Result<Self, Error> {
        Key::new(namespace, "-")?;
        Ok(Self {
            store: Arc::new(store),
            namespace: namespace.into(),
            policy: Policy::default(),
            lease_ttl: Ttl::new(config.lease_ttl)?,
            success_retention: Ttl::new(config.success_retention)?,
            failure_retention: Ttl::new(config.failure_retention)?,
        })
    }

    /// Replaces the [`Policy`].
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &MySqlStore {
        &self.store
    }

    /// Runs `operation` in one transaction with the claim and the outcome, once for
    /// `message_id`, and says what to do with the message.
    ///
    /// The operation gets the transaction's connection; it returns a boxed future borrowing
    /// it:
    ///
    /// ```no_run
    /// # use idem_consumer::TransactionalConsumer;
    /// # use idem_mysql::sqlx;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Failed;
    /// # impl idem_core::Retryable for Failed { fn is_retryable(&self) -> bool { true } }
    /// # async fn run(consumer: TransactionalConsumer) {
    /// let disposition = consumer
    ///     .handle("order-1042", None, |conn| Box::pin(async move {
    ///         sqlx::query("INSERT INTO shipments (order_id) VALUES (1042)")
    ///             .execute(&mut *conn)
    ///             .await
    ///             .map_err(|_| Failed)?;
    ///         Ok::<_, Failed>(())
    ///     }))
    ///     .await;
    /// # let _ = disposition; }
    /// ```
    pub async fn handle<T, E, F>(
        &self,
        message_id: &str,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Disposition
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
        T: Serialize,
        E: Serialize + Retryable,
    {
        let delivery = Delivery {
            id: message_id,
            fingerprint,
            deliveries: None,
        };
        self.handle_delivery(delivery, operation).await
    }

    /// Like [`handle`](Self::handle) for a [`Message`] from an adapter: the fingerprint is
    /// the body's, and a message delivered more often than the policy's limit is poison.
    pub async fn handle_message<T, E, F>(&self, message: &Message, operation: F) -> Disposition
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
        T: Serialize,
        E: Serialize + Retryable,
    {
        self.handle_delivery(message.into(), operation).await
    }

    async fn handle_delivery<T, E, F>(&self, delivery: Delivery<'_>, operation: F) -> Disposition
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
        T: Serialize,
        E: Serialize + Retryable,
    {
        dispose(
            &self.policy,
            &self.namespace,
            delivery,
            |key, fingerprint| self.stored(key, fingerprint),
            |key, fingerprint| self.attempt(key, fingerprint, operation),
        )
        .await
    }

    /// What the store holds for a poison message's key, read as a claim in a transaction
    /// that is rolled back. A plain read does not wait for the row lock: a transaction
    /// still running the message's first delivery has claimed the key, but a plain read
    /// sees none of it, and the message would be dead-lettered as poison while its effect
    /// was about to commit. The claim waits for that transaction to end, then sees its
    /// outcome.
    async fn stored(&self, key: Key, fingerprint: Option<Fingerprint>) -> Result<Stored, Error> {
        let request = ClaimRequest::new(key, self.lease_ttl).with_fingerprint(fingerprint);
        // Dropped at the end, so rolled back: a key found free stays as it was.
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(Error::unavailable)?;
        Ok(match self.store.claim_in(&mut tx, &request).await? {
            Claim::Acquired(_) => Stored::Nothing,
            Claim::Completed(_) => Stored::Completed,
            Claim::Failed(_) => Stored::Failed,
            Claim::InProgress { retry_after } => Stored::InProgress { left: retry_after },
        })
    }

    async fn attempt<T, E, F>(
        &self,
        key: Key,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Attempt
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
        T: Serialize,
        E: Serialize + Retryable,
    {
        let request = ClaimRequest::new(key, self.lease_ttl).with_fingerprint(fingerprint);
        // Every early return drops the transaction, which rolls it back.
        let mut tx = match self.store.pool().begin().await {
            Ok(tx) => tx,
            Err(error) => return Attempt::NotRun(Error::unavailable(error)),
        };
        let claimed_at = Instant::now();
        let lease = match self.store.claim_in(&mut tx, &request).await {
            Ok(Claim::Acquired(lease)) => lease,
            Ok(Claim::Completed(_)) => return Attempt::Replayed { failed: false },
            Ok(Claim::Failed(_)) => return Attempt::Replayed { failed: true },
            Ok(Claim::InProgress { retry_after }) => {
                return Attempt::NotRun(Error::InProgress { retry_after });
            }
            Err(error) => return Attempt::NotRun(error),
        };
        let result = match run_in_savepoint(&mut tx, operation).await {
            Ok(result) => result,
            Err(error) => return Attempt::NotRun(error),
        };
        let ran = Ran::of(&result);
        if ran == Ran::FailedRetryably {
            return Attempt::Ran(ran); // dropped: rolled back
        }
        let lease = match self
            .lease_to_finish(&mut tx, &request, lease, claimed_at)
            .await
        {
            Ok(lease) => lease,
            Err(error) => return Attempt::NotRun(error),
        };
        let recorded = match &result {
            Ok(value) => self.complete(&mut tx, &lease, value).await,
            Err(error) => self.fail(&mut tx, &lease, error).await,
        };
        // Before the commit nothing of this attempt exists outside the transaction, so any
        // error here means "not run": the redelivery runs it afresh (or, if a lost reply
        // hid a commit that did happen, replays it).
        if let Err(error) = recorded {
            return Attempt::NotRun(error);
        }
        match tx.commit().await {
            Ok(()) => Attempt::Ran(ran),
            Err(error) => Attempt::NotRun(Error::unavailable(error)),
        }
    }

    /// The lease to store the outcome under. However long the operation ran, the key's
    /// row is this transaction's, under its lock; but the outcome writes take a lease only
    /// while its row has not expired (the lease, then the trace after it), which a slow
    /// operation outlives, and then everything rolled back to run as long again at the
    /// next delivery. Past the lease, the same owner claims the key again in the
    /// transaction, which hands it back afresh.
    async fn lease_to_finish(
        &self,
        conn: &mut MySqlConnection,
        request: &ClaimRequest,
        lease: Lease,
        claimed_at: Instant,
    ) -> Result<Lease, Error> {
        if claimed_at.elapsed() < self.lease_ttl.as_duration() {
            return Ok(lease);
        }
        match self.store.claim_in(conn, request).await? {
            Claim::Acquired(lease) => Ok(lease),
            // Not expected under the row lock: whatever it is, the key is not ours.
            _ => Err(Error::LeaseLost),
        }
    }

    async fn complete<T: Serialize>(
        &self,
        conn: &mut MySqlConnection,
        lease: &Lease,
        value: &T,
    ) -> Result<(), Error> {
        let response = serde_json::to_vec(value).map_err(|e| Error::Serialization {
            source: Box::new(e),
        })?;
        self.store
            .complete_in(conn, lease, response.into(), self.success_retention)
            .await
    }

    async fn fail<E: Serialize>(
        &self,
        conn: &mut MySqlConnection,
        lease: &Lease,
        error: &E,
    ) -> Result<(), Error> {
        // The executor's envelope for an operation's failure, so the executor replays it
        // too if both share a namespace.
        let envelope = serde_json::json!({ "Operation": error });
        let failure = serde_json::to_vec(&envelope).map_err(|e| Error::Serialization {
            source: Box::new(e),
        })?;
        self.store
            .fail_in(conn, lease, failure.into(), self.failure_retention)
            .await
    }
}

/// Runs the operation inside a savepoint: kept on success, rolled back on failure (the
/// claim, made before it, stays). Errors only when the savepoint itself fails.
async fn run_in_savepoint<T, E, F>(
    conn: &mut MySqlConnection,
    operation: F,
) -> Result<Result<T, E>, Error>
where
    F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, E>>,
{
    let mut savepoint = conn.begin().await.map_err(Error::unavailable)?;
    let result = operation(&mut savepoint).await;
    let closed = if result.is_ok() {
        savepoint.commit().await
    } else {
        savepoint.rollback().await
    };
    closed.map_err(Error::unavailable)?;
    Ok(result)
}
