//! Helpers shared by the broker tests: the shared servers, uniquely named queues and
//! streams that are deleted afterwards, a TCP proxy whose connections a test can cut (a
//! consumer "crash"), and a seeded random source.
#![allow(dead_code)] // each test file uses a different part

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem_consumer::amqp::lapin::{
    self, BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use idem_consumer::nats::async_nats::{
    self, HeaderMap,
    jetstream::{self, consumer::PullConsumer, stream},
};
use idem_consumer::{
    ConsumeError, ConsumeOptions, ConsumeSummary, Consumer, Disposition, Message, RequeueReason,
    amqp, nats,
};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Retryable, Ttl,
};
use idem_mysql::MySqlStore;
use idem_redis::RedisStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

pub const START_RABBITMQ: &str =
    "bash .ci/services rabbitmq   # runs: rabbitmq-server -detached && rabbitmqctl await_startup";
pub const START_NATS: &str =
    "bash .ci/services nats   # runs: nats-server -a 127.0.0.1 -p 4222 -js (as a daemon)";
pub const START_REDIS: &str = "bash .ci/services redis";
pub const START_MYSQL: &str = "bash .ci/services mysql";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

pub fn amqp_url() -> String {
    env_or("IDEM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}
pub fn nats_url() -> String {
    env_or("IDEM_NATS_URL", "nats://127.0.0.1:4222")
}
pub fn redis_url() -> String {
    env_or("IDEM_REDIS_URL", "redis://127.0.0.1:6379")
}
pub fn mysql_url() -> String {
    env_or("IDEM_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
}

/// A suffix no other test uses.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Polls `check` until it holds or `deadline` passes; generous deadlines, no timing
/// assertions.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the tests' operations fail.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    Permanent,
    Retryable,
    Database(String),
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Permanent)
    }
}

// ---------------------------------------------------------------- consume loops

/// A consume loop running in a task of its own until [`Running::stop`].
pub struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<ConsumeSummary, ConsumeError>>,
}

pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Running {
    /// Runs `consume` with a shutdown that resolves at [`Running::stop`].
    pub fn start<Fut>(consume: impl FnOnce(Shutdown) -> Fut) -> Self
    where
        Fut: Future<Output = Result<ConsumeSummary, ConsumeError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        Self {
            stop,
            task: tokio::spawn(consume(shutdown)),
        }
    }

    /// Asks the loop to shut down and returns its summary.
    pub async fn stop(self) -> ConsumeSummary {
        let _ = self.stop.send(());
        self.task.await.expect("consume task").expect("consume")
    }
}

/// The RabbitMQ consume loop on `channel`, which it closes when it returns.
pub fn consume_amqp<F, Fut>(
    channel: Channel,
    queue: &str,
    options: ConsumeOptions,
    handler: F,
) -> Running
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let queue = queue.to_owned();
    Running::start(move |shutdown| async move {
        let summary = amqp::consume(&channel, &queue, options, shutdown, handler).await;
        let _ = channel.close(200, "done".into()).await;
        summary
    })
}

/// The JetStream consume loop on `pull`.
pub fn consume_nats<F, Fut>(
    js: jetstream::Context,
    pull: PullConsumer,
    options: ConsumeOptions,
    handler: F,
) -> Running
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    Running::start(move |shutdown| async move {
        nats::consume(&js, &pull, options, shutdown, handler).await
    })
}

/// The messages every disposition test publishes, as (ID, body): one to succeed, its
/// duplicate publish, one without an ID, one that fails permanently, and a poison one that
/// fails retryably every time.
pub const DISPOSITION_CASES: [(Option<&str>, &[u8]); 5] = [
    (Some("m-ok"), b"ok"),
    (Some("m-ok"), b"ok"),
    (None, b"no id"),
    (Some("m-permanent"), b"permanent"),
    (Some("m-poison"), b"poison"),
];

/// The operation of the disposition tests, by body: `ok` succeeds, `permanent` fails for
/// good, anything else (the poison) fails retryably. Counts its runs.
pub fn outcome_for(body: &[u8], seen: &Seen) -> Result<(), Failure> {
    match body {
        b"ok" => {
            seen.effects.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        b"permanent" => {
            seen.permanent_runs.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Permanent)
        }
        _ => {
            seen.poison_runs.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Retryable)
        }
    }
}

