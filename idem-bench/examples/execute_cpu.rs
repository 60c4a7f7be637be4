//! Client and server CPU per execute on a Redis-protocol server, idem against the raw
//! two-command protocol (`SET NX PX GET`, then `SET IFEQ PX`: a server that offers it, such
//! as Valkey 8.1), 64 tasks at once. The client's CPU is this process's (`/proc/self/stat`),
//! the server's from `INFO cpu`; under callgrind, give one side only to count its
//! instructions. Point it at a server of its own:
//!
//! ```sh
//! target/release/examples/execute_cpu redis://127.0.0.1:6403 100000          # both, twice
//! valgrind --tool=callgrind target/release/examples/execute_cpu URL 10000 idem # or raw
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use idem::redis::RedisStore;
use idem::redis::redis::{self, aio::ConnectionManager, aio::MultiplexedConnection};
use idem::{Idempotency, Key};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the operation can fail with: nothing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Never;

impl idem::Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

const TASKS: usize = 64;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6403".to_owned());
    let calls: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let sides = match args.next() {
        Some(side) => vec![side],
        None => ["idem", "raw", "idem", "raw"].map(String::from).to_vec(),
    };
    let prefix = format!("execute-cpu:{}:", uuid::Uuid::new_v4().simple());
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect(&url)
        .await?;
    if !store.finishes_by_conditional_set() {
        return Err(format!("the server at {url} does not offer SET ... IFEQ").into());
    }
    let idem = Arc::new(Idempotency::new(store));
    let client = redis::Client::open(url.as_str())?;
    let raw = ConnectionManager::new(client.clone()).await?;
    let mut stats = client.get_multiplexed_async_connection().await?;
    for (round, side) in sides.iter().enumerate() {
        let next = Arc::new(AtomicUsize::new(0));
        let (client_cpu, server_cpu) = (own_cpu()?, cpu_of(&mut stats).await?);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (next, idem, raw) = (Arc::clone(&next), Arc::clone(&idem), raw.clone());
            let (side, prefix) = (side.clone(), prefix.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return Ok::<_, BoxError>(());
                    }
                    let id = format!("{round}:{i}");
                    if side == "idem" {
                        let key = Key::new("cpu", id)?;
                        idem.execute(&key, None, || async { Ok::<_, Never>(()) })
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                    } else {
                        raw_execute(raw.clone(), format!("{prefix}raw:{id}")).await?;
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let per_call = |seconds: f64| seconds * 1e6 / calls as f64;
        println!(
            "{side}: {:.0} executes/s, client {:.2} µs, server {:.2} µs per execute",
            calls as f64 / elapsed,
            per_call(own_cpu()? - client_cpu),
            per_call(cpu_of(&mut stats).await? - server_cpu),
        );
    }
    Ok(())
}

/// The raw protocol: claim with a 43-byte value, then write 100 bytes where it still holds.
async fn raw_execute(mut connection: ConnectionManager, key: String) -> Result<(), BoxError> {
    let claimed = [b'c'; 43];
    let found: Option<Vec<u8>> = redis::cmd("SET")
        .arg(&key)
        .arg(&claimed[..])
        .arg("NX")
        .arg("PX")
        .arg(600_000)
        .arg("GET")
        .query_async(&mut connection)
        .await?;
    let written: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(&[b'x'; 100][..])
        .arg("IFEQ")
        .arg(&claimed[..])
        .arg("PX")
        .arg(600_000)
        .query_async(&mut connection)
        .await?;
    match (found, written) {
        (None, Some(_)) => Ok(()),
        other => Err(format!("raw execute of a new key answered {other:?}").into()),
    }
}

/// This process's CPU time so far, in seconds (user + system, from `/proc/self/stat`).
fn own_cpu() -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second).
    let after_name = stat.rsplit(')').next().ok_or("no command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |n: usize| -> Result<f64, BoxError> {
        Ok(fields.get(n).ok_or("a short stat line")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The server's CPU time so far, in seconds (`used_cpu_user` + `used_cpu_sys`).
async fn cpu_of(stats: &mut MultiplexedConnection) -> Result<f64, BoxError> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(stats).await?;
    let field = |name: &str| -> Result<f64, BoxError> {
        let value = info
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .ok_or("INFO cpu without the field")?;
        Ok(value.trim().parse()?)
    };
    Ok(field("used_cpu_user:")? + field("used_cpu_sys:")?)
}
