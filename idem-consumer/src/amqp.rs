//! The RabbitMQ adapter, on lapin: manual acks, `basic_nack` with requeue, prefetch.
//!
//! [`consume`] sets the channel's prefetch to the concurrency limit, consumes with manual
//! acks, hands each delivery to the handler as a [`Message`] and applies the
//! [`Disposition`] it returns:
//!
//! | disposition | on the broker |
//! |---|---|
//! | `Ack` | `basic.ack` |
//! | `Requeue { delay }` | the message is held `delay` (cut short at shutdown), then `basic.nack` with `requeue`; for the store unavailable or the key in progress elsewhere, the handler runs again on it instead, and it is `basic.nack`ed only at shutdown ([the consume loop](crate#the-consume-loop)) |
//! | `DeadLetter` | `basic.reject` without requeue: the queue's `x-dead-letter-exchange` (and `x-dead-letter-routing-key`) route it; a queue without one drops it, so declare one |
//!
//! The message ID is the `message_id` property by default ([`IdSource`]). A message
//! without one is dead-lettered, never run.
//!
//! **Delivery counts** (for the poison limit) come from the `x-delivery-count` header that
//! quorum queues add to redeliveries. A classic queue does not count: a first delivery is
//! known as such, and a redelivery's count is unknown, so the poison limit does not apply;
//! but a redelivery that carries an `x-delivery-count` its publisher wrote (a shovel or a
//! republish that copied a quorum queue's headers, a dead letter of a quorum queue moved
//! back) is counted from that header, which the adapter cannot tell from the broker's own:
//! on such a queue one requeue can make it poison. Use a quorum queue (`x-queue-type:
//! quorum`) when poison messages matter, and turn the limit off
//! ([`Policy::max_deliveries(None)`](crate::Policy::max_deliveries)) on a classic queue
//! that may receive such headers.
//!
//! **A lost connection** ends the loop: it returns a [`ConsumeError`] with lapin's error
//! ([`ConsumeFailure::Stream`](crate::ConsumeFailure::Stream)),
//! after the messages in flight have finished against the store (their acks cannot reach
//! the broker, which delivers them again: replays, acked without running). Reconnect and
//! call [`consume`] again. lapin notices a closed socket at once; a connection that dies
//! silently (a partition, a host gone without closing it) only when the heartbeat is
//! missed, after twice the negotiated interval: RabbitMQ proposes 60 s, so set it in the
//! URI (`amqp://host/%2f?heartbeat=10`) to notice within 20 s. The crate's tests cut idle
//! and busy connections both ways and see the loop return each time. Setting up (the
//! prefetch, registering the consumer) waits at most [`ConsumeOptions::setup_timeout`]
//! for each answer, so a silent broker fails [`consume`] then instead of at the heartbeat.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::oneshot;

use crate::consume::{
    self, Broker, ConsumeError, ConsumeOptions, ConsumeSummary, Settled, Stopping, Tally,
};
use crate::disposition::Disposition;
use crate::message::{IdSource, Message, MissingId, body_digest};

/// Re-exported so the channel passed in matches this crate's lapin.
pub use lapin;

