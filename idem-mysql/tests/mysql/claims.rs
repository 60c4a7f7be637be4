//! Claims where MySQL differs: an unsigned fencing column.

use idem_core::{Claim, IdempotencyStore};
use idem_sql::testing::claims::takes_over_past;

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

/// DATETIME takes the zero date unless `sql_mode` says `NO_ZERO_DATE`, and the server
/// compares it as the earliest time: an `expires_at` of '0000-00-00' is expired (the purge
/// deletes the row, a takeover takes it), so the row is absent, not a `CorruptRecord`
/// because `TIMESTAMPDIFF` gives NULL for it.
#[tokio::test]
async fn a_zero_date_expiry_is_expired() {
    let store = shared_store::<MariaDb>().await;
    let key = key(&namespace::<MariaDb>("zero-expiry"), "k");
    let lease = acquired(store.claim(&request(&key, LONG)).await.expect("claim"));
    store
        .complete(&lease, "x".into(), ttl(RETENTION))
        .await
        .expect("complete");
    idem_sql::testing::update_row::<MariaDb>(&store, &key, "expires_at = '0000-00-00 00:00:00'")
        .await;
    let read = store.read(&key).await;
    assert!(matches!(read, Ok(None)), "{read:?}");
    let claim = store.claim(&request(&key, LONG)).await;
    assert!(
        matches!(&claim, Ok(Claim::Acquired(lease)) if lease.fencing == 1),
        "{claim:?}"
    );
    store.remove(&key).await.expect("clean up");
}
