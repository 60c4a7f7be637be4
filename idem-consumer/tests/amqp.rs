//! The RabbitMQ adapter against the real broker: each disposition observed on the broker
//! (queue depths, the dead-letter queue, quorum delivery counts), a graceful shutdown
//! that loses nothing, and a consume loop that returns when its connection is lost.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DISPOSITION_CASES, Failure, Proxy, Rabbit, Seen, wait_until};
use idem_consumer::amqp::{self, lapin};
use idem_consumer::{
    AckReason, ConsumeFailure, ConsumeOptions, ConsumeSummary, Consumer, DeadLetterReason,
    Disposition, IdSource, Message, Policy,
};
use idem_core::{
    Bytes, Claim, ClaimRequest, Config, Error, Idempotency, IdempotencyStore, Key, Lease, Record,
    Ttl,
};
use idem_memory::MemoryStore;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disposition_is_observed_on_the_broker() {
    let rabbit = Rabbit::new().await;
    let (store, prefix) = common::redis_store().await;
    let policy = Policy::default()
        .max_deliveries(Some(3))
        .retry_delay(Duration::from_millis(50))
        .max_in_progress_delay(Duration::from_millis(200));
    let consumer = Consumer::new(Idempotency::new(store), "amqp-dispositions")
        .expect("consumer")
        .with_policy(policy);
    for (id, body) in DISPOSITION_CASES {
        rabbit.publish(id, body).await;
    }

    let seen = Arc::new(Seen::default());
    let handler = common::handler(consumer, &seen, common::outcome_for);
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let options = ConsumeOptions::default().concurrency(4);
    let running = common::consume_amqp(channel, &rabbit.queue, options, handler);
    wait_until(
        "three dead letters and both copies of m-ok acked",
        DEADLINE,
        || async {
            rabbit.depth(&rabbit.dlq).await == 3 && seen.ok_acked.load(Ordering::SeqCst) == 2
        },
    )
    .await;
    let summary = running.stop().await;

    // On the broker: nothing left in the queue, the three in the dead-letter queue.
    assert_eq!(
        rabbit.depth(&rabbit.queue).await,
        0,
        "the queue must be empty"
    );
    let mut dead = BTreeSet::new();
    while let Some(message) = rabbit.take(&rabbit.dlq).await {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        dead.insert(id.unwrap_or_else(|| "<none>".into()));
    }
    let expected: BTreeSet<String> = ["<none>", "m-permanent", "m-poison"]
        .map(String::from)
        .into();
    assert_eq!(
        dead, expected,
        "missing ID, permanent failure and poison are dead-lettered"
    );

    // The effect once; the permanent failure ran once; the poison ran max_deliveries times
    // and its next delivery was dead-lettered without running.
    assert_eq!(
        seen.effects.load(Ordering::SeqCst),
        1,
        "the duplicate must not run"
    );
    assert_eq!(seen.permanent_runs.load(Ordering::SeqCst), 1);
    assert_eq!(seen.poison_runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        *seen.poison_deliveries.lock().expect("lock"),
        vec![Some(1), Some(2), Some(3), Some(4)],
        "the quorum queue's delivery count reaches the handler"
    );
    assert!(seen.saw(
        "m-poison",
        Disposition::DeadLetter {
            reason: DeadLetterReason::Poison { deliveries: 4 }
        }
    ));
    assert!(seen.saw(
        "m-permanent",
        Disposition::DeadLetter {
            reason: DeadLetterReason::PermanentFailure
        }
    ));
    assert_eq!(summary.acked, 2);
    assert_eq!(summary.dead_lettered, 3);
    // The poison thrice, and the duplicate of m-ok if it came while the first still ran.
    assert!((3..=4).contains(&summary.requeued), "{summary:?}");
    assert_eq!(summary.unsettled, 0);
    rabbit.cleanup().await;
    common::delete_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_requeues_and_never_runs() {
    let rabbit = Rabbit::new().await;
    let consumer = Consumer::new(
        Idempotency::new(common::unreachable_store()),
        "amqp-unavailable",
    )
    .expect("consumer")
    .with_policy(Policy::default().unavailable_delay(Duration::from_millis(50)));
    rabbit.publish(Some("m-1"), b"pay").await;

    let seen = Arc::new(Seen::default());
    let handler = common::handler(consumer, &seen, common::counted);
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let running = common::consume_amqp(channel, &rabbit.queue, ConsumeOptions::default(), handler);
    wait_until("three deliveries", DEADLINE, || async {
        seen.settled_count() >= 3
    })
    .await;
    running.stop().await;

    common::assert_requeued_unrun(&seen);
    // Held by the loop, handled again on the one delivery, handed back at the shutdown:
    // still on the queue, delivered once, never dead-lettered.
    assert!(
        seen.dispositions
            .lock()
            .expect("lock")
            .iter()
            .all(|(_, deliveries, _)| *deliveries == Some(1)),
        "a held message is handled again without a redelivery"
    );
    assert_eq!(rabbit.depth(&rabbit.dlq).await, 0);
    let message = rabbit
        .take(&rabbit.queue)
        .await
        .expect("the message is still queued");
    assert_eq!(common::header_int(&message, "x-delivery-count"), Some(1));
    rabbit.cleanup().await;
}

/// A store outage longer than a quorum queue's `x-delivery-limit` does not get a message
/// dead-lettered: the loop holds a message the store cannot take and handles it again,
/// rather than `basic.nack` it back. Handed back at each try, every requeue counted towards
/// the limit, and the broker dead-lettered the message, never run, for the store's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_queues_delivery_limit_dead_letters_nothing() {
    let mut limit = lapin::types::FieldTable::default();
    limit.insert(
        "x-delivery-limit".into(),
        lapin::types::AMQPValue::LongInt(1),
    );
    store_outage(limit, Policy::default().max_deliveries(None)).await;
}