/// What a test's handler saw.
#[derive(Default)]
pub struct Seen {
    /// Runs of the `ok` operation.
    pub effects: AtomicUsize,
    /// `ok` messages acked (a run or a replay).
    pub ok_acked: AtomicUsize,
    pub permanent_runs: AtomicUsize,
    pub poison_runs: AtomicUsize,
    /// The delivery count of each delivery of the poison message.
    pub poison_deliveries: Mutex<Vec<Option<u32>>>,
    /// Every message's ID (empty without one) and deliveries, with its disposition.
    pub dispositions: Mutex<Vec<(String, Option<u32>, Disposition)>>,
}

impl Seen {
    /// Notes a delivery, before it is handled.
    pub fn delivered(&self, message: &Message) {
        if message.body().as_ref() == b"poison" {
            self.poison_deliveries
                .lock()
                .expect("lock")
                .push(message.deliveries());
        }
    }

    /// Notes a delivery's disposition, and hands it on.
    pub fn settled(&self, message: &Message, disposition: Disposition) -> Disposition {
        if message.body().as_ref() == b"ok" && matches!(disposition, Disposition::Ack { .. }) {
            self.ok_acked.fetch_add(1, Ordering::SeqCst);
        }
        self.dispositions.lock().expect("lock").push((
            message.id().to_owned(),
            message.deliveries(),
            disposition,
        ));
        disposition
    }

    pub fn settled_count(&self) -> usize {
        self.dispositions.lock().expect("lock").len()
    }

    /// Whether `id` was given `disposition`.
    pub fn saw(&self, id: &str, disposition: Disposition) -> bool {
        self.dispositions
            .lock()
            .expect("lock")
            .iter()
            .any(|(seen_id, _, seen)| seen_id == id && *seen == disposition)
    }
}

/// A test handler: `consumer` handles each message with `operation` (given its body), and
/// `seen` notes each delivery and disposition. The operations: [`counted`], [`outcome_for`].
pub fn handler<S: IdempotencyStore>(
    consumer: Consumer<S>,
    seen: &Arc<Seen>,
    operation: fn(&[u8], &Seen) -> Result<(), Failure>,
) -> impl Fn(Message) -> Handled + Clone + Send + Sync + 'static {
    let seen = Arc::clone(seen);
    move |message: Message| -> Handled {
        let (consumer, seen) = (consumer.clone(), Arc::clone(&seen));
        Box::pin(async move {
            seen.delivered(&message);
            let body = message.body().clone();
            let disposition = consumer
                .handle_message(&message, || async { operation(&body, &seen) })
                .await;
            seen.settled(&message, disposition)
        })
    }
}

/// The operation of tests that only count: succeeds, and counts its runs.
pub fn counted(_: &[u8], seen: &Seen) -> Result<(), Failure> {
    seen.effects.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// A test handler's future, boxed so that the handler's type can be named.
pub type Handled = Pin<Box<dyn Future<Output = Disposition> + Send>>;

/// What a test whose store never answers must see: the message requeued as
/// `StoreUnavailable` at every delivery, and its operation never run.
pub fn assert_requeued_unrun(seen: &Seen) {
    assert_eq!(
        seen.effects.load(Ordering::SeqCst),
        0,
        "nothing runs without a claim"
    );
    for (_, _, disposition) in seen.dispositions.lock().expect("lock").iter() {
        assert!(
            matches!(
                disposition,
                Disposition::Requeue {
                    reason: RequeueReason::StoreUnavailable,
                    ..
                }
            ),
            "{disposition:?}"
        );
    }
}

// ---------------------------------------------------------------- stores

/// A MySQL store whose server never answers: every call is `Unavailable`.
pub fn unreachable_store() -> MySqlStore {
    let pool = idem_mysql::sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .expect("lazy pool");
    MySqlStore::from_pool(pool)
}

/// A memory store that is down, every call `Unavailable`, until the test ends the outage
/// through the flag [`OutageStore::new`] returns with it.
#[derive(Debug)]
pub struct OutageStore {
    store: idem_memory::MemoryStore,
    down: Arc<AtomicBool>,
}

impl OutageStore {
    /// A store that is down, and the flag that brings it up when cleared.
    pub fn new() -> (Self, Arc<AtomicBool>) {
        let down = Arc::new(AtomicBool::new(true));
        let store = Self {
            store: idem_memory::MemoryStore::new(),
            down: Arc::clone(&down),
        };
        (store, down)
    }

    fn up(&self) -> Result<&idem_memory::MemoryStore, Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the store is down"));
        }
        Ok(&self.store)
    }
}

