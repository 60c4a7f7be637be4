//! The tables' DDL where PostgreSQL's own rules matter: index names share the namespace of
//! tables.

use idem_core::Error;
use idem_postgres::{PgStore, sqlx};
use idem_sql::testing::TestServer;

use crate::support::*;

/// A relation that already holds the name of a new table's `expires_at` index (a table
/// called `<table>_expires_at`) makes `migrate` fail and create nothing, instead of
/// `CREATE INDEX IF NOT EXISTS` skipping the index without a word and leaving
/// `purge_expired` to scan the whole table.
#[tokio::test]
async fn a_relation_holding_the_index_name_is_refused() {
    let pool = pool(1).await;
    let table = PostgreSql::fresh_table(&pool).await;
    let squatter = format!("{table}_expires_at");
    PostgreSql::exec(&pool, format!("CREATE TABLE \"{squatter}\" (id int)")).await;
    let store = PgStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("store");
    let migrated = store.migrate().await;
    let created: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("\"{table}\""))
        .fetch_one(&pool)
        .await
        .expect("look the table up");
    PostgreSql::exec(
        &pool,
        format!("DROP TABLE IF EXISTS \"{table}\", \"{squatter}\""),
    )
    .await;
    assert!(
        matches!(&migrated, Err(Error::Backend { source }) if source.to_string().contains(&squatter)),
        "{migrated:?}"
    );
    assert!(!created, "nothing is left half made");
}
