//! The NATS JetStream adapter, on async-nats: a pull consumer, `ack`, `nak` with delay,
//! `term`.
//!
//! [`consume`] pulls no more messages than it has free handler slots for (the concurrency
//! limit, less the messages running), hands each to the handler as a [`Message`] and
//! applies the [`Disposition`] it returns:
//!
//! | disposition | on the server |
//! |---|---|
//! | `Ack` | `ack` |
//! | `Requeue { delay }` | `nak` with `delay`: JetStream redelivers it after the delay; for the store unavailable or the key in progress elsewhere, the handler runs again on it after the delay instead, and it is `nak`ed only at shutdown ([the consume loop](crate#the-consume-loop)) |
//! | `DeadLetter` | publish a copy to the dead-letter subject, if one is set ([`ConsumeOptions::dead_letter_subject`]), wait for the stream's ack, then `term`; if that publish fails, `nak` instead (never lost), except at the last delivery the consumer's `max_deliver` allows, where JetStream would not deliver it again: there the copy is tried again every second until it goes through (or the loop shuts down) |
//!
//! A requeue at the last delivery the consumer's `max_deliver` allows is dead-lettered
//! instead ([`Poison`](crate::DeadLetterReason::Poison)): JetStream would not deliver the
//! message again, and it would sit in the stream unseen.
//!
//! A dead-letter copy carries the original's headers, [`DEAD_LETTER_REASON`] and
//! [`ORIGINAL_SUBJECT`]; the original's `Nats-Msg-Id` moves to [`ORIGINAL_MSG_ID`], and the
//! copy's own is the original's stream and sequence, so the dead-letter stream's
//! deduplication drops only a second copy of the same message. The original's other
//! JetStream headers (`Nats-Expected-Stream` and the other publish expectations) move to
//! `Idem-Original-…` likewise (`Idem-Original-Expected-Stream`): the dead-letter stream
//! would refuse a copy that carried them as such.
//!
//! The message ID is the `Nats-Msg-Id` header by default (the one JetStream itself
//! deduplicates publishes on, within the stream's duplicate window; idem keeps
//! deduplicating long after it). The delivery count is JetStream's `delivered`.
//!
//! While a handler runs, its message is reported in progress (`AckKind::Progress`) every
//! third of the consumer's `ack_wait`, so JetStream does not redeliver it meanwhile,
//! however long the handler takes.
//!
//! Acks are published without waiting for the server's confirmation (one round trip
//! less per message). One that is lost means a redelivery after the consumer's
//! `ack_wait`, which idem answers as a replay: acked, not run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use futures::stream::SelectAll;
use idem_core::BoxError;
use tokio::sync::Semaphore;

use crate::consume::{
    self, Broker, ConsumeError, ConsumeFailure, ConsumeOptions, ConsumeSummary, Settled, Stopping,
    Tally,
};
use crate::disposition::{DeadLetterReason, Disposition};
use crate::message::{IdSource, Message, MissingId, NATS_MSG_ID, body_digest};

/// Re-exported so the context and consumer passed in match this crate's async-nats.
pub use async_nats;

/// The header a dead-lettered copy carries: the [`Disposition`] that sent it there.
pub const DEAD_LETTER_REASON: &str = "Idem-Dead-Letter-Reason";
/// The header a dead-lettered copy carries: the subject it was first published to.
pub const ORIGINAL_SUBJECT: &str = "Idem-Original-Subject";
/// The header a dead-lettered copy carries when the original had a `Nats-Msg-Id`: that ID.
/// The copy's own `Nats-Msg-Id` names the original's place in its stream (`stream:sequence`),
/// so the dead-letter stream drops a second copy of the same message, never the copy of
/// another message that shares its ID (from another stream sharing the dead-letter
/// stream, or published outside the source stream's duplicate window).
pub const ORIGINAL_MSG_ID: &str = "Idem-Original-Msg-Id";
/// What a dead-letter copy puts before the rest of an original's `Nats-…` header name.
const ORIGINAL_PREFIX: &str = "Idem-Original-";

