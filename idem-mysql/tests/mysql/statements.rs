//! How many statements each call sends, counted by the server on a one-connection pool.

use std::time::Duration;

use idem_core::{Claim, IdempotencyStore};
use idem_mysql::MySqlStore;

use crate::support::*;

/// Long enough that a loaded machine gets from the claim to the read inside it.
const SHORT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_first_claim_and_a_completion_are_one_statement_each() {
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .build(pool(1).await)
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

    let counted = key(&ns, "counted");
    let (n, claim) = count(&pool, store.claim(&request(&counted, LONG))).await;
    let lease = acquired(claim.expect("claim"));
    assert_eq!(n, 1, "a first claim is one INSERT");

    let (n, done) = count(&pool, store.complete(&lease, "r".into(), ttl(RETENTION))).await;
    done.expect("complete");
    assert_eq!(n, 1, "a completion is one UPDATE");

    let (n, replay) = count(&pool, store.claim(&request(&counted, LONG))).await;
    assert_eq!(replay.expect("replay"), Claim::Completed("r".into()));
    assert_eq!(
        n, 1,
        "a replay is one INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING (MariaDB)"
    );

    let other = key(&ns, "others");
    let lease = acquired(store.claim(&request(&other, SHORT)).await.expect("claim"));
    let (n, renewed) = count(&pool, store.renew(&lease, ttl(SHORT))).await;
    renewed.expect("renew");
    assert_eq!(n, 1, "a renewal is one UPDATE");
    let (n, read) = count(&pool, store.read(&other)).await;
    assert!(read.expect("read").is_some());
    assert_eq!(n, 1, "a read is one SELECT");
    tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
    let (n, taken) = count(&pool, store.claim(&request(&other, LONG))).await;
    let lease = acquired(taken.expect("takeover"));
    assert_eq!(
        n, 2,
        "a takeover is the INSERT that reads the row back, and one UPDATE"
    );
    let (n, released) = count(&pool, store.release(&lease)).await;
    released.expect("release");
    assert_eq!(n, 1, "a release is one UPDATE");
    let (n, removed) = count(&pool, store.remove(&other)).await;
    assert!(!removed.expect("remove"), "a released key shows no record");
    assert_eq!(
        n, 3,
        "removing a released key is BEGIN, SELECT ... FOR UPDATE, COMMIT (its trace stays)"
    );
    let lease = acquired(store.claim(&request(&other, LONG)).await.expect("claim"));
    let (n, removed) = count(&pool, store.remove(&other)).await;
    assert!(removed.expect("remove"), "a claimed key shows a record");
    assert_eq!(
        n, 4,
        "a removal is BEGIN, SELECT ... FOR UPDATE, UPDATE (to a trace), COMMIT"
    );
    let next = acquired(store.claim(&request(&other, LONG)).await.expect("claim"));
    assert!(
        next.fencing > lease.fencing,
        "a removal keeps the fencing number growing: {} then {}",
        lease.fencing,
        next.fencing
    );
}
