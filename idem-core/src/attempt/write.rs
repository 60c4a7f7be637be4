//! Carrying out a settlement: the outcome write, retried while the lease is ours.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::backoff::Backoff;
use super::settle::{Settle, Settlement};
use crate::error::{BoxError, Error};
use crate::lease::Lease;
use crate::record::RecordState;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// An outcome write is tried at least this often, whatever the lease has left.
const MIN_WRITE_ATTEMPTS: u32 = 3;
/// The first pause between attempts; pauses double, with jitter, up to [`MAX_PAUSE`].
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(25);
/// Attempts stay this dense while the lease lasts, so a store back before the lease ends
/// (a Redis restart takes 70–700 ms) gets the outcome well before a takeover could race it;
/// ten small writes a second per pending outcome are no load on a recovering store.
pub(super) const MAX_PAUSE: Duration = Duration::from_millis(100);
/// The last attempt goes this long before the lease's end (as the attempt knows it), so
/// that it reaches the store while the lease still holds there, timer lag included.
const FINAL_MARGIN: Duration = Duration::from_millis(50);
/// The least time a call of the write is given to answer, whatever the lease has left.
const MIN_ANSWER: Duration = Duration::from_secs(1);
/// Why a call left unanswered is given up on.
const UNANSWERED: &str = "the store did not answer the outcome write before the lease's end";

/// When the last call of a write under a lease known to last until `lease_until` goes.
fn last_call(lease_until: Instant) -> Instant {
    lease_until.checked_sub(FINAL_MARGIN).unwrap_or(lease_until)
}

/// `call`, given up on as `Unavailable` if it is still unanswered at the lease's last call
/// (and not before [`MIN_ANSWER`]): a reply that never comes (a connection that hangs) is a
/// lost reply, which the write's retry recognises by reading the key back, where awaiting
/// it kept the caller waiting forever. A call answered at once costs no timer.
fn answered<F>(call: F, lease_until: Instant) -> Answered<F> {
    Answered {
        call,
        lease_until,
        deadline: None,
    }
}

pin_project! {
    /// The future of [`answered`]. Written out rather than an `async fn`, which would hold
    /// the call's future twice (as its argument and pinned), and every attempt's future
    /// holds this one: past glibc's per-thread cache (1,032 bytes), the attempt's box takes
    /// the allocator's slow paths.
    struct Answered<F> {
        #[pin]
        call: F,
        lease_until: Instant,
        // Boxed, and made only once the call did not answer at once.
        deadline: Option<Pin<Box<Sleep>>>,
    }
}

impl<T, F: Future<Output = Result<T, Error>>> Future for Answered<F> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.call.poll(cx) {
            return Poll::Ready(answer);
        }
        let lease_until = *this.lease_until;
        let deadline = this.deadline.get_or_insert_with(|| {
            let at = last_call(lease_until).max(Instant::now() + MIN_ANSWER);
            Box::pin(tokio::time::sleep_until(at))
        });
        deadline
            .as_mut()
            .poll(cx)
            .map(|()| Err(Error::unavailable(UNANSWERED)))
    }
}

/// Which of the two finished states an outcome is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Completed,
    Failed,
}

/// Carries out `settlement` under `lease`, known to last until `lease_until`. On `Err`,
/// nothing the operation produced is stored (the error says why).
///
/// The settlement and its payload are borrowed down to the store call, which takes its own
/// reference to the payload: moved down instead, each level's future kept a copy, and every
/// attempt's future holds these (see [`Answered`]).
pub(crate) async fn carry_out<S, T, St>(
    store: &S,
    lease: &Lease,
    settlement: &Settlement,
    settle: &mut St,
    lease_until: Instant,
) -> Result<(), Error>
where
    S: IdempotencyStore,
    St: Settle<T> + ?Sized,
{
    let refused = match write(store, lease, settlement, lease_until).await {
        Err(Error::PayloadTooLarge { size, limit }) => (size, limit),
        written => return written,
    };
    let (size, limit) = refused;
    match settle.too_large(size, limit) {
        Some(instead) => {
            tracing::warn!(
                size,
                limit,
                "the outcome is over the store's payload limit; writing what the settle step gave instead"
            );
            // Boxed: rare, and inline its future took as much room in every attempt's
            // future as the first write's, with which it never overlapped.
            Box::pin(write(store, lease, &instead, lease_until)).await
        }
        None => Err(Error::PayloadTooLarge { size, limit }),
    }
}

