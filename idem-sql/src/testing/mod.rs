//! The SQL stores' own suite, written once for every engine: what the idem-tests conformance
//! suite does not cover, or covers only in general terms (the schema and its migration,
//! rows planted by hand, statement counts, the transactional mode, concurrent claims over a
//! pool). Behind the `testing` feature, for the dialect crates' test binaries.
//!
//! A backend's test binary implements [`TestServer`] on a type of its own (its pool, its
//! fixture SQL) and stamps out one `#[test]` per check with [`sql_conformance!`]:
//!
//! ```ignore
//! idem_sql::sql_conformance!(crate::support::MariaDb);
//! ```
//!
//! Each check is a plain `async fn` generic over the server, in the module of its subject
//! ([`claims`], [`schema`], [`tokens`], [`transactional`], [`maintenance`], [`statements`]);
//! each works in a namespace, scope or table of its own, so they run in parallel against one
//! shared server.
//!
//! [`sql_conformance!`]: crate::sql_conformance

// Test support: every helper panics on what it cannot set up, by design, and its results are
// used or asserted by the checks.
#![allow(clippy::missing_panics_doc, clippy::must_use_candidate)]

pub mod claims;
pub mod maintenance;
pub mod sabotage;
pub mod schema;
pub mod statements;
pub mod tokens;
pub mod transactional;

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use idem_core::{Claim, ClaimRequest, Key, Lease, Ttl};

use crate::dialect::{Pool, Row};
use crate::{Arg, PurgeExpired, SqlDialect, SqlStore, SqlTokenStore, Statement};

/// A test server of one engine: its dialect, how to reach it, and the fixture SQL the
/// checks set rows up and look at rows with. Implemented by each backend's test binary on a
/// type of its own.
pub trait TestServer: Send + Sync + 'static {
    /// The engine.
    type Dialect: SqlDialect;

    /// Counts the statements run on [`counted_pool`](Self::counted_pool).
    type Counter: StatementCounter;

    /// How the engine quotes a table name.
    const QUOTE: char;

    /// The statements a removal sends: of a released key (its trace stays), and of a
    /// claimed key.
    const REMOVAL_STATEMENTS: [u64; 2];

    /// The statements one purge batch sends: finding no expired row, and deleting some.
    const PURGE_BATCH_STATEMENTS: [u64; 2];

    /// The URL of the server.
    fn url() -> String;

    /// A pool of up to `max` connections, or a panic that says how to start the server.
    fn pool(max: u32) -> impl Future<Output = Pool<Self::Dialect>> + Send;

    /// A pool of one connection, and what counts the statements it runs.
    fn counted_pool() -> impl Future<Output = (Pool<Self::Dialect>, Self::Counter)> + Send;

    /// A pool on a loopback port where nothing listens, that gives up quickly.
    fn unreachable_pool() -> Pool<Self::Dialect>;

    /// A table name of the test's own (sweeping what crashed runs left behind).
    fn fresh_table(pool: &Pool<Self::Dialect>) -> impl Future<Output = String> + Send;

    /// Runs SQL text (one or more statements, no arguments); the rows it affected.
    fn exec(pool: &Pool<Self::Dialect>, sql: String) -> impl Future<Output = u64> + Send;

    /// A table's whole definition (columns, keys, indexes, comment), its name replaced by
    /// `TABLE`, to compare two tables.
    fn definition(pool: &Pool<Self::Dialect>, table: &str) -> impl Future<Output = String> + Send;

    /// The first column of a row the fixture SQL below reads, as text.
    fn text(row: &Row<Self::Dialect>) -> String;

    /// The `n`-th placeholder (from 1): `?` or `$n`.
    fn placeholder(n: usize) -> String;

    /// A statement that reads a key's raw row (namespace, key bound), every column as
    /// one text, so a check can show that a call changed nothing.
    fn raw_row(table: &str) -> String;

    /// A statement that reads a token's raw row (token bound), every column as one text
    /// (NULLs shown), so a check can show that a call changed nothing and who used it.
    fn raw_token_row(table: &str) -> String;

    /// A statement that reads a token's stored consumer (token bound) as lowercase hex,
    /// `-` when it is NULL.
    fn token_consumer_hex(table: &str) -> String;

    /// A statement that reads how many milliseconds a key's row (namespace, key bound) has
    /// until its `expires_at` by the server's clock, as text (negative once past).
    fn kept_for_ms(table: &str) -> String;

    /// A statement that reads how many milliseconds a token's row (token bound) has until
    /// its `expires_at` by the server's clock, as text (negative once past).
    fn token_kept_for_ms(table: &str) -> String;

    /// A statement that reads a key's payload (namespace, key bound) as lowercase hex.
    fn payload_hex(table: &str) -> String;

    /// A statement that counts the rows of a table that meet `condition`, as text.
    fn count_rows(table: &str, condition: &str) -> String;

    /// The business table of the transactional checks: a `client_key` binary primary key
    /// and a `fencing` the engine binds [`Arg::Fencing`] to.
    fn orders_table(table: &str) -> String;

    /// A table of some other application, with no idem comment.
    fn foreign_table(table: &str) -> String;

    /// Sets a table's comment.
    fn set_comment(table: &str, comment: &str) -> String;

    /// A statement that sets a key's fencing number (bound first, then namespace, key) and
    /// lets its lease lapse.
    fn plant_lapsed_fencing(table: &str) -> String;

    /// Inserts a live token `token` whose stored scope is not UTF-8.
    fn undecodable_scope(table: &str, token: &str) -> String;

    /// The corruptions a record row can suffer on this engine: a name, the `SET` clause,
    /// and whether the key is completed first. Prepared by
    /// [`prepare_corruption`](Self::prepare_corruption).
    fn corruptions() -> &'static [(&'static str, &'static str, bool)];

    /// The `SET` clause that puts a row's `expires_at` a second in the past by the
    /// server's clock.
    const EXPIRE: &'static str;

    /// DDL that lets a table take [`corruptions`](Self::corruptions) the engine's own
    /// types would refuse (a wider column, say); none by default.
    fn prepare_corruption(table: &str) -> Option<String> {
        let _ = table;
        None
    }

    /// DDL that lets a token table take a consumer of another length than 16 bytes, where
    /// the engine's column would pad or refuse one; none by default.
    fn prepare_token_corruption(table: &str) -> Option<String> {
        let _ = table;
        None
    }
}