/// How long the shutdown waits for the acks to reach the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a dead-letter whose copy could not be published waits to try again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// Consumes `consumer` until `shutdown` resolves or the subscription fails, running
/// `handler` on each message, at most `options`' concurrency at once.
///
/// It pulls only for free slots, so a message it receives starts at once: none waits in
/// the client while its `ack_wait` runs. Each pull request lives 5 s on the server (less if
/// the consumer's `max_expires` says so) and asks for at most the consumer's `max_batch`.
///
/// On shutdown it ends its open pull requests (their subscriptions), waits for the messages
/// in flight, applies their dispositions and flushes the acks. What is published or handed
/// back meanwhile waits on the server for the next consumer; only a message the server had
/// already sent when the pulls ended is left to JetStream, which delivers it again after
/// `ack_wait`: nothing is lost.
///
/// # Errors
///
/// A [`ConsumeError`], with the [`ConsumeSummary`] of what was done, when the consumer's ack
/// policy is not `explicit` ([`Setup`](crate::ConsumeFailure::Setup): under `all` an ack of one
/// message acks the earlier ones still running), when the pull subscription
/// cannot be opened ([`Setup`](crate::ConsumeFailure::Setup), or
/// [`SetupTimedOut`](crate::ConsumeFailure::SetupTimedOut) past
/// [`ConsumeOptions::setup_timeout`]) or its stream fails or ends with no shutdown asked for
/// ([`Stream`](crate::ConsumeFailure::Stream): the consumer deleted, the client given up
/// reconnecting, a pull request the server refuses for good, as asking more than the
/// consumer's `max_batch`). A pull the server ends on its side (a leadership change, a
/// server shutting down) is not a failure, nor is a pull lost with a dropped connection: it
/// runs out, and the next one goes to the reconnected client.
pub async fn consume<F, Fut>(
    jetstream: &Context,
    consumer: &PullConsumer,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()>,
    handler: F,
) -> Result<ConsumeSummary, ConsumeError>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    explicit_acks(consumer)?;
    let slots = consume::slots(&options);
    let mut puller = Puller::new(consumer, Arc::clone(&slots));
    let first = puller.pull(options.concurrency);
    consume::setup("the pull subscription", &options, first).await?;
    let jet = Arc::new(Jet {
        id_source: options
            .id_source
            .clone()
            .unwrap_or_else(IdSource::nats_msg_id),
        jetstream: jetstream.clone(),
        dead_letters: options.dead_letter_subject.clone(),
        progress_every: progress_interval(consumer.cached_info().config.ack_wait),
        max_deliver: u32::try_from(consumer.cached_info().config.max_deliver)
            .ok()
            .filter(|max| *max > 0),
    });
    let tally = Arc::new(Tally::default());
    let failure = consume::run(
        jet,
        puller.into_stream(),
        slots,
        shutdown,
        // JetStream: no consumer to cancel; the loop ends its pulls by dropping the stream.
        std::future::ready(()),
        Arc::clone(&tally),
        handler,
    )
    .await;
    let client = jetstream.client();
    // Disconnected, the acks cannot go out: no point waiting for them.
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if !connected
        || tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
            .await
            .map_or(true, |flushed| flushed.is_err())
    {
        tracing::warn!(
            "the last acks may not have reached the server; JetStream will redeliver those messages"
        );
    }
    tally.outcome(failure)
}