/// A store outage longer than idem's own poison limit does not make a message poison: the
/// delivery count that limit reads (a quorum queue's) counts only the deliveries that
/// failed for the message's sake. Each requeue for the store's outage counted, and once the
/// store was back the message was dead-lettered as poison without ever running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_poison_limit_dead_letters_nothing() {
    let policy = Policy::default().max_deliveries(Some(1));
    store_outage(lapin::types::FieldTable::default(), policy).await;
}

/// A message handled while the store is down (four tries), then once it is back: it must
/// run once and be acked, and nothing goes to the dead-letter queue.
async fn store_outage(queue_args: lapin::types::FieldTable, policy: Policy) {
    let rabbit = Rabbit::with_queue_args(queue_args).await;
    let (store, down) = common::OutageStore::new();
    let policy = policy.unavailable_delay(Duration::from_millis(50));
    let consumer = Consumer::new(Idempotency::new(store), "amqp-outage")
        .expect("consumer")
        .with_policy(policy);
    rabbit.publish(Some("m-1"), b"ok").await;

    let seen = Arc::new(Seen::default());
    let handler = common::handler(consumer, &seen, common::counted);
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let running = common::consume_amqp(channel, &rabbit.queue, ConsumeOptions::default(), handler);
    wait_until("four tries, or a dead letter", DEADLINE, || async {
        seen.settled_count() >= 4 || rabbit.depth(&rabbit.dlq).await > 0
    })
    .await;
    common::assert_requeued_unrun(&seen);
    down.store(false, Ordering::SeqCst);
    wait_until("the message acked, or dead-lettered", DEADLINE, || async {
        seen.ok_acked.load(Ordering::SeqCst) == 1 || rabbit.depth(&rabbit.dlq).await > 0
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(
        rabbit.depth(&rabbit.dlq).await,
        0,
        "dead-lettered for the store's outage: {summary:?}"
    );
    assert_eq!(seen.effects.load(Ordering::SeqCst), 1);
    assert_eq!(summary.acked, 1, "{summary:?}");
    assert_eq!(rabbit.depth(&rabbit.queue).await, 0);
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_finishes_what_it_started_and_loses_nothing() {
    const MESSAGES: usize = 40;
    let rabbit = Rabbit::new().await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "amqp-shutdown").expect("consumer");
    rabbit.publish_all(&common::numbered(MESSAGES)).await;

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (Arc::clone(&started), Arc::clone(&finished));
        move |message: Message| {
            let (consumer, started, finished) = (
                consumer.clone(),
                Arc::clone(&started),
                Arc::clone(&finished),
            );
            async move {
                consumer
                    .handle_message(&message, || async {
                        started.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Failure>(())
                    })
                    .await
            }
        }
    };
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let options = ConsumeOptions::default().concurrency(8);
    let running = common::consume_amqp(channel, &rabbit.queue, options, handler);
    wait_until("ten finished", DEADLINE, || async {
        finished.load(Ordering::SeqCst) >= 10
    })
    .await;
    let summary = running.stop().await; // while up to 8 are in flight

    let (started, finished) = (
        started.load(Ordering::SeqCst),
        finished.load(Ordering::SeqCst),
    );
    assert_eq!(started, finished, "every operation in flight finished");
    assert_eq!(summary.acked as usize, finished, "and was acked");
    assert!(
        finished < MESSAGES,
        "the shutdown came early enough to test something"
    );
    wait_until("the rest back on the queue", DEADLINE, || async {
        rabbit.depth(&rabbit.queue).await as usize == MESSAGES - finished
    })
    .await;
    rabbit.cleanup().await;
}

/// A first delivery (`redelivered` false) is the first, whatever `x-delivery-count` header
/// its publisher put on it: a message re-published with the headers of a redelivery it was
/// consumed as (a shovel, a tool moving messages between queues), or a producer's own
/// header. Taken at its word, the stale count made it poison on its first delivery:
/// dead-lettered without ever running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_delivery_is_not_poison_whatever_count_its_publisher_wrote() {
    let rabbit = Rabbit::new().await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "amqp-republished").expect("consumer");
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-delivery-count".into(),
        lapin::types::AMQPValue::LongLongInt(50),
    );
    let properties = common::id_properties(Some("m-republished")).with_headers(headers);
    rabbit.publish_with(properties, b"ok").await;

    let seen = Arc::new(Seen::default());
    let handler = common::handler(consumer, &seen, common::outcome_for);
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let running = common::consume_amqp(channel, &rabbit.queue, ConsumeOptions::default(), handler);
    wait_until("the message settled", DEADLINE, || async {
        seen.settled_count() >= 1
    })
    .await;
    running.stop().await;

    let dispositions = seen.dispositions.lock().expect("lock").clone();
    assert_eq!(
        dispositions,
        vec![(
            "m-republished".to_owned(),
            Some(1),
            Disposition::Ack {
                reason: AckReason::Processed
            }
        )],
        "a first delivery runs"
    );
    assert_eq!(seen.effects.load(Ordering::SeqCst), 1);
    rabbit.cleanup().await;
}

