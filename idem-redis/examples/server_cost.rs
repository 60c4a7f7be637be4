//! Server time per call, from `INFO commandstats`: what each store call costs Redis itself,
//! free of client and network noise. Point it at a server of its own (it resets the
//! statistics): `cargo run --release -p idem-redis --example server_cost -- redis://127.0.0.1:6400`.
//! On a server that offers `SET ... IFEQ` (Valkey 8.1), completes are that command; add
//! `script` after the URL to measure the finish script there instead.

use std::time::Duration;

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Key, Lease, Ttl,
};
use idem_redis::RedisStore;
use idem_redis::floor::COMPARE_AND_SET;
use idem_redis::redis::{self, aio::MultiplexedConnection};

const CALLS: usize = 10_000;
const ROUNDS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6400".to_owned());
    let by_script = std::env::args().nth(2).as_deref() == Some("script");
    let store = RedisStore::builder()
        .prefix(format!("cost:{}:", std::process::id()))
        .conditional_set(!by_script)
        .connect(&url)
        .await?;
    store.load_scripts().await?;
    let mut stats = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let ttl = Ttl::from_secs(600)?;
    let key = |i: usize| Key::new("cost", format!("k{i}"));

    reset(&mut stats).await?;
    let mut leases = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        match store.claim(&ClaimRequest::new(key(i)?, ttl)).await? {
            Claim::Acquired(lease) => leases.push(lease),
            other => return Err(format!("claim new: {other:?}").into()),
        }
    }
    report("claim new", &mut stats).await?;

    for i in 0..CALLS {
        let claim = store.claim(&ClaimRequest::new(key(i)?, ttl)).await?;
        if !matches!(claim, Claim::InProgress { .. }) {
            return Err(format!("in progress: {claim:?}").into());
        }
    }
    report("claim in progress", &mut stats).await?;

    let payload = Bytes::from(vec![b'x'; 100]);
    for lease in &leases {
        store.complete(lease, payload.clone(), ttl).await?;
    }
    report("complete", &mut stats).await?;

    for _ in 0..CALLS {
        let claim = store.claim(&ClaimRequest::new(key(0)?, ttl)).await?;
        if !matches!(claim, Claim::Completed(_)) {
            return Err(format!("replay: {claim:?}").into());
        }
    }
    report("replay claim", &mut stats).await?;

    // Complete against the bench's raw compare-and-set (idem-bench/src/redis.rs), in
    // alternation, on fresh keys each round; the least of the rounds is the least noisy.
    // One call in flight leaves the server idle between calls (cold caches); 64 in flight
    // keep it busy, as the bench's many-task rows do. Claims with a fingerprint finish with
    // a longer lease and record (the fingerprint in both), claims without one with neither.
    let fingerprints = [None, Some(Fingerprint::from_bytes(b"request"))];
    for (in_flight, fingerprint) in [1, 64]
        .into_iter()
        .flat_map(|n| fingerprints.map(|f| (n, f)))
    {
        let (mut best_complete, mut best_cas) = (f64::MAX, f64::MAX);
        for round in 0..ROUNDS {
            let batch = round + ROUNDS * (in_flight + usize::from(fingerprint.is_some()));
            let first = 2 * CALLS + batch * CALLS;
            let leases = claim_fresh(&store, &mut stats, first, fingerprint, round, ttl).await?;
            reset(&mut stats).await?;
            in_parallel(in_flight, &leases, |lease, _| {
                let (store, payload) = (store.clone(), payload.clone());
                async move {
                    store
                        .complete(&lease, payload, ttl)
                        .await
                        .map_err(Into::into)
                }
            })
            .await?;
            best_complete = best_complete.min(finish_usec(&mut stats).await?);
            reset(&mut stats).await?;
            in_parallel(in_flight, &leases, |_, i| {
                let (mut stats, payload) = (stats.clone(), payload.clone());
                async move {
                    let swapped: i64 = redis::Script::new(COMPARE_AND_SET)
                        .key(format!("cost-raw:{{{round}:{i}}}"))
                        .arg(&OWNER[..])
                        .arg(&payload[..])
                        .arg(600_000)
                        .invoke_async(&mut stats)
                        .await?;
                    if swapped != 1 {
                        return Err("raw compare-and-set did not match".into());
                    }
                    Ok(())
                }
            })
            .await?;
            best_cas = best_cas.min(finish_usec(&mut stats).await?);
            for (i, lease) in leases.iter().enumerate() {
                store.remove(&lease.key).await?;
                redis::cmd("DEL")
                    .arg(format!("cost-raw:{{{round}:{i}}}"))
                    .query_async::<()>(&mut stats)
                    .await?;
            }
        }
        let with = if fingerprint.is_some() {
            "with"
        } else {
            "without"
        };
        println!(
            "complete ({with} fingerprint) vs raw CAS, {in_flight:2} in flight: {best_complete:.2} vs {best_cas:.2} µs per call, best of {ROUNDS} (ratio {:.2})",
            best_cas / best_complete
        );
    }
    reset(&mut stats).await?;

    let short = Ttl::from_millis(1)?;
    let mut lapsed: Vec<Lease> = Vec::with_capacity(CALLS / 10);
    for i in 0..CALLS / 10 {
        if let Claim::Acquired(lease) = store
            .claim(&ClaimRequest::new(key(CALLS + i)?, short))
            .await?
        {
            lapsed.push(lease);
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    reset(&mut stats).await?;
    for i in 0..CALLS / 10 {
        let claim = store
            .claim(&ClaimRequest::new(key(CALLS + i)?, ttl))
            .await?;
        if !matches!(claim, Claim::Acquired(_)) {
            return Err(format!("takeover: {claim:?}").into());
        }
    }
    report("takeover", &mut stats).await?;
    for i in 0..CALLS {
        store.remove(&key(i)?).await?;
    }
    for i in 0..CALLS / 10 {
        store.remove(&key(CALLS + i)?).await?;
    }
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The owner field the raw compare-and-set checks.
const OWNER: [u8; 16] = [b'o'; 16];

/// Claims `CALLS` fresh keys from number `first` with the store (with `fingerprint`), and
/// writes as many raw claimed keys for round `round` (the owner field, then filler up to 43
/// bytes).
async fn claim_fresh(
    store: &RedisStore,
    stats: &mut MultiplexedConnection,
    first: usize,
    fingerprint: Option<Fingerprint>,
    round: usize,
    ttl: Ttl,
) -> Result<Vec<Lease>, BoxError> {
    let mut value = OWNER.to_vec();
    value.resize(43, b'c');
    let mut leases = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        match store
            .claim(
                &ClaimRequest::new(Key::new("cost", format!("k{}", first + i))?, ttl)
                    .with_fingerprint(fingerprint),
            )
            .await?
        {
            Claim::Acquired(lease) => leases.push(lease),
            other => return Err(format!("claim new: {other:?}").into()),
        }
        redis::cmd("SET")
            .arg(format!("cost-raw:{{{round}:{i}}}"))
            .arg(&value)
            .arg("PX")
            .arg(600_000)
            .query_async::<()>(stats)
            .await?;
    }
    Ok(leases)
}

/// Runs `call` on every lease (and its index), `in_flight` at a time.
async fn in_parallel<F, Fut>(in_flight: usize, leases: &[Lease], call: F) -> Result<(), BoxError>
where
    F: Fn(Lease, usize) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for (i, lease) in leases.iter().enumerate() {
        if running.len() == in_flight
            && let Some(done) = running.join_next().await
        {
            done??;
        }
        running.spawn(call(lease.clone(), i));
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// µs per call of the command that finished records since the last reset: `EVALSHA` where
/// a script ran (the finish script, the raw compare-and-set), else `SET` (`SET ... IFEQ`).
async fn finish_usec(stats: &mut MultiplexedConnection) -> Result<f64, Error> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(stats)
        .await
        .map_err(Error::backend)?;
    let usec_of = |command: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(command))
            .and_then(|fields| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("usec_per_call="))
            })
            .and_then(|v| v.parse().ok())
    };
    usec_of("cmdstat_evalsha:")
        .or_else(|| usec_of("cmdstat_set:"))
        .ok_or_else(|| Error::backend("neither EVALSHA nor SET in INFO commandstats"))
}

async fn reset(stats: &mut MultiplexedConnection) -> Result<(), Error> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(stats)
        .await
        .map_err(Error::backend)
}

/// Prints the commands run since the last reset: calls and µs per call. A script's own
/// `redis.call`s are listed too, and their time is also inside the script's.
async fn report(what: &str, stats: &mut MultiplexedConnection) -> Result<(), Error> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(stats)
        .await
        .map_err(Error::backend)?;
    let mut line = String::new();
    for entry in info.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
        let Some((name, fields)) = entry.split_once(':') else {
            continue;
        };
        if name == "config" {
            continue;
        }
        let field = |f: &str| {
            fields
                .split(',')
                .find_map(|s| s.strip_prefix(f))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (calls, usec) = (field("calls="), field("usec="));
        if calls > 0.0 && !name.starts_with("config") {
            line.push_str(&format!(" {name} {calls} × {:.2} µs;", usec / calls));
        }
    }
    println!("{what:18}{line}");
    reset(stats).await
}