/// How long a pull request waits on the server for messages before it expires and the
/// puller makes another (capped at the consumer's `max_expires`).
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls only as many messages as the loop has free slots for.
///
/// async-nats's pull stream asks for a batch ahead, whenever half its last batch has
/// arrived, whether or not the loop can start them: with every slot busy, up to one and a
/// half batches sat in the client unstarted, unreported, while their `ack_wait` ran.
/// JetStream then delivered them again while the first copy still waited: each such
/// message counted a delivery towards the poison limit and `max_deliver` without running,
/// and came twice. Here the messages asked for and not yet handed to the loop never
/// outnumber its free slots, so each one starts as soon as it arrives.
struct Puller {
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    /// Messages asked for and not yet handed to the loop, across the open pulls.
    requested: Arc<AtomicUsize>,
    pulls: SelectAll<Pull>,
    /// The consumer's `max_batch`: no pull asks for more.
    max_batch: usize,
    expires: Duration,
    /// The fewest uncovered slots worth a pull of their own while others are open: half
    /// the slots, so a busy loop makes one pull per half of them, not one per message.
    threshold: usize,
}

impl Puller {
    fn new(consumer: &PullConsumer, slots: Arc<Semaphore>) -> Self {
        let config = &consumer.cached_info().config;
        let max_expires = Some(config.max_expires).filter(|max| !max.is_zero());
        Self {
            consumer: consumer.clone(),
            threshold: (slots.available_permits() / 2).max(1),
            slots,
            requested: Arc::new(AtomicUsize::new(0)),
            pulls: SelectAll::new(),
            max_batch: usize::try_from(config.max_batch)
                .ok()
                .filter(|max| *max > 0)
                .unwrap_or(usize::MAX),
            expires: max_expires.map_or(PULL_EXPIRES, |max| max.min(PULL_EXPIRES)),
        }
    }

    fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<jetstream::Message, BoxError>> + Send + Unpin {
        futures::stream::unfold(self, |mut puller| async move {
            let next = puller.next().await;
            Some((next, puller))
        })
        .boxed()
    }

    /// The next message; called by the loop with a slot in hand for it.
    async fn next(&mut self) -> Result<jetstream::Message, BoxError> {
        loop {
            self.top_up().await?;
            match self.pulls.next().await {
                Some(message) => return message,
                // Every pull expired with nothing for us: pull again.
                None => continue,
            }
        }
    }

    /// Pulls for the free slots no open pull covers, if they are worth it.
    async fn top_up(&mut self) -> Result<(), BoxError> {
        // The loop holds one more slot: the one for the message it waits for.
        let free = self.slots.available_permits() + 1;
        let requested = self.requested.load(Ordering::SeqCst);
        let uncovered = free.saturating_sub(requested);
        if uncovered > 0 && (uncovered >= self.threshold || requested == 0) {
            self.pull(uncovered).await?;
        }
        Ok(())
    }

    /// Opens a pull for `count` messages (at most the consumer's `max_batch`).
    async fn pull(&mut self, count: usize) -> Result<(), BoxError> {
        let count = count.min(self.max_batch);
        let batch = self
            .consumer
            .batch()
            .max_messages(count)
            .expires(self.expires)
            .messages()
            .await?;
        self.requested.fetch_add(count, Ordering::SeqCst);
        self.pulls.push(Pull {
            batch,
            remaining: count,
            requested: Arc::clone(&self.requested),
        });
        Ok(())
    }
}

/// One pull request's messages, counted off [`Puller::requested`] as they are handed on;
/// what never came is counted off when it ends.
struct Pull {
    batch: Batch,
    remaining: usize,
    requested: Arc<AtomicUsize>,
}

impl futures::Stream for Pull {
    type Item = Result<jetstream::Message, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let next = match futures::ready!(self.batch.poll_next_unpin(cx)) {
            Some(Err(error)) if ends_the_pull_only(&error) => {
                tracing::debug!(%error, "JetStream ended a pull request; the next one follows");
                None
            }
            next => next,
        };
        if matches!(next, Some(Ok(_))) && self.remaining > 0 {
            self.remaining -= 1;
            self.requested.fetch_sub(1, Ordering::SeqCst);
        }
        Poll::Ready(next)
    }
}

