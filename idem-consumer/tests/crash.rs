//! The crash test, on both brokers and both kinds of store: 1,000 messages of which 20%
//! are duplicate publishes of the same business ID, 4 concurrent consumers, and each
//! consumer's broker connection dropped before an ack at random points, 10 times during
//! the run. At the end every business effect happened exactly once and no message is
//! left unacked or lost.
//!
//! A "crash" cuts the consumer's TCP connection through a proxy (both sockets close), so
//! the broker sees the consumer die with its deliveries unacked, and stops the consumer
//! (what it had in flight finishes against the store, but no ack reaches the broker).
//! Then the consumer reconnects. The moment is random, one of:
//! - before the message is handled at all;
//! - inside the operation: with MySQL mid-transaction (rolled back); with Redis before
//!   the effect (the key is released);
//! - after the outcome is stored (committed), before the ack.
//!
//! Each consumer is killed exactly 10 times, at one of the first two messages of each
//! connection, and the test asserts that for every consumer. A kill chosen inside the
//! operation comes after the outcome when the operation does not run (a replay, or the key
//! in progress elsewhere), so a chosen kill always kills. (It once did not: a consumer whose
//! kill fell on a replay spent it without crashing and lived to the end of the run, and the
//! counts, e.g. [10, 3, 2, 3] on RabbitMQ, looked like a broker starving consumers.) The
//! last quarter of the workload trickles in while any consumer still has kills left, so each
//! reconnect finds work.
//!
//! With MySQL the effect is a row in a ledger with a unique index, written in the claim's
//! transaction (exactly once by construction: a second insert would fail the unique index,
//! and is counted as a violation). With Redis the effect is a counter per business ID.
//!
//! `IDEM_CRASH_MESSAGES` scales the run (default 1,000); `IDEM_TEST_SEED` repeats one.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Jet, Proxy, Rabbit, Rng, wait_until};
use idem_consumer::nats::async_nats;
use idem_consumer::{
    AckReason, ConsumeOptions, Consumer, Disposition, IdSource, Message, Policy, RequeueReason,
    TransactionalConsumer, amqp, nats,
};
use idem_core::{Idempotency, Retryable};
use idem_mysql::sqlx::{self, AssertSqlSafe};
use idem_redis::RedisStore;
use redis::AsyncCommands;
use tokio::sync::watch;

const CONSUMERS: usize = 4;
const KILLS_PER_CONSUMER: usize = 10;
/// Messages in flight per consumer (the RabbitMQ prefetch, the JetStream pull batch): each
/// kill leaves up to this many delivered and unacked, to come back as redeliveries.
const IN_FLIGHT: usize = 16;
const DUPLICATE_PERCENT: usize = 20;
const DEADLINE: Duration = Duration::from_secs(120);
const PUBLISH_CHUNK: usize = 50;
const PUBLISH_SPAN: Duration = Duration::from_secs(8);
/// The share of the workload held back and published a few messages at a time while any
/// consumer still has kills to take (percent).
const RESERVE_PERCENT: usize = 25;
const DRIP: usize = 4;
const DRIP_PAUSE: Duration = Duration::from_millis(100);
/// A business ID travels in this header on NATS (JetStream would drop a duplicate
/// `Nats-Msg-Id` publish itself, and this test wants the duplicates delivered).
const ORDER_ID: &str = "Order-Id";

fn messages() -> usize {
    std::env::var("IDEM_CRASH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Failure {
    Crashed,
    Duplicate(String),
    Database(String),
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Duplicate(_))
    }
}

