//! The consumer rows: messages/s through idem-consumer's helper (`handle_message` on the
//! Redis store, inside the adapter's consume loop), on the same broker, in the same run,
//! at T messages in flight (`--tasks`, 64 by default: the loop's concurrency and
//! RabbitMQ's prefetch), against two loops:
//!
//! - the floor: the same consume loop doing the raw two-round-trip protocol on Redis for
//!   each message before acking it (the Redis section's execute floor: `SET NX PX GET`,
//!   then a minimal Lua compare-and-set), the least any store-backed deduplication costs;
//!   the target is against it;
//! - the bare loop, acking without any store: what deduplication costs on this broker at
//!   all, printed without a target, since it is the store's cost over the broker's.
//!
//! Each slice publishes fresh messages (each with an ID never seen, so idem runs the
//! operation and stores its outcome: the claim and the complete, two Redis round trips)
//! into a queue or stream of its own, untimed; then times one consume loop from its start
//! until every message is acked and the loop has returned. The sides take slices in
//! rotating turns, as [`compare`](crate::measure::compare) does for two, and every queue,
//! stream and Redis key a run makes is deleted at its end.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use idem::consumer::amqp::{self, lapin};
use idem::consumer::nats::{self, async_nats};
use idem::consumer::{AckReason, ConsumeOptions, ConsumeSummary, Consumer, Disposition, Message};
use idem::redis::RedisStore;
use idem::{Config, Error, Idempotency};
use tokio::sync::Notify;

use crate::backend::BenchBackend;
use crate::claims::Never;
use crate::keys::fresh_tag;
use crate::measure::{Figure, Mode, SLICES, measured_ops};
use crate::redis::Redis;
use crate::report::Row;
use crate::settings::Settings;

/// What the floor side is.
const FLOOR: &str = "the same loop + SET NX PX GET + EVALSHA CAS";

/// What the bare side is.
const BARE: &str = "the same loop, acking without a store";

/// The target: idem's loop at 0.85× the floor's messages/s, as for the Redis section's execute.
const TARGET: f64 = 0.85;

/// The RabbitMQ row.
pub async fn amqp_rows(settings: &Settings) -> Result<Vec<Row>, Error> {
    rows(Rabbit::connect().await?, settings).await
}

/// The NATS JetStream row.
pub async fn nats_rows(settings: &Settings) -> Result<Vec<Row>, Error> {
    rows(Jet::connect().await?, settings).await
}

/// A broker the consume loops run against.
trait Broker: Send + Sync + Sized {
    /// The row's name in the table.
    const NAME: &'static str;
    /// A queue or stream holding one slice's messages.
    type Queue: Send + Sync;

    /// Makes a queue of its own for `ids` and publishes one message per ID into it, with
    /// the broker's confirm.
    fn fill(&self, ids: &[String]) -> impl Future<Output = Result<Self::Queue, Error>> + Send;

