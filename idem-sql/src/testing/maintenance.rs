//! Corrupt rows, purging, a server that is not there, a call stuck behind a lock.

use std::time::{Duration, Instant};

use idem_core::{Claim, Error, IdempotencyStore, Key};

use super::*;

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::CorruptRecord { .. }))
}

/// A store of its own whose table can take every corruption of
/// [`TestServer::corruptions`].
async fn corruptible_store<S: TestServer>() -> SqlStore<S::Dialect> {
    let store = own_store::<S>(S::pool(2).await).await;
    if let Some(ddl) = S::prepare_corruption(store.table()) {
        S::exec(store.pool(), ddl).await;
    }
    store
}

/// The key `id` of `ns`, claimed (and completed, if `finish`), then corrupted by `set`.
async fn corrupted<S: TestServer>(
    store: &SqlStore<S::Dialect>,
    ns: &str,
    id: &str,
    set: &str,
    finish: bool,
) -> Key {
    let key = key(ns, id);
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    if finish {
        store
            .complete(&lease, "x".into(), ttl(RETENTION))
            .await
            .expect("complete");
    }
    update_row::<S>(store, &key, set).await;
    key
}

/// Every corruption the engine's columns can hold is a `CorruptRecord` on read and claim,
/// and removing the row clears it, which is how an operator clears one.
pub async fn rows_that_do_not_decode_are_corrupt_records<S: TestServer>() {
    let store = corruptible_store::<S>().await;
    let ns = namespace::<S>("corrupt");
    for &(id, set, finish) in S::corruptions() {
        let key = corrupted::<S>(&store, &ns, id, set, finish).await;
        assert!(is_corrupt(store.read(&key).await), "{id}");
        assert!(is_corrupt(store.claim(&request(&key, LONG)).await), "{id}");
        store.remove(&key).await.expect("remove");
        acquired(
            store
                .claim(&request(&key, LONG))
                .await
                .expect("claim after removal"),
        );
    }
    drop_table::<S>(store.pool(), store.table()).await;
}

/// An expired row is absent, whatever it holds: a row that would not decode is read as no
/// record and claimed afresh (fencing 1) once past its `expires_at`, as the purge would
/// delete it, rather than reported corrupt until a purge runs.
pub async fn expired_rows_that_do_not_decode_are_absent<S: TestServer>() {
    let store = corruptible_store::<S>().await;
    let ns = namespace::<S>("corrupt-expired");
    for &(id, set, finish) in S::corruptions() {
        let key = corrupted::<S>(&store, &ns, id, set, finish).await;
        update_row::<S>(&store, &key, S::EXPIRE).await;
        let read = store.read(&key).await;
        assert!(matches!(read, Ok(None)), "{id}: {read:?}");
        let claim = store.claim(&request(&key, LONG)).await;
        assert!(
            matches!(&claim, Ok(Claim::Acquired(lease)) if lease.fencing == 1),
            "{id}: {claim:?}"
        );
    }
    drop_table::<S>(store.pool(), store.table()).await;
}