#[idem_core::async_trait]
impl IdempotencyStore for OutageStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.up()?.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.up()?.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.up()?.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.up()?.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.up()?.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.up()?.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.up()?.remove(key).await
    }
}

/// A Redis store on a key prefix of its own, and that prefix: the test removes its keys
/// with [`delete_keys`] (the records would otherwise stay for their 24 h retention).
pub async fn redis_store() -> (RedisStore, String) {
    let prefix = format!("idem-test:consumer:{}:", suffix());
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect(&redis_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis at {} did not answer ({e}). Start it with:\n    {START_REDIS}",
                redis_url()
            )
        });
    (store, prefix)
}

/// Deletes every Redis key that starts with `prefix`.
pub async fn delete_keys(prefix: &str) {
    let mut redis = redis_connection().await;
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<()>(&mut redis)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// A plain Redis connection for a test's own effects. Without the client's 500 ms response
/// timeout: a command whose reply is late has an unknown effect, and a test that called it
/// a retryable failure would run it again itself (a double no store can prevent), which on a
/// loaded machine it once did.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("a valid Redis URL");
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis at {} did not answer ({e}). Start it with:\n    {START_REDIS}",
                redis_url()
            )
        })
}

/// A MySQL store on its own table, migrated; drop it with [`drop_table`].
pub async fn mysql_store(table: &str) -> MySqlStore {
    let store = MySqlStore::builder()
        .table(table)
        .connect(&mysql_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MySQL at {} did not answer ({e}). Start it with:\n    {START_MYSQL}",
                mysql_url()
            )
        });
    store.migrate().await.expect("migrate");
    store
}

/// A ledger of business effects: a row per order ID, a unique index so that a second run
/// of an effect fails instead of writing twice.
pub async fn ledger_table(store: &MySqlStore, table: &str) {
    execute(
        store,
        format!("CREATE TABLE `{table}` (order_id VARCHAR(64) NOT NULL, UNIQUE KEY (order_id))"),
    )
    .await;
}

