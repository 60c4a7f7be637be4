//! Claims where PostgreSQL differs: a signed fencing column. Its largest value is idem-sql's
//! `fencing_stops_at_the_largest_number_the_column_holds`.

use idem_core::{Claim, Error, IdempotencyStore, Key};
use idem_postgres::PgDialect;
use idem_sql::SqlStore;
use idem_sql::testing::update_row;

use crate::support::*;

/// A negative fencing number cannot come from the store: the row is corrupt.
#[tokio::test]
async fn a_negative_fencing_number_is_a_corrupt_record() {
    let store = shared_store::<PostgreSql>().await;
    let key = key(&namespace::<PostgreSql>("fencing-negative"), "k");
    acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    update_row::<PostgreSql>(
        &store,
        &key,
        "fencing = -5, lease_until = clock_timestamp() - interval '1 second'",
    )
    .await;
    let result = store.claim(&request(&key, LONG)).await;
    assert!(
        matches!(result, Err(Error::CorruptRecord { .. })),
        "{result:?}"
    );
    assert!(store.remove(&key).await.is_ok());
}

/// Claims `key` and leaves it `state`: "completed", "released", or else claimed.
async fn left(store: &SqlStore<PgDialect>, key: &Key, state: &str) {
    let lease = acquired(store.claim(&request(key, LONG)).await.expect("claim"));
    match state {
        "completed" => store
            .complete(&lease, "x".into(), ttl(RETENTION))
            .await
            .expect("complete"),
        "released" => store.release(&lease).await.expect("release"),
        _ => {}
    }
}

/// Removing a row is how an operator clears a corrupt one (idem-sql's
/// `rows_that_do_not_decode_are_corrupt_records`): a negative fencing number, which only
/// PostgreSQL's signed column can hold, must not survive the removal as a vacant trace
/// that still does not decode, leaving the key unusable until the trace expires.
#[tokio::test]
async fn removing_a_row_with_a_negative_fencing_number_clears_it() {
    let store = shared_store::<PostgreSql>().await;
    let ns = namespace::<PostgreSql>("fencing-negative-removed");
    for id in ["claimed", "completed", "released"] {
        let key = key(&ns, id);
        left(&store, &key, id).await;
        update_row::<PostgreSql>(&store, &key, "fencing = -5").await;
        assert!(
            matches!(
                store.claim(&request(&key, LONG)).await,
                Err(Error::CorruptRecord { .. })
            ),
            "{id}"
        );
        store.remove(&key).await.expect("remove");
        let again = store.claim(&request(&key, LONG)).await;
        assert!(matches!(again, Ok(Claim::Acquired(_))), "{id}: {again:?}");
        store.remove(&key).await.expect("clean up");
    }
}

/// `timestamptz` can hold `infinity`, which the store never writes (an operator's "keep
/// forever", say): such a row does not decode, so it is a `CorruptRecord` on read and
/// claim (not a `Backend` error from subtracting an infinite time), and removing it clears
/// it.
#[tokio::test]
async fn an_infinite_time_is_a_corrupt_record_that_removal_clears() {
    let store = shared_store::<PostgreSql>().await;
    let ns = namespace::<PostgreSql>("infinite-time");
    for (id, set, then) in [
        ("expires", "expires_at = 'infinity'", "claimed"),
        ("expires-completed", "expires_at = 'infinity'", "completed"),
        ("expires-released", "expires_at = 'infinity'", "released"),
        ("lease", "lease_until = '-infinity'", "claimed"),
    ] {
        let key = key(&ns, id);
        left(&store, &key, then).await;
        update_row::<PostgreSql>(&store, &key, set).await;
        let read = store.read(&key).await;
        assert!(
            matches!(read, Err(Error::CorruptRecord { .. })),
            "{id}: {read:?}"
        );
        let claim = store.claim(&request(&key, LONG)).await;
        assert!(
            matches!(claim, Err(Error::CorruptRecord { .. })),
            "{id}: {claim:?}"
        );
        let removed = store.remove(&key).await;
        assert!(removed.is_ok(), "{id}: {removed:?}");
        let again = store.claim(&request(&key, LONG)).await;
        assert!(matches!(again, Ok(Claim::Acquired(_))), "{id}: {again:?}");
        store.remove(&key).await.expect("clean up");
    }
}

/// A row that expires at `-infinity` has expired, as the takeover and the purge treat it
/// (and as idem-mysql reads a zero date): absent whatever it holds, so the key is free,
/// not a `CorruptRecord` until a purge happens to delete the row.
#[tokio::test]
async fn a_row_expiring_at_minus_infinity_has_expired() {
    let store = shared_store::<PostgreSql>().await;
    let ns = namespace::<PostgreSql>("minus-infinity");
    for then in ["claimed", "completed", "released"] {
        let key = key(&ns, then);
        left(&store, &key, then).await;
        update_row::<PostgreSql>(&store, &key, "expires_at = '-infinity'").await;
        let read = store.read(&key).await;
        assert!(matches!(read, Ok(None)), "{then}: {read:?}");
        let again = store.claim(&request(&key, LONG)).await;
        assert!(
            matches!(&again, Ok(Claim::Acquired(lease)) if lease.fencing == 1),
            "{then}: {again:?}"
        );
        store.remove(&key).await.expect("clean up");
    }
}
