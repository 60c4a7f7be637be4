//! One memory-store step, repeated on a single-threaded runtime, for instruction counts: the
//! bench's ratios move with the machine's load, instructions per call do not.
//!
//! ```text
//! cargo build --release -p idem-bench --example cycle_cost
//! valgrind --tool=callgrind --callgrind-out-file=execute.out \
//!     target/release/examples/cycle_cost execute 20000
//! callgrind_annotate execute.out | head -40
//! ```
//!
//! Steps: `execute` (the executor: claim, run, complete), `claim+complete` (the same two
//! store calls without the executor), `replay` (a claim of a completed key),
//! `cached-replay` (the same through `ReplayCache`, answered from its copy), `moka-insert`
//! and `moka-get` (bare moka with per-entry expiry, the floor), `noop` (the loop alone, to
//! subtract). Divide the counts, less `noop`'s, by the number of calls.
//!
//! A third argument `threaded` runs the loop as the bench's 1-task rows do: inside a task
//! spawned on a multi-threaded runtime, where what wakes another worker (a spawn, a notify,
//! a timer) costs context switches that callgrind does not see; count them with
//! `perf stat -e context-switches,raw_syscalls:sys_enter`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idem::memory::ReplayCache;
use idem::{Claim, ClaimRequest, Error, Idempotency, IdempotencyStore, Key, MemoryStore, Ttl};
use moka::future::Cache;

const RESPONSE: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Never;

impl idem::Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

struct OneHour;

impl moka::Expiry<String, Bytes> for OneHour {
    fn expire_after_create(
        &self,
        _: &String,
        _: &Bytes,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn key(i: usize) -> Result<Key, Error> {
    Key::new("bench", format!("cost:{i}"))
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let step = args.next().unwrap_or_else(|| "execute".to_owned());
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let threaded = args.next().as_deref() == Some("threaded");
    let runtime = if threaded {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(Error::backend)?;
    let elapsed = if threaded {
        let spawned = {
            let step = step.clone();
            runtime.spawn(async move { run(&step, calls).await })
        };
        runtime.block_on(spawned).map_err(Error::backend)??
    } else {
        runtime.block_on(run(&step, calls))?
    };
    println!(
        "{step}: {calls} calls, {:.2} µs per call",
        elapsed.as_secs_f64() * 1e6 / calls as f64
    );
    Ok(())
}

async fn run(step: &str, calls: usize) -> Result<Duration, Error> {
    let store = MemoryStore::with_capacity(u64::MAX);
    let idem = Idempotency::new(store.clone());
    let ttl = Ttl::from_secs(3600)?;
    let payload = Bytes::from(RESPONSE);
    let raw: Cache<String, Bytes> = Cache::builder().expire_after(OneHour).build();
    // A completed key to replay.
    if let Claim::Acquired(lease) = store
        .claim(&ClaimRequest::new(key(usize::MAX)?, ttl))
        .await?
    {
        store.complete(&lease, payload.clone(), ttl).await?;
    }
    raw.insert("bench/cost:replay".to_owned(), payload.clone())
        .await;
    // The same key through the replay cache; its first replay fills the copy.
    let cached = ReplayCache::new(store.clone());
    cached
        .claim(&ClaimRequest::new(key(usize::MAX)?, ttl))
        .await?;
    let started = Instant::now();
    for i in 0..calls {
        match step {
            "execute" => {
                idem.execute(&key(i)?, None, || async {
                    Ok::<_, Never>(Cow::Borrowed(RESPONSE))
                })
                .await
                .map_err(|e| Error::backend(format!("{e:?}")))?;
            }
            "claim+complete" => {
                let Claim::Acquired(lease) = store.claim(&ClaimRequest::new(key(i)?, ttl)).await?
                else {
                    return Err(Error::backend("a fresh key was not acquired"));
                };
                store.complete(&lease, payload.clone(), ttl).await?;
            }
            "replay" => {
                let claim = store
                    .claim(&ClaimRequest::new(key(usize::MAX)?, ttl))
                    .await?;
                if !matches!(claim, Claim::Completed(_)) {
                    return Err(Error::backend("the replay found no record"));
                }
            }
            "cached-replay" => {
                let claim = cached
                    .claim(&ClaimRequest::new(key(usize::MAX)?, ttl))
                    .await?;
                if !matches!(claim, Claim::Completed(_)) {
                    return Err(Error::backend("the cached replay found no record"));
                }
            }
            "moka-insert" => {
                let key = key(i)?;
                raw.insert(key.to_string(), payload.clone()).await;
            }
            "moka-get" => {
                let key = key(usize::MAX)?;
                drop(key);
                if raw.get("bench/cost:replay").await.is_none() {
                    return Err(Error::backend("moka lost the key"));
                }
            }
            "noop" => drop(key(i)?),
            other => return Err(Error::backend(format!("unknown step {other}"))),
        }
    }
    Ok(started.elapsed())
}
