//! The server the tests run against: [`PostgreSql`], the [`TestServer`] of idem-sql's shared
//! suite (its pools and fixture SQL), and a proxy that counts the statements a store sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idem_postgres::PgDialect;
use idem_postgres::sqlx::postgres::{PgPoolOptions, PgRow};
use idem_postgres::sqlx::{self, AssertSqlSafe, PgPool, Row};
use idem_sql::testing::{StatementCounter, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use idem_sql::testing::{
    LONG, RETENTION, SHARED_TABLE, acquired, key, namespace, request, shared_store, ttl,
};

/// PostgreSQL at `IDEM_POSTGRES_URL`.
pub struct PostgreSql;

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

impl TestServer for PostgreSql {
    type Dialect = PgDialect;
    type Counter = CountingProxy;
    const QUOTE: char = '"';
    /// One statement either way: the CTE that locks, vacates or deletes, and answers.
    const REMOVAL_STATEMENTS: [u64; 2] = [1, 1];
    /// One DELETE either way.
    const PURGE_BATCH_STATEMENTS: [u64; 2] = [1, 1];

    fn url() -> String {
        url()
    }

    async fn pool(max: u32) -> PgPool {
        pool(max).await
    }

    async fn counted_pool() -> (PgPool, CountingProxy) {
        let proxy = CountingProxy::start().await;
        let pool = pool_on(&proxy.url, 1, "idem-postgres-statements").await;
        (pool, proxy)
    }

    fn unreachable_pool() -> PgPool {
        // Nothing listens on port 1 of the loopback.
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .expect("a well-formed URL")
    }

    /// `idem_t_<unix seconds>_<random>`; tables that earlier, crashed runs left behind are
    /// swept after ten minutes.
    async fn fresh_table(pool: &PgPool) -> String {
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
                idem_sql::testing::drop_table::<Self>(pool, &table).await;
            }
        }
        format!(
            "idem_t_{now}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    }

    async fn exec(pool: &PgPool, sql: String) -> u64 {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("run a test statement")
            .rows_affected()
    }

    /// Columns, constraints, indexes and comment, one line each.
    async fn definition(pool: &PgPool, table: &str) -> String {
        let parts: Vec<String> = sqlx::query_scalar(
            "SELECT format('column %s %s %s %s', a.attnum, a.attname, \
               format_type(a.atttypid, a.atttypmod), a.attnotnull) \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
               AND NOT a.attisdropped \
             UNION ALL SELECT 'constraint ' || pg_get_constraintdef(oid) FROM pg_constraint \
               WHERE conrelid = to_regclass($1) \
             UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE tablename = $2 \
               AND schemaname = current_schema() \
             UNION ALL SELECT 'comment ' || obj_description(to_regclass($1), 'pg_class') \
             ORDER BY 1",
        )
        .bind(format!("\"{table}\""))
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("read a table's definition");
        assert!(
            parts
                .iter()
                .any(|part| part.starts_with("index CREATE INDEX")),
            "{parts:?}"
        );
        parts.join("\n").replace(table, "TABLE")
    }

    fn text(row: &PgRow) -> String {
        row.try_get(0).expect("a text column")
    }

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn raw_row(table: &str) -> String {
        format!(
            "SELECT concat_ws('|', state, encode(fingerprint, 'hex'), encode(owner, 'hex'), \
             fencing, lease_until, expires_at, encode(payload, 'hex')) \
             FROM \"{table}\" WHERE namespace = $1 AND idem_key = $2"
        )
    }

    fn raw_token_row(table: &str) -> String {
        format!(
            "SELECT concat_ws('|', encode(scope, 'hex'), coalesce(used_at::text, '-'), \
             coalesce(encode(used_by, 'hex'), '-'), expires_at) FROM \"{table}\" WHERE token = $1"
        )
    }

    fn token_consumer_hex(table: &str) -> String {
        format!("SELECT coalesce(encode(used_by, 'hex'), '-') FROM \"{table}\" WHERE token = $1")
    }

    fn kept_for_ms(table: &str) -> String {
        format!(
            "SELECT floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint::text \
             FROM \"{table}\" WHERE namespace = $1 AND idem_key = $2"
        )
    }

    fn token_kept_for_ms(table: &str) -> String {
        format!(
            "SELECT floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint::text \
             FROM \"{table}\" WHERE token = $1"
        )
    }

    fn payload_hex(table: &str) -> String {
        format!(
            "SELECT encode(payload, 'hex') FROM \"{table}\" WHERE namespace = $1 AND idem_key = $2"
        )
    }

    fn count_rows(table: &str, condition: &str) -> String {
        format!("SELECT count(*)::text FROM \"{table}\" WHERE {condition}")
    }

    fn orders_table(table: &str) -> String {
        format!(
            "CREATE TABLE \"{table}\" (client_key bytea PRIMARY KEY, amount int NOT NULL, \
             fencing bigint NOT NULL)"
        )
    }

    fn foreign_table(table: &str) -> String {
        format!("CREATE TABLE \"{table}\" (id int PRIMARY KEY)")
    }

    fn set_comment(table: &str, comment: &str) -> String {
        format!("COMMENT ON TABLE \"{table}\" IS '{comment}'")
    }

    fn plant_lapsed_fencing(table: &str) -> String {
        format!(
            "UPDATE \"{table}\" SET fencing = $1, \
             lease_until = clock_timestamp() - interval '1 second' \
             WHERE namespace = $2 AND idem_key = $3"
        )
    }

    fn undecodable_scope(table: &str, token: &str) -> String {
        format!(
            "INSERT INTO \"{table}\" (token, scope, used_at, expires_at) \
             VALUES ('{token}'::bytea, '\\xff00'::bytea, NULL, \
             clock_timestamp() + interval '1 minute')"
        )
    }

    const EXPIRE: &'static str = "expires_at = clock_timestamp() - interval '1 second'";

    fn corruptions() -> &'static [(&'static str, &'static str, bool)] {
        &[
            ("bad-state", "state = 9", false),
            ("huge-state", "state = 300", false),
            ("no-payload", "payload = NULL", true),
            ("short-fingerprint", "fingerprint = '\\x0102'::bytea", false),
            ("short-owner", "owner = '\\x01'::bytea", false),
            ("no-lease", "lease_until = NULL", false),
        ]
    }
}

impl StatementCounter for CountingProxy {
    async fn statements(&self) -> u64 {
        self.statements.load(Ordering::SeqCst)
    }
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
