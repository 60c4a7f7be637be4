//! Every decision of the disposition table, in one place.

use std::time::Duration;

use idem_core::{Error, RecordState};

use crate::attempt::{Attempt, Ran};
use crate::disposition::{AckReason, DeadLetterReason, Disposition, RequeueReason};

/// How the consumer turns outcomes into [`Disposition`]s: the poison limit and the requeue
/// delays. [`Policy::default`] suits most queues.
///
/// ```
/// use std::time::Duration;
/// use idem_consumer::Policy;
///
/// let policy = Policy::default()
///     .max_deliveries(Some(5))
///     .retry_delay(Duration::from_secs(2));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Policy {
    max_deliveries: Option<u32>,
    retry_delay: Duration,
    unavailable_delay: Duration,
    max_in_progress_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_deliveries: Some(10),
            retry_delay: Duration::from_secs(1),
            unavailable_delay: Duration::from_secs(1),
            max_in_progress_delay: Duration::from_secs(5),
        }
    }
}

/// The shortest pause before a message in progress elsewhere is delivered again.
const MIN_IN_PROGRESS_DELAY: Duration = Duration::from_millis(100);

impl Policy {
    /// A message delivered more often than this without an outcome stored is poison and is
    /// dead-lettered without running. Needs the broker's delivery count (JetStream always
    /// has it; RabbitMQ only on quorum queues); `None` turns the check off. `Some(0)` counts
    /// as `Some(1)`. Default: `Some(10)`.
    pub fn max_deliveries(mut self, limit: Option<u32>) -> Self {
        self.max_deliveries = limit.map(|n| n.max(1));
        self
    }

    /// How long a message waits after a retryable failure. Default: 1 s.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How long a message waits when the store is unavailable. Default: 1 s.
    pub fn unavailable_delay(mut self, delay: Duration) -> Self {
        self.unavailable_delay = delay;
        self
    }

    /// The longest a message in progress elsewhere waits: it waits until the other
    /// consumer's lease ends, at most this long (at least 100 ms). Default: 5 s.
    pub fn max_in_progress_delay(mut self, delay: Duration) -> Self {
        self.max_in_progress_delay = delay;
        self
    }

    /// The delivery count if it is over the limit.
    pub(crate) fn poison(&self, deliveries: Option<u32>) -> Option<u32> {
        match (self.max_deliveries, deliveries) {
            (Some(limit), Some(count)) if count > limit => Some(count),
            _ => None,
        }
    }

    /// What to do with a message after one attempt to run it.
    pub(crate) fn decide(&self, attempt: &Attempt) -> Disposition {
        match attempt {
            Attempt::Ran(Ran::Succeeded) => ack(AckReason::Processed),
            Attempt::Ran(Ran::FailedRetryably) => {
                self.requeue(self.retry_delay, RequeueReason::RetryableFailure)
            }
            Attempt::Ran(Ran::FailedPermanently) => dead_letter(DeadLetterReason::PermanentFailure),
            Attempt::Replayed { failed: false } => ack(AckReason::Replayed),
            // The first delivery dead-lettered it; it may have crashed before it could, so
            // this one does too.
            Attempt::Replayed { failed: true } => dead_letter(DeadLetterReason::PermanentFailure),
            // Its effect has happened: acked, as a redelivery would run it again.
            Attempt::RanNotRecorded {
                ran: Ran::Succeeded,
                ..
            } => ack(AckReason::RanNotRecorded),
            // It failed for good: dead-lettered as any permanent failure (which does not
            // run it again either), never acked, which would drop it unseen.
            Attempt::RanNotRecorded {
                ran: Ran::FailedPermanently,
                ..
            } => dead_letter(DeadLetterReason::PermanentFailure),
            // Nothing took effect that must not run again: the next delivery runs it.
            Attempt::RanNotRecorded {
                ran: Ran::FailedRetryably,
                ..
            } => self.requeue(self.retry_delay, RequeueReason::RetryableFailure),
            Attempt::NotRun(error) => self.not_run(error),
        }
    }

    /// What to do with a poison message, given what the store holds for its key: its
    /// outcome if one was stored after all, otherwise the dead-letter route.
    pub(crate) fn decide_poison(
        &self,
        deliveries: u32,
        stored: Result<Stored, Error>,
    ) -> Disposition {
        match stored {
            Ok(Stored::Nothing) => dead_letter(DeadLetterReason::Poison { deliveries }),
            Ok(Stored::Completed) => ack(AckReason::Replayed),
            Ok(Stored::Failed) => dead_letter(DeadLetterReason::PermanentFailure),
            Ok(Stored::InProgress { left }) => self.in_progress(left),
            Err(error) => self.not_run(&error),
        }
    }

    /// Nothing ran: the store said why.
    fn not_run(&self, error: &Error) -> Disposition {
        match error {
            Error::InProgress { retry_after } => self.in_progress(*retry_after),
            Error::FingerprintMismatch => dead_letter(DeadLetterReason::IdReused),
            Error::InvalidInput(_) => dead_letter(DeadLetterReason::InvalidId),
            Error::CorruptRecord { .. }
            | Error::Serialization { .. }
            | Error::PayloadTooLarge { .. } => dead_letter(DeadLetterReason::Unreadable),
            // Unavailable, Backend, and anything new: requeue, the one choice that loses
            // nothing. The consume loops hold such a message rather than hand it back, so
            // an outage does not count towards the poison limit.
            _ => self.requeue(self.unavailable_delay, RequeueReason::StoreUnavailable),
        }
    }