async fn write<S: IdempotencyStore>(
    store: &S,
    lease: &Lease,
    settlement: &Settlement,
    lease_until: Instant,
) -> Result<(), Error> {
    match *settlement {
        Settlement::Complete {
            ref payload,
            retention,
        } => {
            finish(
                store,
                lease,
                Finish::Completed,
                payload,
                retention,
                lease_until,
            )
            .await
        }
        Settlement::Fail {
            ref payload,
            retention,
        } => {
            finish(
                store,
                lease,
                Finish::Failed,
                payload,
                retention,
                lease_until,
            )
            .await
        }
        Settlement::Release => {
            // Nothing to lose: a failed release only means the key frees itself when the
            // lease runs out.
            if let Err(error) = answered(store.release(lease), lease_until).await {
                tracing::warn!(%error, "releasing the key failed; it frees itself when the lease ends");
            }
            Ok(())
        }
    }
}

/// Writes an outcome, retrying while the store is unavailable and the lease may still be
/// ours: the operation has run, and an outcome left unstored lets the key run again once
/// its lease ends.
///
/// The first try is awaited here, the retries in a box of their own: nearly every write
/// succeeds at once, and its future, part of every attempt's, then carries no timer and no
/// retry state.
async fn finish<S: IdempotencyStore>(
    store: &S,
    lease: &Lease,
    finish: Finish,
    payload: &Bytes,
    retention: Ttl,
    lease_until: Instant,
) -> Result<(), Error> {
    let written = match finish {
        Finish::Completed => {
            let call = complete_once(store, lease, payload.clone(), retention);
            answered(call, lease_until).await
        }
        Finish::Failed => {
            let call = fail_once(store, lease, payload.clone(), retention);
            answered(call, lease_until).await
        }
    };
    match written {
        Err(Error::Unavailable { source }) => {
            let retry = Retry {
                finish,
                payload: payload.clone(),
                retention,
                lease_until,
            };
            Box::pin(retry.run(store, lease, source)).await
        }
        written => written,
    }
}

/// An outcome write whose first try found the store unavailable.
struct Retry {
    finish: Finish,
    payload: Bytes,
    retention: Ttl,
    lease_until: Instant,
}

