//! The NATS JetStream adapter against the real server, with the MySQL transactional
//! consumer: each disposition observed on JetStream (stream and dead-letter stream
//! counts, delivery counts, the consumer's pending counts).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Jet, wait_until};
use idem_consumer::nats;
use idem_consumer::{
    ConsumeOptions, DeadLetterReason, Disposition, IdSource, Policy, RequeueReason,
    TransactionalConsumer,
};
use idem_core::Retryable;
use idem_mysql::sqlx::{self, AssertSqlSafe};
use tokio::sync::oneshot;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Failure {
    Permanent,
    Retryable,
    Database(String),
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Permanent)
    }
}

const DEADLINE: Duration = Duration::from_secs(30);
const ORDER_ID: &str = "Order-Id";

#[derive(Default)]
struct Seen {
    ok_acked: AtomicUsize,
    poison_runs: AtomicUsize,
    poison_deliveries: Mutex<Vec<Option<u32>>>,
    dispositions: Mutex<Vec<(String, Disposition)>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disposition_is_observed_on_jetstream() {
    let jet = Jet::new().await;
    let sfx = common::suffix();
    let (records, ledger) = (format!("idem_nats_{sfx}"), format!("ledger_nats_{sfx}"));
    let store = common::mysql_store(&records).await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE `{ledger}` (order_id VARCHAR(64) NOT NULL, UNIQUE KEY (order_id))"
    )))
    .execute(store.pool())
    .await
    .expect("ledger table");
    let policy = Policy::default()
        .max_deliveries(Some(3))
        .retry_delay(Duration::from_millis(50))
        .max_in_progress_delay(Duration::from_millis(200));
    let consumer = TransactionalConsumer::new(store.clone(), "nats-dispositions")
        .expect("consumer")
        .with_policy(policy);

    // JetStream drops a second publish with the same Nats-Msg-Id itself, so these
    // messages carry their ID in a header of their own: the duplicate reaches the consumer.
    let publish = |id: Option<&'static str>, body: &'static [u8]| {
        let mut headers = nats::async_nats::HeaderMap::new();
        if let Some(id) = id {
            headers.insert(ORDER_ID, id);
        }
        let (js, subject) = (jet.js.clone(), jet.subject.clone());
        async move {
            js.publish_with_headers(subject, headers, body.into())
                .await
                .expect("publish")
                .await
                .expect("stream ack");
        }
    };
    publish(Some("m-ok"), b"ok").await;
    publish(Some("m-ok"), b"ok").await;
    publish(None, b"no id").await;
    publish(Some("m-permanent"), b"permanent").await;
    publish(Some("m-poison"), b"poison").await;

    let seen = Arc::new(Seen::default());
    let handler = {
        let (seen, ledger) = (Arc::clone(&seen), ledger.clone());
        move |message: idem_consumer::Message| {
            let (consumer, seen, ledger) = (consumer.clone(), Arc::clone(&seen), ledger.clone());
            async move {
                let body = message.body().clone();
                let id = message.id().to_owned();
                if body.as_ref() == b"poison" {
                    seen.poison_deliveries
                        .lock()
                        .expect("lock")
                        .push(message.deliveries());
                }
                let (seen_in_op, body_in_op) = (Arc::clone(&seen), body.clone());
                let disposition = consumer
                    .handle_message(&message, |conn| {
                        Box::pin(async move {
                            // The business write, in the claim's transaction.
                            sqlx::query(AssertSqlSafe(format!(
                                "INSERT INTO `{ledger}` (order_id) VALUES (?)"
                            )))
                            .bind(&id)
                            .execute(&mut *conn)
                            .await
                            .map_err(|e| Failure::Database(e.to_string()))?;
                            match body_in_op.as_ref() {
                                b"ok" => Ok(()),
                                b"permanent" => Err(Failure::Permanent),
                                _ => {
                                    seen_in_op.poison_runs.fetch_add(1, Ordering::SeqCst);
                                    Err(Failure::Retryable)
                                }
                            }
                        })
                    })
                    .await;
                if body.as_ref() == b"ok" && matches!(disposition, Disposition::Ack { .. }) {
                    seen.ok_acked.fetch_add(1, Ordering::SeqCst);
                }
                seen.dispositions
                    .lock()
                    .expect("lock")
                    .push((message.id().to_owned(), disposition));
                disposition
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let options = ConsumeOptions::default()
        .concurrency(4)
        .id_source(IdSource::header(ORDER_ID))
        .dead_letter_subject(jet.dead_subject.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let js = jet.js.clone();
    let running = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        nats::consume(&js, &pull, options, shutdown, handler).await
    });

    wait_until(
        "three dead letters and both copies of m-ok acked",
        DEADLINE,
        || async {
            jet.messages_in(&jet.dead_stream).await == 3
                && seen.ok_acked.load(Ordering::SeqCst) == 2
        },
    )
    .await;
    let _ = stop.send(());
    let summary = running.await.expect("consume task").expect("consume");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_naks_with_a_delay_and_never_runs() {
    let jet = Jet::new().await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .expect("lazy pool");
    let consumer =
        TransactionalConsumer::new(idem_mysql::MySqlStore::from_pool(pool), "nats-unavailable")
            .expect("consumer")
            .with_policy(Policy::default().unavailable_delay(Duration::from_millis(100)));
    jet.publish(Some("m-1"), b"pay").await;

    let runs = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (runs, seen) = (Arc::clone(&runs), Arc::clone(&seen));
        move |message: idem_consumer::Message| {
            let (consumer, runs, seen) = (consumer.clone(), Arc::clone(&runs), Arc::clone(&seen));
            async move {
                let disposition = consumer
                    .handle_message(&message, |_conn| {
                        Box::pin(async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Failure>(())
                        })
                    })
                    .await;
                seen.lock()
                    .expect("lock")
                    .push((message.deliveries(), disposition));
                disposition
            }
        }
    };
    let pull = jet.consumer(Duration::from_secs(10), -1).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let js = jet.js.clone();
    let running = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        // The default ID source: JetStream's Nats-Msg-Id.
        nats::consume(&js, &pull, ConsumeOptions::default(), shutdown, handler).await
    });
    wait_until("three deliveries", DEADLINE, || async {
        seen.lock().expect("lock").len() >= 3
    })
    .await;
    let _ = stop.send(());
    running.await.expect("consume task").expect("consume");

    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing runs without a claim"
    );
    let seen = seen.lock().expect("lock").clone();
    for (i, (deliveries, disposition)) in seen.iter().enumerate() {
        assert_eq!(
            *deliveries,
            Some(i as u32 + 1),
            "JetStream counts each nak'ed delivery"
        );
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
    // Still in the stream, unacknowledged, never dead-lettered.
    assert_eq!(jet.messages_in(&jet.stream).await, 1);
    assert_eq!(jet.messages_in(&jet.dead_stream).await, 0);
    let (_, ack_pending, redelivered) = jet.consumer_state().await;
    assert_eq!(ack_pending, 1, "the message waits for its next delivery");
    assert!(redelivered >= 1);
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
    let _ = DeadLetterReason::MissingId;
}
