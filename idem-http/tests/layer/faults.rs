//! A Redis server of the test's own, paused (SIGSTOP) while a request waits on it: what a
//! request dropped mid-claim leaves behind.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use idem_http::{IdempotencyLayer, KeyScope};
use idem_redis::RedisStore;
use tower::{Layer, ServiceExt, service_fn};

/// A `redis-server` on a free loopback port, killed (by its PID) when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Started on a free port; one that exits at once (its port taken, between the draw and
    /// its bind, by another test's server) is started again on another.
    fn start() -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let mut server = Self { port, child };
            if server.answers() {
                return server;
            }
        }
        panic!("redis-server exited at once on five free ports in a row");
    }

    /// Waits until this server's process answers on its port (`INFO server` names its
    /// PID: the server of another test that took the port would answer too); `false` once
    /// the process has exited.
    fn answers(&mut self) -> bool {
        let client = idem_redis::redis::Client::open(self.url()).expect("a valid URL");
        let me = format!("process_id:{}", self.child.id());
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            let patience = Duration::from_millis(500);
            if let Ok(mut connection) = client.get_connection_with_timeout(patience)
                && connection.set_read_timeout(Some(patience)).is_ok()
                && idem_redis::redis::cmd("INFO")
                    .arg("server")
                    .query::<String>(&mut connection)
                    .is_ok_and(|info| info.lines().any(|line| line.trim_end() == me))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A store on the server.
    async fn store(&self) -> RedisStore {
        RedisStore::builder()
            .connect(&self.url())
            .await
            .expect("a store on the server that answers")
    }

    /// Stops the server without closing its connections: commands sent meanwhile wait
    /// in its socket and are applied when it resumes.
    fn pause(&self) {
        self.signal("-STOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post() -> Request<Body> {
    Request::post("/x")
        .header("idempotency-key", "\"mid-claim\"")
        .body(Body::empty())
        .expect("a valid request")
}

/// A client that hangs up while its claim is on the way to the store: the store applies
/// the claim, but nobody is left to run the handler or free the key. The handler never
/// started, so the key must not stay blocked for the whole lease: its retry used to get
/// 409 until the lease ended (a minute here, 30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_mid_claim_does_not_block_its_key_for_a_lease() {
    let server = PrivateRedis::start();
    let store = server.store().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let runs = Arc::clone(&runs);
        move |_: Request<Body>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Body::from("done"));
                *response.status_mut() = StatusCode::CREATED;
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let layer = IdempotencyLayer::builder(store, KeyScope::global())
        .lease_ttl(Duration::from_secs(60))
        .build()
        .expect("valid");
    let service = layer.layer(inner);

    server.pause();
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), service.clone().oneshot(post())).await;
    assert!(dropped.is_err(), "the claim waits on the paused server");
    server.resume();

    let mut answer = StatusCode::CONFLICT;
    for _ in 0..400 {
        answer = service
            .clone()
            .oneshot(post())
            .await
            .expect("infallible")
            .status();
        if answer != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        answer,
        StatusCode::CREATED,
        "the key of a request that never ran its handler is freed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
