//! The consume loop the adapters share: messages processed concurrently up to a limit, and
//! a graceful shutdown that settles every message it started.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use idem_core::BoxError;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::disposition::{DeadLetterReason, Disposition, RequeueReason};
use crate::message::{IdSource, Message, MissingId};

/// How an adapter's consume loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ConsumeOptions {
    pub(crate) concurrency: usize,
    pub(crate) id_source: Option<IdSource>,
    pub(crate) dead_letter_subject: Option<String>,
    pub(crate) setup_timeout: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            id_source: None,
            dead_letter_subject: None,
            setup_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsumeOptions {
    /// The most messages handled at once; on RabbitMQ also the channel's prefetch, and on
    /// JetStream the most its pull requests ask for, so the broker never hands this
    /// consumer more than it can work on. At least 1. Default: 64.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Where the message ID comes from. Default: the AMQP `message_id` property on
    /// RabbitMQ, the `Nats-Msg-Id` header on NATS.
    pub fn id_source(mut self, source: IdSource) -> Self {
        self.id_source = Some(source);
        self
    }

    /// NATS only: the subject a dead-lettered message is published to (into a stream
    /// that captures it) before it is `term`ed. Default: none, the message is only
    /// `term`ed (JetStream then emits a `MSG_TERMINATED` advisory): a stream with `limits`
    /// retention keeps it until its limits remove it, but one with `workqueue` or
    /// `interest` retention removes it at once, as if acked. On RabbitMQ the route is the
    /// queue's own dead-letter exchange; a queue without one drops the message.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// The longest each broker call that sets the loop up may wait for its answer:
    /// RabbitMQ's `basic.qos` and `basic.consume`, the opening of JetStream's pull
    /// subscription. Past it the loop returns [`ConsumeFailure::SetupTimedOut`] instead of
    /// waiting on a broker that went silent (which lapin would notice only at the missed
    /// heartbeat: up to 120 s with RabbitMQ's default 60 s). Default: 10 s.
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = timeout;
        self
    }
}

/// What a consume loop did, once it returns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeSummary {
    /// Messages acked.
    pub acked: u64,
    /// Messages handed back to the broker, dead-letters whose copy could not be published
    /// included (JetStream: `nak`ed instead of `term`ed).
    pub requeued: u64,
    /// Messages dead-lettered: rejected to the queue's dead-letter exchange (RabbitMQ), or
    /// `term`ed once their copy reached the dead-letter stream (JetStream).
    pub dead_lettered: u64,
    /// Messages whose disposition could not be applied (the connection was gone, or the
    /// handler panicked). The broker still holds them and delivers them again. (A message
    /// whose handler panicked at the last delivery a JetStream consumer's `max_deliver`
    /// allows is dead-lettered, and counted there.)
    pub unsettled: u64,
}

/// The consume loop stopped on an error: it could not be set up, or the broker connection
/// failed. Every message it had started was settled or left to the broker to redeliver, as
/// `summary` counts.
#[derive(Debug, thiserror::Error)]
#[error("the consume loop stopped: {failure}")]
#[non_exhaustive]
pub struct ConsumeError {
    /// What the loop had done.
    pub summary: ConsumeSummary,
    /// Why it stopped.
    #[source]
    pub failure: ConsumeFailure,
}

impl ConsumeError {
    /// An error before any message was taken.
    pub(crate) fn before_start(failure: ConsumeFailure) -> Self {
        Self {
            summary: ConsumeSummary::default(),
            failure,
        }
    }
}

/// Why a consume loop stopped on an error: a case for each thing a caller does differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeFailure {
    /// A setup call got no answer within [`ConsumeOptions::setup_timeout`]: the broker, or
    /// the path to it, is silent. Reconnect (the connection is likely dead) and try again.
    #[error("{step} got no answer within {waited:?}")]
    SetupTimedOut {
        /// The call: `basic.qos`, `basic.consume`, `the pull subscription`.
        step: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// The broker refused a setup call (no such queue or stream, no permission), or the
    /// connection failed during it.
    #[error("{step} failed: {source}")]
    Setup {
        /// The call that failed.
        step: &'static str,
        /// The broker client's error.
        #[source]
        source: BoxError,
    },
    /// The delivery stream failed or ended: the connection or the channel was lost, the
    /// client gave up reconnecting (NATS), or the broker cancelled the consumer (RabbitMQ,
    /// its queue deleted). Reconnect and consume again; what was in flight comes back as
    /// redeliveries.
    #[error("the delivery stream failed: {source}")]
    Stream {
        /// The broker client's error.
        #[source]
        source: BoxError,
    },
}