/// The header quorum queues put on a redelivery: how often it was delivered before.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Consumes `queue` on `channel` until `shutdown` resolves or the channel fails, running
/// `handler` on each message, at most `options`' concurrency at once.
///
/// On shutdown it cancels the consumer at once (the broker sends it nothing more), waits
/// for the messages in flight and applies their dispositions, requeues the deliveries the
/// broker had sent before the cancel but that had not started, then returns.
/// The channel stays open; close it afterwards (the broker requeues anything still
/// unacknowledged on it, so nothing is lost in any case).
///
/// ```no_run
/// use idem_consumer::{ConsumeOptions, Consumer, amqp};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Failed;
/// # impl idem_core::Retryable for Failed { fn is_retryable(&self) -> bool { true } }
/// # async fn run(channel: amqp::lapin::Channel, consumer: Consumer<idem_memory::MemoryStore>) {
/// # let shutdown = std::future::pending::<()>();
/// let options = ConsumeOptions::default().concurrency(32);
/// let summary = amqp::consume(&channel, "orders", options, shutdown, move |message| {
///     let consumer = consumer.clone();
///     async move {
///         consumer
///             .handle_message(&message, || async { Ok::<_, Failed>(()) /* the effect */ })
///             .await
///     }
/// })
/// .await;
/// # let _ = summary; }
/// ```
///
/// # Errors
///
/// A [`ConsumeError`], with the [`ConsumeSummary`] of what was done:
/// [`SetupTimedOut`](crate::ConsumeFailure::SetupTimedOut) when setting the channel's prefetch or
/// starting the consumer gets no answer within [`ConsumeOptions::setup_timeout`],
/// [`Setup`](crate::ConsumeFailure::Setup) when the broker refuses either, and
/// [`Stream`](crate::ConsumeFailure::Stream) when the delivery stream ends in a broker error, or
/// ends with no shutdown asked for (the broker cancelled the consumer: its queue was
/// deleted, say). Messages in flight are settled first or left to the broker to redeliver.
pub async fn consume<F, Fut>(
    channel: &Channel,
    queue: &str,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()>,
    handler: F,
) -> Result<ConsumeSummary, ConsumeError>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let mut consumer = start(channel, queue, &options).await?;
    let tag = consumer.tag();
    let rabbit = Arc::new(Rabbit {
        id_source: options.id_source.clone().unwrap_or(IdSource::AmqpMessageId),
    });
    let tally = Arc::new(Tally::default());
    // The consumer is cancelled as soon as the shutdown comes, while the messages in
    // flight finish: cancelled only after them, each of their acks would make room under
    // the prefetch for a new delivery, held unstarted for the rest of the drain and then
    // handed back, marked redelivered and counted towards the poison limit.
    let (shutting_down, shutdown_came) = oneshot::channel();
    let shutdown = async move {
        shutdown.await;
        let _ = shutting_down.send(());
    };
    // Ends unsent when the loop stops on its own (the sender is dropped with the loop).
    // Its end (the broker's answer, or none within the timeout) lets the loop hand back
    // what it holds.
    let (cancel_ended, deliveries_stopped) = oneshot::channel::<()>();
    let cancel = async {
        let cancelled = shutdown_came.await.is_ok() && cancel(channel, tag).await;
        drop(cancel_ended);
        cancelled
    };
    let (failure, cancelled) = tokio::join!(
        consume::run(
            rabbit,
            &mut consumer,
            consume::slots(&options),
            shutdown,
            async {
                let _ = deliveries_stopped.await;
            },
            Arc::clone(&tally),
            handler,
        ),
        cancel
    );
    if failure.is_none() && cancelled {
        requeue_unstarted(&mut consumer, &tally).await;
    }
    tally.outcome(failure)
}

/// Sets the prefetch and registers the consumer, each call bounded by the setup timeout.
async fn start(
    channel: &Channel,
    queue: &str,
    options: &ConsumeOptions,
) -> Result<lapin::Consumer, ConsumeError> {
    let prefetch = u16::try_from(options.concurrency).unwrap_or(u16::MAX);
    let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
    consume::setup("basic.qos", options, qos).await?;
    let manual_acks = BasicConsumeOptions {
        no_ack: false,
        ..BasicConsumeOptions::default()
    };
    let registered =
        channel.basic_consume(queue.into(), "".into(), manual_acks, FieldTable::default());
    consume::setup("basic.consume", options, registered).await
}

/// RabbitMQ's side of the shared loop.
struct Rabbit {
    id_source: IdSource,
}

impl Broker for Rabbit {
    type Delivery = Delivery;
    type Settler = lapin::Acker;

    fn open(&self, delivery: Delivery) -> (Result<Message, MissingId>, lapin::Acker) {
        let Delivery {
            data,
            properties,
            acker,
            redelivered,
            ..
        } = delivery;
        let message = message_id(&self.id_source, &properties, &data)
            .map(|id| Message::new(id, data).with_deliveries(deliveries(&properties, redelivered)));
        (message, acker)
    }

    /// RabbitMQ redelivers a message only once its channel is gone: nothing to do.
    fn keep_alive(&self, _: &lapin::Acker) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    async fn settle(
        &self,
        acker: lapin::Acker,
        disposition: &Disposition,
        stopping: Stopping,
    ) -> Settled {
        apply(&acker, disposition, stopping).await.into()
    }
}

