//! The MySQL transactional consumer on its own, without a broker: what its transaction
//! does with operations that outlast the lease.

mod common;

use std::time::Duration;

use common::Failure;
use idem_consumer::{AckReason, Disposition, Message, TransactionalConsumer};
use idem_core::Config;
use idem_mysql::sqlx;
use tokio::sync::oneshot;

/// An operation slower than the claim's lease and the trace the store keeps after it
/// (lease + 60 s at least) still commits: the row is the transaction's under its lock the
/// whole time. Its outcome write was refused as `LeaseLost` once the row's time was up,
/// so everything rolled back and the message was requeued, to run as long and be refused
/// again at every delivery, until the poison limit dead-lettered a message that worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_outlasting_its_lease_still_commits() {
    let sfx = common::suffix();
    let (records, ledger) = (format!("idem_tx_{sfx}"), format!("ledger_tx_{sfx}"));
    let store = common::mysql_store(&records).await;
    common::ledger_table(&store, &ledger).await;
    let config = Config::builder()
        .lease_ttl(Duration::from_secs(1))
        .build()
        .expect("config");
    let consumer =
        TransactionalConsumer::with_config(store.clone(), "tx-slow", &config).expect("consumer");

    let table = ledger.clone();
    let disposition = consumer
        .handle("order-1", None, move |conn| {
            Box::pin(async move {
                common::insert_order(conn, &table, "order-1")
                    .await
                    .map_err(|_| Failure::Retryable)?;
                // Past the row's lease (1 s) and its trace (60 s).
                tokio::time::sleep(Duration::from_secs(62)).await;
                Ok::<_, Failure>(())
            })
        })
        .await;

    assert_eq!(
        disposition,
        Disposition::Ack {
            reason: AckReason::Processed
        }
    );
    let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{ledger}`"
    )))
    .fetch_one(store.pool())
    .await
    .expect("count");
    assert_eq!(rows, 1, "the effect committed");
    common::drop_table(&store, &ledger).await;
    common::drop_table(&store, &records).await;
}

/// A redelivery past the poison limit while the first delivery's transaction still runs
/// waits for that transaction, as a claim would, then takes its outcome. The poison check
/// read the key without its row lock, saw none of the uncommitted claim, and dead-lettered
/// as `Poison` a message whose effect was about to commit: one copy in the dead-letter
/// queue for a person to chase, of a message that worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_check_waits_for_the_transaction_running_the_message() {
    let sfx = common::suffix();
    let (records, ledger) = (format!("idem_txp_{sfx}"), format!("ledger_txp_{sfx}"));
    let store = common::mysql_store(&records).await;
    common::ledger_table(&store, &ledger).await;
    let consumer = TransactionalConsumer::new(store.clone(), "tx-poison").expect("consumer");
    let message = Message::new("order-1", "ship order 1");

    let (started, has_started) = oneshot::channel::<()>();
    let (finish, may_finish) = oneshot::channel::<()>();
    let first = tokio::spawn({
        let (consumer, message, table) = (consumer.clone(), message.clone(), ledger.clone());
        async move {
            consumer
                .handle_message(&message, move |conn| {
                    Box::pin(async move {
                        common::insert_order(conn, &table, "order-1")
                            .await
                            .map_err(|e| Failure::Database(e.to_string()))?;
                        let _ = started.send(());
                        let _ = may_finish.await;
                        Ok::<_, Failure>(())
                    })
                })
                .await
        }
    });
    has_started.await.expect("the first delivery runs");

    // The broker's eleventh delivery of the same message, over the default limit of 10.
    let redelivery = message.clone().with_deliveries(Some(11));
    let mut second = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .handle_message(&redelivery, |_| {
                    Box::pin(async { Err::<(), _>(Failure::Permanent) })
                })
                .await
        }
    });
    // The first transaction is let go once the redelivery waits on its row, or at once if
    // the redelivery did not wait at all.
    let early = tokio::select! {
        done = &mut second => Some(done.expect("redelivery task")),
        () = lock_wait_on(&store, &records) => None,
    };
    finish.send(()).expect("the first delivery waits");
    assert_eq!(
        first.await.expect("first task"),
        Disposition::Ack {
            reason: AckReason::Processed
        }
    );
    let second = match early {
        Some(done) => done,
        None => second.await.expect("redelivery task"),
    };
    assert_eq!(
        second,
        Disposition::Ack {
            reason: AckReason::Replayed
        },
        "a redelivery of a message whose transaction was about to commit"
    );
    common::drop_table(&store, &ledger).await;
    common::drop_table(&store, &records).await;
}

/// Resolves once a statement on `table` runs on another connection: while the first
/// delivery's transaction waits in its operation, that is the redelivery waiting for it.
async fn lock_wait_on(store: &idem_mysql::MySqlStore, table: &str) {
    // INNODB_TRX would say `LOCK WAIT`, but MariaDB does not list the waiting insert there.
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE ID <> CONNECTION_ID() AND INFO LIKE '%`{table}`%'"
    );
    loop {
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(waiting.clone()))
            .fetch_one(store.pool())
            .await
            .expect("PROCESSLIST");
        if count > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