    /// Runs the adapter's consume loop on `queue` with `handler` until `done` resolves and
    /// the loop has settled everything and returned.
    fn consume(
        &self,
        queue: &Self::Queue,
        concurrency: usize,
        handler: Handler,
        done: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<ConsumeSummary, Error>> + Send;

    /// Deletes the queue.
    fn remove(&self, queue: Self::Queue) -> impl Future<Output = Result<(), Error>> + Send;

    /// Closes the connection.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Connects the store, measures, and cleans up whatever happened.
async fn rows<B: Broker>(broker: B, settings: &Settings) -> Result<Vec<Row>, Error> {
    let redis = match Redis::connect(settings).await {
        Ok(redis) => Arc::new(redis),
        Err(e) => {
            broker.close().await;
            return Err(e);
        }
    };
    let measured = async {
        // Records outlive a run that dies before deleting them by ten minutes at most.
        let config = Config::builder()
            .success_retention(Duration::from_secs(600))
            .build()?;
        let idempotency = Idempotency::with_config(redis.store().clone(), config)?;
        let consumer = Consumer::new(idempotency, "bench")?;
        measure(&broker, &consumer, &redis, settings).await
    }
    .await;
    broker.close().await;
    let deleted = redis.close().await;
    let [idem, floor, bare] = measured?;
    deleted?;
    let row = |operation, floor_name, floor, target| Row {
        backend: B::NAME,
        operation,
        floor: floor_name,
        mode: Mode::Throughput(settings.tasks),
        idem,
        raw: floor,
        target,
    };
    Ok(vec![
        row("consume", FLOOR, floor, Some(TARGET)),
        row("consume (bare)", BARE, bare, None),
    ])
}

/// Times the three sides (idem, the floor, the bare loop) over [`SLICES`] slices each, in
/// rotating turns, after a warm-up of each; answers their figures in that order.
async fn measure<B: Broker>(
    broker: &B,
    consumer: &Consumer<RedisStore>,
    redis: &Arc<Redis>,
    settings: &Settings,
) -> Result<[Figure; 3], Error> {
    let per_slice = measured_ops(settings, Mode::Throughput(settings.tasks)).div_ceil(SLICES);
    let sides = [
        Side::Idem(consumer.clone()),
        Side::Floor(Arc::clone(redis)),
        Side::Bare,
    ];
    for side in &sides {
        slice(broker, side, per_slice / 4, settings.tasks).await?;
    }
    let mut elapsed = [Duration::ZERO; 3];
    for n in 0..SLICES {
        // Each side goes first, second and third in turn, so none always follows the same.
        for k in 0..sides.len() {
            let which = (n + k) % sides.len();
            elapsed[which] += slice(broker, &sides[which], per_slice, settings.tasks).await?;
        }
    }
    Ok(elapsed.map(|elapsed| Figure {
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        per_sec: (per_slice * SLICES) as f64 / elapsed.as_secs_f64(),
    }))
}

/// Publishes `count` new messages into a queue of their own (untimed), then times one
/// consume loop over them; the queue is deleted either way.
async fn slice<B: Broker>(
    broker: &B,
    side: &Side,
    count: usize,
    concurrency: usize,
) -> Result<Duration, Error> {
    let tag = fresh_tag();
    let ids: Vec<String> = (0..count).map(|i| format!("{tag}-{i}")).collect();
    let queue = broker.fill(&ids).await?;
    let finish = Arc::new(Finish {
        handled: AtomicUsize::new(0),
        count,
        all_handled: Notify::new(),
        floor_failed: OnceLock::new(),
    });
    let handler = Handler {
        side: side.clone(),
        finish: Arc::clone(&finish),
    };
    let started = Instant::now();
    let handled = Arc::clone(&finish);
    let done = async move { handled.all_handled.notified().await };
    let consumed = broker.consume(&queue, concurrency, handler, done).await;
    let elapsed = started.elapsed();
    let removed = broker.remove(queue).await;
    let summary = consumed?;
    removed?;
    if let Some(e) = finish.floor_failed.get() {
        return Err(Error::backend(format!(
            "{}: the floor's protocol failed: {e}",
            B::NAME
        )));
    }
    let clean = summary.requeued == 0 && summary.dead_lettered == 0 && summary.unsettled == 0;
    if usize::try_from(summary.acked).ok() != Some(count) || !clean {
        return Err(Error::backend(format!(
            "{}: {count} messages published, the loop reported {summary:?}",
            B::NAME
        )));
    }
    Ok(elapsed)
}

/// Says when a slice's last message was handled: the loop's shutdown, after which it acks
/// what is in flight and returns.
struct Finish {
    handled: AtomicUsize,
    count: usize,
    /// `notify_one` keeps a permit, so the loop's shutdown sees it even if it polls later.
    all_handled: Notify,
    /// The first error of the floor's protocol, if any.
    floor_failed: OnceLock<String>,
}

/// Which side of the comparison a loop is.
#[derive(Clone)]
enum Side {
    /// idem-consumer's helper on the Redis store, with an operation that does nothing.
    Idem(Consumer<RedisStore>),
    /// The floor: the raw claim and compare-and-set on Redis under the message's ID, then
    /// ack.
    Floor(Arc<Redis>),
    /// Ack at once.
    Bare,
}

/// What the consume loop runs on each message: the side's decision, counted toward the
/// end of the slice.
#[derive(Clone)]
struct Handler {
    side: Side,
    finish: Arc<Finish>,
}

impl Handler {
    fn handle(&self, message: Message) -> impl Future<Output = Disposition> + Send + use<> {
        let this = self.clone();
        async move {
            let disposition = match &this.side {
                Side::Idem(consumer) => {
                    consumer
                        .handle_message(&message, || async { Ok::<_, Never>(()) })
                        .await
                }
                Side::Floor(redis) => {
                    if let Err(e) = redis.raw_execute(message.id(), 0).await {
                        // The slice then fails: a floor that skipped its protocol would
                        // flatter idem.
                        let _ = this.finish.floor_failed.set(e.to_string());
                    }
                    Disposition::Ack {
                        reason: AckReason::Processed,
                    }
                }
                Side::Bare => Disposition::Ack {
                    reason: AckReason::Processed,
                },
            };
            let finish = &this.finish;
            if finish.handled.fetch_add(1, Ordering::Relaxed) + 1 == finish.count {
                finish.all_handled.notify_one();
            }
            disposition
        }
    }
}

/// A service's URL: the environment variable's, or the machine's own service.
fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The error for a broker that does not answer, with the command that starts it.
fn unreachable(
    name: &str,
    service: &str,
    var: &str,
    url: &str,
    error: impl std::fmt::Display,
) -> Error {
    Error::unavailable(format!(
        "cannot reach {name} at {url} ({error}); start it with: \
         bash .ci/services {service} (or set {var})"
    ))
}

fn amqp_error(error: lapin::Error) -> Error {
    Error::backend(error)
}

/// RabbitMQ: a quorum queue per slice (the kind the adapter's docs recommend, since it
/// counts deliveries), persistent messages, one connection for the whole run.
struct Rabbit {
    connection: lapin::Connection,
    /// Declares, publishes (with confirms) and deletes.
    control: lapin::Channel,
}

impl Rabbit {
    async fn connect() -> Result<Self, Error> {
        let url = service_url("IDEM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| unreachable("RabbitMQ", "rabbitmq", "IDEM_AMQP_URL", &url, e))?;
        let control = connection.create_channel().await.map_err(amqp_error)?;
        control
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error)?;
        Ok(Self {
            connection,
            control,
        })
    }
}

impl Broker for Rabbit {
    const NAME: &'static str = "amqp+redis";
    type Queue = String;

    async fn fill(&self, ids: &[String]) -> Result<String, Error> {
        use lapin::types::{AMQPValue, FieldTable};
        let queue = format!("idem-bench-{}", fresh_tag());
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        // A run that dies before deleting it leaves it for ten minutes at most.
        args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        self.control
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(amqp_error)?;
        let mut confirms = Vec::with_capacity(ids.len());
        for id in ids {
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            let confirm = self
                .control
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    b"{\"order\":1042,\"cents\":4999}",
                    properties,
                )
                .await
                .map_err(amqp_error)?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if !confirm.await.map_err(amqp_error)?.is_ack() {
                return Err(Error::backend("RabbitMQ refused a message"));
            }
        }
        Ok(queue)
    }

    async fn consume(
        &self,
        queue: &String,
        concurrency: usize,
        handler: Handler,
        done: impl Future<Output = ()> + Send,
    ) -> Result<ConsumeSummary, Error> {
        let channel = self.connection.create_channel().await.map_err(amqp_error)?;
        let options = ConsumeOptions::default().concurrency(concurrency);
        let consumed = amqp::consume(&channel, queue, options, done, move |message| {
            handler.handle(message)
        })
        .await;
        let _ = channel.close(200, "slice done".into()).await;
        consumed.map_err(Error::backend)
    }

    async fn remove(&self, queue: String) -> Result<(), Error> {
        self.control
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .map(drop)
            .map_err(amqp_error)
    }

    async fn close(&self) {
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// NATS JetStream: a stream and a durable pull consumer per slice, one client for the
/// whole run.
struct Jet {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl Jet {
    async fn connect() -> Result<Self, Error> {
        let url = service_url("IDEM_NATS_URL", "nats://127.0.0.1:4222");
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(url.as_str())
            .await
            .map_err(|e| unreachable("NATS", "nats", "IDEM_NATS_URL", &url, e))?;
        let js = async_nats::jetstream::new(client.clone());
        Ok(Self { client, js })
    }
}

impl Broker for Jet {
    const NAME: &'static str = "nats+redis";
    type Queue = (String, async_nats::jetstream::consumer::PullConsumer);

    async fn fill(&self, ids: &[String]) -> Result<Self::Queue, Error> {
        use async_nats::jetstream::{consumer::pull, stream};
        let tag = fresh_tag();
        let (name, subject) = (format!("IDEM_BENCH_{tag}"), format!("idem.bench.{tag}"));
        let stream = self
            .js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                // A run that dies before deleting it leaves it for ten minutes at most.
                max_age: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .map_err(Error::backend)?;
        let mut acks = Vec::with_capacity(ids.len());
        for id in ids {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(idem::consumer::NATS_MSG_ID, id.as_str());
            let ack = self
                .js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    bytes::Bytes::from_static(b"{\"order\":1042,\"cents\":4999}"),
                )
                .await
                .map_err(Error::backend)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(Error::backend)?;
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("bench".into()),
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(Error::backend)?;
        Ok((name, consumer))
    }

    async fn consume(
        &self,
        (_, consumer): &Self::Queue,
        concurrency: usize,
        handler: Handler,
        done: impl Future<Output = ()> + Send,
    ) -> Result<ConsumeSummary, Error> {
        let options = ConsumeOptions::default().concurrency(concurrency);
        nats::consume(&self.js, consumer, options, done, move |message| {
            handler.handle(message)
        })
        .await
        .map_err(Error::backend)
    }

    async fn remove(&self, (name, _): Self::Queue) -> Result<(), Error> {
        self.js
            .delete_stream(&name)
            .await
            .map(drop)
            .map_err(Error::backend)
    }

    async fn close(&self) {
        let _ = self.client.drain().await;
    }
}
