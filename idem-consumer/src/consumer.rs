//! The broker-neutral core: one message in, one disposition out.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use idem_core::{Error, Fingerprint, Idempotency, IdempotencyStore, Key, Retryable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::attempt::{self, Attempt, Ran};
use crate::disposition::{AckReason, DeadLetterReason, Disposition};
use crate::message::{Delivery, Message};
use crate::policy::{Policy, Stored};

/// Runs each message's operation at most once per message ID, on any idem store, and says
/// what to do with the message: the [`Disposition`].
///
/// The decisions are the crate's [disposition table](crate#the-disposition-table). Cloning
/// is cheap; clones share the store.
pub struct Consumer<S> {
    idem: Idempotency<S>,
    namespace: Arc<str>,
    policy: Policy,
}

impl<S> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Self {
            idem: self.idem.clone(),
            namespace: Arc::clone(&self.namespace),
            policy: self.policy,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("idem", &self.idem)
            .field("namespace", &self.namespace)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S: IdempotencyStore> Consumer<S> {
    /// A consumer whose message IDs are keys in `namespace` (one per queue or per kind of
    /// message, so two queues' IDs never collide), with the default [`Policy`].
    ///
    /// The executor should fail fast on a key in progress (`WaitPolicy::FailFast`, its
    /// default): the message is then requeued instead of holding a consumer slot.
    /// Fails with [`Error::InvalidInput`] on an empty or over-long namespace.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `namespace` is empty, too long or holds a control character.
    pub fn new(idem: Idempotency<S>, namespace: &str) -> Result<Self, Error> {
        Key::new(namespace, "-")?;
        Ok(Self {
            idem,
            namespace: namespace.into(),
            policy: Policy::default(),
        })
    }

    /// Replaces the [`Policy`].
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The executor.
    #[must_use]
    pub fn idempotency(&self) -> &Idempotency<S> {
        &self.idem
    }

    /// Runs `operation` once for `message_id` and says what to do with the message.
    ///
    /// `fingerprint` identifies the message's content: the same ID with another fingerprint
    /// is dead-lettered ([`DeadLetterReason::IdReused`]) instead of being taken for a
    /// repeat. The delivery count is unknown here, so there is no poison check: use
    /// [`handle_message`](Self::handle_message) for that.
    pub async fn handle<T, E, F, Fut>(
        &self,
        message_id: &str,
        fingerprint: Option<Fingerprint>,
        operation: F,
    ) -> Disposition
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
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
    pub async fn handle_message<T, E, F, Fut>(&self, message: &Message, operation: F) -> Disposition
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        self.handle_delivery(message.into(), operation).await
    }

    async fn handle_delivery<T, E, F, Fut>(
        &self,
        delivery: Delivery<'_>,
        operation: F,
    ) -> Disposition
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        dispose(
            &self.policy,
            &self.namespace,
            delivery,
            |key, fingerprint| async move { stored(self.idem.store(), &key, fingerprint).await },
            |key, fingerprint| async move {
                attempt::execute(&self.idem, &key, fingerprint, operation).await
            },
        )
        .await
    }
}

/// The steps every consumer takes, whatever runs the operation: make the key, stop a
/// poison message (unless `read` finds its outcome stored after all), run, decide, log.
pub(crate) async fn dispose<R, RFut, A, AFut>(
    policy: &Policy,
    namespace: &str,
    delivery: Delivery<'_>,
    read: R,
    run: A,
) -> Disposition
where
    R: FnOnce(Key, Option<Fingerprint>) -> RFut,
    RFut: Future<Output = Result<Stored, Error>>,
    A: FnOnce(Key, Option<Fingerprint>) -> AFut,
    AFut: Future<Output = Attempt>,
{
    let message_id = delivery.id;
    let key = match Key::new(namespace, message_id) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(%error, "message ID is not a valid key; dead-lettering it");
            return Disposition::DeadLetter {
                reason: DeadLetterReason::InvalidId,
            };
        }
    };
    let disposition = if let Some(deliveries) = policy.poison(delivery.deliveries) {
        // Only a poison message pays for this read: its outcome may be stored after all
        // (every ack lost), and then it is a plain repeat.
        let stored = read(key, delivery.fingerprint).await;
        policy.decide_poison(deliveries, stored)
    } else {
        let attempt = run(key, delivery.fingerprint).await;
        log_attempt(message_id, &attempt);
        policy.decide(&attempt)
    };
    tracing::debug!(message_id, %disposition, "message handled");
    disposition
}

/// What `store` holds for a poison message's key. Another body under the stored ID is a
/// reused ID, as the claim would have said.
async fn stored<S: IdempotencyStore>(
    store: &S,
    key: &Key,
    fingerprint: Option<Fingerprint>,
) -> Result<Stored, Error> {
    match store.read(key).await? {
        Some(record) if record.fingerprint != fingerprint => Err(Error::FingerprintMismatch),
        record => Ok(Stored::of(record.map(|r| (r.state, r.expires_in)))),
    }
}