/// Whether a pull's error ends only that pull, as async-nats's own pull stream reads it: a
/// 409 the server answers when it ends a pull request on its side (a leadership change, a
/// server shutting down, too many pulls waiting), which the next pull does not meet. A
/// consumer deleted or push based, or a pull asking more than the consumer allows, is
/// refused at every pull again: those end the loop. async-nats's batch gives the status
/// and its description only as text: "...: 409, Some(\"Leadership Change\")".
fn ends_the_pull_only(error: &BoxError) -> bool {
    const FOR_GOOD: [&str; 3] = [
        "Consumer Deleted",
        "Consumer is push based",
        "Exceeded MaxRequest",
    ];
    let text = error.to_string();
    text.contains(": 409,") && !FOR_GOOD.iter().any(|refusal| text.contains(refusal))
}

impl Drop for Pull {
    fn drop(&mut self) {
        self.requested.fetch_sub(self.remaining, Ordering::SeqCst);
    }
}

/// Refuses a consumer whose ack policy is not `explicit`. Under `all` an ack also acks
/// every earlier message, and the loop acks out of order: a message that finished would
/// ack the ones still running, which a crash or a requeue (a `nak` on an acked message
/// does nothing) would then lose. Under `none` JetStream takes every message as acked
/// the moment it sends it.
fn explicit_acks(consumer: &PullConsumer) -> Result<(), ConsumeError> {
    match consumer.cached_info().config.ack_policy {
        AckPolicy::Explicit => Ok(()),
        policy => Err(ConsumeError::before_start(ConsumeFailure::Setup {
            step: "the consumer's ack policy",
            source: Box::new(NotExplicit(policy)),
        })),
    }
}

/// The consumer's ack policy is not `explicit`.
#[derive(Debug, thiserror::Error)]
#[error("the consumer's ack policy is {0:?}; idempotent consuming needs explicit acks")]
struct NotExplicit(AckPolicy);

/// JetStream's side of the shared loop.
struct Jet {
    id_source: IdSource,
    jetstream: Context,
    dead_letters: Option<String>,
    /// How often a message whose handler still runs is reported in progress; `None`
    /// when the consumer's `ack_wait` is unknown.
    progress_every: Option<Duration>,
    /// The consumer's `max_deliver`, when it has one.
    max_deliver: Option<u32>,
}

impl Jet {
    /// The delivery count, when this is the last delivery the consumer's `max_deliver`
    /// allows.
    fn last_delivery(&self, deliveries: Option<u32>) -> Option<u32> {
        deliveries.filter(|count| self.max_deliver.is_some_and(|max| *count >= max))
    }
}

/// A third of `ack_wait`: two progress reports may be late or lost before JetStream
/// gives up on the message.
fn progress_interval(ack_wait: Duration) -> Option<Duration> {
    Some(ack_wait / 3).filter(|every| !every.is_zero())
}

/// What settles one JetStream delivery: its acker, and the message a dead-letter copy is
/// made of.
struct Settler {
    acker: Acker,
    message: async_nats::Message,
    /// The original's place in its stream, `stream:sequence`: the copy's `Nats-Msg-Id`.
    copy_id: Option<String>,
    /// JetStream's delivery count.
    deliveries: Option<u32>,
}

impl Broker for Jet {
    type Delivery = jetstream::Message;
    type Settler = Settler;

    fn open(&self, delivery: jetstream::Message) -> (Result<Message, MissingId>, Settler) {
        let info = delivery.info().ok();
        let deliveries = info
            .as_ref()
            .and_then(|info| u32::try_from(info.delivered).ok());
        let copy_id = info
            .as_ref()
            .map(|info| format!("{}:{}", info.stream, info.stream_sequence));
        let (message, acker) = delivery.split();
        let incoming = message_id(&self.id_source, message.headers.as_ref(), &message.payload)
            .map(|id| Message::new(id, message.payload.clone()).with_deliveries(deliveries));
        (
            incoming,
            Settler {
                acker,
                message,
                copy_id,
                deliveries,
            },
        )
    }