#[derive(Clone, Copy, Debug)]
enum Broker {
    Amqp,
    Nats,
}

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    MySqlTransactional,
    Redis,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_mysql_transactions() {
    crash_test(Broker::Amqp, StoreKind::MySqlTransactional).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_redis() {
    crash_test(Broker::Amqp, StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_mysql_transactions() {
    crash_test(Broker::Nats, StoreKind::MySqlTransactional).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_redis() {
    crash_test(Broker::Nats, StoreKind::Redis).await;
}

/// The business effect and how it is counted.
#[derive(Clone)]
enum Effects {
    Ledger {
        consumer: TransactionalConsumer,
        ledger: String,
        records: String,
        violations: Arc<AtomicUsize>,
    },
    Counters {
        consumer: Consumer<RedisStore>,
        redis: redis::aio::MultiplexedConnection,
        hash: String,
        /// Every key of the run starts with it.
        prefix: String,
    },
}

impl Effects {
    async fn new(kind: StoreKind, policy: Policy) -> Self {
        let sfx = common::suffix();
        match kind {
            StoreKind::MySqlTransactional => {
                let (records, ledger) =
                    (format!("idem_crash_{sfx}"), format!("ledger_crash_{sfx}"));
                let store = common::mysql_store(&records).await;
                common::ledger_table(&store, &ledger).await;
                let consumer = TransactionalConsumer::new(store, "crash")
                    .expect("consumer")
                    .with_policy(policy);
                Self::Ledger {
                    consumer,
                    ledger,
                    records,
                    violations: Arc::default(),
                }
            }
            StoreKind::Redis => {
                let (store, prefix) = common::redis_store().await;
                let consumer = Consumer::new(Idempotency::new(store), "crash")
                    .expect("consumer")
                    .with_policy(policy);
                let redis = common::redis_connection().await;
                Self::Counters {
                    consumer,
                    redis,
                    hash: format!("{prefix}effects"),
                    prefix,
                }
            }
        }
    }

    /// Handles a message; `crash_inside` cuts the connection inside the operation, before
    /// the effect, and fails it.
    async fn handle(
        &self,
        message: &Message,
        crash_inside: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Disposition {
        match self {
            Self::Ledger {
                consumer,
                ledger,
                violations,
                ..
            } => {
                let (id, ledger, violations) = (
                    message.id().to_owned(),
                    ledger.clone(),
                    Arc::clone(violations),
                );
                consumer
                    .handle_message(message, move |conn| {
                        Box::pin(async move {
                            common::insert_order(conn, &ledger, &id)
                                .await
                                .map_err(|e| {
                                    let duplicate = e
                                        .as_database_error()
                                        .is_some_and(|d| d.is_unique_violation());
                                    if duplicate {
                                        violations.fetch_add(1, Ordering::SeqCst);
                                        Failure::Duplicate(id.clone())
                                    } else {
                                        Failure::Database(e.to_string())
                                    }
                                })?;
                            if let Some(crash) = crash_inside {
                                crash(); // mid-transaction: the insert is rolled back
                                return Err(Failure::Crashed);
                            }
                            Ok(())
                        })
                    })
                    .await
            }
            Self::Counters {
                consumer,
                redis,
                hash,
                ..
            } => {
                let mut redis = redis.clone();
                consumer
                    .handle_message(message, || async {
                        if let Some(crash) = crash_inside {
                            crash();
                            return Err(Failure::Crashed);
                        }
                        let _: i64 = redis
                            .hincr(hash, message.id(), 1)
                            .await
                            .map_err(|e| Failure::Database(e.to_string()))?;
                        Ok(())
                    })
                    .await
            }
        }
    }

    /// Each business ID's effect count.
    async fn counts(&self) -> HashMap<String, u64> {
        match self {
            Self::Ledger {
                consumer, ledger, ..
            } => {
                let rows: Vec<(String,)> =
                    sqlx::query_as(AssertSqlSafe(format!("SELECT order_id FROM `{ledger}`")))
                        .fetch_all(consumer.store().pool())
                        .await
                        .expect("ledger");
                let mut counts = HashMap::new();
                for (id,) in rows {
                    *counts.entry(id).or_insert(0) += 1;
                }
                counts
            }
            Self::Counters { redis, hash, .. } => {
                redis.clone().hgetall(hash).await.expect("HGETALL")
            }
        }
    }

    fn violations(&self) -> usize {
        match self {
            Self::Ledger { violations, .. } => violations.load(Ordering::SeqCst),
            Self::Counters { .. } => 0,
        }
    }

    async fn cleanup(&self) {
        match self {
            Self::Ledger {
                consumer,
                ledger,
                records,
                ..
            } => {
                common::drop_table(consumer.store(), ledger).await;
                common::drop_table(consumer.store(), records).await;
            }
            // The effects' hash and the store's records.
            Self::Counters { prefix, .. } => common::delete_keys(prefix).await,
        }
    }
}

/// The broker side of one run.
enum Queue {
    Rabbit(Rabbit),
    Jet(Jet),
}

impl Queue {
    async fn new(broker: Broker) -> Self {
        match broker {
            Broker::Amqp => Self::Rabbit(Rabbit::new().await),
            Broker::Nats => Self::Jet(Jet::new().await),
        }
    }

    async fn publish(&self, messages: &[(String, Vec<u8>)]) {
        match self {
            Self::Rabbit(rabbit) => rabbit.publish_all(messages).await,
            Self::Jet(jet) => jet.publish_all(messages, ORDER_ID).await,
        }
    }

    /// Nothing waiting and (on JetStream, which can tell) nothing delivered and unacked.
    async fn idle(&self) -> bool {
        match self {
            Self::Rabbit(rabbit) => rabbit.depth(&rabbit.queue).await == 0,
            Self::Jet(jet) => {
                let (pending, ack_pending, _) = jet.consumer_state().await;
                pending == 0 && ack_pending == 0
            }
        }
    }

    /// Dead letters (there should be none).
    async fn dead(&self) -> u64 {
        match self {
            Self::Rabbit(rabbit) => rabbit.depth(&rabbit.dlq).await.into(),
            Self::Jet(jet) => jet.messages_in(&jet.dead_stream).await,
        }
    }

    async fn cleanup(self) {
        match self {
            Self::Rabbit(rabbit) => rabbit.cleanup().await,
            Self::Jet(jet) => jet.cleanup().await,
        }
    }
}

/// What all consumers share.
struct Run {
    broker: Broker,
    effects: Effects,
    rng: Mutex<Rng>,
    started: Instant,
    /// When a handler last started, in ms since `started`.
    last_activity: AtomicU64,
    handled: AtomicUsize,
    /// Crashes per consumer.
    kills: Vec<AtomicUsize>,
    hung: AtomicUsize,
    /// Messages acked as "ran but not recorded": the one documented case where a later
    /// delivery may run the operation again (with Redis; the MySQL transaction has none).
    not_recorded: AtomicUsize,
    amqp_queue: String,
    nats_stream: Option<(String, String)>,
}

impl Run {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(now, Ordering::SeqCst);
    }

    fn kills(&self) -> usize {
        self.kills.iter().map(|k| k.load(Ordering::SeqCst)).sum()
    }

    /// Kills still to come, over all consumers.
    fn kills_left(&self) -> usize {
        (CONSUMERS * KILLS_PER_CONSUMER).saturating_sub(self.kills())
    }

    fn quiet_for(&self) -> Duration {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_activity.load(Ordering::SeqCst)))
    }
}

#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    BeforeHandling,
    InsideOperation,
    AfterOutcome,
}

async fn crash_test(broker: Broker, kind: StoreKind) {
    let total = messages();
    let label = format!("{broker:?} + {kind:?}");
    let mut rng = Rng::new(&label);

    // 80% distinct business IDs, 20% second publishes of some of them, shuffled.
    let unique = total - total * DUPLICATE_PERCENT / 100;
    let mut workload: Vec<(String, Vec<u8>)> = (0..unique)
        .map(|i| {
            let id = format!("order-{i}");
            let body = format!("{{\"order\":\"{id}\",\"cents\":{}}}", 100 + i).into_bytes();
            (id, body)
        })
        .collect();
    for _ in unique..total {
        let twin = workload[rng.range(0, unique as u64) as usize].clone();
        workload.push(twin);
    }
    rng.shuffle(&mut workload);

    let queue = Queue::new(broker).await;
    let policy = Policy::default()
        .retry_delay(Duration::from_millis(20))
        .max_in_progress_delay(Duration::from_millis(200))
        .max_deliveries(None); // crashes redeliver a lot; nothing here is poison
    let effects = Effects::new(kind, policy).await;

    let run = Arc::new(Run {
        broker,
        effects: effects.clone(),
        rng: Mutex::new(rng),
        started: Instant::now(),
        last_activity: AtomicU64::new(0),
        handled: AtomicUsize::new(0),
        kills: (0..CONSUMERS).map(|_| AtomicUsize::new(0)).collect(),
        hung: AtomicUsize::new(0),
        not_recorded: AtomicUsize::new(0),
        amqp_queue: match &queue {
            Queue::Rabbit(rabbit) => rabbit.queue.clone(),
            Queue::Jet(_) => String::new(),
        },
        nats_stream: match &queue {
            Queue::Jet(jet) => Some((jet.stream.clone(), jet.dead_subject.clone())),
            Queue::Rabbit(_) => None,
        },
    });
    let (stop, stopping) = watch::channel(false);
    let workers: Vec<_> = (0..CONSUMERS)
        .map(|n| {
            tokio::spawn(worker(
                n,
                Arc::clone(&run),
                stopping.clone(),
                KILLS_PER_CONSUMER,
            ))
        })
        .collect();

    // The messages arrive over PUBLISH_SPAN, as a live queue's would, so the crashes (a
    // reconnect takes a few hundred ms) fall among them rather than after them. A consumer
    // crashes at one of its first messages after each reconnect, so the last quarter
    // trickles in while any consumer still has kills to take: every consumer gets work
    // after each of its reconnects, however the broker shares it out.
    let publishing = async {
        let (paced, reserve) = workload.split_at(total - total * RESERVE_PERCENT / 100);
        let chunks = paced.chunks(PUBLISH_CHUNK);
        let pause = PUBLISH_SPAN / u32::try_from(chunks.len()).unwrap_or(1).max(1);
        for chunk in chunks {
            queue.publish(chunk).await;
            tokio::time::sleep(pause).await;
        }
        let mut reserve = reserve.chunks(DRIP);
        while run.kills_left() > 0 {
            let Some(chunk) = reserve.next() else { break };
            queue.publish(chunk).await;
            tokio::time::sleep(DRIP_PAUSE).await;
        }
        for chunk in reserve {
            queue.publish(chunk).await;
        }
    };
    // Done when every business ID took effect, the broker holds nothing more, and no
    // handler has started for a while (a requeue delay, a redelivery on its way).
    let what = format!("{label}: every effect and an idle broker");
    let polls = AtomicUsize::new(0);
    let done = wait_until(&what, DEADLINE, || async {
        if polls.fetch_add(1, Ordering::SeqCst) % 40 == 39 {
            eprintln!(
                "{label}: {} of {unique} effects, {} crashes, broker idle {}, quiet {:?}",
                effects.counts().await.len(),
                run.kills(),
                queue.idle().await,
                run.quiet_for()
            );
        }
        effects.counts().await.len() == unique
            && queue.idle().await
            && run.quiet_for() > Duration::from_millis(700)
    });
    tokio::join!(publishing, done);
    let _ = stop.send(true);
    for worker in workers {
        worker.await.expect("worker");
    }

    // No consumer is connected now: anything delivered and unacked is back in the queue
    // (RabbitMQ) or still pending (JetStream). Both must be empty.
    let (again, again_stopping) = watch::channel(false);
    if !queue.idle().await {
        // Deliveries in flight at the stop went back; a clean consumer settles them (as
        // replays: the effect counts below would show a second run).
        let drain = tokio::spawn(worker(99, Arc::clone(&run), again_stopping, 0));
        wait_until(&format!("{label}: drained"), DEADLINE, || async {
            queue.idle().await && run.quiet_for() > Duration::from_millis(700)
        })
        .await;
        let _ = again.send(true);
        drain.await.expect("drain");
    }
    assert!(queue.idle().await, "{label}: messages left on the broker");
    assert_eq!(queue.dead().await, 0, "{label}: nothing is dead-lettered");

    let counts = effects.counts().await;
    let expected: BTreeSet<&str> = workload.iter().map(|(id, _)| id.as_str()).collect();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{label}: effects not exactly once: {twice:?} ({} acked as ran but not recorded)",
        run.not_recorded.load(Ordering::SeqCst)
    );
    assert_eq!(
        counts.len(),
        expected.len(),
        "{label}: effects missing (lost messages)"
    );
    assert_eq!(
        effects.violations(),
        0,
        "{label}: the ledger's unique index caught a second run"
    );
    assert_eq!(
        run.hung.load(Ordering::SeqCst),
        0,
        "{label}: a consume loop hung after its crash"
    );
    let kills: Vec<usize> = run.kills.iter().map(|k| k.load(Ordering::SeqCst)).collect();
    assert_eq!(
        kills, [KILLS_PER_CONSUMER; CONSUMERS],
        "{label}: each consumer is killed {KILLS_PER_CONSUMER} times"
    );
    eprintln!(
        "{label}: {total} messages ({unique} business IDs), {} handled, crashes per consumer {kills:?}, every effect once, in {:?}",
        run.handled.load(Ordering::SeqCst),
        run.started.elapsed()
    );
    effects.cleanup().await;
    queue.cleanup().await;
}