/// Cancels the consumer: the broker sends it nothing more. Says whether the broker
/// confirmed it.
async fn cancel(channel: &Channel, tag: ShortString) -> bool {
    // On a connection that died unnoticed the cancel would wait for ever.
    let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
    match tokio::time::timeout(SETTLE_TIMEOUT, cancel).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, "cancelling the consumer failed; closing the channel requeues its messages");
            false
        }
        Err(_) => {
            tracing::debug!(
                "cancelling the consumer timed out; closing the channel requeues its messages"
            );
            false
        }
    }
}

/// Requeues what the broker had sent a cancelled consumer before its cancel, until the
/// stream ends.
async fn requeue_unstarted(consumer: &mut lapin::Consumer, tally: &Tally) {
    use futures::StreamExt;
    let requeue = Disposition::Requeue {
        delay: Duration::ZERO,
        reason: crate::RequeueReason::InProgressElsewhere,
    };
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
    {
        let nack = delivery.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        });
        let requeued = tokio::time::timeout(SETTLE_TIMEOUT, nack)
            .await
            .unwrap_or(Ok(false));
        tally.count(&requeue, Settled::from(matches!(requeued, Ok(true))));
    }
}

/// The longest an ack, nack or reject may take: on a connection that died without lapin
/// noticing yet, it would wait for ever.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies a disposition; says whether the broker took it.
async fn apply(acker: &lapin::Acker, disposition: &Disposition, mut stopping: Stopping) -> bool {
    if let Disposition::Requeue { delay, .. } = disposition {
        stopping.sleep(*delay).await;
    }
    let applied = tokio::select! {
        settled = tokio::time::timeout(SETTLE_TIMEOUT, settle(acker, disposition)) => match settled {
            Ok(applied) => applied,
            Err(_) => {
                tracing::warn!(%disposition, "settling timed out; the broker will redeliver");
                return false;
            }
        },
        () = channel_lost(acker) => Ok(false),
    };
    match applied {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!(%disposition, "the channel is gone; the broker will redeliver");
            false
        }
        Err(error) => {
            tracing::debug!(%error, %disposition, "settling failed; the broker will redeliver");
            false
        }
    }
}

/// Resolves once lapin has seen the channel die (it then poisons every acker).
async fn channel_lost(acker: &lapin::Acker) {
    let mut every = tokio::time::interval(Duration::from_millis(50));
    while !acker.poisoned() {
        every.tick().await;
    }
}

async fn settle(acker: &lapin::Acker, disposition: &Disposition) -> lapin::Result<bool> {
    match disposition {
        Disposition::Ack { .. } => acker.ack(BasicAckOptions::default()).await,
        Disposition::Requeue { .. } => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
        Disposition::DeadLetter { .. } => acker.reject(BasicRejectOptions { requeue: false }).await,
    }
}

/// The message's ID, from where `source` says.
///
/// # Errors
///
/// [`MissingId`] when `source` finds nothing (no `message_id` property, no such header).
pub fn message_id(
    source: &IdSource,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<String, MissingId> {
    let found = match source {
        IdSource::AmqpMessageId => properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        IdSource::Header(name) => properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(name.as_str()))
            .and_then(header_text),
        IdSource::BodyDigest => Some(body_digest(body)),
    };
    found
        .filter(|id| !id.is_empty())
        .ok_or_else(|| MissingId::new(source))
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        AMQPValue::ByteArray(bytes) => String::from_utf8(bytes.as_slice().to_vec()).ok(),
        other => integer(other).map(|n| n.to_string()),
    }
}

fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        _ => return None,
    })
}

/// How many times this message was delivered, this time included, when the broker says.
///
/// A delivery the broker does not flag as redelivered is the first, whatever
/// `x-delivery-count` it carries: only the broker's own count on a redelivery counts, not a
/// header its publisher copied or made up.
fn deliveries(properties: &BasicProperties, redelivered: bool) -> Option<u32> {
    if !redelivered {
        return Some(1);
    }
    let before = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(DELIVERY_COUNT))
        .and_then(integer);
    before.and_then(|before| u32::try_from(before).ok().map(|n| n.saturating_add(1)))
}