/// A store whose outcome writes are slow: a window between the operation's return and its
/// stored outcome that a test can aim at.
#[derive(Debug)]
struct SlowComplete(MemoryStore);

#[idem_core::async_trait]
impl IdempotencyStore for SlowComplete {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.0.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.0.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.0.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.0.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.0.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.0.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.0.remove(key).await
    }
}

/// Dropping a consume loop's future (a `select!` on ctrl-c, a timeout around it) instead of
/// resolving its shutdown must not cut short a message whose operation has returned: its
/// outcome write and its ack finish. Aborted there, the key stayed claimed with nothing
/// stored and the message unacked; once the lease ran out, the redelivery ran the operation
/// a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_consume_loop_does_not_run_a_finished_operation_again() {
    let rabbit = Rabbit::new().await;
    let config = Config::builder()
        .lease_ttl(Duration::from_secs(2))
        .build()
        .expect("config");
    let idem = Idempotency::with_config(SlowComplete(MemoryStore::new()), config).expect("config");
    let consumer = Consumer::new(idem, "amqp-dropped").expect("consumer");
    rabbit.publish(Some("m-1"), b"pay").await;

    let effects = Arc::new(AtomicUsize::new(0));
    let handler = {
        let effects = Arc::clone(&effects);
        move |message: Message| {
            let (consumer, effects) = (consumer.clone(), Arc::clone(&effects));
            async move {
                consumer
                    .handle_message(&message, || async {
                        effects.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Failure>(())
                    })
                    .await
            }
        }
    };

    // The first loop: dropped while the outcome of its one message is being written.
    let first = rabbit.conn.create_channel().await.expect("channel");
    let loop_task = {
        let (first, queue, handler) = (first.clone(), rabbit.queue.clone(), handler.clone());
        tokio::spawn(async move {
            let shutdown = std::future::pending::<()>();
            amqp::consume(&first, &queue, ConsumeOptions::default(), shutdown, handler).await
        })
    };
    wait_until("the operation ran", DEADLINE, || async {
        effects.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop_task.abort();
    assert!(
        loop_task.await.is_err(),
        "the loop was dropped, not finished"
    );
    // The process goes on a while (past the lease), then closes its channel.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let _ = first.close(200, "done".into()).await;

    // Another consumer: whatever is still on the queue comes to it.
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let running = common::consume_amqp(channel, &rabbit.queue, ConsumeOptions::default(), handler);
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await;

    assert_eq!(
        effects.load(Ordering::SeqCst),
        1,
        "the operation ran again after its loop was dropped"
    );
    assert_eq!(rabbit.depth(&rabbit.queue).await, 0);
    assert_eq!(rabbit.depth(&rabbit.dlq).await, 0);
    rabbit.cleanup().await;
}

/// A handler that panics does not keep its message: the loop hands it back to the broker,
/// which delivers it again, and takes the next one. A delivery left unacked on the channel
/// instead would stay there for as long as the loop runs, holding a prefetch slot: with a
/// concurrency of 1 the loop would take no other message ever again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_its_message_back_and_the_loop_goes_on() {
    let rabbit = Rabbit::new().await;
    rabbit.publish(Some("m-panics-once"), b"first").await;
    rabbit.publish(Some("m-after"), b"second").await;

    let panicked = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (panicked, handled) = (Arc::clone(&panicked), Arc::clone(&handled));
        move |message: Message| {
            let (panicked, handled) = (Arc::clone(&panicked), Arc::clone(&handled));
            async move {
                if message.id() == "m-panics-once" && !panicked.swap(true, Ordering::SeqCst) {
                    panic!("the handler panics on the first delivery");
                }
                handled.lock().expect("lock").push(message.id().to_owned());
                Disposition::Ack {
                    reason: AckReason::Processed,
                }
            }
        }
    };
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let options = ConsumeOptions::default().concurrency(1);
    let running = common::consume_amqp(channel, &rabbit.queue, options, handler);
    wait_until(
        "both messages handled after the panic",
        Duration::from_secs(15),
        || async { handled.lock().expect("lock").len() >= 2 },
    )
    .await;
    let summary = running.stop().await;

    assert!(panicked.load(Ordering::SeqCst));
    let handled: BTreeSet<String> = handled.lock().expect("lock").iter().cloned().collect();
    assert_eq!(
        handled,
        BTreeSet::from(["m-after".to_owned(), "m-panics-once".to_owned()])
    );
    assert_eq!(summary.acked, 2);
    assert_eq!(summary.unsettled, 1, "the panicked delivery: {summary:?}");
    assert_eq!(rabbit.depth(&rabbit.queue).await, 0);
    assert_eq!(rabbit.depth(&rabbit.dlq).await, 0);
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_fails_the_setup_in_bounded_time() {
    let rabbit = Rabbit::new().await;
    let proxy = Proxy::start(common::host_port(&common::amqp_url())).await;
    // RabbitMQ's own 60 s heartbeat: lapin would take 120 s to give up on the silence, far
    // past HANG, so only the setup timeout can end this in time.
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let connection = common::amqp_connect(&url).await;
    let channel = connection.create_channel().await.expect("channel");
    proxy.freeze();
    let options = ConsumeOptions::default().setup_timeout(Duration::from_millis(500));
    let handler = |_message: Message| async {
        Disposition::Ack {
            reason: AckReason::Processed,
        }
    };
    let setup = amqp::consume(
        &channel,
        &rabbit.queue,
        options,
        std::future::pending(),
        handler,
    );
    let error = tokio::time::timeout(HANG, setup)
        .await
        .expect("the setup hung on a silent broker")
        .expect_err("a silent broker fails the setup");
    assert!(
        matches!(
            error.failure,
            ConsumeFailure::SetupTimedOut {
                step: "basic.qos",
                waited,
            } if waited == Duration::from_millis(500)
        ),
        "{error:?}"
    );
    assert_eq!(error.summary, ConsumeSummary::default());
    proxy.sever();
    rabbit.cleanup().await;
}

