//! Each call is one command on the wire: measured with `INFO commandstats` on a server of
//! this test's own, so no other test's traffic is counted.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{RedisServer, key, raw_connection, store_at, ttl_ms};
use idem_core::{Bytes, Claim, ClaimRequest, IdempotencyStore};
use idem_redis::RedisStore;
use idem_redis::redis::aio::MultiplexedConnection;

/// Commands only a script can send here: the scripts' own `redis.call`s, which Redis counts
/// in `commandstats` too.
const INSIDE_SCRIPTS: [&str; 4] = ["time", "get", "set", "del"];

/// What one call made the server run, minus the `INFO` that measured it.
async fn commands_during<F: Future>(
    stats: &mut MultiplexedConnection,
    call: F,
) -> (F::Output, BTreeMap<String, u64>) {
    let before = common::command_calls(stats).await;
    let output = call.await;
    let after = common::command_calls(stats).await;
    (output, delta(&before, &after))
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    let mut delta: BTreeMap<String, u64> = after
        .iter()
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, calls)| *calls > 0)
        .collect();
    // The first INFO is counted by the second.
    assert_eq!(delta.remove("info"), Some(1), "{delta:?}");
    delta
}

/// The commands the client sent itself: what is left once script-internal calls are set aside.
fn sent_by_client(delta: &BTreeMap<String, u64>) -> u64 {
    delta
        .iter()
        .filter(|(name, _)| !INSIDE_SCRIPTS.contains(&name.as_str()))
        .map(|(_, calls)| calls)
        .sum()
}

fn expected(commands: &[&str]) -> BTreeMap<String, u64> {
    commands.iter().map(|c| ((*c).to_owned(), 1)).collect()
}

#[tokio::test]
async fn claim_repeat_and_complete_are_one_command_each() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    store.load_scripts().await.expect("load scripts");
    let mut stats = raw_connection(&server.url()).await;
    let k = key("round-trips");
    let request = ClaimRequest::new(k.clone(), ttl_ms(30_000));

    let (claim, new_key) = commands_during(&mut stats, store.claim(&request)).await;
    let Ok(Claim::Acquired(lease)) = claim else {
        panic!("expected to acquire, got {claim:?}")
    };
    assert_eq!(new_key, expected(&["evalsha", "get", "set", "time"]));
    assert_eq!(sent_by_client(&new_key), 1);

    let other = ClaimRequest::new(k.clone(), ttl_ms(30_000));
    let (claim, in_progress) = commands_during(&mut stats, store.claim(&other)).await;
    assert!(matches!(claim, Ok(Claim::InProgress { .. })), "{claim:?}");
    assert_eq!(in_progress, expected(&["evalsha", "get", "time"]));

    let response = Bytes::from(vec![0xEEu8; 64 * 1024]);
    let (done, complete) = commands_during(
        &mut stats,
        store.complete(&lease, response.clone(), ttl_ms(30_000)),
    )
    .await;
    done.expect("complete");
    assert_eq!(complete, expected(&["evalsha", "get", "set", "time"]));

    // The repeat gets the stored response from the same reply: no second GET.
    let (claim, repeat) = commands_during(&mut stats, store.claim(&other)).await;
    assert_eq!(claim.expect("repeat"), Claim::Completed(response));
    assert_eq!(repeat, expected(&["evalsha", "get", "time"]));
    assert_eq!(sent_by_client(&repeat), 1);
}

#[tokio::test]
async fn scripts_load_themselves_after_a_flush() {
    let server = RedisServer::start();
    let store = store_at(&server.url(), RedisStore::builder()).await;
    let mut stats = raw_connection(&server.url()).await;
    // Without load_scripts: the first claim finds NOSCRIPT, loads, and runs.
    let request = ClaimRequest::new(key("cold"), ttl_ms(30_000));
    let (claim, cold) = commands_during(&mut stats, store.claim(&request)).await;
    assert!(matches!(claim, Ok(Claim::Acquired(_))), "{claim:?}");
    assert_eq!(cold.get("script|load"), Some(&1), "{cold:?}");
    assert_eq!(cold.get("evalsha"), Some(&2), "{cold:?}");
    // Warm from then on.
    let (claim, warm) = commands_during(&mut stats, store.claim(&request)).await;
    assert!(matches!(claim, Ok(Claim::Acquired(_))), "{claim:?}");
    assert_eq!(sent_by_client(&warm), 1, "{warm:?}");
    // SCRIPT FLUSH (or a restart) forgets them; the store recovers by itself.
    idem_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut stats)
        .await
        .expect("SCRIPT FLUSH");
    let (claim, reloaded) = commands_during(&mut stats, store.claim(&request)).await;
    assert!(matches!(claim, Ok(Claim::Acquired(_))), "{claim:?}");
    assert_eq!(reloaded.get("script|load"), Some(&1), "{reloaded:?}");
}
