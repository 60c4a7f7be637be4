//! Each call is one command on the wire: measured with `INFO commandstats` on a server of
//! this test's own, so no other test's traffic is counted.

use crate::common::{
    RedisServer, acquire, commands_during, expected, key, raw_connection, sent_by_client, store_at,
    ttl_ms,
};
use idem_core::{Bytes, Claim, ClaimRequest, IdempotencyStore};
use idem_redis::RedisStore;
use idem_redis::redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;

#[tokio::test]
async fn claim_repeat_and_complete_are_one_command_each() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    store.load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    let k = key("round-trips");
    let request = ClaimRequest::new(k.clone(), ttl_ms(30_000));

    // A new key: one plain SET NX PX GET, no script.
    let (claim, new_key) = commands_during(&mut stats, store.claim(&request)).await;
    let Ok(Claim::Acquired(lease)) = claim else {
        panic!("expected to acquire, got {claim:?}")
    };
    assert_eq!(new_key, expected(&["set"]));
    assert_eq!(sent_by_client(&new_key), 1);

    // A live lease of another owner: the SET finds it, and the claim script asks the clock.
    let other = ClaimRequest::new(k.clone(), ttl_ms(30_000));
    let (claim, in_progress) = commands_during(&mut stats, store.claim(&other)).await;
    assert!(matches!(claim, Ok(Claim::InProgress { .. })), "{claim:?}");
    assert_eq!(in_progress, expected(&["evalsha", "get", "pttl", "set"]));

    let response = Bytes::from(vec![0xEEu8; 64 * 1024]);
    let (done, complete) = commands_during(
        &mut stats,
        store.complete(&lease, response.clone(), ttl_ms(30_000)),
    )
    .await;
    done.expect("complete");
    assert_eq!(complete, expected(&["evalsha", "get", "set"]));
    assert_eq!(sent_by_client(&complete), 1);

    // The repeat gets the stored response from the SET's own reply: no script, no GET.
    let (claim, repeat) = commands_during(&mut stats, store.claim(&other)).await;
    assert_eq!(claim.expect("repeat"), Claim::Completed(response));
    assert_eq!(repeat, expected(&["set"]));
    assert_eq!(sent_by_client(&repeat), 1);
}

#[tokio::test]
async fn scripts_load_themselves_after_a_flush() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let mut stats = raw_connection(&server.url()).await;
    // Without load_scripts: the first complete finds NOSCRIPT, loads, and runs.
    let cold = complete_new_key(&store, &mut stats, "cold").await;
    assert_eq!(cold.get("script|load"), Some(&1), "{cold:?}");
    assert_eq!(cold.get("evalsha"), Some(&2), "{cold:?}");
    // Warm from then on.
    let warm = complete_new_key(&store, &mut stats, "warm").await;
    assert_eq!(sent_by_client(&warm), 1, "{warm:?}");
    // SCRIPT FLUSH (or a restart) forgets them; the store recovers by itself.
    idem_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut stats)
        .await
        .expect("SCRIPT FLUSH");
    let reloaded = complete_new_key(&store, &mut stats, "flushed").await;
    assert_eq!(reloaded.get("script|load"), Some(&1), "{reloaded:?}");
}

/// Claims the new key `id`, then completes it: what the complete alone made the server run.
async fn complete_new_key(
    store: &RedisStore,
    stats: &mut MultiplexedConnection,
    id: &str,
) -> BTreeMap<String, u64> {
    let lease = acquire(store, &ClaimRequest::new(key(id), ttl_ms(30_000))).await;
    let (done, delta) =
        commands_during(stats, store.complete(&lease, Bytes::new(), ttl_ms(30_000))).await;
    done.expect("complete");
    delta
}
