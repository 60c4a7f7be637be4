//! Claims where PostgreSQL differs: a signed fencing column. Its largest value is idem-sql's
//! `fencing_stops_at_the_largest_number_the_column_holds`.

use idem_core::{Error, IdempotencyStore};
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
