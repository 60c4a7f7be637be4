//! The NATS JetStream adapter against the real server, with the MySQL transactional
//! consumer: each disposition observed on JetStream (stream and dead-letter stream
//! counts, delivery counts, the consumer's pending counts).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{DISPOSITION_CASES, Failure, Jet, Seen, wait_until};
use idem_consumer::nats;
use idem_consumer::{ConsumeOptions, Consumer, IdSource, Message, Policy, TransactionalConsumer};
use idem_core::Idempotency;
use idem_memory::MemoryStore;
use idem_mysql::sqlx::{self, AssertSqlSafe};

const DEADLINE: Duration = Duration::from_secs(30);
const ORDER_ID: &str = "Order-Id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disposition_is_observed_on_jetstream() {
    let jet = Jet::new().await;
    let sfx = common::suffix();
    let (records, ledger) = (format!("idem_nats_{sfx}"), format!("ledger_nats_{sfx}"));
    let store = common::mysql_store(&records).await;
    common::ledger_table(&store, &ledger).await;
    let policy = Policy::default()
        .max_deliveries(Some(3))
        .retry_delay(Duration::from_millis(50))
        .max_in_progress_delay(Duration::from_millis(200));
    let consumer = TransactionalConsumer::new(store.clone(), "nats-dispositions")
        .expect("consumer")
        .with_policy(policy);
    // JetStream drops a second publish with the same Nats-Msg-Id itself, so these
    // messages carry their ID in a header of their own: the duplicate reaches the consumer.
    for (id, body) in DISPOSITION_CASES {
        jet.publish(ORDER_ID, id, body).await;
    }

    let seen = Arc::new(Seen::default());
    let handler = {
        let (seen, ledger) = (Arc::clone(&seen), ledger.clone());
        move |message: Message| {
            let (consumer, seen, ledger) = (consumer.clone(), Arc::clone(&seen), ledger.clone());
            async move {
                seen.delivered(&message);
                let (id, body, seen_in_op) = (
                    message.id().to_owned(),
                    message.body().clone(),
                    Arc::clone(&seen),
                );
                let disposition = consumer
                    .handle_message(&message, |conn| {
                        Box::pin(async move {
                            // The business write, in the claim's transaction.
                            common::insert_order(conn, &ledger, &id)
                                .await
                                .map_err(|e| Failure::Database(e.to_string()))?;
                            common::outcome_for(&body, &seen_in_op)
                        })
                    })
                    .await;
                seen.settled(&message, disposition)
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let options = ConsumeOptions::default()
        .concurrency(4)
        .id_source(IdSource::header(ORDER_ID))
        .dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until(
        "three dead letters and both copies of m-ok acked",
        DEADLINE,
        || async {
            jet.messages_in(&jet.dead_stream).await == 3
                && seen.ok_acked.load(Ordering::SeqCst) == 2
        },
    )
    .await;
    let summary = running.stop().await;

    // On JetStream: every message settled, three copies in the dead-letter stream.
    wait_until("nothing pending on the consumer", DEADLINE, || async {
        let (pending, ack_pending, _) = jet.consumer_state().await;
        pending == 0 && ack_pending == 0
    })
    .await;
    let dead = jet
        .js
        .get_stream(&jet.dead_stream)
        .await
        .expect("dead stream");
    let mut reasons = BTreeSet::new();
    for sequence in 1..=3 {
        let message = dead.get_raw_message(sequence).await.expect("a dead letter");
        let reason = message
            .headers
            .get(nats::DEAD_LETTER_REASON)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let id = message
            .headers
            .get(ORDER_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| "<none>".into());
        reasons.insert(format!("{id}: {reason}"));
    }
    let expected: BTreeSet<String> = [
        "<none>: dead-letter (MissingId)",
        "m-permanent: dead-letter (PermanentFailure)",
        "m-poison: dead-letter (Poison { deliveries: 4 })",
    ]
    .map(String::from)
    .into();
    assert_eq!(reasons, expected);

    // The ledger holds m-ok once; the permanent failure's write was rolled back with its
    // savepoint while its failure was stored; the poison's writes were rolled back.
    let rows: Vec<(String,)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT order_id FROM `{ledger}`")))
            .fetch_all(store.pool())
            .await
            .expect("ledger");
    assert_eq!(rows, vec![("m-ok".to_owned(),)]);
    assert_eq!(seen.poison_runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        *seen.poison_deliveries.lock().expect("lock"),
        vec![Some(1), Some(2), Some(3), Some(4)],
        "JetStream's delivery count reaches the handler"
    );
    assert_eq!(summary.acked, 2);
    assert_eq!(summary.dead_lettered, 3);
    assert_eq!(summary.unsettled, 0);
    common::drop_table(&store, &ledger).await;
    common::drop_table(&store, &records).await;
    jet.cleanup().await;
}

/// Every dead-lettered message gets its copy in the dead-letter stream, even when another
/// message with the same `Nats-Msg-Id` was dead-lettered shortly before: one dead-letter
/// stream shared by several streams (whose IDs idem keeps apart by namespace), or two
/// messages published further apart than the source stream's duplicate window. The copy
/// carried the original's `Nats-Msg-Id`, so the dead-letter stream dropped the second copy
/// as a duplicate, acked it all the same, and the message was `term`ed: lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dead_letters_with_one_nats_msg_id_both_reach_the_dead_letter_stream() {
    let jet = Jet::new().await;
    // The source stream forgets IDs quickly, so both messages are in it.
    let mut source = jet.js.get_stream(&jet.stream).await.expect("stream");
    let mut config = source.info().await.expect("stream info").config.clone();
    config.duplicate_window = Duration::from_millis(200);
    jet.js.update_stream(config).await.expect("update stream");
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"permanent")
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"another body")
        .await;
    assert_eq!(jet.messages_in(&jet.stream).await, 2);

    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-dead-ids").expect("consumer");
    let handler = move |message: Message| {
        let consumer = consumer.clone();
        async move {
            consumer
                .handle_message(&message, || async { Err::<(), _>(Failure::Permanent) })
                .await
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("both messages settled", DEADLINE, || async {
        let (pending, ack_pending, _) = jet.consumer_state().await;
        pending == 0 && ack_pending == 0
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(summary.dead_lettered, 2, "{summary:?}");
    assert_eq!(
        jet.messages_in(&jet.dead_stream).await,
        2,
        "a dead-lettered message has no copy in the dead-letter stream"
    );
    jet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_naks_with_a_delay_and_never_runs() {
    let jet = Jet::new().await;
    let consumer = TransactionalConsumer::new(common::unreachable_store(), "nats-unavailable")
        .expect("consumer")
        .with_policy(Policy::default().unavailable_delay(Duration::from_millis(100)));
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"pay")
        .await;

    let seen = Arc::new(Seen::default());
    let handler = {
        let seen = Arc::clone(&seen);
        move |message: Message| {
            let (consumer, seen) = (consumer.clone(), Arc::clone(&seen));
            async move {
                let seen_in_op = Arc::clone(&seen);
                let disposition = consumer
                    .handle_message(&message, |_conn| {
                        Box::pin(async move {
                            seen_in_op.effects.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Failure>(())
                        })
                    })
                    .await;
                seen.settled(&message, disposition)
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    // The default ID source: JetStream's Nats-Msg-Id.
    let running = common::consume_nats(jet.js.clone(), pull, ConsumeOptions::default(), handler);
    wait_until("three deliveries", DEADLINE, || async {
        seen.settled_count() >= 3
    })
    .await;
    running.stop().await;

    common::assert_requeued_unrun(&seen);
    let deliveries: Vec<Option<u32>> = seen
        .dispositions
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, deliveries, _)| *deliveries)
        .collect();
    // Held by the loop and handled again on its one delivery, `nak`ed at the shutdown.
    let held = vec![Some(1); deliveries.len()];
    assert_eq!(
        deliveries, held,
        "a held message is handled again without a redelivery"
    );
    // Still in the stream, unacknowledged, never dead-lettered.
    assert_eq!(jet.messages_in(&jet.stream).await, 1);
    assert_eq!(jet.messages_in(&jet.dead_stream).await, 0);
    let (_, ack_pending, _) = jet.consumer_state().await;
    assert_eq!(ack_pending, 1, "the message waits for its next delivery");
    jet.cleanup().await;
}

/// The loop pulls no more messages than it has free slots for: with every slot busy for
/// longer than `ack_wait`, the next messages wait on the server, not in the client. Pulled
/// ahead, they sat in the client unstarted and unreported until their `ack_wait` ran out,
/// and JetStream delivered them again while the first copy still waited: each came twice,
/// a delivery counted towards the poison limit and `max_deliver` for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_beyond_the_free_slots_are_not_delivered_twice() {
    const MESSAGES: usize = 4;
    let jet = Jet::new().await;
    jet.publish_all(&common::numbered(MESSAGES), idem_consumer::NATS_MSG_ID)
        .await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-free-slots").expect("consumer");
    let seen = Arc::new(Seen::default());
    let handler = {
        let seen = Arc::clone(&seen);
        move |message: Message| {
            let (consumer, seen) = (consumer.clone(), Arc::clone(&seen));
            async move {
                consumer
                    .handle_message(&message, || async {
                        // Twice the ack_wait: the loop's two slots stay busy past it.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        seen.effects.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Failure>(())
                    })
                    .await
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(1), -1).await;
    let options = ConsumeOptions::default().concurrency(2);
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("every message ran and was acked", DEADLINE, || async {
        seen.effects.load(Ordering::SeqCst) == MESSAGES && jet.consumer_state().await.1 == 0
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(
        jet.deliveries_made().await,
        MESSAGES as u64,
        "a message was delivered again while a copy waited unstarted: {summary:?}"
    );
    jet.cleanup().await;
}

/// A store outage longer than the consumer's `max_deliver` does not get a message
/// dead-lettered: the loop holds a message the store cannot take (reporting it in
/// progress) and handles it again, rather than `nak` it back. Handed back at each try,
/// every `nak` counted towards `max_deliver`, and at the last delivery the requeue became
/// a dead-letter: the message never ran, for the store's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_max_deliver_dead_letters_nothing() {
    store_outage(2, Policy::default().max_deliveries(None)).await;
}

/// A store outage longer than idem's own poison limit does not make a message poison:
/// JetStream's delivery count counted each `nak` for the store's outage, and once the store
/// was back the message was dead-lettered as poison without ever running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_poison_limit_dead_letters_nothing() {
    store_outage(-1, Policy::default().max_deliveries(Some(1))).await;
}

/// A message handled while the store is down (four tries), then once it is back: it must
/// run once and be acked, and nothing goes to the dead-letter stream.
async fn store_outage(max_deliver: i64, policy: Policy) {
    let jet = Jet::new().await;
    let (store, down) = common::OutageStore::new();
    let policy = policy.unavailable_delay(Duration::from_millis(50));
    let consumer = Consumer::new(Idempotency::new(store), "nats-outage")
        .expect("consumer")
        .with_policy(policy);
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"ok")
        .await;

    let seen = Arc::new(Seen::default());
    let handler = common::handler(consumer, &seen, common::counted);
    let pull = jet.consumer(Duration::from_secs(10), max_deliver).await;
    let options = ConsumeOptions::default().dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("four tries, or a dead letter", DEADLINE, || async {
        seen.settled_count() >= 4 || jet.messages_in(&jet.dead_stream).await > 0
    })
    .await;
    common::assert_requeued_unrun(&seen);
    down.store(false, Ordering::SeqCst);
    wait_until("the message acked, or dead-lettered", DEADLINE, || async {
        seen.ok_acked.load(Ordering::SeqCst) == 1 || jet.messages_in(&jet.dead_stream).await > 0
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(
        jet.messages_in(&jet.dead_stream).await,
        0,
        "dead-lettered for the store's outage: {summary:?}"
    );
    assert_eq!(seen.effects.load(Ordering::SeqCst), 1);
    assert_eq!(summary.acked, 1, "{summary:?}");
    let (pending, ack_pending, _) = jet.consumer_state().await;
    assert_eq!((pending, ack_pending), (0, 0), "the message was acked");
    jet.cleanup().await;
}

#[test]
fn the_id_comes_from_nats_msg_id_by_default() {
    let mut headers = nats::async_nats::HeaderMap::new();
    headers.insert(idem_consumer::NATS_MSG_ID, "m-9");
    assert_eq!(
        nats::message_id(&IdSource::nats_msg_id(), Some(&headers), b"x").as_deref(),
        Ok("m-9")
    );
    assert!(nats::message_id(&IdSource::nats_msg_id(), None, b"x").is_err());
    assert!(
        nats::message_id(&IdSource::AmqpMessageId, Some(&headers), b"x").is_err(),
        "NATS has no AMQP property"
    );
}

/// A dead-letter whose copy cannot be published (nothing listens on the dead-letter subject)
/// is `nak`ed, never `term`ed, so the message stays in the stream and comes back; the loop's
/// summary counts it as requeued, not as dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_copy_cannot_be_published_is_counted_requeued() {
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"permanent")
        .await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-dead-nowhere").expect("consumer");
    let deliveries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let deliveries = Arc::clone(&deliveries);
        move |message: Message| {
            let (consumer, deliveries) = (consumer.clone(), Arc::clone(&deliveries));
            async move {
                deliveries.fetch_add(1, Ordering::SeqCst);
                consumer
                    .handle_message(&message, || async { Err::<(), _>(Failure::Permanent) })
                    .await
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(format!("idem.nowhere.{}", common::suffix()));
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    // Delivered again: the first settle is done, and was a `nak`.
    wait_until("the message came back", DEADLINE, || async {
        deliveries.load(Ordering::SeqCst) >= 2
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(summary.dead_lettered, 0, "{summary:?}");
    assert!(summary.requeued >= 1, "{summary:?}");
    assert_eq!(jet.messages_in(&jet.stream).await, 1, "never lost");
    jet.cleanup().await;
}

/// A dead-letter copy does not carry the original's JetStream publish directives
/// (`Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`, …) as such: they held for the
/// original's publish into its own stream, and on the copy the dead-letter stream would
/// check them against itself and refuse it, at every delivery. The message then went back
/// to the stream for ever (or until the consumer's `max_deliver`) and never reached a
/// person. The copy keeps them under `Idem-Original-…`, as it does `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_does_not_replay_the_originals_publish_expectations() {
    let jet = Jet::new().await;
    let mut headers = nats::async_nats::HeaderMap::new();
    headers.insert(idem_consumer::NATS_MSG_ID, "m-1");
    headers.insert("Nats-Expected-Stream", jet.stream.as_str());
    jet.js
        .publish_with_headers(jet.subject.clone(), headers, "permanent".into())
        .await
        .expect("publish")
        .await
        .expect("the source stream takes it");
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-dead-expect").expect("consumer");
    let deliveries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let deliveries = Arc::clone(&deliveries);
        move |message: Message| {
            let (consumer, deliveries) = (consumer.clone(), Arc::clone(&deliveries));
            async move {
                deliveries.fetch_add(1, Ordering::SeqCst);
                consumer
                    .handle_message(&message, || async { Err::<(), _>(Failure::Permanent) })
                    .await
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    // Either the copy arrived, or the message came back: its first settle is done.
    wait_until("dead-lettered or delivered again", DEADLINE, || async {
        deliveries.load(Ordering::SeqCst) >= 2 || jet.messages_in(&jet.dead_stream).await >= 1
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(
        jet.messages_in(&jet.dead_stream).await,
        1,
        "the dead-letter stream refused the copy: {summary:?}"
    );
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    let dead = jet.js.get_stream(&jet.dead_stream).await.expect("stream");
    let copy = dead.get_raw_message(1).await.expect("the copy");
    assert_eq!(
        copy.headers
            .get("Idem-Original-Expected-Stream")
            .map(|value| value.as_str()),
        Some(jet.stream.as_str()),
        "the copy keeps the original's expectation for a person to see"
    );
    jet.cleanup().await;
}

/// A handler slower than the consumer's `ack_wait` keeps its message: the adapter reports
/// it in progress while it runs, so JetStream does not hand it out again meanwhile.
/// Unreported, the message came back at every `ack_wait` while its first delivery still
/// ran, each copy answered with a requeue and counted towards the poison limit and the
/// consumer's `max_deliver`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_ack_wait_is_not_redelivered_while_it_runs() {
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"slow")
        .await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-slow").expect("consumer");
    let seen = Arc::new(Seen::default());
    let handler = {
        let seen = Arc::clone(&seen);
        move |message: Message| {
            let (consumer, seen) = (consumer.clone(), Arc::clone(&seen));
            async move {
                let disposition = consumer
                    .handle_message(&message, || async {
                        // Three times the consumer's ack_wait.
                        tokio::time::sleep(Duration::from_secs(6)).await;
                        Ok::<_, Failure>(())
                    })
                    .await;
                seen.settled(&message, disposition)
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(2), -1).await;
    let options = ConsumeOptions::default().concurrency(4);
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("the message acked", DEADLINE, || async {
        seen.saw(
            "m-1",
            idem_consumer::Disposition::Ack {
                reason: idem_consumer::AckReason::Processed,
            },
        )
    })
    .await;
    let summary = running.stop().await;

    let deliveries: Vec<Option<u32>> = seen
        .dispositions
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, deliveries, _)| *deliveries)
        .collect();
    assert_eq!(
        deliveries,
        vec![Some(1)],
        "redelivered while it ran: {summary:?}"
    );
    jet.cleanup().await;
}

/// A message published while a stopping loop drains waits on the server for the next
/// consumer. The loop's pull requests stayed open until it returned: JetStream delivered
/// the message to one of them, into a client that no longer read it, where it waited out
/// its `ack_wait` before any other consumer could have it, one delivery spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_during_the_drain_waits_for_the_next_consumer() {
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-slow"), b"slow")
        .await;
    let (started, mut slow_started) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |message: Message| {
        let started = started.clone();
        async move {
            if message.body().as_ref() == b"slow" {
                let _ = started.send(());
                // The drain: the loop's other slots are free, their pull open.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            idem_consumer::Disposition::Ack {
                reason: idem_consumer::AckReason::Processed,
            }
        }
    };
    // ack_wait far past the next pull below: a stranded message would miss it.
    let pull = jet.consumer(Duration::from_secs(30), -1).await;
    let options = ConsumeOptions::default().concurrency(4);
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    slow_started.recv().await.expect("the slow message started");
    let stopping = tokio::spawn(running.stop());
    // Well after the shutdown reached the loop, well before the slow handler returns.
    tokio::time::sleep(Duration::from_secs(1)).await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-late"), b"late")
        .await;
    let summary = stopping.await.expect("stop");
    assert_eq!(summary.acked, 1, "only the slow message ran: {summary:?}");

    let mut next_pull = jet
        .consumer(Duration::from_secs(30), -1)
        .await
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("pull");
    let late = futures::StreamExt::next(&mut next_pull)
        .await
        .expect("the late message, at the next pull")
        .expect("a message");
    assert_eq!(late.payload.as_ref(), b"late");
    let info = late.info().expect("JetStream metadata");
    assert_eq!(info.delivered, 1, "its first delivery");
    jet.cleanup().await;
}

/// A client that has given up reconnecting ends the consume loop with an error: the
/// caller must connect and consume again. Not with `Ok`, the answer of a shutdown the
/// caller asked for, which a service would take for one and stop consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_given_up_ends_the_loop_with_an_error() {
    let jet = Jet::new().await;
    let proxy = common::Proxy::start(common::host_port(&common::nats_url())).await;
    let client = nats::async_nats::ConnectOptions::new()
        .max_reconnects(Some(1))
        .connect(format!("nats://{}", proxy.addr))
        .await
        .expect("NATS through the proxy");
    let js = nats::async_nats::jetstream::new(client);
    let pull = jet.consumer_on(&js, Duration::from_secs(10), -1).await;
    let handler = |_message: Message| async {
        idem_consumer::Disposition::Ack {
            reason: idem_consumer::AckReason::Processed,
        }
    };
    let looping = tokio::spawn(async move {
        nats::consume(
            &js,
            &pull,
            ConsumeOptions::default(),
            std::future::pending(),
            handler,
        )
        .await
    });
    wait_until("the loop pulling", DEADLINE, || async {
        let stream = jet.js.get_stream(&jet.stream).await.expect("stream");
        let mut consumer: nats::async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("worker").await.expect("consumer");
        consumer.info().await.expect("consumer info").num_waiting > 0
    })
    .await;
    proxy.sever();

    let ended = tokio::time::timeout(Duration::from_secs(60), looping)
        .await
        .expect("the loop went on without its connection")
        .expect("the loop's task");
    let error = ended.expect_err("a lost connection is not a shutdown");
    assert!(
        matches!(error.failure, idem_consumer::ConsumeFailure::Stream { .. }),
        "{error:?}"
    );
    jet.cleanup().await;
}

/// A consumer whose ack policy is not `explicit` is refused before anything is pulled.
/// Under `all` an ack also acks every earlier message, and the loop acks out of order:
/// a message that finished acked the ones still running, which a crash or a requeue
/// (a `nak` on an acked message does nothing) then lost. Under `none` JetStream takes
/// every message as acked the moment it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_explicit_acks_is_refused() {
    use nats::async_nats::jetstream::consumer::{AckPolicy, pull};
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"ok")
        .await;
    for (name, ack_policy) in [("acks-all", AckPolicy::All), ("acks-none", AckPolicy::None)] {
        let stream = jet.js.get_stream(&jet.stream).await.expect("stream");
        let pull = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.into()),
                ack_policy,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let handled = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let handled = Arc::clone(&handled);
            move |_message: Message| {
                handled.notify_one();
                async {
                    idem_consumer::Disposition::Ack {
                        reason: idem_consumer::AckReason::Processed,
                    }
                }
            }
        };
        // Under the old code the loop ran, and stopped once it had handled the message.
        let shutdown = {
            let handled = Arc::clone(&handled);
            async move { handled.notified().await }
        };
        let consumed = tokio::time::timeout(
            DEADLINE,
            nats::consume(&jet.js, &pull, ConsumeOptions::default(), shutdown, handler),
        )
        .await
        .expect("the loop neither refused the consumer nor handled the message");
        let error = consumed.expect_err("a consumer without explicit acks is refused");
        assert!(
            matches!(error.failure, idem_consumer::ConsumeFailure::Setup { .. }),
            "{name}: {error:?}"
        );
    }
    jet.cleanup().await;
}

/// A message requeued at the last delivery the consumer's `max_deliver` allows is
/// dead-lettered instead: JetStream would never deliver it again, and it would sit in the
/// stream, unacked and unseen, with no copy in the dead-letter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_at_the_consumers_last_delivery_is_dead_lettered() {
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"poison")
        .await;
    let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "nats-max-deliver")
        .expect("consumer")
        .with_policy(Policy::default().retry_delay(Duration::from_millis(100)));
    let seen = Arc::new(Seen::default());
    let handler = {
        let seen = Arc::clone(&seen);
        move |message: Message| {
            let (consumer, seen) = (consumer.clone(), Arc::clone(&seen));
            async move {
                let disposition = consumer
                    .handle_message(&message, || async { Err::<(), _>(Failure::Retryable) })
                    .await;
                seen.settled(&message, disposition)
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), 2).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("both deliveries handled", DEADLINE, || async {
        seen.settled_count() >= 2
    })
    .await;
    let summary = running.stop().await; // the second one's settle is done

    assert_eq!(
        jet.messages_in(&jet.dead_stream).await,
        1,
        "the message JetStream gave up on has no dead-letter copy: {summary:?}"
    );
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    jet.cleanup().await;
}

/// A handler that panics at the last delivery the consumer's `max_deliver` allows gets its
/// message dead-lettered (JetStream would never deliver it again), and the summary counts
/// it so. It was counted `unsettled`, which the summary says the broker "delivers again":
/// a message gone to the dead-letter stream was reported as still on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_at_the_consumers_last_delivery_is_counted_dead_lettered() {
    let jet = Jet::new().await;
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"panics")
        .await;
    let handler = |_: Message| async { panic!("the handler's bug") };
    let pull = jet.consumer(Duration::from_secs(10), 1).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(jet.dead_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    wait_until("the dead-letter copy", DEADLINE, || async {
        jet.messages_in(&jet.dead_stream).await == 1
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(
        (summary.dead_lettered, summary.unsettled),
        (1, 0),
        "{summary:?}"
    );
    jet.cleanup().await;
}

/// At the last delivery the consumer's `max_deliver` allows, a dead-letter whose copy
/// cannot be published yet is tried again until it goes through. It was `nak`ed, as at
/// any other delivery; but JetStream delivers it no more, so it sat in the stream unseen,
/// never in the dead-letter stream: lost to everyone who reads dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_refused_at_the_last_delivery_is_tried_again() {
    let jet = Jet::new().await;
    let sfx = common::suffix();
    let (late_stream, late_subject) = (format!("IDEM_LATE_{sfx}"), format!("idem.late.{sfx}"));
    // Sees the first copy go out; it answers nothing, so that publish fails.
    let mut first_try = jet
        .client
        .subscribe(late_subject.clone())
        .await
        .expect("subscribe");
    jet.publish(idem_consumer::NATS_MSG_ID, Some("m-1"), b"permanent")
        .await;
    let consumer =
        Consumer::new(Idempotency::new(MemoryStore::new()), "nats-dead-late").expect("consumer");
    let handler = move |message: Message| {
        let consumer = consumer.clone();
        async move {
            consumer
                .handle_message(&message, || async { Err::<(), _>(Failure::Permanent) })
                .await
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), 1).await;
    let options = ConsumeOptions::default()
        .concurrency(1)
        .dead_letter_subject(late_subject.clone());
    let running = common::consume_nats(jet.js.clone(), pull, options, handler);
    futures::StreamExt::next(&mut first_try)
        .await
        .expect("the first copy");
    drop(first_try);
    // The dead-letter stream comes up only now.
    common::create_stream(&jet.js, &late_stream, &late_subject).await;
    wait_until("the copy in the dead-letter stream", DEADLINE, || async {
        jet.messages_in(&late_stream).await == 1
    })
    .await;
    let summary = running.stop().await;

    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    let _ = jet.js.delete_stream(&late_stream).await;
    jet.cleanup().await;
}
