//! Helpers shared by the integration tests: the shared server, unique prefixes, and
//! throwaway servers for tests that need one of their own.
#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem_core::{Claim, ClaimRequest, IdempotencyStore, Key, Lease, Ttl};
use idem_redis::redis::{self, aio::MultiplexedConnection};
use idem_redis::{RedisStore, RedisTokenStore, RedisTokenStoreBuilder};

pub const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
     --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// The shared test server, from `IDEM_REDIS_URL`.
pub fn url() -> String {
    std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("idem-test:{}:", uuid::Uuid::new_v4().simple())
}

/// What the store offers the conformance suite: payloads up to its default limit.
pub fn capabilities() -> idem_tests::Capabilities {
    idem_tests::Capabilities {
        max_payload: RedisStore::DEFAULT_MAX_PAYLOAD,
        ..Default::default()
    }
}

/// A store on the shared server under a fresh prefix; fails with how to start Redis.
pub async fn store() -> RedisStore {
    store_at(&url(), RedisStore::builder().prefix(unique_prefix())).await
}

pub async fn store_at(url: &str, builder: idem_redis::RedisStoreBuilder) -> RedisStore {
    builder
        .connect(url)
        .await
        .unwrap_or_else(|err| not_reachable(url, &err))
}

/// A token store on the shared server under a fresh prefix; fails with how to start Redis.
pub async fn token_store() -> RedisTokenStore {
    token_store_at(&url(), RedisTokenStore::builder().prefix(unique_prefix())).await
}

pub async fn token_store_at(url: &str, builder: RedisTokenStoreBuilder) -> RedisTokenStore {
    builder
        .connect(url)
        .await
        .unwrap_or_else(|err| not_reachable(url, &err))
}

fn not_reachable(url: &str, err: &idem_core::Error) -> ! {
    panic!(
        "Redis at {url} did not answer ({err}). Start it with:\n    {START_REDIS}\n\
         or point IDEM_REDIS_URL at a running server."
    )
}

/// A plain connection to the shared server, to write under the store's keys directly.
pub async fn raw_connection(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("a valid Redis URL");
    match client.get_multiplexed_async_connection().await {
        Ok(connection) => connection,
        Err(err) => {
            panic!("Redis at {url} did not answer ({err}). Start it with:\n    {START_REDIS}")
        }
    }
}

/// Writes `value` under `redis_key` as a plain string that expires in a minute, as the
/// stores write theirs: a record or token the store did not write.
pub async fn plant(raw: &mut MultiplexedConnection, redis_key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(redis_key)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(raw)
        .await
        .expect("SET");
}

/// The string under `redis_key`, if any.
pub async fn value_of(raw: &mut MultiplexedConnection, redis_key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(redis_key)
        .query_async(raw)
        .await
        .expect("GET")
}

/// Values of other Redis types than a string: the type's name (as `TYPE` says it), the
/// command that writes one, and its arguments.
pub const OTHER_TYPES: [(&str, &str, &[&str]); 3] = [
    ("list", "RPUSH", &["x", "y"]),
    ("hash", "HSET", &["field", "value"]),
    ("set", "SADD", &["member"]),
];

/// Writes a value of another type under `redis_key` with `command args` (one of
/// [`OTHER_TYPES`]), expiring in a minute.
pub async fn plant_other_type(
    raw: &mut MultiplexedConnection,
    redis_key: &str,
    command: &str,
    args: &[&str],
) {
    redis::cmd(command)
        .arg(redis_key)
        .arg(args)
        .query_async::<()>(raw)
        .await
        .expect("write");
    redis::cmd("PEXPIRE")
        .arg(redis_key)
        .arg(60_000)
        .query_async::<()>(raw)
        .await
        .expect("PEXPIRE");
}

/// The lease of a claim that must acquire.
pub async fn acquire(store: &impl IdempotencyStore, request: &ClaimRequest) -> Lease {
    match store.claim(request).await {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("expected to acquire {}, got {other:?}", request.key),
    }
}

pub fn key(id: &str) -> Key {
    Key::new("tests", id).expect("a valid key")
}

pub fn ttl_ms(millis: u64) -> Ttl {
    Ttl::from_millis(millis).expect("a valid TTL")
}

/// How to start the shared Valkey server (built into /opt on its first start).
pub const START_VALKEY: &str = "bash .ci/services valkey";

/// The shared Valkey server (8.1, which offers `SET ... IFEQ`), from `IDEM_VALKEY_URL`.
pub fn valkey_url() -> String {
    std::env::var("IDEM_VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6380".to_owned())
}

/// The `valkey-server` binary `.ci/services valkey` builds, or `IDEM_VALKEY_SERVER`.
fn valkey_server() -> String {
    std::env::var("IDEM_VALKEY_SERVER")
        .unwrap_or_else(|_| "/opt/valkey-8.1.1/valkey-server".to_owned())
}

/// A `redis-server` (or `valkey-server`) of the test's own on a free loopback port, killed
/// when dropped (also when the test fails).
pub struct RedisServer {
    pub port: u16,
    binary: String,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// A server with more command-line options.
    pub fn start_with(extra_args: Vec<String>) -> Self {
        Self::start_with_fresh(move || extra_args.clone())
    }

    /// A server with more command-line options, made anew for each try (one that names a
    /// port of its own draws a fresh one with [`free_port`] each time).
    pub fn start_with_fresh(extra_args: impl Fn() -> Vec<String>) -> Self {
        Self::start_binary("redis-server".to_owned(), extra_args)
    }

    /// A Valkey 8.1 server, which offers `SET ... IFEQ`.
    pub fn start_valkey() -> Self {
        Self::start_binary(valkey_server(), Vec::new)
    }

