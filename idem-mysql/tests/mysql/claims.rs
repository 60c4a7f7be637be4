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