/// Purge removes only expired rows in batches.
pub async fn purge_removes_only_expired_rows_in_batches<S: TestServer>() {
    // One connection whose statements are counted, so every purge batch shows.
    let (pool, counter) = S::counted_pool().await;
    let store = own_store::<S>(pool).await;
    let ns = namespace::<S>("purge");
    // Prepares the DELETE before counting.
    store.purge_expired(10).await.expect("purge");
    let short = ttl(Duration::from_millis(50));
    for i in 0..25 {
        let lease = acquired(
            store
                .claim(&request(&key(&ns, &format!("old-{i}")), LONG))
                .await
                .expect("claim"),
        );
        store
            .complete(&lease, "old".into(), short)
            .await
            .expect("complete");
    }
    let mut kept = Vec::new();
    for i in 0..5 {
        let key = key(&ns, &format!("kept-{i}"));
        let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
        if i % 2 == 0 {
            store
                .complete(&lease, "new".into(), ttl(RETENTION))
                .await
                .expect("complete");
        } else {
            // A released key's trace is kept for its fencing memory.
            store.release(&lease).await.expect("release");
        }
        kept.push(key);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (statements, purged) = count(&counter, store.purge_expired(10)).await;
    assert_eq!(purged.expect("purge"), 25);
    // 10 + 10 + 5: three full-or-short batches, each its own DELETE (MySQL: its own short
    // transaction).
    assert_eq!(statements, 3 * S::PURGE_BATCH_STATEMENTS[1]);
    assert_eq!(store.purge_expired(10).await.expect("purge again"), 0);
    assert_eq!(count_rows::<S>(store.pool(), store.table()).await, 5);
    for key in &kept {
        assert!(
            raw_row::<S>(&store, key).await.is_some(),
            "{key:?} was purged"
        );
    }
    assert!(matches!(
        store.purge_expired(0).await,
        Err(Error::InvalidInput(_))
    ));
    drop_table::<S>(store.pool(), store.table()).await;
}

/// An unreachable server is unavailable.
pub async fn an_unreachable_server_is_unavailable<S: TestServer>() {
    let store = SqlStore::<S::Dialect>::from_pool(S::unreachable_pool());
    let result = store
        .claim(&request(&key(&namespace::<S>("down"), "k"), LONG))
        .await;
    match result {
        Err(Error::Unavailable { source }) => {
            assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The longest statement timeout there is (`Duration::MAX`, a caller's "no bound")
/// connects and serves calls: sqlx's pool panicked adding it to the clock as the wait for a
/// connection.
pub async fn an_unbounded_statement_timeout_serves_calls<S: TestServer>() {
    let store = SqlStore::<S::Dialect>::builder()
        .table(SHARED_TABLE)
        .statement_timeout(Duration::MAX)
        .connect(&S::url())
        .await
        .expect("connect");
    let key = key(&namespace::<S>("unbounded"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    store.release(&lease).await.expect("release");
}

/// A pool of no connections is refused as a setting, for both kinds of store, before any
/// connection is made (sqlx's pool panicked on it, inside `connect`).
pub async fn a_pool_of_no_connections_is_invalid_input<S: TestServer>() {
    let records = SqlStore::<S::Dialect>::builder()
        .max_connections(0)
        .connect(&S::url())
        .await;
    assert!(
        matches!(records, Err(Error::InvalidInput(_))),
        "{records:?}"
    );
    let tokens = SqlTokenStore::<S::Dialect>::builder()
        .max_connections(0)
        .connect(&S::url())
        .await;
    assert!(matches!(tokens, Err(Error::InvalidInput(_))), "{tokens:?}");
}

/// A statement timeout of zero is refused as a setting, by `connect` and `build` alike,
/// for both kinds of store: it was taken, and then every call (or `connect` itself) was
/// `Unavailable`, as if the server were down.
pub async fn a_zero_statement_timeout_is_invalid_input<S: TestServer>() {
    let records = SqlStore::<S::Dialect>::builder()
        .statement_timeout(Duration::ZERO)
        .connect(&S::url())
        .await;
    assert!(
        matches!(records, Err(Error::InvalidInput(_))),
        "{records:?}"
    );
    let tokens = SqlTokenStore::<S::Dialect>::builder()
        .statement_timeout(Duration::ZERO)
        .connect(&S::url())
        .await;
    assert!(matches!(tokens, Err(Error::InvalidInput(_))), "{tokens:?}");
    let built = SqlStore::<S::Dialect>::builder()
        .statement_timeout(Duration::ZERO)
        .build(S::pool(1).await);
    assert!(matches!(built, Err(Error::InvalidInput(_))), "{built:?}");
}

/// A claim stuck behind a row lock held by a long transaction gives up within the store's
/// statement timeout, as `Unavailable`, instead of waiting as long as the transaction; the
/// server cancelled the statement too, so the same pool works again.
pub async fn a_call_never_waits_longer_than_the_statement_timeout<S: TestServer>() {
    let impatient = SqlStore::<S::Dialect>::builder()
        .table(SHARED_TABLE)
        .statement_timeout(Duration::from_secs(1))
        .connect(&S::url())
        .await
        .expect("connect");
    let key = gives_up_behind_a_row_lock::<S>(&impatient).await;
    acquired(
        impatient
            .claim(&request(&key, LONG))
            .await
            .expect("claim after"),
    );
}

/// Has `impatient` (a store on the shared table, with a short statement timeout) claim a key
/// whose row a transaction holds: `Unavailable`, long before the transaction would have
/// ended. The key, free again.
pub async fn gives_up_behind_a_row_lock<S: TestServer>(impatient: &SqlStore<S::Dialect>) -> Key {
    let holder = shared_store::<S>().await;
    let key = key(&namespace::<S>("timeout"), "k");
    let mut tx = holder.pool().begin().await.expect("begin");
    acquired(
        holder
            .claim_in(&mut tx, &request(&key, LONG))
            .await
            .expect("claim_in"),
    );
    let started = Instant::now();
    let result = impatient.claim(&request(&key, LONG)).await;
    let waited = started.elapsed();
    tx.rollback().await.expect("rollback");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    key
}