/// One consumer: connects through its own proxy, consumes until it crashes (then
/// reconnects) or the run stops.
async fn worker(n: usize, run: Arc<Run>, stopping: watch::Receiver<bool>, kills: usize) {
    let mut kills_left = kills;
    while !*stopping.borrow() {
        let target = match run.broker {
            Broker::Amqp => common::host_port(&common::amqp_url()),
            Broker::Nats => common::host_port(&common::nats_url()),
        };
        let proxy = Arc::new(Proxy::start(target).await);
        // Crash at a random one of this connection's first few messages: consumers that
        // get fewer messages (JetStream pulls are not fair) still crash 10 times.
        let crash_after = if kills_left > 0 {
            run.rng.lock().expect("lock").range(1, 3) as usize
        } else {
            usize::MAX
        };
        let (crashed, crash_rx) = watch::channel(false);
        let incarnation = Incarnation {
            run: Arc::clone(&run),
            proxy: Arc::clone(&proxy),
            crashed: Arc::new(crashed),
            crash_after,
            handled: Arc::new(AtomicUsize::new(0)),
            fired: Arc::new(AtomicBool::new(false)),
        };
        let mut stop = stopping.clone();
        let mut crash = crash_rx.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = crash.wait_for(|c| *c) => {}
            }
        };
        let life = consume_once(n, &run, &proxy, incarnation.clone(), shutdown);
        if tokio::time::timeout(Duration::from_secs(20), life)
            .await
            .is_err()
        {
            eprintln!("consumer {n}: a connection's consume loop did not return after its crash");
            run.hung.fetch_add(1, Ordering::SeqCst);
        }
        if *crash_rx.borrow() {
            kills_left -= 1;
            if let Some(kills) = run.kills.get(n) {
                kills.fetch_add(1, Ordering::SeqCst);
            }
        }
        proxy.sever();
    }
}

