//! How many statements each call sends, counted by the server on a one-connection pool.

use idem_core::{Claim, IdempotencyStore};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::{self, MySqlPool};

use crate::support::*;

/// The session's `Questions` counter: statements the server ran for this connection.
async fn questions(pool: &MySqlPool) -> u64 {
    let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Questions'")
        .fetch_one(pool)
        .await
        .expect("read Questions");
    value.parse().expect("a number")
}

/// Statements `call` sent, net of the counter's own query.
async fn count<F: std::future::Future>(pool: &MySqlPool, call: F) -> (u64, F::Output) {
    let a = questions(pool).await;
    let b = questions(pool).await;
    let output = call.await;
    let c = questions(pool).await;
    ((c - b) - (b - a), output)
}

#[tokio::test]
async fn a_first_claim_and_a_completion_are_one_statement_each() {
    let store = MySqlStore::from_pool(pool(1).await)
        .with_table(SHARED_TABLE)
        .expect("table");
    store.migrate().await.expect("migrate");
    let ns = namespace("statements");
    let pool = store.pool().clone();

    // The first use of a statement on a connection also prepares it; prepares are not
    // statements run, but warm up anyway so the numbers are the steady state.
    let warm = acquired(
        store
            .claim(&request(&key(&ns, "warm-up"), LONG))
            .await
            .expect("claim"),
    );
    store
        .complete(&warm, "w".into(), ttl(RETENTION))
        .await
        .expect("complete");
    store
        .claim(&request(&key(&ns, "warm-up"), LONG))
        .await
        .expect("replay");

    let key = key(&ns, "counted");
    let (claim_statements, claim) = count(&pool, store.claim(&request(&key, LONG))).await;
    let lease = acquired(claim.expect("claim"));
    assert_eq!(claim_statements, 1, "a first claim is one INSERT");

    let (complete_statements, done) =
        count(&pool, store.complete(&lease, "r".into(), ttl(RETENTION))).await;
    done.expect("complete");
    assert_eq!(complete_statements, 1, "a completion is one UPDATE");

    let (replay_statements, replay) = count(&pool, store.claim(&request(&key, LONG))).await;
    assert_eq!(replay.expect("replay"), Claim::Completed("r".into()));
    assert_eq!(
        replay_statements, 2,
        "a replay is the refused INSERT and one SELECT"
    );
}
