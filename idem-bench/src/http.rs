//! The HTTP rows: an axum handler behind `IdempotencyLayer` against the same handler bare,
//! driven by a hyper client over loopback.
//!
//! The servers run in a child process (this binary again, with `--serve-http STORE`), so
//! the load generator (this process) and the servers share neither a scheduler nor an
//! allocator: the figures are the server's cost as a client sees it, as with wrk or any
//! load generator of its own. Connections are kept alive and reused, one per concurrent
//! task, as a load balancer would.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use idem::http::{IdempotencyLayer, KeyScope};
use idem::memory::ReplayCache;
use idem::redis::RedisStore;
use idem::{Error, IdempotencyStore, MemoryStore};

use crate::keys::fresh_tag;
use crate::measure::{Mode, compare, keys_needed, modes};
use crate::report::Row;
use crate::settings::Settings;

/// How many keys the replays behind `ReplayCache` go round.
const CACHED_KEYS: usize = 256;

/// What the floor side is.
const FLOOR: &str = "the same axum handler, bare";

/// Each store's rows (memory, Redis, Redis behind `ReplayCache`): new keys and replays, at
/// one connection and at many.
pub async fn rows(settings: &Settings) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    rows.extend(store_rows("http+mem", "memory", settings).await?);
    rows.extend(store_rows("http+redis", "redis", settings).await?);
    rows.extend(store_rows("http+redis+cache", "redis+cache", settings).await?);
    Ok(rows)
}

/// The child process's side (`--serve-http STORE`): serves the bare handler and the one
/// behind the layer on `store` (memory, redis, or redis+cache: `ReplayCache` in front of
/// Redis), prints `BARE_ADDR IDEM_ADDR` on a line, and serves until its standard input
/// closes (the parent is done, or gone).
pub async fn serve(store: &str) -> Result<(), Error> {
    let (bare, idem) = match store {
        "memory" => bind_both(layer(MemoryStore::new())?).await?,
        "redis" => bind_both(layer(redis_store().await?)?).await?,
        "redis+cache" => bind_both(layer(ReplayCache::new(redis_store().await?))?).await?,
        other => return Err(Error::backend(format!("unknown store {other} to serve"))),
    };
    println!("{bare} {idem}");
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
        .await
        .map_err(Error::backend)?
        .map_err(Error::backend)?;
    Ok(())
}

/// A Redis store under a prefix of its own.
async fn redis_store() -> Result<RedisStore, Error> {
    let url =
        std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("idem-bench-http:{}:", fresh_tag());
    RedisStore::builder().prefix(prefix).connect(&url).await
}

fn layer<S: IdempotencyStore>(store: S) -> Result<IdempotencyLayer<S>, Error> {
    // Records outlive the run by a minute at most.
    IdempotencyLayer::builder(store, KeyScope::global())
        .retention(Duration::from_secs(60))
        .build()
}

async fn bind_both<S: IdempotencyStore>(
    layer: IdempotencyLayer<S>,
) -> Result<(SocketAddr, SocketAddr), Error> {
    let bare = Router::new().route("/charges", post(charge));
    let idem = Router::new().route("/charges", post(charge)).layer(layer);
    let bare = bind(bare).await.map_err(Error::backend)?;
    let idem = bind(idem).await.map_err(Error::backend)?;
    Ok((bare, idem))
}

async fn store_rows(
    backend: &'static str,
    store: &str,
    settings: &Settings,
) -> Result<Vec<Row>, Error> {
    let servers = Servers::start(store)?;
    // Behind `ReplayCache` a key's first replay fills the copy (a miss, and one more round
    // trip); what the cache is for is the replays after it. So there the replays go round a
    // set of keys replayed once beforehand; elsewhere each replay is of a key of its own.
    let replayed = if store == "redis+cache" {
        CACHED_KEYS
    } else {
        usize::MAX
    };
    let mut rows = Vec::new();
    for mode in modes(settings) {
        for operation in [Operation::NewKey, Operation::Replay] {
            let tag = fresh_tag();
            let idem = Client::new(servers.idem);
            let bare = Client::new(servers.bare);
            if operation == Operation::Replay {
                let seeded = keys_needed(settings, mode).min(replayed);
                seed(&idem, &tag, seeded).await?;
                if seeded == replayed {
                    for i in 0..seeded {
                        idem.pay(&tag, i, true).await?;
                    }
                }
            }
            let figures = compare(
                settings,
                mode,
                {
                    let (idem, tag) = (idem.clone(), Arc::clone(&tag));
                    move |i| {
                        let (idem, tag) = (idem.clone(), Arc::clone(&tag));
                        let (key, replay) = match operation {
                            Operation::Replay => (i % replayed, true),
                            Operation::NewKey => (i, false),
                        };
                        async move { idem.pay(&tag, key, replay).await }
                    }
                },
                {
                    let (bare, tag) = (bare.clone(), Arc::clone(&tag));
                    move |i| {
                        let (bare, tag) = (bare.clone(), Arc::clone(&tag));
                        async move { bare.pay(&tag, i, false).await }
                    }
                },
            )
            .await?;
            rows.push(Row {
                backend,
                operation: operation.name(),
                floor: FLOOR,
                mode,
                idem: figures.0,
                raw: figures.1,
                target: target(backend, operation, mode),
            });
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    NewKey,
    Replay,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::NewKey => "POST new key",
            Self::Replay => "POST replay",
        }
    }
}

