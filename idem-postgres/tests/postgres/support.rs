//! What every idem-postgres test needs: the server, pools, fresh tables and keys, and a
//! proxy that counts the statements a store sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idem_core::{Claim, ClaimRequest, Key, Lease, Ttl};
use idem_postgres::sqlx::postgres::PgPoolOptions;
use idem_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use idem_postgres::{PgStore, PgTokenStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The shared tables of tests that isolate themselves by namespace or scope.
pub const SHARED_TABLE: &str = "idem_test_records";
pub const SHARED_TOKEN_TABLE: &str = "idem_test_tokens";

/// The payload limit the tests configure.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

pub const LONG: Duration = Duration::from_secs(30);
pub const RETENTION: Duration = Duration::from_secs(60);

pub fn url() -> String {
    std::env::var("IDEM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unreachable(url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "cannot reach PostgreSQL at {url} (IDEM_POSTGRES_URL): {error}\n\
         Start it with: bash .ci/services postgres   (that is: \
         pg_ctlcluster --skip-systemctl-redirect 15 main start)"
    )
}

/// A pool of up to `max` connections on `url`, named `application` on the server (so a
/// test can find its connections in `pg_stat_activity`), or a panic that says how to start
/// the server.
pub async fn pool_on(url: &str, max: u32, application: &str) -> PgPool {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a valid URL");
    match PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_with(options.application_name(application))
        .await
    {
        Ok(pool) => pool,
        Err(error) => unreachable(url, error),
    }
}

pub async fn pool(max: u32) -> PgPool {
    pool_on(&url(), max, "idem-postgres-tests").await
}

/// A store on the shared, migrated table over a pool of several connections.
pub async fn shared_store() -> PgStore {
    let store = PgStore::builder()
        .table(SHARED_TABLE)
        .max_payload(MAX_PAYLOAD)
        .build(pool(8).await)
        .expect("valid settings");
    store.migrate().await.expect("migrate the shared table");
    store
}

pub async fn shared_token_store() -> PgTokenStore {
    let store = PgTokenStore::builder()
        .table(SHARED_TOKEN_TABLE)
        .build(pool(8).await)
        .expect("valid settings");
    store
        .migrate()
        .await
        .expect("migrate the shared token table");
    store
}

/// A table name of the test's own (`idem_t_<unix seconds>_<random>`), dropped by
/// [`drop_table`]; tables that earlier, crashed runs left behind are swept here after ten
/// minutes.
pub async fn fresh_table(pool: &PgPool) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
         AND tablename LIKE 'idem\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .expect("list test tables");
    for table in tables {
        let made: Option<u64> = table.split('_').nth(2).and_then(|s| s.parse().ok());
        if made.is_some_and(|made| made + 600 < now) {
            drop_table(pool, &table).await;
        }
    }
    format!(
        "idem_t_{now}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn drop_table(pool: &PgPool, table: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS \"{table}\"")))
        .execute(pool)
        .await
        .expect("drop a test table");
}

/// A store on a fresh, migrated table of its own.
pub async fn own_store(pool: PgPool) -> PgStore {
    let table = fresh_table(&pool).await;
    let store = PgStore::builder()
        .table(table)
        .build(pool)
        .expect("valid settings");
    store.migrate().await.expect("migrate");
    store
}

/// A namespace no other test uses.
pub fn namespace(test: &str) -> String {
    format!("idem-postgres.{test}.{}", uuid::Uuid::new_v4().simple())
}

pub fn key(namespace: &str, id: &str) -> Key {
    Key::new(namespace, id).expect("valid key")
}

pub fn ttl(duration: Duration) -> Ttl {
    Ttl::new(duration).expect("valid TTL")
}

pub fn request(key: &Key, lease: Duration) -> ClaimRequest {
    ClaimRequest::new(key.clone(), ttl(lease))
}

pub fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Runs one SQL text, for setting rows up by hand; the rows it affected.
pub async fn exec(pool: &PgPool, statement: String) -> u64 {
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(pool)
        .await
        .expect("run a test statement")
        .rows_affected()
}

/// A key's raw row, every column, as one string: to show that a call changed nothing.
pub async fn raw_row(store: &PgStore, key: &Key) -> Option<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT concat_ws('|', state, encode(fingerprint, 'hex'), encode(owner, 'hex'), fencing, \
         lease_until, expires_at, encode(payload, 'hex')) \
         FROM \"{}\" WHERE namespace = $1 AND idem_key = $2",
        store.table()
    )))
    .bind(key.namespace().as_bytes())
    .bind(key.id().as_bytes())
    .fetch_optional(store.pool())
    .await
    .expect("read a raw row")
}

/// A loopback proxy in front of the server that counts the statements clients run through
/// it: each extended-protocol Execute and each simple Query message. Preparing a statement
/// (Parse, Describe) is not running one.
pub struct CountingProxy {
    pub url: String,
    statements: Arc<AtomicU64>,
}

impl CountingProxy {
    pub async fn start() -> Self {
        let server = server_address();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let statements = Arc::new(AtomicU64::new(0));
        let counter = statements.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(&server).await else {
                        return;
                    };
                    let (mut from_server, to_server) = upstream.into_split();
                    let (mut from_client, mut to_client) = client.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let _ = relay_counting(&mut from_client, to_server, &counter).await;
                });
            }
        });
        let url = format!("postgres://postgres@127.0.0.1:{port}/test?sslmode=disable");
        Self { url, statements }
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }
}

fn server_address() -> String {
    let options: sqlx::postgres::PgConnectOptions = url().parse().expect("a valid URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// Copies the client's messages to the server, counting Execute ('E') and Query ('Q').
async fn relay_counting(
    from_client: &mut tokio::net::tcp::OwnedReadHalf,
    mut to_server: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    // The startup message has no type byte: a length, then the rest. An SSL or GSS
    // encryption request (refused by a server without TLS) comes first, without one too.
    loop {
        let length = from_client.read_u32().await?;
        let mut body = vec![0; length.saturating_sub(4) as usize];
        from_client.read_exact(&mut body).await?;
        let mut message = length.to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        to_server.write_all(&message).await?;
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if !matches!(code, Some(80_877_103 | 80_877_104)) {
            break;
        }
    }
    loop {
        let tag = from_client.read_u8().await?;
        let length = from_client.read_u32().await?;
        let mut body = vec![0; length.saturating_sub(4) as usize];
        from_client.read_exact(&mut body).await?;
        if tag == b'E' || tag == b'Q' {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let mut message = Vec::with_capacity(5 + body.len());
        message.push(tag);
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(&body);
        to_server.write_all(&message).await?;
    }
}

/// Statements `call` sent through `proxy`.
pub async fn count<F: std::future::Future>(proxy: &CountingProxy, call: F) -> (u64, F::Output) {
    let before = proxy.statements();
    let output = call.await;
    (proxy.statements() - before, output)
}
