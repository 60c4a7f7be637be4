//! A real server on loopback, a real HTTP client, and the stores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request as AxumRequest;
use axum::routing::post;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use idem_core::IdempotencyStore;
use idem_http::{IdempotencyLayer, IdempotencyLayerBuilder, KeyScope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The principal the test's auth layer puts in the extensions, from `x-principal`.
#[derive(Clone, Debug)]
pub struct Principal(pub String);

pub fn by_principal() -> KeyScope {
    KeyScope::principal(|principal: &Principal| principal.0.clone())
}

/// A layer builder with test retention, so records on shared servers clean themselves up.
pub fn builder<S: IdempotencyStore>(store: S, scope: KeyScope) -> IdempotencyLayerBuilder<S> {
    IdempotencyLayer::builder(store, scope).retention(Duration::from_secs(120))
}

/// A unique key, quoted as the draft wants it.
pub fn key(name: &str) -> String {
    format!("\"{name}-{}\"", uuid::Uuid::new_v4().simple())
}

/// An app on loopback behind the layer, with handlers that count their runs.
pub struct App {
    pub addr: SocketAddr,
    runs: Arc<AtomicUsize>,
    /// Permits for `/gated`: each run takes one, so the test decides when it finishes.
    pub gate: Arc<Semaphore>,
    /// Runs of `/gated` that started.
    pub started: Arc<AtomicUsize>,
}

impl App {
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits, generously, until `n` runs of `/gated` have started.
    pub async fn until_started(&self, n: usize) {
        for _ in 0..2_000 {
            if self.started.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{n} gated runs never started");
    }
}

/// Serves the test routes behind `layer`, itself behind the test's auth layer:
/// - `POST /orders`: 201, body `principal:run:request body`, `Location`, `X-Run`;
/// - `POST /status/{code}`: `code` on the first run, 201 afterwards;
/// - `POST /big/{bytes}`: 200 with a body of that many bytes, sent in 1 KiB frames;
/// - `POST /gated`: waits for a permit of `gate`, then 201 `done`.
pub async fn serve<S: IdempotencyStore>(layer: IdempotencyLayer<S>) -> App {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/orders", post(orders).get(|| async { "listing" }))
        .route("/other", post(orders))
        .route("/status/{code}", post(status))
        .route("/big/{bytes}", post(big))
        .route("/gated", post(gated))
        .layer(axum::Extension(Counters {
            runs: Arc::clone(&runs),
            seen: Arc::default(),
            gate: Arc::clone(&gate),
            started: Arc::clone(&started),
        }))
        .layer(layer)
        .layer(axum::middleware::map_request(authenticate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        addr,
        runs,
        gate,
        started,
    }
}

#[derive(Clone)]
struct Counters {
    runs: Arc<AtomicUsize>,
    /// The statuses `/status/{code}` already answered once.
    seen: Arc<std::sync::Mutex<std::collections::HashSet<u16>>>,
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
}

/// The test's auth layer: `x-principal` names the caller.
async fn authenticate(mut request: AxumRequest) -> AxumRequest {
    if let Some(principal) = request.headers().get("x-principal") {
        let principal = Principal(principal.to_str().unwrap_or("?").to_owned());
        request.extensions_mut().insert(principal);
    }
    request
}

fn count(request: &AxumRequest) -> usize {
    let counters = request.extensions().get::<Counters>().expect("counters");
    counters.runs.fetch_add(1, Ordering::SeqCst) + 1
}

async fn orders(request: AxumRequest) -> impl axum::response::IntoResponse {
    let run = count(&request);
    let principal = request
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "-".to_owned(), |p| p.0.clone());
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .expect("request body");
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "text/plain".to_owned()),
            (header::LOCATION, format!("/orders/{run}")),
            (header::HeaderName::from_static("x-run"), run.to_string()),
        ],
        format!("{principal}:{run}:{}", String::from_utf8_lossy(&body)),
    )
}

async fn status(
    axum::extract::Path(code): axum::extract::Path<u16>,
    request: AxumRequest,
) -> (StatusCode, String) {
    let run = count(&request);
    let counters = request.extensions().get::<Counters>().expect("counters");
    let first = counters.seen.lock().expect("not poisoned").insert(code);
    if first {
        let status = StatusCode::from_u16(code).expect("a status");
        (status, format!("first {code}"))
    } else {
        (StatusCode::CREATED, format!("later {run}"))
    }
}

async fn big(
    axum::extract::Path(bytes): axum::extract::Path<usize>,
    request: AxumRequest,
) -> axum::body::Body {
    let run = count(&request);
    let fill = u8::try_from(run % 250).unwrap_or(0);
    let frames: Vec<Result<Bytes, std::io::Error>> = vec![fill; bytes]
        .chunks(1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    axum::body::Body::from_stream(futures::stream::iter(frames))
}

async fn gated(request: AxumRequest) -> (StatusCode, &'static str) {
    let counters = request
        .extensions()
        .get::<Counters>()
        .expect("counters")
        .clone();
    count(&request);
    counters.started.fetch_add(1, Ordering::SeqCst);
    counters
        .gate
        .acquire()
        .await
        .expect("the gate stays open")
        .forget();
    (StatusCode::CREATED, "done")
}

/// What the client got.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem's `type`, for a problem+json answer.
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "a problem: {self:?}"
        );
        let problem: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON");
        problem["type"].as_str().expect("a type").to_owned()
    }
}

/// A request as the client builds it.
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub key: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub body: &'a str,
}

impl<'a> Call<'a> {
    pub fn post(path: &'a str, key: &'a str, principal: &'a str, body: &'a str) -> Self {
        Self {
            method: "POST",
            path,
            key: Some(key),
            principal: Some(principal),
            body,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(self.method)
            .uri(self.path)
            .header(header::HOST, "localhost");
        if let Some(key) = self.key {
            request = request.header("idempotency-key", key);
        }
        if let Some(principal) = self.principal {
            request = request.header("x-principal", principal);
        }
        request
            .body(Full::new(Bytes::copy_from_slice(self.body.as_bytes())))
            .expect("a valid request")
    }
}

/// Sends one request on a connection of its own and reads the whole answer; a minute
/// without one fails the test rather than hanging it.
pub async fn send(addr: SocketAddr, call: &Call<'_>) -> Reply {
    tokio::time::timeout(Duration::from_secs(60), exchange(addr, call))
        .await
        .unwrap_or_else(|_| panic!("no answer to {} {} within a minute", call.method, call.path))
}

async fn exchange(addr: SocketAddr, call: &Call<'_>) -> Reply {
    let mut sender = connect(addr).await;
    let response = sender
        .send_request(call.request())
        .await
        .expect("the server answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn connect(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the test server");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    sender
}

/// A connection that writes raw HTTP/1 bytes and reads each response head as the server
/// sends it, interim (`100 Continue`) responses included, which an HTTP client hides.
pub struct Raw {
    stream: TcpStream,
    /// What was read past the last head.
    read: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the test server");
        Self {
            stream,
            read: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("the server reads");
    }

    /// The next response head (status line and headers), lower-cased; a minute without
    /// one fails the test rather than hanging it.
    pub async fn head(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.read_head())
            .await
            .expect("a response head within a minute")
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.read.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).to_ascii_lowercase();
            }
            let mut chunk = [0; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .expect("the server answers");
            assert!(n > 0, "the connection closed without a response head");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }
}
