//! Claims where MySQL differs: an unsigned fencing column, and MySQL 8's claim without
//! `INSERT ... RETURNING`.

use idem_core::{Claim, IdempotencyStore};
use idem_mysql::MySqlStore;
use idem_sql::testing::claims::takes_over_past;
use idem_sql::testing::count;

use crate::support::*;

/// A key at fencing 2^63−1 is taken over with 2^63 (the takeover's CASE overflowed a
/// signed integer, error 1916, on every claim: issue 16). The end of the unsigned range is
/// idem-sql's `fencing_stops_at_the_largest_number_the_column_holds`.
#[tokio::test]
async fn fencing_grows_past_the_signed_limit() {
    let store = shared_store::<MariaDb>().await;
    let key_at = key(&namespace::<MariaDb>("fencing-limit"), "signed-max");
    takes_over_past::<MariaDb>(&store, &key_at, i64::MAX as u64).await;
    assert_eq!(
        store.claim(&request(&key_at, LONG)).await.expect("replay"),
        Claim::Completed("ok".into())
    );
}

/// MySQL 8 has no `INSERT ... RETURNING`: a claim is a plain INSERT, and a key that has a
/// row (duplicate key, 1062) is read by a second statement. MariaDB runs that path too once
/// the store is told to; every answer stays the same, only the statement counts change.
#[tokio::test]
async fn without_returning_a_claim_reads_an_existing_row_with_a_second_statement() {
    let pool = pool(1).await;
    let store = MySqlStore::builder()
        .table(SHARED_TABLE)
        .build(pool.clone())
        .expect("valid settings");
    store.statements().extra.without_returning();
    let questions = Questions::on(pool);
    let ns = namespace::<MariaDb>("without-returning");
    let short = std::time::Duration::from_millis(200);

    let new = key(&ns, "new");
    let (n, claim) = count(&questions, store.claim(&request(&new, LONG))).await;
    let lease = acquired(claim.expect("claim"));
    assert_eq!((n, lease.fencing), (1, 1), "a new key is one plain INSERT");

    let (n, busy) = count(&questions, store.claim(&request(&new, LONG))).await;
    assert!(matches!(busy, Ok(Claim::InProgress { .. })), "{busy:?}");
    assert_eq!(n, 2, "a held key is the INSERT refused and one SELECT");

    store
        .complete(&lease, "done".into(), ttl(RETENTION))
        .await
        .expect("complete");
    let (n, replay) = count(&questions, store.claim(&request(&new, LONG))).await;
    assert_eq!(replay.expect("replay"), Claim::Completed("done".into()));
    assert_eq!(n, 2, "a replay is the INSERT refused and one SELECT");

    let lapsing = key(&ns, "lapsing");
    let first = acquired(store.claim(&request(&lapsing, short)).await.expect("claim"));
    tokio::time::sleep(short * 2).await;
    let (n, taken) = count(&questions, store.claim(&request(&lapsing, LONG))).await;
    assert_eq!(
        acquired(taken.expect("takeover")).fencing,
        first.fencing + 1
    );
    assert_eq!(
        n, 3,
        "a takeover is the INSERT refused, a SELECT and the UPDATE"
    );

    // In the caller's transaction the same path reads under a lock, and replays.
    let mut tx = store.pool().begin().await.expect("begin");
    let replay = store
        .claim_in(&mut tx, &request(&new, LONG))
        .await
        .expect("claim_in");
    assert_eq!(replay, Claim::Completed("done".into()));
    tx.commit().await.expect("commit");
    assert!(!store.statements().extra.returning(), "RETURNING came back");
}