/// What counts the statements a pool of one connection runs: the server's session counter,
/// or a proxy on the wire.
pub trait StatementCounter: Send + Sync {
    /// Statements counted so far, including any this reading itself runs.
    fn statements(&self) -> impl Future<Output = u64> + Send;
}

/// The shared tables of checks that isolate themselves by namespace or scope.
pub const SHARED_TABLE: &str = "idem_test_records";
/// See [`SHARED_TABLE`].
pub const SHARED_TOKEN_TABLE: &str = "idem_test_tokens";
/// The payload limit the shared store has.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// A lease no check outlives.
pub const LONG: Duration = Duration::from_secs(30);
/// A retention no check outlives.
pub const RETENTION: Duration = Duration::from_secs(60);

/// Runs a check on a multi-threaded runtime of its own, as each stamped `#[test]` does.
pub fn run<F: Future>(check: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(check)
}

/// A store on the shared, migrated table over a pool of eight connections.
pub async fn shared_store<S: TestServer>() -> SqlStore<S::Dialect> {
    let store = SqlStore::<S::Dialect>::builder()
        .table(SHARED_TABLE)
        .max_payload(MAX_PAYLOAD)
        .build(S::pool(8).await)
        .expect("valid settings");
    store.migrate().await.expect("migrate the shared table");
    // Keeps the shared table small; expired rows already count as absent to every check.
    store
        .purge_expired(10_000)
        .await
        .expect("purge the shared table");
    store
}

/// A token store on the shared, migrated token table.
pub async fn shared_token_store<S: TestServer>() -> SqlTokenStore<S::Dialect> {
    let store = SqlTokenStore::<S::Dialect>::builder()
        .table(SHARED_TOKEN_TABLE)
        .build(S::pool(8).await)
        .expect("valid settings");
    store
        .migrate()
        .await
        .expect("migrate the shared token table");
    store
        .purge_expired(10_000)
        .await
        .expect("purge the shared token table");
    store
}

/// A store on a fresh, migrated table of its own over `pool`; [`drop_table`] it after.
pub async fn own_store<S: TestServer>(pool: Pool<S::Dialect>) -> SqlStore<S::Dialect> {
    let table = S::fresh_table(&pool).await;
    let store = SqlStore::<S::Dialect>::builder()
        .table(table)
        .build(pool)
        .expect("valid settings");
    store.migrate().await.expect("migrate");
    store
}

