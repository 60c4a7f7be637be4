//! Finishes `CALLS` claims of one kind at a Redis server, 64 in flight, for an instruction
//! count of the server's own work: `finish_calls URL KIND CALLS`, where KIND is `plain` (claims
//! without a fingerprint), `fingerprint` (claims with one) or `cas` (the minimal
//! compare-and-set of `idem_redis::floor` on raw keys). The setup runs no `EVALSHA`, so only
//! the finishes are counted under
//! `valgrind --tool=callgrind --toggle-collect=evalShaCommand redis-server --port 6471 --save ''`
//! (zero the counts with `callgrind_control -z`, run this, dump with `callgrind_control -d`,
//! divide the total by CALLS). Each run uses keys of its own and leaves them to expire.

use idem_core::{Bytes, Claim, ClaimRequest, Fingerprint, IdempotencyStore, Key, Lease, Ttl};
use idem_redis::RedisStore;
use idem_redis::floor::COMPARE_AND_SET;
use idem_redis::redis::{self, aio::MultiplexedConnection};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Calls in flight at once, as the bench's many-task rows have.
const IN_FLIGHT: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: finish_calls URL plain|fingerprint|cas CALLS";
    let (Some(url), Some(kind), Some(calls)) = (args.next(), args.next(), args.next()) else {
        return Err(usage.into());
    };
    let calls: usize = calls.parse()?;
    let prefix = format!("fc:{}:", std::process::id());
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect(&url)
        .await?;
    let mut raw = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let payload = Bytes::from(vec![b'x'; 100]);
    let finishes = match kind.as_str() {
        "plain" => claim(&store, calls, None).await?,
        "fingerprint" => claim(&store, calls, Some(Fingerprint::from_bytes(b"request"))).await?,
        "cas" => {
            seed_raw(&mut raw, &prefix, calls).await?;
            Vec::new()
        }
        _ => return Err(usage.into()),
    };
    store.load_scripts().await?;
    let cas = redis::Script::new(COMPARE_AND_SET);
    cas.prepare_invoke().load_async(&mut raw).await?;

    let mut running = tokio::task::JoinSet::new();
    for i in 0..calls {
        if running.len() == IN_FLIGHT
            && let Some(done) = running.join_next().await
        {
            done??;
        }
        let (store, payload, lease) = (store.clone(), payload.clone(), finishes.get(i).cloned());
        let (mut raw, cas, key) = (raw.clone(), cas.clone(), format!("{prefix}raw{i}"));
        running.spawn(async move {
            if let Some(lease) = lease {
                store
                    .complete(&lease, payload, Ttl::from_secs(600)?)
                    .await?;
                return Ok(());
            }
            let swapped: i64 = cas
                .key(key)
                .arg(&[b'o'; 16][..])
                .arg(&payload[..])
                .arg(600_000)
                .invoke_async(&mut raw)
                .await?;
            if swapped != 1 {
                return Err::<(), BoxError>("raw compare-and-set did not match".into());
            }
            Ok(())
        });
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    println!("{kind}: {calls} finishes");
    Ok(())
}

/// Claims `calls` new keys with `fingerprint`: their leases.
async fn claim(
    store: &RedisStore,
    calls: usize,
    fingerprint: Option<Fingerprint>,
) -> Result<Vec<Lease>, BoxError> {
    let mut leases = Vec::with_capacity(calls);
    for i in 0..calls {
        let key = Key::new("fc", format!("k{i}"))?;
        let request = ClaimRequest::new(key, Ttl::from_secs(600)?).with_fingerprint(fingerprint);
        match store.claim(&request).await? {
            Claim::Acquired(lease) => leases.push(lease),
            other => return Err(format!("claim of a new key: {other:?}").into()),
        }
    }
    Ok(leases)
}

/// Writes `calls` raw claimed keys: the owner field the compare-and-set checks, then filler
/// up to 43 bytes, as the bench's raw side and `server_cost` write them.
async fn seed_raw(
    raw: &mut MultiplexedConnection,
    prefix: &str,
    calls: usize,
) -> Result<(), BoxError> {
    let mut value = vec![b'o'; 16];
    value.resize(43, b'c');
    for i in 0..calls {
        redis::cmd("SET")
            .arg(format!("{prefix}raw{i}"))
            .arg(&value)
            .arg("PX")
            .arg(600_000)
            .query_async::<()>(raw)
            .await?;
    }
    Ok(())
}
