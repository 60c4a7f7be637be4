//! A fixed number of `POST /charges` requests against one server of `idem-bench
//! --serve-http STORE`, for counting what the server process does per request (syscalls,
//! context switches, instructions) with `perf stat -p` or `strace -c -f -p` on it, the bare
//! handler against the one behind the layer: such counts move far less with the machine's
//! load than the bench's ratios.
//!
//! ```text
//! cargo build --release -p idem-bench --bins --examples
//! target/release/idem-bench --serve-http memory   # prints BARE_ADDR IDEM_ADDR; stays up
//! perf stat -e raw_syscalls:sys_enter,context-switches -p SERVER_PID &
//! target/release/examples/http_load IDEM_ADDR 64 100000 new
//! ```
//!
//! Arguments: the address, connections (each one request at a time, kept alive), requests,
//! and `new` (every request a fresh key), `replay` (keys completed beforehand, each replayed
//! once; the seeding requests are sent, and counted by a `perf` attached before, first) or
//! `seeded-replay` (`replay` without its seeding: the keys of the last `seed` run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let usage = "http_load ADDR CONNECTIONS REQUESTS new|replay|seed|seeded-replay";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let connections: usize = args.next().ok_or(usage)?.parse()?;
    let requests: usize = args.next().ok_or(usage)?.parse()?;
    let mode = args.next().ok_or(usage)?;
    // A tag per process would make `seeded-replay` miss `seed`'s keys: a fixed one, which
    // the server's records outlive by a minute at most.
    let tag = std::env::var("HTTP_LOAD_TAG").unwrap_or_else(|_| "load".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (seed, replay) = match mode.as_str() {
            "new" => (false, false),
            "replay" => (true, true),
            "seed" => (true, false),
            "seeded-replay" => (false, true),
            _ => return Err(Failure::from(usage)),
        };
        if seed {
            run(addr, connections, requests, &tag, false).await?;
        }
        if replay || !seed {
            let started = Instant::now();
            run(addr, connections, requests, &tag, replay).await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{mode}: {requests} requests over {connections} connections, {:.0} per second",
                requests as f64 / secs
            );
        }
        Ok(())
    })
}

/// Sends requests `0..requests` (key `tag-i`) over `connections` kept-alive connections.
async fn run(
    addr: SocketAddr,
    connections: usize,
    requests: usize,
    tag: &str,
    replay: bool,
) -> Result<(), Failure> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let (next, tag) = (Arc::clone(&next), tag.to_owned());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, Failure>(());
                }
                pay(&mut sender, &tag, i, replay).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// The bench's request: a 14-byte JSON body, the key quoted as RFC 9110 wants.
async fn pay(
    sender: &mut SendRequest<Full<Bytes>>,
    tag: &str,
    i: usize,
    replay: bool,
) -> Result<(), Failure> {
    let request = Request::post("/charges")
        .header("host", "bench")
        .header("idempotency-key", format!("\"{tag}-{i}\""))
        .body(Full::new(Bytes::from_static(b"{\"cents\":4999}")))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    body.collect().await?;
    if parts.status != StatusCode::CREATED {
        return Err(format!("unexpected status {}", parts.status).into());
    }
    if replay && !parts.headers.contains_key("idempotent-replayed") {
        return Err("a replay was not marked as one".into());
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