impl Retry {
    /// Tries again, from the second try on, after the last one failed with `source`.
    async fn run<S: IdempotencyStore>(
        self,
        store: &S,
        lease: &Lease,
        mut source: BoxError,
    ) -> Result<(), Error> {
        let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
        let mut attempt = 1;
        loop {
            let Some(pause) = self.next_pause(attempt, &mut backoff) else {
                return Err(Error::Unavailable { source });
            };
            tracing::warn!(attempt, error = %source, "storing the outcome failed; retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
            let payload = self.payload.clone();
            let written = match self.finish {
                Finish::Completed => {
                    let call = complete_once(store, lease, payload, self.retention);
                    answered(call, self.lease_until).await
                }
                Finish::Failed => {
                    let call = fail_once(store, lease, payload, self.retention);
                    answered(call, self.lease_until).await
                }
            };
            match written {
                Err(Error::Unavailable { source: again }) => source = again,
                // An earlier attempt may have been applied and only its reply lost: then
                // the key holds this outcome under this lease's fencing number.
                Err(Error::LeaseLost) => {
                    let ours = self.read_back(store, lease, &mut backoff).await;
                    return if ours { Ok(()) } else { Err(Error::LeaseLost) };
                }
                written => return written,
            }
        }
    }

    /// The pause before the next call to the store, after `calls` of them failed with
    /// `Unavailable`; `None` once no more is worth making.
    ///
    /// Never past the lease's end, but never giving up before it either: at least
    /// [`MIN_WRITE_ATTEMPTS`] calls, and when the next pause would outlast the lease, the
    /// last call is made as it ends, so a store back by then still gets it (a restart that
    /// ends inside the lease costs no second run).
    fn next_pause(&self, calls: u32, backoff: &mut Backoff) -> Option<Duration> {
        let left = last_call(self.lease_until).saturating_duration_since(Instant::now());
        if calls >= MIN_WRITE_ATTEMPTS && left.is_zero() {
            return None;
        }
        Some(match backoff.pause() {
            pause if calls >= MIN_WRITE_ATTEMPTS => pause.min(left),
            pause => pause,
        })
    }

    /// Whether the key holds this outcome under `lease`, read again while the store, which
    /// has just been blinking, cannot answer (at least [`MIN_WRITE_ATTEMPTS`] reads, and
    /// until the lease's last call).
    async fn read_back<S: IdempotencyStore>(
        &self,
        store: &S,
        lease: &Lease,
        backoff: &mut Backoff,
    ) -> bool {
        let mut reads = 1;
        loop {
            let read = holds(store, lease, self.finish, &self.payload);
            match answered(read, self.lease_until).await {
                Ok(held) => return held,
                Err(Error::Unavailable { source }) => {
                    let Some(pause) = self.next_pause(reads, backoff) else {
                        return false;
                    };
                    tracing::warn!(error = %source, "reading back the outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    reads += 1;
                }
                Err(_) => return false,
            }
        }
    }
}

/// One try of the write, without the trait's box where the store has none; a function of
/// its own for the reason `claim_once` (in `claim.rs`) is.
fn complete_once<'a, S: IdempotencyStore>(
    store: &'a S,
    lease: &'a Lease,
    payload: Bytes,
    retention: Ttl,
) -> impl Future<Output = Result<(), Error>> + Send + 'a {
    store.complete_unboxed(lease, payload, retention)
}

/// As [`complete_once`], for a failure.
fn fail_once<'a, S: IdempotencyStore>(
    store: &'a S,
    lease: &'a Lease,
    payload: Bytes,
    retention: Ttl,
) -> impl Future<Output = Result<(), Error>> + Send + 'a {
    store.fail_unboxed(lease, payload, retention)
}