    fn in_progress(&self, lease_left: Duration) -> Disposition {
        let delay = lease_left
            .min(self.max_in_progress_delay)
            .max(MIN_IN_PROGRESS_DELAY);
        self.requeue(delay, RequeueReason::InProgressElsewhere)
    }

    fn requeue(&self, delay: Duration, reason: RequeueReason) -> Disposition {
        Disposition::Requeue { delay, reason }
    }
}

/// What the store holds for a poison message's key, as far as its disposition cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// No outcome, and no one working on it.
    Nothing,
    /// A success.
    Completed,
    /// A permanent failure.
    Failed,
    /// Another consumer holds it, for `left` more.
    InProgress {
        /// The time its lease has left.
        left: Duration,
    },
}

impl Stored {
    /// What a record read from the store says.
    pub(crate) fn of(record: Option<(RecordState, Duration)>) -> Self {
        match record {
            None => Self::Nothing,
            Some((RecordState::Completed { .. }, _)) => Self::Completed,
            Some((RecordState::Failed { .. }, _)) => Self::Failed,
            Some((RecordState::Claimed { .. }, left)) => Self::InProgress { left },
        }
    }
}

fn ack(reason: AckReason) -> Disposition {
    Disposition::Ack { reason }
}

fn dead_letter(reason: DeadLetterReason) -> Disposition {
    Disposition::DeadLetter { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::{InputField, InvalidInput, OwnerToken};

    fn decide(attempt: Attempt) -> Disposition {
        Policy::default().decide(&attempt)
    }

    #[test]
    fn the_table() {
        use DeadLetterReason as D;
        use RequeueReason as R;
        assert_eq!(
            decide(Attempt::Ran(Ran::Succeeded)),
            ack(AckReason::Processed)
        );
        assert_eq!(
            decide(Attempt::Replayed { failed: false }),
            ack(AckReason::Replayed)
        );
        assert_eq!(
            decide(Attempt::Ran(Ran::FailedRetryably)),
            Disposition::Requeue {
                delay: Duration::from_secs(1),
                reason: R::RetryableFailure
            }
        );
        assert_eq!(
            decide(Attempt::Ran(Ran::FailedPermanently)),
            dead_letter(D::PermanentFailure)
        );
        assert_eq!(
            decide(Attempt::Replayed { failed: true }),
            dead_letter(D::PermanentFailure)
        );
        assert_eq!(
            decide(Attempt::RanNotRecorded {
                ran: Ran::Succeeded,
                error: Error::LeaseLost
            }),
            ack(AckReason::RanNotRecorded)
        );
        assert_eq!(
            decide(Attempt::RanNotRecorded {
                ran: Ran::FailedPermanently,
                error: Error::LeaseLost
            }),
            dead_letter(D::PermanentFailure)
        );
        assert_eq!(
            decide(Attempt::NotRun(Error::unavailable("down"))),
            Disposition::Requeue {
                delay: Duration::from_secs(1),
                reason: R::StoreUnavailable
            }
        );
        assert_eq!(
            decide(Attempt::NotRun(Error::FingerprintMismatch)),
            dead_letter(D::IdReused)
        );
        assert_eq!(
            decide(Attempt::NotRun(
                InvalidInput::Empty {
                    field: InputField::Key
                }
                .into()
            )),
            dead_letter(D::InvalidId)
        );
        assert_eq!(
            decide(Attempt::NotRun(Error::corrupt("x"))),
            dead_letter(D::Unreadable)
        );
    }

    #[test]
    fn in_progress_waits_for_the_lease_within_bounds() {
        let delay = |left| match decide(Attempt::NotRun(Error::InProgress { retry_after: left })) {
            Disposition::Requeue {
                delay,
                reason: RequeueReason::InProgressElsewhere,
            } => delay,
            other => panic!("in progress must requeue, got {other:?}"),
        };
        assert_eq!(delay(Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(delay(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(delay(Duration::ZERO), MIN_IN_PROGRESS_DELAY);
    }

    #[test]
    fn poison_only_over_the_limit_and_only_when_counted() {
        let policy = Policy::default().max_deliveries(Some(3));
        assert_eq!(policy.poison(Some(3)), None);
        assert_eq!(policy.poison(Some(4)), Some(4));
        assert_eq!(policy.poison(None), None);
        assert_eq!(
            Policy::default().max_deliveries(None).poison(Some(99)),
            None
        );
    }

    #[test]
    fn a_poison_message_with_a_stored_outcome_is_not_dead_lettered() {
        let policy = Policy::default();
        let left = Duration::from_secs(1);
        let completed = RecordState::Completed {
            response: "null".into(),
        };
        assert_eq!(
            policy.decide_poison(7, Ok(Stored::of(Some((completed, left))))),
            ack(AckReason::Replayed)
        );
        assert_eq!(
            policy.decide_poison(7, Ok(Stored::of(None))),
            dead_letter(DeadLetterReason::Poison { deliveries: 7 })
        );
        let claimed = RecordState::Claimed {
            owner: OwnerToken::random(),
        };
        assert!(matches!(
            policy.decide_poison(7, Ok(Stored::of(Some((claimed, left))))),
            Disposition::Requeue {
                reason: RequeueReason::InProgressElsewhere,
                ..
            }
        ));
    }
}