/// Issue 17's targets, at many connections: on the memory store, new keys at 0.7× a bare
/// handler and replays at 0.9×; on Redis with `ReplayCache` in front, replays at 0.85×.
fn target(backend: &str, operation: Operation, mode: Mode) -> Option<f64> {
    match (backend, operation, mode) {
        ("http+mem", Operation::NewKey, Mode::Throughput(_)) => Some(0.7),
        ("http+mem", Operation::Replay, Mode::Throughput(_)) => Some(0.9),
        ("http+redis+cache", Operation::Replay, Mode::Throughput(_)) => Some(0.85),
        _ => None,
    }
}

/// Completes keys `0..count` of `tag`, so the measurement replays them.
async fn seed(client: &Client, tag: &str, count: usize) -> Result<(), Error> {
    for i in 0..count {
        client.pay(tag, i, false).await?;
    }
    Ok(())
}

/// The handler both servers run: a small JSON answer.
async fn charge(body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!("{{\"charged\":{}}}", body.len()),
    )
}

/// The bare server and the one behind the layer, in a child process of this binary.
struct Servers {
    bare: SocketAddr,
    idem: SocketAddr,
    child: Child,
}

/// How long a child that was told to stop (its standard input closed) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Servers {
    fn start(store: &str) -> Result<Self, Error> {
        let exe = std::env::current_exe().map_err(Error::backend)?;
        let mut child = Command::new(exe)
            .args(["--serve-http", store])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::backend(format!("starting the server process: {e}")))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(Error::backend)?;
        }
        let mut addrs = line.split_whitespace().map(str::parse::<SocketAddr>);
        match (addrs.next(), addrs.next()) {
            (Some(Ok(bare)), Some(Ok(idem))) => Ok(Self { bare, idem, child }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Error::backend(format!(
                    "the server process did not say where it listens: {line:?}"
                )))
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Closing its standard input tells the child to stop.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `router` on a free loopback port, on the current runtime.
async fn bind(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// A keep-alive client: a stack of idle connections, one taken per request in flight.
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Arc::default(),
        }
    }

    /// POSTs a charge with the key number `i` of `tag` and reads the whole answer; a
    /// replay must be marked as one.
    async fn pay(&self, tag: &str, i: usize, replay: bool) -> Result<(), Error> {
        let idle = self
            .idle
            .lock()
            .map_err(|_| Error::backend("poisoned"))?
            .pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let request = Request::post("/charges")
            .header("host", "bench")
            .header("idempotency-key", format!("\"{tag}-{i}\""))
            .body(Full::new(Bytes::from_static(b"{\"cents\":4999}")))
            .map_err(Error::backend)?;
        // A kept-alive HTTP/1 connection takes the next request once the last one is done.
        connection.ready().await.map_err(Error::unavailable)?;
        let response = connection
            .send_request(request)
            .await
            .map_err(Error::unavailable)?;
        let (parts, body) = response.into_parts();
        body.collect().await.map_err(Error::unavailable)?;
        if parts.status != StatusCode::CREATED
            || replay != parts.headers.contains_key("idempotent-replayed")
        {
            return Err(Error::backend(format!(
                "unexpected answer {} (replayed: {:?})",
                parts.status,
                parts.headers.get("idempotent-replayed")
            )));
        }
        self.idle
            .lock()
            .map_err(|_| Error::backend("poisoned"))?
            .push(connection);
        Ok(())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(Error::unavailable)?;
        stream.set_nodelay(true).map_err(Error::unavailable)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Error::unavailable)?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
