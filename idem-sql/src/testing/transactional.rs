//! The claim and the business write in one transaction.

use std::time::Duration;

use idem_core::{Claim, IdempotencyStore, Key};

use super::*;

async fn orders_table<S: TestServer>(pool: &Pool<S::Dialect>) -> String {
    let table = S::fresh_table(pool).await;
    S::exec(pool, S::orders_table(&table)).await;
    table
}

async fn orders<S: TestServer>(pool: &Pool<S::Dialect>, table: &str, client_key: &str) -> u64 {
    let sql = S::count_rows(table, &format!("client_key = {}", S::placeholder(1)));
    read_text::<S>(pool, sql, &[Arg::Bytes(client_key.as_bytes())])
        .await
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

/// Claims, writes the order and completes, all in one transaction; commits or rolls back.
async fn place_order<S: TestServer>(
    store: &SqlStore<S::Dialect>,
    orders: &str,
    ns: &str,
    client_key: &str,
    commit: bool,
) {
    let key = key(ns, client_key);
    let mut tx = store.pool().begin().await.expect("begin");
    let lease = acquired(
        store
            .claim_in(&mut tx, &request(&key, LONG))
            .await
            .expect("claim_in"),
    );
    let insert = Statement::new(format!(
        "INSERT INTO {} (client_key, amount, fencing) VALUES ({}, 4999, {})",
        quoted::<S>(orders),
        S::placeholder(1),
        S::placeholder(2)
    ));
    let args = [
        Arg::Bytes(client_key.as_bytes()),
        Arg::Fencing(lease.fencing),
    ];
    S::Dialect::execute(&mut tx, &insert, &args)
        .await
        .expect("business insert");
    store
        .complete_in(&mut tx, &lease, "order placed".into(), ttl(RETENTION))
        .await
        .expect("complete_in");
    end(tx, commit).await;
}

/// Commits a transaction, or rolls it back.
async fn end<DB: sqlx::Database>(tx: sqlx::Transaction<'static, DB>, commit: bool) {
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
}

/// An order placed in one transaction on an orders table of its own, then committed or
/// rolled back: the store, the orders table and the order's key.
async fn placed<S: TestServer>(commit: bool) -> (SqlStore<S::Dialect>, String, Key) {
    let store = shared_store::<S>().await;
    let orders_table = orders_table::<S>(store.pool()).await;
    let ns = namespace::<S>("tx");
    place_order::<S>(&store, &orders_table, &ns, "order-1", commit).await;
    let placed = orders::<S>(store.pool(), &orders_table, "order-1").await;
    assert_eq!(placed, u64::from(commit));
    (store, orders_table, key(&ns, "order-1"))
}

/// Rollback frees the key and leaves no row.
pub async fn rollback_frees_the_key_and_leaves_no_row<S: TestServer>() {
    let (store, orders_table, key) = placed::<S>(false).await;
    assert_eq!(store.read(&key).await.expect("read"), None);
    let again = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    assert_eq!(again.fencing, 1);
    drop_table::<S>(store.pool(), &orders_table).await;
}

/// Commit stores both and the key replays.
pub async fn commit_stores_both_and_the_key_replays<S: TestServer>() {
    let (store, orders_table, key) = placed::<S>(true).await;
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
    drop_table::<S>(store.pool(), &orders_table).await;
}

/// A concurrent claim waits on the row lock, then sees what the transaction did.
pub async fn a_concurrent_claim_waits_for_the_transaction<S: TestServer>() {
    let store = shared_store::<S>().await;
    for commit in [true, false] {
        let key = key(&namespace::<S>("tx-wait"), "k");
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
        end(tx, commit).await;
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
