//! The MySQL transactional consumer on its own, without a broker: what its transaction
//! does with operations that outlast the lease.

mod common;

use std::time::Duration;

use common::Failure;
use idem_consumer::{AckReason, Disposition, TransactionalConsumer};
use idem_core::Config;
use idem_mysql::sqlx;

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