/// Runs one setup call with the options' timeout.
pub(crate) async fn setup<T, E: Into<BoxError>>(
    step: &'static str,
    options: &ConsumeOptions,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, ConsumeError> {
    let waited = options.setup_timeout;
    let failure = match tokio::time::timeout(waited, call).await {
        Ok(Ok(done)) => return Ok(done),
        Ok(Err(error)) => ConsumeFailure::Setup {
            step,
            source: error.into(),
        },
        Err(_) => ConsumeFailure::SetupTimedOut { step, waited },
    };
    Err(ConsumeError::before_start(failure))
}

/// What an adapter tells the shared loop about its broker: how a delivery becomes a
/// [`Message`], and how a [`Disposition`] is applied to it.
pub(crate) trait Broker: Send + Sync + 'static {
    /// A delivery as the broker client hands it over.
    type Delivery: Send + 'static;
    /// What settles one delivery (its acker, and what a dead-letter copy needs).
    type Settler: Send + 'static;

    /// The message for the handler, or why it has none (no ID), and its settler.
    fn open(&self, delivery: Self::Delivery) -> (Result<Message, MissingId>, Self::Settler);

    /// Keeps the broker from redelivering the message while its handler runs, for as
    /// long as it is polled: the loop drops it when the handler returns. A broker that
    /// never redelivers a message still in hand (RabbitMQ) pends.
    fn keep_alive(&self, settler: &Self::Settler) -> impl Future<Output = ()> + Send;

    /// Applies a disposition; says what the broker took.
    fn settle(
        &self,
        settler: Self::Settler,
        disposition: &Disposition,
        stopping: Stopping,
    ) -> impl Future<Output = Settled> + Send;
}

/// What became of a disposition at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Applied as given.
    AsGiven,
    /// Applied as a requeue instead: a dead-letter whose copy could not be published.
    // Only the NATS adapter publishes a dead-letter copy of its own (RabbitMQ routes it
    // through the queue's dead-letter exchange), so a build without `nats` never makes it.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    AsRequeue,
    /// Applied as a dead-letter instead: a requeue at the last delivery the broker allows.
    // Only the NATS adapter knows that last delivery (the consumer's `max_deliver`), so a
    // build without `nats` never makes it.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    AsDeadLetter,
    /// Not applied (the connection was gone): the broker still holds the message.
    Not,
}

impl From<bool> for Settled {
    /// Whether the broker took the disposition as given.
    fn from(applied: bool) -> Self {
        if applied { Self::AsGiven } else { Self::Not }
    }
}

/// Counters shared by the tasks of one loop.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    acked: AtomicU64,
    requeued: AtomicU64,
    dead_lettered: AtomicU64,
    unsettled: AtomicU64,
}

impl Tally {
    /// Counts a disposition as the broker took it.
    pub(crate) fn count(&self, disposition: &Disposition, settled: Settled) {
        let counter = match (settled, disposition) {
            (Settled::Not, _) => &self.unsettled,
            (Settled::AsDeadLetter, _) => &self.dead_lettered,
            (Settled::AsRequeue, _) | (Settled::AsGiven, Disposition::Requeue { .. }) => {
                &self.requeued
            }
            (Settled::AsGiven, Disposition::Ack { .. }) => &self.acked,
            (Settled::AsGiven, Disposition::DeadLetter { .. }) => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> ConsumeSummary {
        ConsumeSummary {
            acked: self.acked.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            unsettled: self.unsettled.load(Ordering::Relaxed),
        }
    }

    /// What the loop returns once everything it counts is done.
    pub(crate) fn outcome(
        &self,
        failure: Option<ConsumeFailure>,
    ) -> Result<ConsumeSummary, ConsumeError> {
        let summary = self.summary();
        match failure {
            None => Ok(summary),
            Some(failure) => Err(ConsumeError { summary, failure }),
        }
    }
}

/// Tells the tasks the loop is shutting down, so a wait is cut short: a requeue delay
/// (RabbitMQ), the pause of a message held for another try, or a pause between tries of a
/// dead-letter copy (JetStream) ends at once instead of holding up the shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Whether the loop is shutting down, or gone: a loop whose future was dropped shuts
    /// down as far as the tasks it left are concerned, and never says so. Read as still
    /// running, its tasks' waits (which end at once, the sender gone) made a held message
    /// go round its handler, or a dead-letter copy be tried again, without pause.
    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Sleeps for `delay`, or less if the loop starts shutting down.
    pub(crate) async fn sleep(&mut self, delay: Duration) {
        if self.is_set() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = self.0.wait_for(|stopping| *stopping) => {}
        }
    }
}

