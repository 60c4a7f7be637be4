//! What an adapter does with a message once idem has decided.

use std::fmt;
use std::time::Duration;

/// What to do with a message: the one decision [`Consumer::handle`](crate::Consumer::handle)
/// hands back and an adapter applies on the broker.
///
/// | disposition | RabbitMQ (lapin) | NATS JetStream |
/// |---|---|---|
/// | [`Ack`](Self::Ack) | `basic_ack` | `ack` |
/// | [`Requeue`](Self::Requeue) | wait `delay`, then `basic_nack` with `requeue` | `nak` with `delay` |
/// | [`DeadLetter`](Self::DeadLetter) | `basic_reject` without requeue: the queue's dead-letter exchange routes it | publish to the dead-letter subject (if set), then `term` |
///
/// The consume loops hold a requeue that is no fault of the message's (the store
/// unavailable, its key in progress elsewhere) and run the handler on it again after the
/// delay: see [the consume loop](crate#the-consume-loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Done with: remove the message from the queue.
    Ack {
        /// Why.
        reason: AckReason,
    },
    /// Not done yet: hand the message back to the broker, to be delivered again after
    /// `delay`. Never acked, so never lost.
    Requeue {
        /// How long the broker (or the adapter) should hold it back.
        delay: Duration,
        /// Why.
        reason: RequeueReason,
    },
    /// Never going to work as it is: take it off the queue and route it for a person to look
    /// at (dead-letter exchange, dead-letter subject). Never acked as if it had worked; but
    /// kept only where the broker has a dead-letter route: a RabbitMQ queue without a
    /// dead-letter exchange drops it, and so does JetStream (without
    /// [`ConsumeOptions::dead_letter_subject`](crate::ConsumeOptions::dead_letter_subject))
    /// under `workqueue` or `interest` retention.
    DeadLetter {
        /// Why.
        reason: DeadLetterReason,
    },
}

impl Disposition {
    /// Whether the message leaves the queue for good (acked or dead-lettered).
    #[must_use]
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Requeue { .. })
    }

    /// The short label used in logs and metrics: `ack`, `requeue` or `dead_letter`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ack { .. } => "ack",
            Self::Requeue { .. } => "requeue",
            Self::DeadLetter { .. } => "dead_letter",
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ack { reason } => write!(f, "ack ({reason:?})"),
            Self::Requeue { delay, reason } => write!(f, "requeue in {delay:?} ({reason:?})"),
            Self::DeadLetter { reason } => write!(f, "dead-letter ({reason:?})"),
        }
    }
}

/// Why a message is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckReason {
    /// The operation ran now and its outcome is stored.
    Processed,
    /// The outcome was already stored (a duplicate or a redelivery): nothing ran.
    Replayed,
    /// The operation succeeded, but its outcome could not be stored (the store stayed unavailable
    /// or the lease was lost). Acked anyway: its effect has happened, and a redelivery would
    /// run it a second time. Logged at `error`.
    RanNotRecorded,
}

/// Why a message is requeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequeueReason {
    /// Another consumer holds the message's key and has not finished: nothing ran.
    InProgressElsewhere,
    /// The operation failed with an error it calls retryable; its key was released.
    RetryableFailure,
    /// The store could not be reached (or failed) before the operation ran.
    StoreUnavailable,
    /// The handler panicked (a consume loop's choice, never the core's): the message goes
    /// back to the broker instead of staying unacked, and the loop counts it as unsettled.
    HandlerPanicked,
}

impl RequeueReason {
    /// Whether the message itself is the cause: its operation failed, or its handler
    /// panicked. The other requeues (the store unavailable, the key in progress on another
    /// consumer) are no fault of the message's, and the consume loops hold such a message
    /// and handle it again rather than hand it back, since each hand-back counts against
    /// it at the broker.
    pub(crate) fn is_the_messages_fault(self) -> bool {
        match self {
            Self::RetryableFailure | Self::HandlerPanicked => true,
            Self::InProgressElsewhere | Self::StoreUnavailable => false,
        }
    }
}

/// Why a message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The operation failed permanently; the failure is stored and replayed (a replay of a
    /// stored permanent failure is dead-lettered again: a duplicate in the dead-letter queue
    /// is harmless, a lost one is not).
    PermanentFailure,
    /// The broker delivered it more often than the configured limit without an outcome
    /// being stored: a poison message.
    Poison {
        /// How many times the broker has delivered it, this time included.
        deliveries: u32,
    },
    /// The message carries no ID where the consumer was told to look.
    MissingId,
    /// The message's ID is not a valid key (too long, control characters).
    InvalidId,
    /// The ID was seen before with a different body (fingerprint mismatch).
    IdReused,
    /// The stored outcome cannot be read back as the operation's type (corrupt, or the type
    /// changed), or the outcome is too large to store.
    Unreadable,
}