    /// Starts `binary` on a free port. A port is free when [`free_port`] finds it, not
    /// necessarily when the server binds it a moment later, with other tests starting
    /// servers in parallel: a server that exits at once is started again on other ports.
    fn start_binary(binary: String, extra_args: impl Fn() -> Vec<String>) -> Self {
        Self::start_from(binary, free_port(), extra_args)
    }

    /// A `redis-server` on `port`, or on fresh ports if it exits at once there (the
    /// tests' model of a port taken before the server bound it).
    pub fn start_on(port: u16) -> Self {
        Self::start_from("redis-server".to_owned(), port, Vec::new)
    }

    fn start_from(binary: String, first_port: u16, extra_args: impl Fn() -> Vec<String>) -> Self {
        let mut port = first_port;
        for _ in 0..5 {
            let mut server = Self {
                port,
                binary: binary.clone(),
                extra_args: extra_args(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
            port = free_port();
        }
        panic!("{binary} exited at once on five free ports in a row");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "{} on port {} exited at once (its port taken?)",
            self.binary,
            self.port
        );
    }

    /// Starts the server on its port and waits until it answers: `false` when it exited
    /// first (a port it was to bind is taken).
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "the server is already running");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.extra_args)
            // A replica writes the snapshot of its full sync into its working directory:
            // the temporary one, not the crate's.
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "{} does not start ({err}): redis-server comes with apt-get install \
                     redis-server, valkey-server with {START_VALKEY}",
                    self.binary
                )
            });
        self.child = Some(child);
        self.wait_until_up()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server without closing its connections (SIGSTOP): a hung server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits until the server answers on its port: `false` when its process ended first
    /// (it is then reaped, and the server not running). Another process on the port (the
    /// server of another test that took it first) answers too: only this one's counts.
    fn wait_until_up(&mut self) -> bool {
        let started = Instant::now();
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let pid = self.child.as_ref().map_or(0, Child::id);
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            if answered_by(&client, pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} on port {} did not start", self.binary, self.port);
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }
}

/// Whether the server at `client`'s address is the process `pid` (by `INFO server`), within
/// half a second: a listener that never answers is given up on.
pub fn answered_by(client: &redis::Client, pid: u32) -> bool {
    let patience = Duration::from_millis(500);
    let Ok(mut connection) = client.get_connection_with_timeout(patience) else {
        return false;
    };
    if connection.set_read_timeout(Some(patience)).is_err() {
        return false;
    }
    let me = format!("process_id:{pid}");
    redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut connection)
        .is_ok_and(|info| info.lines().any(|line| line.trim_end() == me))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// `INFO commandstats` as command name → calls.
pub async fn command_calls(connection: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Commands the idempotency store's scripts send with `redis.call`, which Redis counts in
/// `commandstats` too.
pub const INSIDE_SCRIPTS: [&str; 5] = ["time", "get", "set", "del", "pttl"];

/// What one call made the server run, minus the `INFO` that measured it. Meant for a server
/// of the test's own, so no other test's traffic is counted.
pub async fn commands_during<F: Future>(
    stats: &mut MultiplexedConnection,
    call: F,
) -> (F::Output, BTreeMap<String, u64>) {
    let before = command_calls(stats).await;
    let output = call.await;
    let after = command_calls(stats).await;
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

/// The commands the client sent itself: with no script run, every one; with a script run,
/// what is left once its internal calls are set aside (so a plain command sent next to a
/// script must be counted by the test itself, from the exact delta).
pub fn sent_by_client(delta: &BTreeMap<String, u64>) -> u64 {
    if !delta.contains_key("evalsha") {
        return delta.values().sum();
    }
    delta
        .iter()
        .filter(|(name, _)| !INSIDE_SCRIPTS.contains(&name.as_str()))
        .map(|(_, calls)| calls)
        .sum()
}

/// Each of `commands` run once.
pub fn expected(commands: &[&str]) -> BTreeMap<String, u64> {
    commands.iter().map(|c| ((*c).to_owned(), 1)).collect()
}

/// A TCP proxy of the test's own in front of a server: it passes everything on as it
/// comes until [`slow_down`](Self::slow_down), and from then on holds each chunk of the
/// server's replies for its `delay` first: a server that answers every command late.
pub struct SlowProxy {
    pub port: u16,
    slow: Arc<AtomicBool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// A proxy to the server at `url` (`redis://host:port`).
    pub async fn start(url: &str, delay: Duration) -> Self {
        let target = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let slow = Arc::new(AtomicBool::new(false));
        let accepting = tokio::spawn({
            let slow = Arc::clone(&slow);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    tokio::spawn(proxy(client, server, Arc::clone(&slow), delay));
                }
            }
        });
        Self {
            port,
            slow,
            accepting,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, every reply is held for the delay.
    pub fn slow_down(&self) {
        self.slow.store(true, Ordering::SeqCst);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Commands on as they come; replies on after `delay` each once `slow` is set.
async fn proxy(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    slow: Arc<AtomicBool>,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
    });
    let mut buffer = vec![0; 1 << 20];
    while let Ok(read) = from_server.read(&mut buffer).await {
        if read == 0 {
            return;
        }
        let mut held = read;
        if slow.load(Ordering::SeqCst) {
            tokio::time::sleep(delay).await;
            // What came meanwhile goes with it: the replies to one pipeline are late once,
            // not once each.
            while held < buffer.len() {
                match from_server.try_read(&mut buffer[held..]) {
                    Ok(more) if more > 0 => held += more,
                    _ => break,
                }
            }
        }
        if to_client.write_all(&buffer[..held]).await.is_err() {
            return;
        }
    }
}