/// How a consume loop's connection is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// Both sockets closed: lapin reads the end of the stream.
    Severed,
    /// Nothing passes any more, and nothing is closed: only the heartbeat can tell.
    Silent,
}

/// Far beyond the 2 s a 1 s heartbeat takes to notice a silent connection: a loop still
/// running then has hung.
const HANG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_severed_idle_connection_ends_the_consume_loop() {
    connection_lost(Loss::Severed, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_idle_connection_ends_the_consume_loop_at_the_heartbeat() {
    connection_lost(Loss::Silent, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_severed_busy_connection_ends_the_consume_loop_and_loses_nothing() {
    connection_lost(Loss::Severed, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_busy_connection_ends_the_consume_loop_and_loses_nothing() {
    connection_lost(Loss::Silent, true).await;
}

/// A consume loop whose connection is lost, with nothing in flight (`busy` false) or with
/// messages in flight, and no shutdown asked for: the loop returns the broker client's
/// error by itself, rather than waiting for deliveries that never come, so the caller
/// can reconnect. A new connection then finishes the queue, every effect once.
async fn connection_lost(loss: Loss, busy: bool) {
    let messages: usize = if busy { 24 } else { 1 };
    let rabbit = Rabbit::new().await;
    let proxy = Proxy::start(common::host_port(&common::amqp_url())).await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "amqp-lost").expect("consumer");
    rabbit.publish_all(&common::numbered(messages)).await;

    let effects = Arc::new(AtomicUsize::new(0));
    let handler = {
        let effects = Arc::clone(&effects);
        move |message: Message| {
            let (consumer, effects) = (consumer.clone(), Arc::clone(&effects));
            async move {
                consumer
                    .handle_message(&message, || async {
                        if busy {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                        effects.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Failure>(())
                    })
                    .await
            }
        }
    };
    // A 1 s heartbeat: lapin gives up on a silent server after twice that.
    let url = format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.addr);
    let connection = common::amqp_connect(&url).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = rabbit.queue.clone();
    let first = handler.clone();
    let running = tokio::spawn(async move {
        let options = ConsumeOptions::default().concurrency(4);
        amqp::consume(&channel, &queue, options, std::future::pending(), first).await
    });
    if busy {
        wait_until("a few handled", DEADLINE, || async {
            effects.load(Ordering::SeqCst) >= 2
        })
        .await;
    } else {
        wait_until("the message handled and acked", DEADLINE, || async {
            effects.load(Ordering::SeqCst) == 1 && rabbit.depth(&rabbit.queue).await == 0
        })
        .await;
        // Its ack on its way, and then a few heartbeats: idle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    match loss {
        Loss::Severed => proxy.sever(),
        Loss::Silent => proxy.freeze(),
    }
    let ended = tokio::time::timeout(HANG, running)
        .await
        .unwrap_or_else(|_| panic!("{loss:?}, busy {busy}: the consume loop hung"))
        .expect("consume task");
    let error = ended.expect_err("the loop reports the lost connection");
    eprintln!(
        "{loss:?}, busy {busy}: the loop returned: {error}, {:?}",
        error.summary
    );
    proxy.sever();

    // The caller reconnects; what the lost connection held comes back, nothing twice.
    let direct = common::amqp_connect(&common::amqp_url()).await;
    let channel = direct.create_channel().await.expect("channel");
    let options = ConsumeOptions::default().concurrency(4);
    let again = common::consume_amqp(channel, &rabbit.queue, options, handler);
    wait_until("every message's effect", DEADLINE, || async {
        effects.load(Ordering::SeqCst) == messages && rabbit.depth(&rabbit.queue).await == 0
    })
    .await;
    again.stop().await;
    assert_eq!(
        effects.load(Ordering::SeqCst),
        messages,
        "every effect once"
    );
    let _ = direct.close(200, "done".into()).await;
    // Nothing unacked is left: with no consumer, all of it would be back on the queue.
    wait_until("an empty queue", DEADLINE, || async {
        rabbit.depth(&rabbit.queue).await == 0
    })
    .await;
    rabbit.cleanup().await;
}

#[test]
fn the_id_comes_from_where_it_is_configured() {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};
    let mut headers = FieldTable::default();
    headers.insert("order-id".into(), AMQPValue::LongString("o-17".into()));
    headers.insert("seq".into(), AMQPValue::LongLongInt(42));
    let properties = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_headers(headers);
    let id = |source: IdSource, properties: &BasicProperties| {
        amqp::message_id(&source, properties, b"body")
    };
    assert_eq!(
        id(IdSource::AmqpMessageId, &properties).as_deref(),
        Ok("m-1")
    );
    assert_eq!(
        id(IdSource::header("order-id"), &properties).as_deref(),
        Ok("o-17")
    );
    assert_eq!(
        id(IdSource::header("seq"), &properties).as_deref(),
        Ok("42")
    );
    let digest = id(IdSource::BodyDigest, &properties).expect("a digest");
    assert_eq!(digest.len(), 64);
    assert_eq!(
        digest,
        id(IdSource::BodyDigest, &BasicProperties::default()).expect("a digest")
    );
    let missing = id(IdSource::header("absent"), &properties).expect_err("missing");
    assert!(missing.to_string().contains("\"absent\""), "{missing}");
    let empty = BasicProperties::default().with_message_id("".into());
    assert!(
        id(IdSource::AmqpMessageId, &empty).is_err(),
        "an empty ID is no ID"
    );
}

/// A graceful shutdown cancels the consumer first, then lets the messages in flight
/// finish: the broker hands this consumer nothing new while they do. It cancelled only
/// after they had finished, so each of their acks made room under the prefetch for one
/// more delivery, held unstarted for the rest of the drain, then handed back: marked
/// redelivered, its quorum delivery count raised towards the poison limit without it
/// ever running, and kept from the other consumers all that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_takes_nothing_new_while_the_messages_in_flight_finish() {
    let rabbit = Rabbit::new().await;
    rabbit.publish(Some("m-0"), b"ok").await;
    rabbit.publish(Some("m-1"), b"ok").await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "amqp-drain").expect("consumer");
    let watcher = rabbit.conn.create_channel().await.expect("channel");
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let (started, queue) = (Arc::clone(&started), rabbit.queue.clone());
        move |message: Message| {
            let (consumer, started, watcher, queue) = (
                consumer.clone(),
                Arc::clone(&started),
                watcher.clone(),
                queue.clone(),
            );
            async move {
                if message.id() == "m-0" {
                    started.store(true, Ordering::SeqCst);
                    // In flight until the shutdown has cancelled the consumer (or, as
                    // before the fix, a bound passes without it).
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        while consumers_of(&watcher, &queue).await > 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })
                    .await;
                }
                consumer
                    .handle_message(&message, || async { Ok::<_, Failure>(()) })
                    .await
            }
        }
    };
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let options = ConsumeOptions::default().concurrency(1);
    let running = common::consume_amqp(channel, &rabbit.queue, options, handler);
    wait_until("m-0 in flight", DEADLINE, || async {
        started.load(Ordering::SeqCst)
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(summary.acked, 1, "{summary:?}");
    assert_eq!(
        summary.requeued, 0,
        "nothing new was delivered: {summary:?}"
    );
    let rest = rabbit.take(&rabbit.queue).await.expect("m-1 still queued");
    assert!(
        !rest.delivery.redelivered,
        "m-1 was delivered to the consumer shutting down and handed back"
    );
    rabbit.cleanup().await;
}

/// The consumers a queue has, as the broker counts them.
async fn consumers_of(channel: &lapin::Channel, queue: &str) -> u32 {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .expect("passive declare")
        .consumer_count()
}

/// A consumer the broker cancels (its queue deleted) ends the loop with an error, as a
/// lost channel does: the caller must consume again. It ended with `Ok`, the very answer
/// of a shutdown the caller had asked for, so a service took it for one and stopped
/// consuming without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_ends_the_loop_with_an_error() {
    let rabbit = Rabbit::new().await;
    let channel = rabbit.conn.create_channel().await.expect("channel");
    let handler = |_message: Message| async {
        Disposition::Ack {
            reason: AckReason::Processed,
        }
    };
    let looping = tokio::spawn({
        let queue = rabbit.queue.clone();
        async move {
            amqp::consume(
                &channel,
                &queue,
                ConsumeOptions::default(),
                std::future::pending(),
                handler,
            )
            .await
        }
    });
    wait_until("the loop consuming", DEADLINE, || async {
        consumers_of(&rabbit.channel, &rabbit.queue).await == 1
    })
    .await;
    rabbit
        .channel
        .queue_delete(
            rabbit.queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the queue");

    let ended = tokio::time::timeout(HANG, looping)
        .await
        .expect("the loop went on without its consumer")
        .expect("the loop's task");
    let error = ended.expect_err("a cancelled consumer is not a shutdown");
    assert!(
        matches!(error.failure, ConsumeFailure::Stream { .. }),
        "{error:?}"
    );
    rabbit.cleanup().await;
}