/// The handler slots of one loop: one per message it may run at once.
pub(crate) fn slots(options: &ConsumeOptions) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(options.concurrency))
}

/// Runs `handler` on each delivery of `stream`, at most one per slot of `slots` at once
/// ([`slots`]), and settles each through `broker`, until the stream ends, fails, or
/// `shutdown` resolves; then waits for every message it started. The loop holds a slot
/// while it waits for the stream's next delivery.
///
/// After a shutdown, the messages in flight are told the loop is stopping (a held message
/// is handed back, a requeue's delay is cut short) only once `deliveries_stopped` resolves:
/// the broker sends this loop nothing more (RabbitMQ: its consumer's cancel confirmed).
/// Handed back before, a message could be delivered to this loop again, to be handed back
/// once more, each time counted as a delivery towards the queue's limit.
///
/// The loop drops `stream` as soon as it stops taking messages: a JetStream pull request
/// still open would be sent the very messages the drain hands back (the server gives a
/// `nak`ed message to any pull still listening), and they would wait out their `ack_wait`
/// in a client that no longer reads them. Dropped, the pulls' subscriptions end before
/// the first `nak` goes out, and the server passes them by.
///
/// Returns the stream's failure (its end counts as one) if that is what stopped it; the
/// tally has the rest.
pub(crate) async fn run<B, Er, St, F, Fut>(
    broker: Arc<B>,
    mut stream: St,
    slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    deliveries_stopped: impl Future<Output = ()>,
    tally: Arc<Tally>,
    handler: F,
) -> Option<ConsumeFailure>
where
    B: Broker,
    St: Stream<Item = Result<B::Delivery, Er>> + Unpin,
    Er: Into<BoxError>,
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let handler = Arc::new(handler);
    let (stop, stopping) = watch::channel(false);
    let mut tasks = InFlight(JoinSet::new());
    let mut failure = None;
    tokio::pin!(shutdown);
    let mut asked = false;
    loop {
        // A slot first, then a message: a message is taken from the broker only when it can
        // start at once, so none waits here unacked while the loop shuts down.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => {
                asked = true;
                break;
            }
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let next = tokio::select! {
            biased;
            () = &mut shutdown => {
                asked = true;
                break;
            }
            next = stream.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let work = process(
                    Arc::clone(&broker),
                    Arc::clone(&handler),
                    Arc::clone(&tally),
                    delivery,
                    Stopping(stopping.clone()),
                );
                // Boxed: a handler's future (the store's calls, the executor's state) runs to
                // about 10 KB, and tokio copies a task's future in whole when it spawns it,
                // finishes it and reads its output; boxed, those copies are a pointer.
                // Profiled with callgrind on idem-bench's consumer rows, the copies were
                // two thirds of the instructions.
                let work = Box::pin(work);
                tasks.0.spawn(async move {
                    work.await;
                    drop(slot);
                });
            }
            Some(Err(error)) => {
                failure = Some(ConsumeFailure::Stream {
                    source: error.into(),
                });
                break;
            }
            // Only a shutdown ends the loop cleanly: an `Ok` would read as the one the
            // caller asked for, and it would stop consuming.
            None => {
                failure = Some(ConsumeFailure::Stream {
                    source: Box::new(StreamEnded),
                });
                break;
            }
        }
        reap(&mut tasks.0, &tally);
    }
    // Graceful: nothing new is taken; what started finishes and is settled.
    drop(stream);
    if asked {
        deliveries_stopped.await;
    }
    let _ = stop.send(true);
    tracing::debug!(in_flight = tasks.0.len(), "consume loop draining");
    while let Some(joined) = tasks.0.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a message handler panicked; the broker will redeliver its message");
            tally.unsettled.fetch_add(1, Ordering::Relaxed);
        }
    }
    tracing::debug!("consume loop drained");
    failure
}