/// One connection's life.
async fn consume_once(
    n: usize,
    run: &Run,
    proxy: &Proxy,
    incarnation: Incarnation,
    shutdown: impl Future<Output = ()>,
) {
    let handler = move |message: Message| {
        let incarnation = incarnation.clone();
        async move { incarnation.handle(message).await }
    };
    let options = ConsumeOptions::default().concurrency(IN_FLIGHT);
    let result = match run.broker {
        Broker::Amqp => {
            let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
            let conn = common::amqp_connect(&url).await;
            let channel = conn.create_channel().await.expect("channel");
            let result = amqp::consume(&channel, &run.amqp_queue, options, shutdown, handler).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
            result
        }
        Broker::Nats => {
            let Some((stream, dead_subject)) = &run.nats_stream else {
                unreachable!("a NATS run has a stream")
            };
            let client = async_nats::ConnectOptions::new()
                .max_reconnects(Some(1))
                .connect(format!("nats://{}", proxy.addr))
                .await
                .expect("NATS through the proxy");
            let js = async_nats::jetstream::new(client);
            let pull = js
                .get_stream(stream)
                .await
                .expect("stream")
                .get_or_create_consumer(
                    "worker",
                    async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some("worker".into()),
                        ack_wait: Duration::from_secs(2),
                        ..Default::default()
                    },
                )
                .await
                .expect("consumer");
            let options = options
                .id_source(IdSource::header(ORDER_ID))
                .dead_letter_subject(dead_subject.clone());
            nats::consume(&js, &pull, options, shutdown, handler).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(consumer = n, %error, "consumer stopped by its crash");
    }
}