/// A token store on a fresh, migrated table of its own over `pool`.
pub async fn own_token_store<S: TestServer>(pool: Pool<S::Dialect>) -> SqlTokenStore<S::Dialect> {
    let table = S::fresh_table(&pool).await;
    let store = SqlTokenStore::<S::Dialect>::builder()
        .table(table)
        .build(pool)
        .expect("valid settings");
    store.migrate().await.expect("migrate");
    store
}

/// A table name as the engine quotes it.
pub fn quoted<S: TestServer>(table: &str) -> String {
    format!("{q}{table}{q}", q = S::QUOTE)
}

/// Drops a table of a check's own.
pub async fn drop_table<S: TestServer>(pool: &Pool<S::Dialect>, table: &str) {
    S::exec(pool, format!("DROP TABLE IF EXISTS {}", quoted::<S>(table))).await;
}

/// Runs a fixture statement with arguments; the rows it affected.
pub async fn execute<S: TestServer>(pool: &Pool<S::Dialect>, sql: String, args: &[Arg<'_>]) -> u64 {
    let mut conn = pool.acquire().await.expect("a connection");
    S::Dialect::execute(&mut *conn, &Statement::new(sql), args)
        .await
        .expect("run a fixture statement")
}

/// Runs a fixture read with arguments; its first column as text, if it found a row.
pub async fn read_text<S: TestServer>(
    pool: &Pool<S::Dialect>,
    sql: String,
    args: &[Arg<'_>],
) -> Option<String> {
    let mut conn = pool.acquire().await.expect("a connection");
    S::Dialect::fetch_optional(&mut *conn, &Statement::new(sql), args)
        .await
        .expect("run a fixture read")
        .map(|row| S::text(&row))
}

/// The arguments that pick a key's row.
pub fn row_key(key: &Key) -> [Arg<'_>; 2] {
    [
        Arg::Bytes(key.namespace().as_bytes()),
        Arg::Bytes(key.id().as_bytes()),
    ]
}

/// A key's raw row, every column as one text, `None` when there is no row.
pub async fn raw_row<S: TestServer>(store: &SqlStore<S::Dialect>, key: &Key) -> Option<String> {
    read_text::<S>(store.pool(), S::raw_row(store.table()), &row_key(key)).await
}

/// How many rows a table holds.
pub async fn count_rows<S: TestServer>(pool: &Pool<S::Dialect>, table: &str) -> u64 {
    read_text::<S>(pool, S::count_rows(table, "1 = 1"), &[])
        .await
        .and_then(|n| n.parse().ok())
        .expect("a row count")
}

/// Sets a key's row by hand (`set` is the `SET` clause); exactly one row must match.
pub async fn update_row<S: TestServer>(store: &SqlStore<S::Dialect>, key: &Key, set: &str) {
    let sql = format!(
        "UPDATE {} SET {set} WHERE namespace = {} AND idem_key = {}",
        quoted::<S>(store.table()),
        S::placeholder(1),
        S::placeholder(2)
    );
    assert_eq!(execute::<S>(store.pool(), sql, &row_key(key)).await, 1);
}

/// Sets a key's fencing number by hand and lets its lease lapse.
pub async fn plant_lapsed_fencing<S: TestServer>(
    store: &SqlStore<S::Dialect>,
    key: &Key,
    fencing: u64,
) {
    let [namespace, id] = row_key(key);
    let args = [Arg::Fencing(fencing), namespace, id];
    let sql = S::plant_lapsed_fencing(store.table());
    assert_eq!(execute::<S>(store.pool(), sql, &args).await, 1);
}

/// Statements `call` sent, net of what reading the counter itself runs.
pub async fn count<C: StatementCounter, F: Future>(counter: &C, call: F) -> (u64, F::Output) {
    let a = counter.statements().await;
    let b = counter.statements().await;
    let output = call.await;
    let c = counter.statements().await;
    ((c - b) - (b - a), output)
}

/// Bytes as lowercase hex, as [`TestServer::payload_hex`] reads them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// A namespace (or scope) no other check uses.
pub fn namespace<S: TestServer>(check: &str) -> String {
    format!(
        "{}.{check}.{}",
        S::Dialect::NAME,
        uuid::Uuid::new_v4().simple()
    )
}

/// A key, which must be valid.
pub fn key(namespace: &str, id: &str) -> Key {
    Key::new(namespace, id).expect("valid key")
}

/// A TTL, which must be valid.
pub fn ttl(duration: Duration) -> Ttl {
    Ttl::new(duration).expect("valid TTL")
}

/// A claim of `key` for a lease of `lease`, by a new owner.
pub fn request(key: &Key, lease: Duration) -> ClaimRequest {
    ClaimRequest::new(key.clone(), ttl(lease))
}

/// The lease of a claim that must have acquired its key.
pub fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// The idem-tests suites, which [`sql_conformance!`](crate::sql_conformance) runs too.
#[doc(hidden)]
pub use idem_tests as __idem_tests;

/// Every suite a SQL store runs, one `#[test]` per check, on the shared tables of the
/// server `T` (a [`TestServer`] named by a path from the crate root, such as
/// `crate::support::MariaDb`): `idem_sql::sql_conformance!(T)`.
///
/// The idem-tests conformance suites land in their usual modules (`conformance`,
/// `token_conformance`, `executor_conformance`, and the fault checks through
/// [`sabotage`] in `fault_conformance` and `token_fault_conformance`); the checks of
/// [`idem_sql::testing`](crate::testing) in a `sql_conformance` module, with a module per
/// subject.
#[macro_export]
macro_rules! sql_conformance {
    ($server:ty) => {
        $crate::testing::__idem_tests::conformance!(
            $crate::testing::shared_store::<$server>,
            $crate::testing::__idem_tests::Capabilities {
                max_payload: $crate::testing::MAX_PAYLOAD,
                ..Default::default()
            }
        );
        $crate::testing::__idem_tests::token_conformance!(
            $crate::testing::shared_token_store::<$server>
        );
        $crate::testing::__idem_tests::executor_conformance!(
            $crate::testing::shared_store::<$server>
        );
        $crate::testing::__idem_tests::fault_conformance!(
            $crate::testing::sabotage::record_sabotage::<$server>,
            $crate::testing::__idem_tests::Capabilities {
                max_payload: $crate::testing::MAX_PAYLOAD,
                ..Default::default()
            }
        );
        $crate::testing::__idem_tests::token_fault_conformance!(
            $crate::testing::sabotage::token_sabotage::<$server>
        );

        /// idem-sql's SQL suite on this server, one test per check.
        mod sql_conformance {
            $crate::__sql_checks! { $server;
                claims: sixty_four_claims_of_a_new_key_one_winner,
                    sixty_four_takeovers_of_a_lapsed_lease_one_winner,
                    payloads_are_stored_byte_for_byte,
                    fencing_grows_on_every_takeover_and_restarts_once_forgotten,
                    fencing_stops_at_the_largest_number_the_column_holds,
                    a_stale_lease_changes_nothing,
                    the_same_owner_gets_its_lease_back_extended,
                    fingerprints_are_compared_only_on_remembered_records,
                    keys_are_distinct_byte_for_byte;
                maintenance: rows_that_do_not_decode_are_corrupt_records,
                    expired_rows_that_do_not_decode_are_absent,
                    purge_removes_only_expired_rows_in_batches,
                    an_unreachable_server_is_unavailable,
                    a_pool_of_no_connections_is_invalid_input,
                    a_zero_statement_timeout_is_invalid_input,
                    an_unbounded_statement_timeout_serves_calls,
                    a_call_never_waits_longer_than_the_statement_timeout;
                schema: migrating_twice_is_harmless,
                    the_printed_ddl_is_what_runs,
                    a_previous_token_table_is_migrated_and_its_used_tokens_stay_used,
                    a_foreign_table_of_the_same_name_is_refused,
                    neither_store_takes_the_other_kind_of_table,
                    table_names_are_identifiers_only;
                statements: a_first_claim_and_each_finish_are_one_statement,
                    issue_and_a_winning_consume_are_one_statement_each;
                tokens: an_expired_token_is_reissued_once_and_a_live_one_never_overwritten,
                    consume_checks_in_the_cores_order,
                    purging_removes_only_expired_tokens,
                    a_stored_scope_that_does_not_decode_is_corrupt,
                    a_consumers_resend_is_consumed_again_and_changes_nothing,
                    a_stored_consumer_that_is_not_sixteen_bytes_is_corrupt,
                    an_unreachable_server_is_unavailable,
                    an_insert_refused_otherwise_is_its_error_not_a_collision,
                    expired_tokens_are_reissued_purged_and_live_ones_never_overwritten;
                transactional: rollback_frees_the_key_and_leaves_no_row,
                    commit_stores_both_and_the_key_replays,
                    a_concurrent_claim_waits_for_the_transaction;
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sql_checks {
    ($server:ty; $($module:ident: $($name:ident),+;)+) => {
        $(
            mod $module {
                $(
                    #[test]
                    fn $name() {
                        $crate::testing::run($crate::testing::$module::$name::<$server>());
                    }
                )+
            }
        )+
    };
}