/// The delivery stream ended with no shutdown asked for.
#[derive(Debug, thiserror::Error)]
#[error(
    "the delivery stream ended: the broker cancelled the consumer (its queue deleted, say) \
     or the client closed its connection"
)]
struct StreamEnded;

/// One delivery, start to end: its message to the handler (or the dead-letter route when
/// it has no ID), then its disposition to the broker, counted.
async fn process<B: Broker, F, Fut>(
    broker: Arc<B>,
    handler: Arc<F>,
    tally: Arc<Tally>,
    delivery: B::Delivery,
    stopping: Stopping,
) where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let (message, settler) = broker.open(delivery);
    let disposition = match message {
        Ok(message) => match kept_alive(
            handled(&*handler, message, stopping.clone()),
            broker.keep_alive(&settler),
        )
        .await
        {
            Ok(disposition) => disposition,
            Err(panic) => {
                // Handed back to the broker, not left unacked: on RabbitMQ an unsettled
                // delivery stays on the channel for as long as the loop runs, holding a
                // prefetch slot, and is redelivered only when the channel closes.
                tracing::error!(
                    panic = panic_text(&*panic),
                    "a message handler panicked; handing its message back to the broker"
                );
                let requeue = Disposition::Requeue {
                    delay: PANICKED_DELAY,
                    reason: RequeueReason::HandlerPanicked,
                };
                let settled = broker.settle(settler, &requeue, stopping).await;
                // It has no disposition of its own: counted as unsettled, as the broker
                // delivers it again; unless its requeue went to the dead-letter route
                // instead (JetStream's last delivery), and then it is not coming back.
                match settled {
                    Settled::AsDeadLetter => tally.count(&requeue, settled),
                    _ => {
                        tally.unsettled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
        },
        Err(missing) => {
            tracing::warn!(error = %missing, "dead-lettering a message without an ID");
            Disposition::DeadLetter {
                reason: DeadLetterReason::MissingId,
            }
        }
    };
    let settled = broker.settle(settler, &disposition, stopping).await;
    tally.count(&disposition, settled);
}

/// Runs `handler` on `message` until it answers a disposition for the broker, or panics.
///
/// A requeue that is no fault of the message (the store unavailable, its key in progress on
/// another consumer) is held here instead: the handler runs again after its delay, with the
/// same delivery. Handed back, each such requeue raised the broker's delivery count (a
/// quorum queue's `x-delivery-count`, which its `x-delivery-limit` dead-letters on;
/// JetStream's `delivered`, which its `max_deliver` stops at) and so idem's poison limit:
/// a store outage longer than those limits dead-lettered every message it touched, never
/// run, for the store's fault. Only a shutdown (or a lost connection) hands it back.
async fn handled<F, Fut>(
    handler: &F,
    message: Message,
    mut stopping: Stopping,
) -> std::thread::Result<Disposition>
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = Disposition>,
{
    loop {
        let disposition = AssertUnwindSafe(async { handler(message.clone()).await })
            .catch_unwind()
            .await?;
        match disposition {
            Disposition::Requeue { delay, reason } if !reason.is_the_messages_fault() => {
                stopping.sleep(delay).await;
                if stopping.is_set() {
                    return Ok(disposition);
                }
            }
            _ => return Ok(disposition),
        }
    }
}

/// Runs `work` with `keep_alive` beside it until `work` is done; a keep-alive that ends
/// first (it could not reach the broker) just leaves `work` to finish.
async fn kept_alive<F: Future>(work: F, keep_alive: impl Future<Output = ()>) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => return done,
        () = keep_alive => {}
    }
    work.await
}

/// How long a message whose handler panicked waits before the broker delivers it again.
const PANICKED_DELAY: Duration = Duration::from_secs(1);

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The tasks of the messages in flight. Dropping the loop's future (instead of resolving
/// its shutdown) detaches them rather than aborting them: each finishes and settles its
/// message as at a shutdown. Aborted, a task whose operation had returned would lose its
/// outcome write and its ack, and the redelivery would run the operation again once the
/// lease ran out.
struct InFlight(JoinSet<()>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.detach_all();
    }
}

