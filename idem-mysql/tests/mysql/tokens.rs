//! `MySqlTokenStore` against the real server at `IDEM_MYSQL_URL`: what the token conformance
//! suite does not cover. Each test works on a fresh table of its own.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    Consumption, Error, Rejection, Scope, Token, TokenGenerator, TokenStore, Tokens, UuidV7Tokens,
};
use idem_mysql::sqlx::mysql::MySqlPoolOptions;
use idem_mysql::sqlx::{self, AssertSqlSafe};
use idem_mysql::{MySqlStore, MySqlTokenStore, PurgeExpired};
use tokio::sync::Barrier;

use crate::support::*;

/// Long enough that a loaded machine runs the steps that need the token live inside it.
const SHORT: Duration = Duration::from_millis(1_500);
/// Long enough past [`SHORT`] for the server's clock to have passed it.
const PAST_SHORT: Duration = Duration::from_millis(2_000);

/// A token store on a fresh, migrated table of its own, over `max_connections`.
async fn own_token_store(max_connections: u32) -> MySqlTokenStore {
    let pool = pool(max_connections).await;
    let table = fresh_table(&pool).await;
    let store = MySqlTokenStore::builder()
        .table(&table)
        .build(pool)
        .expect("valid table name");
    store.migrate().await.expect("migrate");
    store
}

async fn drop_own(store: &MySqlTokenStore) {
    drop_table(store.pool(), store.table()).await;
}

/// A fresh token in the default generator's format, as [`Tokens::issue`] would make.
fn new_token(store: &MySqlTokenStore) -> Token {
    Tokens::new(store.clone())
        .parse(&UuidV7Tokens.generate())
        .expect("a generated token is well formed")
}

fn scope(name: &str) -> Scope {
    Scope::new(format!("idem-mysql.token.{name}")).expect("valid scope")
}

fn is_duplicate(outcome: &Result<(), Error>) -> bool {
    matches!(outcome, Err(Error::TokenCollision))
}

const REJECTED_USED: Consumption = Consumption::Rejected(Rejection::AlreadyUsed);