#[derive(Clone)]
struct Incarnation {
    run: Arc<Run>,
    proxy: Arc<Proxy>,
    crashed: Arc<watch::Sender<bool>>,
    /// Crash at this connection's n-th message.
    crash_after: usize,
    handled: Arc<AtomicUsize>,
    fired: Arc<AtomicBool>,
}

impl Incarnation {
    async fn handle(&self, message: Message) -> Disposition {
        let disposition = self.handle_or_crash(message).await;
        if disposition
            == (Disposition::Ack {
                reason: AckReason::RanNotRecorded,
            })
        {
            self.run.not_recorded.fetch_add(1, Ordering::SeqCst);
        }
        disposition
    }

    async fn handle_or_crash(&self, message: Message) -> Disposition {
        self.run.touch();
        self.run.handled.fetch_add(1, Ordering::SeqCst);
        let count = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        let crash_here = count >= self.crash_after && !self.fired.swap(true, Ordering::SeqCst);
        if !crash_here {
            let disposition = self.run.effects.handle(&message, None).await;
            self.run.touch();
            return disposition;
        }
        let point = match self.run.rng.lock().expect("lock").range(0, 3) {
            0 => CrashPoint::BeforeHandling,
            1 => CrashPoint::InsideOperation,
            _ => CrashPoint::AfterOutcome,
        };
        tracing::debug!(?point, id = message.id(), "crashing");
        let disposition = match point {
            CrashPoint::BeforeHandling => {
                self.crash();
                Disposition::Requeue {
                    delay: Duration::ZERO,
                    reason: RequeueReason::StoreUnavailable,
                }
            }
            CrashPoint::InsideOperation => {
                let this = self.clone();
                let crash: Arc<dyn Fn() + Send + Sync> = Arc::new(move || this.crash());
                let disposition = self.run.effects.handle(&message, Some(crash)).await;
                // The operation does not run for a replay or a key in progress elsewhere, and
                // then neither does the crash inside it: it comes after the outcome instead.
                // Without this the connection's one crash was spent without crashing, and
                // that consumer then lived to the end of the run with kills still to take.
                self.crash();
                disposition
            }
            CrashPoint::AfterOutcome => {
                let disposition = self.run.effects.handle(&message, None).await;
                self.crash();
                disposition
            }
        };
        self.run.touch();
        disposition // its ack goes nowhere: the connection is gone
    }

    /// Cuts the connection and stops the loop; a second call changes nothing.
    fn crash(&self) {
        self.proxy.sever();
        let _ = self.crashed.send(true);
    }
}