/// Collects finished tasks so the set does not grow, noting panics.
fn reap(tasks: &mut JoinSet<()>, tally: &Tally) {
    while let Some(joined) = tasks.try_join_next() {
        if let Err(error) = joined {
            tracing::error!(%error, "a message handler panicked; the broker will redeliver its message");
            tally.unsettled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tokio::sync::{mpsc, oneshot};

    use crate::disposition::AckReason;

    use super::*;

    /// A broker whose deliveries are the messages themselves, and which keeps the
    /// dispositions it is given.
    #[derive(Default)]
    struct Kept(Mutex<Vec<String>>);

    impl Kept {
        fn settled(&self) -> Vec<String> {
            self.0.lock().expect("not poisoned").clone()
        }
    }

    impl Broker for Kept {
        type Delivery = Message;
        type Settler = ();

        fn open(&self, delivery: Message) -> (Result<Message, MissingId>, ()) {
            (Ok(delivery), ())
        }

        fn keep_alive(&self, (): &()) -> impl Future<Output = ()> + Send {
            std::future::pending()
        }

        async fn settle(&self, (): (), disposition: &Disposition, _: Stopping) -> Settled {
            self.0
                .lock()
                .expect("not poisoned")
                .push(disposition.to_string());
            Settled::AsGiven
        }
    }

    /// A message held through a store outage is handed back at a shutdown only once the
    /// broker sends the loop nothing more: handed back before (RabbitMQ's cancel still in
    /// flight), it could be delivered to the loop again and handed back once more, each
    /// time counted as a delivery.
    #[tokio::test]
    async fn a_held_message_is_handed_back_only_once_the_broker_stopped_delivering() {
        let broker = Arc::new(Kept::default());
        let (handled, shutdown) = oneshot::channel::<()>();
        let handled = Mutex::new(Some(handled));
        let handler = move |_: Message| {
            let first = handled.lock().expect("not poisoned").take();
            async move {
                if let Some(handled) = first {
                    let _ = handled.send(());
                }
                Disposition::Requeue {
                    delay: Duration::from_millis(5),
                    reason: RequeueReason::StoreUnavailable,
                }
            }
        };
        let delivery = Ok::<_, Infallible>(Message::new("m1", "body"));
        let stream = futures::stream::iter([delivery]).chain(futures::stream::pending());
        let (stop_delivering, deliveries_stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(run(
            Arc::clone(&broker),
            stream,
            Arc::new(Semaphore::new(1)),
            async {
                let _ = shutdown.await;
            },
            async {
                let _ = deliveries_stopped.await;
            },
            Arc::new(Tally::default()),
            handler,
        ));
        // The shutdown came with the first try; the message is held, tried again every 5 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            broker.settled(),
            Vec::<String>::new(),
            "handed back while the broker could still deliver it"
        );
        stop_delivering.send(()).expect("the loop waits");
        let failure = running.await.expect("the loop does not panic");
        assert!(failure.is_none(), "a shutdown, not a failure");
        let settled = broker.settled();
        assert_eq!(settled.len(), 1, "{settled:?}");
        assert!(settled[0].contains("requeue"), "{settled:?}");
    }

    /// Each option given is the one the loop runs with: its slots, where it looks for
    /// the ID, where a dead-letter copy goes, how long a setup call may wait.
    #[tokio::test]
    async fn each_option_given_is_the_one_the_loop_runs_with() {
        let options = ConsumeOptions::default()
            .concurrency(3)
            .id_source(IdSource::BodyDigest)
            .dead_letter_subject("orders.dead")
            .setup_timeout(Duration::from_millis(1));
        assert_eq!(slots(&options).available_permits(), 3);
        assert_eq!(options.id_source, Some(IdSource::BodyDigest));
        assert_eq!(options.dead_letter_subject.as_deref(), Some("orders.dead"));
        let silent = std::future::pending::<Result<(), Infallible>>();
        let error = setup("basic.qos", &options, silent)
            .await
            .expect_err("the broker never answers");
        assert!(
            matches!(
                error.failure,
                ConsumeFailure::SetupTimedOut { step: "basic.qos", waited } if waited == Duration::from_millis(1)
            ),
            "{error:?}"
        );
        // No slot at all would stop the loop before its first message.
        let none = ConsumeOptions::default().concurrency(0);
        assert_eq!(slots(&none).available_permits(), 1);
    }

    /// The loop's answer counts each disposition as the broker took it, whether the loop
    /// ended on a shutdown or on a failure.
    #[test]
    fn the_outcome_counts_each_disposition_as_the_broker_took_it() {
        let tally = Tally::default();
        let ack = Disposition::Ack {
            reason: AckReason::Processed,
        };
        let requeue = Disposition::Requeue {
            delay: Duration::ZERO,
            reason: RequeueReason::RetryableFailure,
        };
        let dead_letter = Disposition::DeadLetter {
            reason: DeadLetterReason::PermanentFailure,
        };
        tally.count(&ack, Settled::AsGiven);
        tally.count(&requeue, Settled::AsGiven);
        tally.count(&dead_letter, Settled::AsRequeue);
        tally.count(&dead_letter, Settled::AsGiven);
        tally.count(&requeue, Settled::AsDeadLetter);
        tally.count(&dead_letter, Settled::AsGiven);
        for _ in 0..4 {
            tally.count(&ack, Settled::Not);
        }
        let expected = ConsumeSummary {
            acked: 1,
            requeued: 2,
            dead_lettered: 3,
            unsettled: 4,
        };
        assert_eq!(tally.outcome(None).expect("no failure"), expected);
        let failure = ConsumeFailure::Stream {
            source: "the connection is gone".into(),
        };
        let error = tally.outcome(Some(failure)).expect_err("a failure");
        assert_eq!(error.summary, expected);
        assert!(
            matches!(error.failure, ConsumeFailure::Stream { .. }),
            "{error:?}"
        );
    }

    /// A requeue that is the message's own fault (its operation failed, retryably) goes
    /// back to the broker at once: held and run again here, it would never count against
    /// the message's delivery limit, and a message that always fails would go round its
    /// handler for ever.
    #[tokio::test]
    async fn a_requeue_that_is_the_messages_fault_is_handed_back_not_held() {
        let calls = AtomicU64::new(0);
        let handler = |_: Message| {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if call == 0 {
                    Disposition::Requeue {
                        delay: Duration::ZERO,
                        reason: RequeueReason::RetryableFailure,
                    }
                } else {
                    Disposition::Ack {
                        reason: AckReason::Processed,
                    }
                }
            }
        };
        let (_running, stopping) = watch::channel(false);
        let disposition = handled(&handler, Message::new("m1", "body"), Stopping(stopping))
            .await
            .expect("the handler does not panic");
        assert_eq!(
            disposition,
            Disposition::Requeue {
                delay: Duration::ZERO,
                reason: RequeueReason::RetryableFailure,
            }
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    async fn broken(_: Message) -> Disposition {
        panic!("the handler broke")
    }

    /// A broker at a message's last delivery: a requeue goes to the dead-letter route.
    struct LastDelivery;

    impl Broker for LastDelivery {
        type Delivery = Message;
        type Settler = ();

        fn open(&self, delivery: Message) -> (Result<Message, MissingId>, ()) {
            (Ok(delivery), ())
        }

        fn keep_alive(&self, (): &()) -> impl Future<Output = ()> + Send {
            std::future::pending()
        }

        async fn settle(&self, (): (), disposition: &Disposition, _: Stopping) -> Settled {
            match disposition {
                Disposition::Requeue { .. } => Settled::AsDeadLetter,
                _ => Settled::AsGiven,
            }
        }
    }

    /// A message whose handler panicked at its last delivery is dead-lettered, not coming
    /// back: counted as unsettled, the summary said the broker would deliver it again.
    #[tokio::test]
    async fn a_panicked_message_sent_to_the_dead_letter_route_is_counted_dead_lettered() {
        let tally = Arc::new(Tally::default());
        let stream = futures::stream::iter([Ok::<_, Infallible>(Message::new("m1", "body"))]);
        let failure = run(
            Arc::new(LastDelivery),
            stream,
            Arc::new(Semaphore::new(1)),
            std::future::pending(),
            async {},
            Arc::clone(&tally),
            broken,
        )
        .await;
        assert!(
            matches!(failure, Some(ConsumeFailure::Stream { .. })),
            "the stream ended: {failure:?}"
        );
        let summary = tally.outcome(None).expect("no failure");
        assert_eq!(
            summary,
            ConsumeSummary {
                dead_lettered: 1,
                ..ConsumeSummary::default()
            }
        );
    }

    /// A broker whose client panics when it settles the message `m1`.
    struct PanicsOnM1;

    impl Broker for PanicsOnM1 {
        type Delivery = Message;
        type Settler = String;

        fn open(&self, delivery: Message) -> (Result<Message, MissingId>, String) {
            let id = delivery.id().to_owned();
            (Ok(delivery), id)
        }

        fn keep_alive(&self, _: &String) -> impl Future<Output = ()> + Send {
            std::future::pending()
        }

        async fn settle(&self, id: String, _: &Disposition, _: Stopping) -> Settled {
            assert_ne!(id, "m1", "the broker client broke");
            Settled::AsGiven
        }
    }

    /// The loop collects its finished tasks as it goes, not only at its end: one that ran
    /// for days would otherwise hold every task it ever started, and a panicked one would
    /// be counted only once it stopped.
    #[tokio::test]
    async fn finished_tasks_are_collected_while_the_loop_runs() {
        let tally = Arc::new(Tally::default());
        let (started, second_started) = oneshot::channel::<()>();
        let started = Mutex::new(Some(started));
        let (finish, may_finish) = watch::channel(false);
        let handler = move |message: Message| {
            let second = (message.id() == "m2")
                .then(|| started.lock().expect("not poisoned").take())
                .flatten();
            let mut may_finish = may_finish.clone();
            async move {
                if let Some(started) = second {
                    let _ = started.send(());
                    let _ = may_finish.wait_for(|finish| *finish).await;
                }
                Disposition::Ack {
                    reason: AckReason::Processed,
                }
            }
        };
        let messages = ["m1", "m2"].map(|id| Ok::<_, Infallible>(Message::new(id, "body")));
        let running = tokio::spawn(run(
            Arc::new(PanicsOnM1),
            futures::stream::iter(messages),
            // One slot: `m2` is taken only once `m1`'s task is over.
            Arc::new(Semaphore::new(1)),
            std::future::pending(),
            async {},
            Arc::clone(&tally),
            handler,
        ));
        second_started.await.expect("m2 runs");
        assert_eq!(
            tally.summary().unsettled,
            1,
            "m1's task panicked before m2 was taken, and is not collected yet"
        );
        finish.send(true).expect("m2 waits");
        running.await.expect("the loop does not panic");
        assert_eq!(
            tally.summary(),
            ConsumeSummary {
                acked: 1,
                unsettled: 1,
                ..ConsumeSummary::default()
            }
        );
    }

    /// A broker that tells each disposition it is given.
    struct Told(mpsc::UnboundedSender<String>);

    impl Broker for Told {
        type Delivery = Message;
        type Settler = ();

        fn open(&self, delivery: Message) -> (Result<Message, MissingId>, ()) {
            (Ok(delivery), ())
        }

        fn keep_alive(&self, (): &()) -> impl Future<Output = ()> + Send {
            std::future::pending()
        }

        async fn settle(&self, (): (), disposition: &Disposition, _: Stopping) -> Settled {
            let _ = self.0.send(disposition.to_string());
            Settled::AsGiven
        }
    }

    /// A loop whose future is dropped (a `select!` on ctrl-c) leaves its messages in
    /// flight to finish and be settled: aborted, one whose operation had run would lose its
    /// outcome write and its ack, and its redelivery would run it again.
    #[tokio::test]
    async fn a_dropped_loop_leaves_its_messages_to_finish_and_be_settled() {
        let (told, mut settled) = mpsc::unbounded_channel();
        let (started, handler_started) = oneshot::channel::<()>();
        let started = Mutex::new(Some(started));
        let (finish, may_finish) = watch::channel(false);
        let handler = move |_: Message| {
            let started = started.lock().expect("not poisoned").take();
            let mut may_finish = may_finish.clone();
            async move {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                let _ = may_finish.wait_for(|finish| *finish).await;
                Disposition::Ack {
                    reason: AckReason::Processed,
                }
            }
        };
        let delivery = Ok::<_, Infallible>(Message::new("m1", "body"));
        let stream = futures::stream::iter([delivery]).chain(futures::stream::pending());
        let running = tokio::spawn(run(
            Arc::new(Told(told)),
            stream,
            Arc::new(Semaphore::new(1)),
            std::future::pending(),
            async {},
            Arc::new(Tally::default()),
            handler,
        ));
        handler_started.await.expect("m1 runs");
        running.abort();
        let _ = running.await;
        let _ = finish.send(true);
        assert_eq!(
            settled.recv().await.as_deref(),
            Some("ack (Processed)"),
            "the message in flight was never settled"
        );
    }
}