#[tokio::test]
async fn issue_and_a_winning_consume_are_one_statement_each() {
    let store = own_token_store(1).await;
    let pool = store.pool().clone();
    let alice = scope("alice");
    let long = ttl(LONG);

    // Prepares each statement once on the one connection, so the counts are the steady state.
    let warm = new_token(&store);
    store.issue(&warm, &alice, long).await.expect("issue");
    store.consume(&warm, &alice).await.expect("consume");
    store.consume(&warm, &alice).await.expect("repeat");
    assert!(is_duplicate(&store.issue(&warm, &alice, long).await));

    let token = new_token(&store);
    let (n, issued) = count(&pool, store.issue(&token, &alice, long)).await;
    issued.expect("issue");
    assert_eq!(n, 1, "issuing is one INSERT");

    let (n, first) = count(&pool, store.consume(&token, &alice)).await;
    assert_eq!(first.expect("consume"), Consumption::Consumed);
    assert_eq!(n, 1, "a winning consume is one UPDATE");

    let (n, repeat) = count(&pool, store.consume(&token, &alice)).await;
    assert_eq!(repeat.expect("repeat"), REJECTED_USED);
    assert_eq!(
        n, 2,
        "a rejection is the UPDATE that matched nothing and one SELECT"
    );

    let (n, again) = count(&pool, store.issue(&token, &scope("bob"), long)).await;
    assert!(is_duplicate(&again), "{again:?}");
    assert_eq!(n, 3, "a refused issue is INSERT, UPDATE, INSERT");
    drop_own(&store).await;
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    let store = MySqlTokenStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("table");
    let missing = store.check_schema().await;
    assert!(
        matches!(&missing, Err(Error::Backend { source }) if source.to_string().contains("MySqlTokenStore::migrate")),
        "{missing:?}"
    );
    store.migrate().await.expect("first migration");
    let token = new_token(&store);
    let alice = scope("alice");
    store.issue(&token, &alice, ttl(LONG)).await.expect("issue");
    store.migrate().await.expect("second migration");
    store.check_schema().await.expect("at the current version");
    // The token issued in between survived.
    let answer = store.consume(&token, &alice).await.expect("consume");
    assert_eq!(answer, Consumption::Consumed);
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn the_printed_ddl_is_what_runs() {
    let pool = pool(2).await;
    let migrated = fresh_table(&pool).await;
    let printed = fresh_table(&pool).await;
    let store = MySqlTokenStore::builder()
        .table(&migrated)
        .build(pool.clone())
        .expect("table");
    store.migrate().await.expect("migrate");

    let ddl = MySqlTokenStore::migration_sql_for(&printed).expect("ddl");
    assert_eq!(ddl, store.migration_sql().replace(&migrated, &printed));
    assert!(
        ddl.contains(&format!("CREATE TABLE IF NOT EXISTS `{printed}`")),
        "{ddl}"
    );
    // Applied by hand, as a DBA would, then recognised as current by the store.
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .expect("apply printed DDL");
    assert_eq!(
        show_create(&pool, &printed).await,
        show_create(&pool, &migrated).await
    );
    let by_hand = MySqlTokenStore::builder()
        .table(&printed)
        .build(pool.clone())
        .expect("table");
    by_hand
        .check_schema()
        .await
        .expect("hand-applied DDL is current");
    by_hand
        .migrate()
        .await
        .expect("and migrate leaves it alone");

    drop_table(&pool, &migrated).await;
    drop_table(&pool, &printed).await;
}

#[tokio::test]
async fn neither_store_takes_the_other_kind_of_table() {
    let pool = pool(2).await;
    let records = fresh_table(&pool).await;
    let tokens = fresh_table(&pool).await;
    let record_store = MySqlStore::builder()
        .table(&records)
        .build(pool.clone())
        .expect("table");
    let token_store = MySqlTokenStore::builder()
        .table(&tokens)
        .build(pool.clone())
        .expect("table");
    record_store.migrate().await.expect("records table");
    token_store.migrate().await.expect("token table");

    let on_records = MySqlTokenStore::builder()
        .table(&records)
        .build(pool.clone())
        .expect("table");
    let refused = on_records.migrate().await;
    assert!(
        matches!(&refused, Err(Error::Backend { source }) if source.to_string().contains("not an idem-mysql token table")),
        "{refused:?}"
    );
    let on_tokens = MySqlStore::builder()
        .table(&tokens)
        .build(pool.clone())
        .expect("table");
    let refused = on_tokens.migrate().await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");

    drop_table(&pool, &records).await;
    drop_table(&pool, &tokens).await;
}

#[tokio::test]
async fn an_expired_token_is_reissued_once_and_a_live_one_never_overwritten() {
    let store = own_token_store(8).await;
    let token = new_token(&store);
    let first = scope("first");
    store
        .issue(&token, &first, ttl(SHORT))
        .await
        .expect("issue");
    let used = store.consume(&token, &first).await.expect("consume");
    assert_eq!(used, Consumption::Consumed);
    tokio::time::sleep(PAST_SHORT).await;

    // Sixteen issuers race for the expired token, each for a scope of its own.
    const RACERS: usize = 16;
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, token, barrier) = (store.clone(), token.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mine = scope(&format!("racer-{i}"));
                barrier.wait().await;
                let outcome = store.issue(&token, &mine, ttl(LONG)).await;
                (mine, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for racer in racers {
        let (mine, outcome) = racer.await.expect("a racer panicked");
        match outcome {
            Ok(()) => winners.push(mine),
            Err(_) if is_duplicate(&outcome) => losers.push(mine),
            Err(other) => panic!("an issue failed: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "one reissue wins, the others are refused");
    assert_eq!(losers.len(), RACERS - 1);

    // The winner's token is fresh and unused: the others' scopes cannot use it up.
    let intruder = store.consume(&token, &losers[0]).await.expect("consume");
    assert_eq!(intruder, Consumption::Rejected(Rejection::WrongScope));
    let owner = store.consume(&token, &winners[0]).await.expect("consume");
    assert_eq!(owner, Consumption::Consumed);
    let stale = store.consume(&token, &first).await.expect("consume");
    assert_eq!(stale, REJECTED_USED, "used comes before the scope");
    drop_own(&store).await;
}

#[tokio::test]
async fn consume_checks_in_the_cores_order() {
    let store = own_token_store(2).await;
    let (alice, bob) = (scope("alice"), scope("bob"));
    let token = new_token(&store);
    let never = store.consume(&token, &alice).await.expect("consume");
    assert_eq!(never, Consumption::Rejected(Rejection::Unknown));

    store
        .issue(&token, &alice, ttl(SHORT))
        .await
        .expect("issue");
    let used = new_token(&store);
    store.issue(&used, &alice, ttl(SHORT)).await.expect("issue");
    assert_eq!(
        store.consume(&used, &alice).await.expect("consume"),
        Consumption::Consumed
    );
    // A used token is used for everyone, its owner's scope or another.
    assert_eq!(
        store.consume(&used, &bob).await.expect("consume"),
        REJECTED_USED
    );
    assert_eq!(
        store.consume(&token, &bob).await.expect("consume"),
        Consumption::Rejected(Rejection::WrongScope)
    );
    tokio::time::sleep(PAST_SHORT).await;
    // Expired is unknown, whether it was used or not, and whoever asks.
    for (t, s) in [(&token, &alice), (&token, &bob), (&used, &alice)] {
        let late = store.consume(t, s).await.expect("consume");
        assert_eq!(late, Consumption::Rejected(Rejection::Unknown));
    }
    drop_own(&store).await;
}

#[tokio::test]
async fn purging_removes_only_expired_tokens() {
    let store = own_token_store(2).await;
    let alice = scope("alice");
    let live = new_token(&store);
    store.issue(&live, &alice, ttl(LONG)).await.expect("issue");
    for i in 0..5 {
        let short = new_token(&store);
        store
            .issue(&short, &alice, ttl(SHORT))
            .await
            .expect("issue");
        if i % 2 == 0 {
            store.consume(&short, &alice).await.expect("consume");
        }
    }
    tokio::time::sleep(PAST_SHORT).await;
    let zero = store.purge_expired(0).await;
    assert!(matches!(zero, Err(Error::InvalidInput(_))), "{zero:?}");
    assert_eq!(store.purge_expired(2).await.expect("purge"), 5);
    assert_eq!(store.purge_expired(2).await.expect("purge"), 0);
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{}`",
        store.table()
    )))
    .fetch_one(store.pool())
    .await
    .expect("count rows");
    assert_eq!(rows, 1, "the live token stays");
    assert_eq!(
        store.consume(&live, &alice).await.expect("consume"),
        Consumption::Consumed
    );
    drop_own(&store).await;
}

#[tokio::test]
async fn a_stored_scope_that_does_not_decode_is_corrupt() {
    let store = own_token_store(2).await;
    let token = new_token(&store);
    exec(
        store.pool(),
        format!(
            "INSERT INTO `{}` (token, scope, used_at, expires_at) \
             VALUES ('{token}', X'FF00', NULL, UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE)",
            store.table()
        ),
    )
    .await;
    let answer = store.consume(&token, &scope("alice")).await;
    assert!(
        matches!(answer, Err(Error::CorruptRecord { .. })),
        "{answer:?}"
    );
    drop_own(&store).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 1 of the loopback.
    let pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("mysql://root@127.0.0.1:1/test")
        .expect("a well-formed URL");
    let store = MySqlTokenStore::from_pool(pool);
    let token = new_token(&store);
    let issued = store.issue(&token, &scope("alice"), ttl(LONG)).await;
    let consumed = store.consume(&token, &scope("alice")).await;
    for error in [issued.err(), consumed.err()] {
        match error {
            Some(Error::Unavailable { source }) => {
                assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

#[test]
fn table_names_are_identifiers_only_and_default_to_idem_tokens() {
    for bad in [
        "",
        "idem-tokens",
        "t; DROP TABLE x",
        "db.t",
        &"t".repeat(65),
    ] {
        assert!(
            matches!(
                MySqlTokenStore::migration_sql_for(bad),
                Err(Error::InvalidInput(_))
            ),
            "{bad:?} accepted"
        );
    }
    assert_eq!(MySqlTokenStore::DEFAULT_TABLE, "idem_tokens");
    let ddl = MySqlTokenStore::migration_sql_for(MySqlTokenStore::DEFAULT_TABLE).expect("ddl");
    assert!(
        ddl.contains("CREATE TABLE IF NOT EXISTS `idem_tokens`"),
        "{ddl}"
    );
    assert!(
        ddl.contains("COMMENT='idem-mysql token schema v1'"),
        "{ddl}"
    );
}
