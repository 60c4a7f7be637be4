//! The HTTP rows: an axum handler behind `IdempotencyLayer` against the same handler bare,
//! driven by a hyper client over loopback.
//!
//! The servers run on a runtime of their own, on their own threads, so the load generator
//! (this process's main runtime) and the server never share a scheduler: the figures are
//! the server's cost as a client sees it. Connections are kept alive and reused, one per
//! concurrent task, as a load balancer would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use idem::http::{IdempotencyLayer, KeyScope};
use idem::redis::RedisStore;
use idem::{Error, IdempotencyStore, MemoryStore};

use crate::backend::fresh_tag;
use crate::measure::{Mode, compare, keys_needed, modes};
use crate::report::Row;
use crate::settings::Settings;

/// What the floor side is.
const FLOOR: &str = "the same axum handler, bare";

/// Both stores' rows: new keys and replays, at one connection and at many.
pub async fn rows(settings: &Settings) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    rows.extend(store_rows("http+mem", MemoryStore::new(), settings).await?);
    let url =
        std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("idem-bench-http:{}:", fresh_tag());
    let redis = RedisStore::builder().prefix(prefix).connect(&url).await?;
    rows.extend(store_rows("http+redis", redis, settings).await?);
    Ok(rows)
}

async fn store_rows<S: IdempotencyStore>(
    backend: &'static str,
    store: S,
    settings: &Settings,
) -> Result<Vec<Row>, Error> {
    // Records outlive the run by a minute at most.
    let layer = IdempotencyLayer::builder(store, KeyScope::global())
        .retention(Duration::from_secs(60))
        .build()?;
    let servers = Servers::start(layer)?;
    let mut rows = Vec::new();
    for mode in modes(settings) {
        for operation in [Operation::NewKey, Operation::Replay] {
            let tag = fresh_tag();
            let idem = Client::new(servers.idem);
            let bare = Client::new(servers.bare);
            if operation == Operation::Replay {
                seed(&idem, &tag, keys_needed(settings, mode)).await?;
            }
            let figures = compare(
                settings,
                mode,
                {
                    let (idem, tag) = (idem.clone(), Arc::clone(&tag));
                    move |i| {
                        let (idem, tag) = (idem.clone(), Arc::clone(&tag));
                        async move { idem.pay(&tag, i, operation == Operation::Replay).await }
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

/// Issue 17's targets: on the memory store at many connections, new keys at 0.7× a bare
/// handler and replays at 0.9×.
fn target(backend: &str, operation: Operation, mode: Mode) -> Option<f64> {
    match (backend, operation, mode) {
        ("http+mem", Operation::NewKey, Mode::Throughput(_)) => Some(0.7),
        ("http+mem", Operation::Replay, Mode::Throughput(_)) => Some(0.9),
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

/// The bare server and the one behind the layer, on a runtime of their own.
struct Servers {
    bare: SocketAddr,
    idem: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start<S: IdempotencyStore>(layer: IdempotencyLayer<S>) -> Result<Self, Error> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let bare = Router::new().route("/charges", post(charge));
                let idem = Router::new().route("/charges", post(charge)).layer(layer);
                match (bind(bare).await, bind(idem).await) {
                    (Ok(bare), Ok(idem)) => {
                        let _ = ready_tx.send(Ok((bare, idem)));
                        let _ = stopped.await;
                    }
                    (Err(error), _) | (_, Err(error)) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                    }
                }
            });
        });
        let (bare, idem) = ready_rx
            .recv()
            .map_err(|e| Error::backend(format!("the server thread died: {e}")))?
            .map_err(|e| Error::backend(format!("starting the servers: {e}")))?;
        Ok(Self {
            bare,
            idem,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