/// Whether the key holds `payload` as its `finish`, written under `lease`; the read's error
/// if the store could not say.
async fn holds<S: IdempotencyStore + ?Sized>(
    store: &S,
    lease: &Lease,
    finish: Finish,
    payload: &Bytes,
) -> Result<bool, Error> {
    let Some(record) = store.read(&lease.key).await? else {
        return Ok(false);
    };
    Ok(record.fencing == lease.fencing
        && match (finish, record.state) {
            (Finish::Completed, RecordState::Completed { response }) => response == payload,
            (Finish::Failed, RecordState::Failed { failure }) => failure == payload,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::test_store::TestStore;
    use crate::key::Key;
    use crate::lease::OwnerToken;

    fn lease() -> Lease {
        Lease::new(
            Key::new("write", "k").expect("a valid key"),
            OwnerToken::random(),
            1,
        )
    }

    async fn write_with(
        back_after: Duration,
        lease_left: Duration,
    ) -> (Result<(), Error>, TestStore) {
        let start = Instant::now();
        let store = TestStore::new().back_at(start + back_after);
        let written = finish(
            &store,
            &lease(),
            Finish::Completed,
            &Bytes::from_static(b"done"),
            Ttl::from_secs(60).expect("ttl"),
            start + lease_left,
        )
        .await;
        (written, store)
    }

    /// A store back just before the lease ends still gets the outcome: the last attempt is
    /// made as the lease ends. (Giving up when the next backoff pause would outlast the
    /// lease left up to half a lease unused, and cost a second run after Redis restarts.)
    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_is_made_as_the_lease_ends() {
        for _ in 0..20 {
            let lease_left = Duration::from_secs(1);
            let back = lease_left - FINAL_MARGIN - Duration::from_millis(1);
            let (written, store) = write_with(back, lease_left).await;
            assert!(written.is_ok(), "{written:?}");
            let tries = store.tries.lock().expect("not poisoned");
            let last = *tries.last().expect("tried");
            assert!(last >= store.back, "{tries:?}");
        }
    }

    /// A store that stays away past the lease is given up on as the lease ends, not later:
    /// the key may have been taken over.
    #[tokio::test(start_paused = true)]
    async fn a_store_away_past_the_lease_is_given_up_on_when_it_ends() {
        let lease_left = Duration::from_secs(1);
        let start = Instant::now();
        let (written, store) = write_with(Duration::from_secs(5), lease_left).await;
        assert!(
            matches!(written, Err(Error::Unavailable { .. })),
            "{written:?}"
        );
        let tries = store.tries.lock().expect("not poisoned");
        let last = *tries.last().expect("tried");
        // Paused time: the timer wakes on the lease's end, to the millisecond.
        assert!(
            last >= start + lease_left - FINAL_MARGIN
                && last <= start + lease_left - FINAL_MARGIN + Duration::from_millis(2),
            "{:?}",
            last - start
        );
        assert!(tries.len() >= MIN_WRITE_ATTEMPTS as usize);
    }

    /// While the lease lasts, attempts are at most `MAX_PAUSE` apart: a store back half-way
    /// through the lease gets the outcome at once, not a backoff step of up to a second
    /// later, at the lease's edge, where a takeover races it.
    #[tokio::test(start_paused = true)]
    async fn attempts_stay_dense_while_the_lease_lasts() {
        for _ in 0..20 {
            let start = Instant::now();
            let back = Duration::from_millis(500);
            let (written, store) = write_with(back, Duration::from_secs(1)).await;
            assert!(written.is_ok(), "{written:?}");
            let tries = store.tries.lock().expect("not poisoned");
            let last = *tries.last().expect("tried");
            assert!(
                last <= start + back + MAX_PAUSE + Duration::from_millis(2),
                "written {:?} after the start",
                last - start
            );
        }
    }

    /// `LeaseLost` on the first write is the answer as it is, with no read: nothing of this
    /// attempt can be in the store yet, so what the key shows (here, a look-alike outcome
    /// under the same fencing number) is someone else's. Only a retried write looks.
    #[tokio::test(start_paused = true)]
    async fn a_lease_lost_on_the_first_write_is_reported_without_a_read() {
        // Every write is `LeaseLost`, and the key shows the very outcome under the lease's
        // fencing number.
        let store = TestStore::new().taken_over().showing_completed(b"done");
        let written = finish(
            &store,
            &lease(),
            Finish::Completed,
            &Bytes::from_static(b"done"),
            Ttl::from_secs(60).expect("ttl"),
            Instant::now() + Duration::from_secs(1),
        )
        .await;
        assert!(matches!(written, Err(Error::LeaseLost)), "{written:?}");
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// The first attempts keep their backoff pauses even when the lease has no time left:
    /// the minimum attempts exist to ride out a blip of the store, which attempts made in
    /// the same instant would all meet.
    #[tokio::test(start_paused = true)]
    async fn the_minimum_attempts_are_spread_even_with_no_lease_left() {
        let (written, store) = write_with(Duration::from_secs(5), Duration::ZERO).await;
        assert!(
            matches!(written, Err(Error::Unavailable { .. })),
            "{written:?}"
        );
        let tries = store.tries.lock().expect("not poisoned");
        assert_eq!(tries.len(), MIN_WRITE_ATTEMPTS as usize, "{tries:?}");
        for pair in tries.windows(2) {
            assert!(pair[1] - pair[0] >= FIRST_PAUSE / 2, "{tries:?}");
        }
    }
}
