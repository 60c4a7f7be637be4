//! The consume loop the adapters share: messages processed concurrently up to a limit, and
//! a graceful shutdown that settles every message it started.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use idem_core::BoxError;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::disposition::Disposition;
use crate::message::IdSource;

/// How an adapter's consume loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ConsumeOptions {
    pub(crate) concurrency: usize,
    pub(crate) id_source: Option<IdSource>,
    pub(crate) dead_letter_subject: Option<String>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            id_source: None,
            dead_letter_subject: None,
        }
    }
}

impl ConsumeOptions {
    /// The most messages handled at once; on RabbitMQ also the channel's prefetch, so the
    /// broker never hands this consumer more than it can work on. At least 1. Default: 64.
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
    /// `term`ed (JetStream then emits a `MSG_TERMINATED` advisory). On RabbitMQ the route
    /// is the queue's own `x-dead-letter-exchange`.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }
}

/// What a consume loop did, once it returns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeSummary {
    /// Messages acked.
    pub acked: u64,
    /// Messages handed back to the broker.
    pub requeued: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages whose disposition could not be applied (the connection was gone, or the
    /// handler panicked). The broker still holds them and delivers them again.
    pub unsettled: u64,
}

/// The consume loop stopped because the broker connection failed. Every message it had
/// started was settled or left to the broker to redeliver, as `summary` counts.
#[derive(Debug, thiserror::Error)]
#[error("the consume loop stopped: {source}")]
pub struct ConsumeError {
    /// What the loop had done.
    pub summary: ConsumeSummary,
    /// The broker client's error.
    #[source]
    pub source: BoxError,
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
    /// Counts a disposition applied (`applied`), or one that could not be.
    pub(crate) fn count(&self, disposition: &Disposition, applied: bool) {
        let counter = match (applied, disposition) {
            (false, _) => &self.unsettled,
            (true, Disposition::Ack { .. }) => &self.acked,
            (true, Disposition::Requeue { .. }) => &self.requeued,
            (true, Disposition::DeadLetter { .. }) => &self.dead_lettered,
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
}

/// Tells the tasks the loop is shutting down, so a requeue delay is cut short: the
/// message goes back to the broker at once instead of holding up the shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Sleeps for `delay`, or less if the loop starts shutting down.
    pub(crate) async fn sleep(&mut self, delay: Duration) {
        if *self.0.borrow() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = self.0.wait_for(|stopping| *stopping) => {}
        }
    }
}

/// Runs `process` on each message of `stream`, at most `concurrency` at once, until the
/// stream ends, fails, or `shutdown` resolves; then waits for every message it started.
///
/// `process` settles its message itself (ack, requeue, dead-letter) and counts it in the
/// tally. Returns the stream's error, if that is what stopped it.
pub(crate) async fn run<M, Er, St, P, PFut>(
    mut stream: St,
    concurrency: usize,
    shutdown: impl Future<Output = ()>,
    tally: Arc<Tally>,
    process: P,
) -> Result<ConsumeSummary, ConsumeError>
where
    St: Stream<Item = Result<M, Er>> + Unpin,
    Er: Into<BoxError>,
    P: Fn(M, Stopping) -> PFut,
    PFut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency));
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut failure = None;
    tokio::pin!(shutdown);
    loop {
        // A slot first, then a message: a message is taken from the broker only when it can
        // start at once, so none waits here unacked while the loop shuts down.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                // Boxed: a handler's future (the store's calls, the executor's state) runs to
                // about 10 KB, and tokio copies a task's future in whole when it spawns it,
                // finishes it and reads its output; boxed, those copies are a pointer.
                // Profiled with callgrind on idem-bench's consumer rows, the copies were
                // two thirds of the instructions.
                let work = Box::pin(process(message, Stopping(stopping.clone())));
                tasks.spawn(async move {
                    work.await;
                    drop(slot);
                });
            }
            Some(Err(error)) => {
                failure = Some(error.into());
                break;
            }
            None => break,
        }
        reap(&mut tasks, &tally);
    }
    // Graceful: nothing new is taken; what started finishes and is settled.
    let _ = stop.send(true);
    tracing::debug!(in_flight = tasks.len(), "consume loop draining");
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a message handler panicked; the broker will redeliver its message");
            tally.unsettled.fetch_add(1, Ordering::Relaxed);
        }
    }
    tracing::debug!("consume loop drained");
    let summary = tally.summary();
    match failure {
        None => Ok(summary),
        Some(source) => Err(ConsumeError { summary, source }),
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