fn log_attempt(message_id: &str, attempt: &Attempt) {
    match attempt {
        Attempt::RanNotRecorded {
            ran: Ran::Succeeded,
            error,
        } => tracing::error!(
            message_id,
            %error,
            "the operation ran but its outcome could not be stored; acking it ({:?}): \
             a redelivery would run it again",
            AckReason::RanNotRecorded
        ),
        Attempt::RanNotRecorded { ran, error } => tracing::error!(
            message_id,
            %error,
            ?ran,
            "the operation failed and its failure could not be stored",
        ),
        Attempt::NotRun(error) if !error.is_transient() => {
            tracing::warn!(message_id, %error, "the message did not run");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::{Bytes, Claim, ClaimRequest, Lease, Record, Ttl, async_trait};
    use idem_memory::MemoryStore;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Broken;

    impl Retryable for Broken {
        fn is_retryable(&self) -> bool {
            false
        }
    }

    /// A memory store that refuses to store a permanent failure (a store error that is
    /// not `Unavailable`, so the engine does not retry the write).
    #[derive(Debug)]
    struct FailureWriteRefused(MemoryStore);

    #[async_trait]
    impl IdempotencyStore for FailureWriteRefused {
        async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
            self.0.claim(request).await
        }
        async fn complete(
            &self,
            lease: &Lease,
            response: Bytes,
            retention: Ttl,
        ) -> Result<(), Error> {
            self.0.complete(lease, response, retention).await
        }
        async fn fail(&self, _: &Lease, _: Bytes, _: Ttl) -> Result<(), Error> {
            Err(Error::backend("the failure write is refused"))
        }
        async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
            self.0.renew(lease, ttl).await
        }
        async fn release(&self, lease: &Lease) -> Result<(), Error> {
            self.0.release(lease).await
        }
        async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
            self.0.read(key).await
        }
        async fn remove(&self, key: &Key) -> Result<bool, Error> {
            self.0.remove(key).await
        }
    }

    /// The disposition table treats a poison message whose outcome was stored after all
    /// "as for a repeat": a repeat with another body is a reused ID, dead-lettered. Acked
    /// as a replay instead, a different message that reached the poison limit without
    /// running (its earlier deliveries found the store down) left the queue without its
    /// effect ever happening, and without anyone seeing it.
    #[tokio::test]
    async fn a_poison_message_reusing_an_id_is_dead_lettered_not_acked_as_a_replay() {
        let consumer =
            Consumer::new(Idempotency::new(MemoryStore::new()), "orders").expect("consumer");
        let ran = || async { Ok::<_, Broken>(()) };
        let first = Message::new("m-1", "ship order 1042");
        assert_eq!(
            consumer.handle_message(&first, ran).await,
            Disposition::Ack {
                reason: AckReason::Processed
            }
        );
        let id_reused = Disposition::DeadLetter {
            reason: DeadLetterReason::IdReused,
        };
        let other = Message::new("m-1", "refund order 7");
        assert_eq!(consumer.handle_message(&other, ran).await, id_reused);
        let poison = other.with_deliveries(Some(11));
        assert_eq!(consumer.handle_message(&poison, ran).await, id_reused);
        // The same message past the limit, its outcome stored after all: a plain repeat.
        let repeat = first.with_deliveries(Some(11));
        assert_eq!(
            consumer.handle_message(&repeat, ran).await,
            Disposition::Ack {
                reason: AckReason::Replayed
            }
        );
    }

    /// A message whose operation failed permanently is never acked: acking it would drop
    /// it from the queue with nothing stored and nothing dead-lettered, so no one would
    /// ever see that it failed. When the failure cannot be stored, the message still goes
    /// to the dead-letter route (which does not run it again either).
    #[tokio::test]
    async fn a_permanent_failure_that_cannot_be_stored_is_dead_lettered_not_acked() {
        let store = FailureWriteRefused(MemoryStore::new());
        let consumer = Consumer::new(Idempotency::new(store), "orders").expect("consumer");
        let disposition = consumer
            .handle("m-1", None, || async { Err::<(), _>(Broken) })
            .await;
        assert_eq!(
            disposition,
            Disposition::DeadLetter {
                reason: DeadLetterReason::PermanentFailure
            }
        );
    }

    /// A consumer's debug output (in a log line, a panic message) says which namespace it
    /// keys its messages in, and how it decides.
    #[test]
    fn its_debug_output_names_its_namespace_and_policy() {
        let consumer =
            Consumer::new(Idempotency::new(MemoryStore::new()), "orders").expect("consumer");
        let shown = format!("{consumer:?}");
        assert!(shown.starts_with("Consumer {"), "{shown}");
        assert!(shown.contains("namespace: \"orders\""), "{shown}");
        assert!(shown.contains("policy: "), "{shown}");
    }
}