    /// Reports the message in progress (`+WPI`) every third of the consumer's `ack_wait`:
    /// unreported, a handler slower than `ack_wait` had its message redelivered while it
    /// ran, each time counted towards the poison limit and the consumer's `max_deliver`
    /// and answered with a requeue, until the limit gave up on a message that was running.
    async fn keep_alive(&self, settler: &Settler) {
        let Some(every) = self.progress_every else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every).await;
            if let Err(error) = settler.acker.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "reporting progress failed; JetStream may redeliver");
                return;
            }
        }
    }

    async fn settle(
        &self,
        settler: Settler,
        disposition: &Disposition,
        stopping: Stopping,
    ) -> Settled {
        let route = DeadLetterRoute {
            jetstream: &self.jetstream,
            subject: self.dead_letters.as_deref(),
            message: &settler.message,
            copy_id: settler.copy_id.as_deref(),
            last_delivery: self.last_delivery(settler.deliveries).is_some(),
            stopping,
        };
        // JetStream delivers it no more after its `max_deliver`-th delivery: a requeue then
        // would leave it in the stream, unacked and unseen, with no dead-letter copy.
        if let (Disposition::Requeue { .. }, Some(deliveries)) =
            (disposition, self.last_delivery(settler.deliveries))
        {
            tracing::warn!(
                deliveries,
                %disposition,
                "the consumer's max_deliver is reached; dead-lettering instead of requeueing"
            );
            let poison = Disposition::DeadLetter {
                reason: DeadLetterReason::Poison { deliveries },
            };
            return match apply(&settler.acker, &poison, route).await {
                Settled::AsGiven => Settled::AsDeadLetter,
                other => other,
            };
        }
        apply(&settler.acker, disposition, route).await
    }
}

/// Where a dead-lettered message's copy goes.
struct DeadLetterRoute<'a> {
    jetstream: &'a Context,
    subject: Option<&'a str>,
    message: &'a async_nats::Message,
    copy_id: Option<&'a str>,
    /// Whether this is the last delivery the consumer's `max_deliver` allows.
    last_delivery: bool,
    stopping: Stopping,
}

impl DeadLetterRoute<'_> {
    /// Publishes the copy ([`publish`](Self::publish)). At the last delivery JetStream
    /// allows, the `nak` that hands back a message whose copy failed would not bring it
    /// back: JetStream delivers it no more, and it would sit in the stream unseen, in no
    /// dead-letter stream. There the copy is tried again every [`DEAD_LETTER_RETRY`] until
    /// it goes through, or the loop shuts down.
    async fn deliver(&mut self, disposition: &Disposition) -> bool {
        loop {
            if self.publish(disposition).await {
                return true;
            }
            if !self.last_delivery || self.stopping.is_set() {
                return false;
            }
            self.stopping.sleep(DEAD_LETTER_RETRY).await;
        }
    }

    /// Publishes the copy and waits for the stream's ack; `true` when there is nothing to
    /// publish.
    async fn publish(&self, disposition: &Disposition) -> bool {
        let Some(subject) = self.subject else {
            return true;
        };
        let mut headers = HeaderMap::new();
        for (name, values) in self.message.headers.iter().flat_map(HeaderMap::iter) {
            let renamed = copy_header_name(name.as_ref());
            for value in values {
                headers.append(renamed.as_str(), value.clone());
            }
        }
        if let Some(copy_id) = self.copy_id {
            headers.insert(NATS_MSG_ID, copy_id);
        }
        headers.insert(DEAD_LETTER_REASON, disposition.to_string().as_str());
        headers.insert(ORIGINAL_SUBJECT, self.message.subject.as_str());
        let published = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, self.message.payload.clone())
            .await;
        match published {
            Ok(ack) => match ack.await {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(%error, "the dead-letter stream did not take the copy; requeueing");
                    false
                }
            },
            Err(error) => {
                tracing::warn!(%error, "publishing the dead-letter copy failed; requeueing");
                false
            }
        }
    }
}