/// Writes `order_id` into the ledger `table` on `conn` (a consumer's transaction).
pub async fn insert_order(
    conn: &mut idem_mysql::sqlx::MySqlConnection,
    table: &str,
    order_id: &str,
) -> Result<(), idem_mysql::sqlx::Error> {
    idem_mysql::sqlx::query(idem_mysql::sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{table}` (order_id) VALUES (?)"
    )))
    .bind(order_id)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn drop_table(store: &MySqlStore, table: &str) {
    execute(store, format!("DROP TABLE IF EXISTS `{table}`")).await;
}

async fn execute(store: &MySqlStore, sql: String) {
    idem_mysql::sqlx::query(idem_mysql::sqlx::AssertSqlSafe(sql.clone()))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `count` messages with the IDs `m-0`, `m-1`, … and a one-byte body.
pub fn numbered(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("m-{i}"), b"x".to_vec()))
        .collect()
}

// ---------------------------------------------------------------- RabbitMQ

pub async fn amqp_connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ at {url} did not answer ({e}). Start it with:\n    {START_RABBITMQ}")
        })
}

/// A quorum queue (it counts deliveries) whose dead letters go to a queue of their own,
/// all named with a unique suffix and deleted by [`Rabbit::cleanup`].
pub struct Rabbit {
    pub conn: Connection,
    pub channel: Channel,
    pub queue: String,
    pub dlq: String,
    dlx: String,
}

impl Rabbit {
    pub async fn new() -> Self {
        Self::with_queue_args(FieldTable::default()).await
    }

    /// Like [`Rabbit::new`], the queue declared with `extra` arguments too
    /// (`x-delivery-limit`, say).
    pub async fn with_queue_args(extra: FieldTable) -> Self {
        let sfx = suffix();
        let conn = amqp_connect(&amqp_url()).await;
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let (queue, dlq, dlx) = (
            format!("idem-test-{sfx}"),
            format!("idem-test-{sfx}-dead"),
            format!("idem-test-{sfx}-dlx"),
        );
        channel
            .exchange_declare(
                dlx.as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the dead-letter exchange");
        // Left-overs of a test that died expire on their own after 10 minutes unused.
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        channel
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions::default(),
                dead_args,
            )
            .await
            .expect("declare the dead-letter queue");
        channel
            .queue_bind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the dead-letter queue");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        for (name, value) in extra.inner() {
            args.insert(name.clone(), value.clone());
        }
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .expect("declare the queue");
        Self {
            conn,
            channel,
            queue,
            dlq,
            dlx,
        }
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(&self, id: Option<&str>, body: &[u8]) {
        self.publish_with(id_properties(id), body).await;
    }

    pub async fn publish_with(&self, properties: BasicProperties, body: &[u8]) {
        let confirmation = self.send(properties, body).await.await.expect("confirm");
        assert!(confirmation.is_ack(), "the broker refused a message");
    }

    /// Publishes many, then waits for all the confirms.
    pub async fn publish_all(&self, messages: &[(String, Vec<u8>)]) {
        let mut confirms = Vec::with_capacity(messages.len());
        for (id, body) in messages {
            confirms.push(self.send(id_properties(Some(id)), body).await);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
    }

    /// Publishes one message to the queue; the broker's confirm comes with the result.
    async fn send(&self, properties: BasicProperties, body: &[u8]) -> lapin::PublisherConfirm {
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
    }

    /// Messages ready in a queue (not counting those delivered and unacked).
    pub async fn depth(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Takes one message off a queue (acked on this channel), to look at it.
    pub async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        let auto_ack = BasicGetOptions { no_ack: true };
        self.channel
            .basic_get(queue.into(), auto_ack)
            .await
            .expect("basic_get")
    }

    pub async fn cleanup(self) {
        for queue in [&self.queue, &self.dlq] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(self.dlx.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

pub fn id_properties(id: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    match id {
        Some(id) => properties.with_message_id(id.into()),
        None => properties,
    }
}

/// A header's integer value on a message taken with [`Rabbit::take`].
pub fn header_int(message: &lapin::message::BasicGetMessage, name: &str) -> Option<i64> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        _ => None,
    }
}

// ---------------------------------------------------------------- NATS JetStream

/// A stream and a dead-letter stream, named with a unique suffix and deleted by
/// [`Jet::cleanup`].
pub struct Jet {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: String,
    pub subject: String,
    pub dead_stream: String,
    pub dead_subject: String,
}

pub async fn nats_connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!("NATS at {url} did not answer ({e}). Start it with:\n    {START_NATS}")
        })
}

/// Creates a stream whose messages a test that dies leaves for ten minutes at most.
///
/// Tried up to five times: nats-server 2.9 deletes the account's storage directory with its
/// last stream, and a stream created by a parallel test at that moment fails ("could not
/// create storage directory", code 10049) although JetStream is up.
pub async fn create_stream(js: &jetstream::Context, name: &str, subject: &str) {
    let mut tries = 0;
    loop {
        let created = js
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![subject.to_owned()],
                max_age: Duration::from_secs(600),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => return,
            Err(_) if tries < 4 => tries += 1,
            Err(e) => panic!(
                "creating stream {name} failed ({e}); is JetStream on (-js)? Start NATS with:\n    {START_NATS}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Jet {
    pub async fn new() -> Self {
        let sfx = suffix();
        let client = nats_connect(&nats_url()).await;
        let js = jetstream::new(client.clone());
        let (stream, subject) = (format!("IDEM_TEST_{sfx}"), format!("idem.test.{sfx}"));
        let (dead_stream, dead_subject) = (format!("IDEM_DEAD_{sfx}"), format!("idem.dead.{sfx}"));
        for (name, subject) in [(&stream, &subject), (&dead_stream, &dead_subject)] {
            create_stream(&js, name, subject).await;
        }
        Self {
            client,
            js,
            stream,
            subject,
            dead_stream,
            dead_subject,
        }
    }

    /// A durable pull consumer on the stream.
    pub async fn consumer(&self, ack_wait: Duration, max_deliver: i64) -> PullConsumer {
        self.consumer_on(&self.js, ack_wait, max_deliver).await
    }

    pub async fn consumer_on(
        &self,
        js: &jetstream::Context,
        ack_wait: Duration,
        max_deliver: i64,
    ) -> PullConsumer {
        let stream = js.get_stream(&self.stream).await.expect("stream");
        stream
            .get_or_create_consumer(
                "worker",
                jetstream::consumer::pull::Config {
                    durable_name: Some("worker".into()),
                    ack_wait,
                    max_deliver,
                    ..Default::default()
                },
            )
            .await
            .expect("consumer")
    }

    /// Publishes with its ID in header `id_header` (or none) and waits for the stream's ack.
    pub async fn publish(&self, id_header: &str, id: Option<&str>, body: &[u8]) {
        self.send(id_header, id, body)
            .await
            .await
            .expect("stream ack");
    }

    pub async fn publish_all(&self, messages: &[(String, Vec<u8>)], id_header: &str) {
        let mut acks = Vec::with_capacity(messages.len());
        for (id, body) in messages {
            acks.push(self.send(id_header, Some(id), body).await);
        }
        for ack in acks {
            ack.await.expect("stream ack");
        }
    }

    /// Publishes one message; the stream's ack comes with the result.
    async fn send(
        &self,
        id_header: &str,
        id: Option<&str>,
        body: &[u8],
    ) -> jetstream::context::PublishAckFuture {
        let mut headers = HeaderMap::new();
        if let Some(id) = id {
            headers.insert(id_header, id);
        }
        self.js
            .publish_with_headers(self.subject.clone(), headers, body.to_vec().into())
            .await
            .expect("publish")
    }

    /// Messages in a stream.
    pub async fn messages_in(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// The consumer's state: (pending, ack pending, redelivered).
    pub async fn consumer_state(&self) -> (u64, usize, usize) {
        let stream = self.js.get_stream(&self.stream).await.expect("stream");
        let mut consumer: PullConsumer = stream.get_consumer("worker").await.expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        (info.num_pending, info.num_ack_pending, info.num_redelivered)
    }

    /// How many deliveries the consumer has made, redeliveries included.
    pub async fn deliveries_made(&self) -> u64 {
        let stream = self.js.get_stream(&self.stream).await.expect("stream");
        let mut consumer: PullConsumer = stream.get_consumer("worker").await.expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        info.delivered.consumer_sequence
    }

    pub async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.stream).await;
        let _ = self.js.delete_stream(&self.dead_stream).await;
    }
}

// ---------------------------------------------------------------- crashes

/// A loopback TCP proxy in front of a broker. [`Proxy::sever`] cuts every connection
/// through it and refuses new ones: to the client and the broker alike, the consumer's
/// connection dropped. [`Proxy::freeze`] stops forwarding but keeps the sockets open: a
/// connection that died silently (a partition, a host gone without a FIN).
pub struct Proxy {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let pipes = Arc::clone(&tasks);
        let (frozen, frozen_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let mut frozen = frozen_rx.clone();
                let pipe = tokio::spawn(async move {
                    let freeze = async move {
                        let _ = frozen.wait_for(|frozen| *frozen).await;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = freeze => {
                            // Both sockets stay open, and nothing passes, until severed.
                            std::future::pending::<()>().await;
                        }
                    }
                });
                pipes.lock().expect("proxy lock").push(pipe.abort_handle());
            }
        });
        tasks
            .lock()
            .expect("proxy lock")
            .push(accept.abort_handle());
        Self {
            addr,
            tasks,
            frozen,
        }
    }

    /// Stops forwarding in both directions without closing anything.
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    /// Drops every connection (both sockets close) and the listener.
    pub fn sever(&self) {
        for task in self.tasks.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
    }
}

/// The broker address of a URL like `amqp://user:pass@127.0.0.1:5672/%2f`.
pub fn host_port(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port.parse().expect("a loopback ip:port in the URL")
}

/// A small seeded generator (xorshift64*): the seed is printed so a failing run can be
/// repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(label: &str) -> Self {
        let seed = std::env::var("IDEM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 | 1);
        eprintln!("{label}: seed {seed} (IDEM_TEST_SEED={seed} repeats it)");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
