//! How many statements each call sends, counted over a pool of one connection (by the
//! server's session counter, or on the wire).

use std::time::Duration;

use idem_core::{Claim, Consumption, IdempotencyStore, Rejection, TokenStore};

use super::tokens::{new_token, scope};
use super::*;

/// Long enough that a loaded machine gets from the claim to the read inside it.
const SHORT: Duration = Duration::from_secs(2);

/// A first claim and each finish are one statement; a claim that meets a row reads it with
/// a second.
pub async fn a_first_claim_and_each_finish_are_one_statement<S: TestServer>() {
    let (pool, counter) = S::counted_pool().await;
    let store = SqlStore::<S::Dialect>::builder()
        .table(SHARED_TABLE)
        .build(pool)
        .expect("valid settings");
    store.migrate().await.expect("migrate");
    let ns = namespace::<S>("statements");

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
    let (n, claim) = count(&counter, store.claim(&request(&counted, LONG))).await;
    let lease = acquired(claim.expect("claim"));
    assert_eq!(n, 1, "a first claim is one INSERT");

    let (n, busy) = count(&counter, store.claim(&request(&counted, LONG))).await;
    assert!(matches!(busy, Ok(Claim::InProgress { .. })), "{busy:?}");
    assert_eq!(
        n, 2,
        "a held key is the INSERT that met its row and one SELECT"
    );

    let (n, done) = count(&counter, store.complete(&lease, "r".into(), ttl(RETENTION))).await;
    done.expect("complete");
    assert_eq!(n, 1, "a completion is one UPDATE");

    let (n, replay) = count(&counter, store.claim(&request(&counted, LONG))).await;
    assert_eq!(replay.expect("replay"), Claim::Completed("r".into()));
    assert_eq!(
        n, 2,
        "a replay is the INSERT that met its row and one SELECT"
    );

    let failed = key(&ns, "failed");
    let lease = acquired(store.claim(&request(&failed, LONG)).await.expect("claim"));
    let (n, done) = count(&counter, store.fail(&lease, "f".into(), ttl(RETENTION))).await;
    done.expect("fail");
    assert_eq!(n, 1, "a failure is one UPDATE");

    let other = key(&ns, "others");
    let lease = acquired(store.claim(&request(&other, SHORT)).await.expect("claim"));
    let (n, renewed) = count(&counter, store.renew(&lease, ttl(SHORT))).await;
    renewed.expect("renew");
    assert_eq!(n, 1, "a renewal is one UPDATE");
    let (n, read) = count(&counter, store.read(&other)).await;
    assert!(read.expect("read").is_some());
    assert_eq!(n, 1, "a read is one SELECT");
    tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
    let (n, taken) = count(&counter, store.claim(&request(&other, LONG))).await;
    let lease = acquired(taken.expect("takeover"));
    assert_eq!(
        n, 3,
        "a takeover is the INSERT that met its row, one SELECT and one UPDATE"
    );
    let (n, released) = count(&counter, store.release(&lease)).await;
    released.expect("release");
    assert_eq!(n, 1, "a release is one UPDATE");

    let [of_released, of_claimed] = S::REMOVAL_STATEMENTS;
    let (n, removed) = count(&counter, store.remove(&other)).await;
    assert!(!removed.expect("remove"), "a released key shows no record");
    assert_eq!(n, of_released, "removing a released key (its trace stays)");
    let lease = acquired(store.claim(&request(&other, LONG)).await.expect("claim"));
    let (n, removed) = count(&counter, store.remove(&other)).await;
    assert!(removed.expect("remove"), "a claimed key shows a record");
    assert_eq!(n, of_claimed, "removing a claimed key (to a trace)");
    let next = acquired(store.claim(&request(&other, LONG)).await.expect("claim"));
    assert!(
        next.fencing > lease.fencing,
        "a removal keeps the fencing number growing: {} then {}",
        lease.fencing,
        next.fencing
    );

    let (n, purged) = count(&counter, store.purge_expired(1_000_000)).await;
    purged.expect("purge");
    // One batch, whether it found expired rows to delete or none.
    assert!(
        S::PURGE_BATCH_STATEMENTS.contains(&n),
        "a purge with fewer expired rows than a batch is one batch, not {n} statements"
    );
}

/// Issue and a winning consume are one statement each.
pub async fn issue_and_a_winning_consume_are_one_statement_each<S: TestServer>() {
    let (pool, counter) = S::counted_pool().await;
    let store = own_token_store::<S>(pool).await;
    let alice = scope::<S>("alice");
    let long = ttl(LONG);

    // Prepares each statement once on the one connection, so the counts are the steady state.
    let warm = new_token(&store);
    store.issue(&warm, &alice, long).await.expect("issue");
    store
        .consume(&warm, &alice, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    store
        .consume(&warm, &alice, &idem_core::OwnerToken::random())
        .await
        .expect("repeat");
    let refused = store.issue(&warm, &alice, long).await;
    assert!(matches!(refused, Err(idem_core::Error::TokenCollision)));

    let token = new_token(&store);
    let (n, issued) = count(&counter, store.issue(&token, &alice, long)).await;
    issued.expect("issue");
    assert_eq!(n, 1, "issuing is one INSERT");

    let (n, first) = count(
        &counter,
        store.consume(&token, &alice, &idem_core::OwnerToken::random()),
    )
    .await;
    assert_eq!(first.expect("consume"), Consumption::Consumed);
    assert_eq!(n, 1, "a winning consume is one UPDATE");

    let (n, repeat) = count(
        &counter,
        store.consume(&token, &alice, &idem_core::OwnerToken::random()),
    )
    .await;
    assert_eq!(
        repeat.expect("repeat"),
        Consumption::Rejected(Rejection::AlreadyUsed)
    );
    assert_eq!(
        n, 2,
        "a rejection is the UPDATE that matched nothing and one SELECT"
    );

    let (n, again) = count(&counter, store.issue(&token, &scope::<S>("bob"), long)).await;
    assert!(
        matches!(again, Err(idem_core::Error::TokenCollision)),
        "{again:?}"
    );
    assert_eq!(n, 3, "a refused issue is INSERT, UPDATE, INSERT");
    drop_table::<S>(store.pool(), store.table()).await;
}