/// The name an original's header has on its dead-letter copy.
///
/// `Nats-…` headers are JetStream's: `Nats-Msg-Id` and the publish expectations
/// (`Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`, …) held for the original's
/// publish into its own stream. Sent as such with the copy, the dead-letter stream would
/// check them against itself and refuse the copy at every try, so the message could never
/// be dead-lettered. They move to `Idem-Original-…` instead (`Nats-Msg-Id` to
/// [`ORIGINAL_MSG_ID`]), kept for a person to read; every other header is copied as is.
fn copy_header_name(name: &str) -> String {
    const JETSTREAM: &str = "Nats-";
    if name.eq_ignore_ascii_case(NATS_MSG_ID) {
        return ORIGINAL_MSG_ID.to_owned();
    }
    match name.get(..JETSTREAM.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(JETSTREAM) => {
            format!("{ORIGINAL_PREFIX}{}", &name[JETSTREAM.len()..])
        }
        _ => name.to_owned(),
    }
}

/// Applies a disposition; says whether it was sent.
async fn apply(
    acker: &Acker,
    disposition: &Disposition,
    mut route: DeadLetterRoute<'_>,
) -> Settled {
    let (kind, settled) = match disposition {
        Disposition::Ack { .. } => (AckKind::Ack, Settled::AsGiven),
        Disposition::Requeue { delay, .. } => (AckKind::Nak(Some(*delay)), Settled::AsGiven),
        Disposition::DeadLetter { .. } if route.deliver(disposition).await => {
            (AckKind::Term, Settled::AsGiven)
        }
        Disposition::DeadLetter { .. } => {
            (AckKind::Nak(Some(DEAD_LETTER_RETRY)), Settled::AsRequeue)
        }
    };
    match acker.ack_with(kind).await {
        Ok(()) => settled,
        Err(error) => {
            tracing::debug!(%error, %disposition, "settling failed; JetStream will redeliver");
            Settled::Not
        }
    }
}

/// The message's ID, from where `source` says. NATS messages have no AMQP `message_id`
/// property: that source finds nothing.
///
/// # Errors
///
/// [`MissingId`] when `source` finds nothing (no such header, or [`IdSource::AmqpMessageId`]).
pub fn message_id(
    source: &IdSource,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<String, MissingId> {
    let found = match source {
        IdSource::AmqpMessageId => None,
        IdSource::Header(name) => headers
            .and_then(|headers| headers.get(name.as_str()))
            .map(|value| value.as_str().to_owned()),
        IdSource::BodyDigest => Some(body_digest(body)),
    };
    found
        .filter(|id| !id.is_empty())
        .ok_or_else(|| MissingId::new(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text async-nats's batch gives a status the server ends a pull request with.
    fn status(code: u16, description: &str) -> BoxError {
        Box::new(std::io::Error::other(format!(
            "error while processing messages from the stream: {code}, {:?}",
            Some(description)
        )))
    }

    #[test]
    fn a_pull_ended_by_the_server_ends_only_that_pull() {
        assert!(ends_the_pull_only(&status(409, "Leadership Change")));
        assert!(ends_the_pull_only(&status(409, "Server Shutdown")));
        assert!(ends_the_pull_only(&status(409, "Exceeded MaxWaiting")));
        assert!(!ends_the_pull_only(&status(409, "Consumer Deleted")));
        assert!(!ends_the_pull_only(&status(409, "Consumer is push based")));
        assert!(!ends_the_pull_only(&status(
            409,
            "Exceeded MaxRequestBatch of 10"
        )));
        assert!(!ends_the_pull_only(&status(503, "No Responders")));
    }
}
