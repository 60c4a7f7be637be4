//! The claim and the business write in one transaction.

use std::time::Duration;

use idem_core::{Claim, Error, IdempotencyStore};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, AssertSqlSafe, Executor, MySqlPool};

use crate::support::*;

async fn orders_table(pool: &MySqlPool) -> String {
    let table = fresh_table(pool).await;
    exec(
        pool,
        format!(
            "CREATE TABLE `{table}` (client_key VARCHAR(64) PRIMARY KEY, amount INT NOT NULL, \
             fencing BIGINT UNSIGNED NOT NULL)"
        ),
    )
    .await;
    table
}

async fn orders(pool: &MySqlPool, table: &str, client_key: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}` WHERE client_key = ?"
    )))
    .bind(client_key)
    .fetch_one(pool)
    .await
    .expect("count orders")
}

/// Claims, writes the order and completes, all in one transaction; commits or rolls back.
async fn place_order(store: &MySqlStore, orders: &str, client_key: &str, commit: bool) {
    let key = key("idem-mysql.tx", client_key);
    let mut tx = store.pool().begin().await.expect("begin");
    let lease = acquired(
        store
            .claim_in(&mut tx, &request(&key, LONG))
            .await
            .expect("claim_in"),
    );
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO `{orders}` (client_key, amount, fencing) VALUES (?, ?, ?)"
    )))
    .bind(client_key)
    .bind(4_999)
    .bind(lease.fencing)
    .execute(&mut *tx)
    .await
    .expect("business insert");
    store
        .complete_in(&mut tx, &lease, "order placed".into(), ttl(RETENTION))
        .await
        .expect("complete_in");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn rollback_frees_the_key_and_leaves_no_row() {
    let store = shared_store().await;
    let orders_table = orders_table(store.pool()).await;
    let client_key = uuid::Uuid::new_v4().simple().to_string();
    place_order(&store, &orders_table, &client_key, false).await;

    assert_eq!(orders(store.pool(), &orders_table, &client_key).await, 0);
    let key = key("idem-mysql.tx", &client_key);
    assert_eq!(store.read(&key).await.expect("read"), None);
    let again = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    assert_eq!(again.fencing, 1);
    drop_table(store.pool(), &orders_table).await;
}

#[tokio::test]
async fn commit_stores_both_and_the_key_replays() {
    let store = shared_store().await;
    let orders_table = orders_table(store.pool()).await;
    let client_key = uuid::Uuid::new_v4().simple().to_string();
    place_order(&store, &orders_table, &client_key, true).await;

    assert_eq!(orders(store.pool(), &orders_table, &client_key).await, 1);
    let key = key("idem-mysql.tx", &client_key);
    let replay = store.claim(&request(&key, LONG)).await.expect("claim");
    assert_eq!(replay, Claim::Completed("order placed".into()));
    // A transactional repeat replays too, and writes nothing.
    let mut tx = store.pool().begin().await.expect("begin");
    let replay = store
        .claim_in(&mut tx, &request(&key, LONG))
        .await
        .expect("claim_in");
    assert_eq!(replay, Claim::Completed("order placed".into()));
    tx.commit().await.expect("commit");
    drop_table(store.pool(), &orders_table).await;
}

/// A concurrent claim waits on the row lock, then sees what the transaction did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_claim_waits_for_the_transaction() {
    let store = shared_store().await;
    for commit in [true, false] {
        let key = key(&namespace("tx-wait"), "k");
        let mut tx = store.pool().begin().await.expect("begin");
        let lease = acquired(
            store
                .claim_in(&mut tx, &request(&key, LONG))
                .await
                .expect("claim_in"),
        );
        let waiting = {
            let (store, request) = (store.clone(), request(&key, LONG));
            tokio::spawn(async move { store.claim(&request).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the claim did not wait for the transaction"
        );
        store
            .complete_in(&mut tx, &lease, "done".into(), ttl(RETENTION))
            .await
            .expect("complete_in");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
        let seen = waiting.await.expect("no panic").expect("claim");
        if commit {
            assert_eq!(seen, Claim::Completed("done".into()));
        } else {
            assert_eq!(
                acquired(seen).fencing,
                1,
                "after a rollback the key is free"
            );
        }
    }
}

/// A lock wait timeout (1205) on a pooled claim is retried, not reported as in progress;
/// with retries off it is `Unavailable`, carrying the server error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_timeouts_are_retried() {
    let holder = shared_store().await;
    let impatient = MySqlPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
                    .await?;
                Ok(())
            })
        })
        .connect(&url())
        .await
        .expect("connect");
    for retries in [3, 0] {
        let claimer = MySqlStore::builder()
            .table(SHARED_TABLE)
            .lock_retries(retries)
            .build(impatient.clone())
            .expect("table");
        let key = key(&namespace("lock-wait"), "k");
        let mut tx = holder.pool().begin().await.expect("begin");
        let lease = acquired(
            holder
                .claim_in(&mut tx, &request(&key, LONG))
                .await
                .expect("claim_in"),
        );
        let waiting = {
            let request = request(&key, LONG);
            tokio::spawn(async move { claimer.claim(&request).await })
        };
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        holder
            .complete_in(&mut tx, &lease, "done".into(), ttl(RETENTION))
            .await
            .expect("complete_in");
        tx.commit().await.expect("commit");
        let seen = waiting.await.expect("no panic");
        if retries > 0 {
            assert_eq!(seen.expect("claim"), Claim::Completed("done".into()));
        } else {
            match seen {
                Err(Error::Unavailable { source }) => {
                    assert!(source.to_string().contains("1205"), "{source}")
                }
                other => panic!("expected Unavailable (lock wait timeout), got {other:?}"),
            }
        }
    }
}
