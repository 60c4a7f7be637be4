//! The migration: versioned, repeatable, and the printed DDL is what runs.

use idem_core::{Error, IdempotencyStore};
use idem_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use idem_postgres::{PgStore, PgTokenStore};

use crate::support::*;

/// A table's whole definition, its name replaced by `TABLE`: columns, constraints, indexes
/// and comment, to compare two tables.
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
    parts.join("\n").replace(table, "TABLE")
}

#[tokio::test]
async fn the_printed_ddl_is_what_migrate_creates() {
    let pool = pool(2).await;
    for tokens in [false, true] {
        let migrated = fresh_table(&pool).await;
        let printed = fresh_table(&pool).await;
        let (ddl, by_hand_ddl) = if tokens {
            let store = PgTokenStore::builder()
                .table(&migrated)
                .build(pool.clone())
                .expect("store");
            store.migrate().await.expect("migrate");
            let by_hand = PgTokenStore::builder()
                .table(&printed)
                .build(pool.clone())
                .expect("store");
            (store.migration_sql(), by_hand.migration_sql())
        } else {
            let store = PgStore::builder()
                .table(&migrated)
                .build(pool.clone())
                .expect("store");
            store.migrate().await.expect("migrate");
            let by_hand = PgStore::builder()
                .table(&printed)
                .build(pool.clone())
                .expect("store");
            (store.migration_sql(), by_hand.migration_sql())
        };
        assert_eq!(by_hand_ddl, ddl.replace(&migrated, &printed));
        // Applied by hand, as a DBA would.
        sqlx::raw_sql(AssertSqlSafe(by_hand_ddl))
            .execute(&pool)
            .await
            .expect("apply the printed DDL");
        let definition_migrated = definition(&pool, &migrated).await;
        assert!(
            definition_migrated.contains("comment idem-postgres"),
            "{definition_migrated}"
        );
        assert!(
            definition_migrated.contains("index CREATE INDEX"),
            "{definition_migrated}"
        );
        assert_eq!(definition(&pool, &printed).await, definition_migrated);
        if tokens {
            let store = PgTokenStore::builder()
                .table(&printed)
                .build(pool.clone())
                .expect("store");
            store
                .check_schema()
                .await
                .expect("hand-applied DDL is current");
            store.migrate().await.expect("and migrate leaves it alone");
        } else {
            let store = PgStore::builder()
                .table(&printed)
                .build(pool.clone())
                .expect("store");
            store
                .check_schema()
                .await
                .expect("hand-applied DDL is current");
            store.migrate().await.expect("and migrate leaves it alone");
        }
        drop_table(&pool, &migrated).await;
        drop_table(&pool, &printed).await;
    }
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    let store = PgStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("store");
    assert!(matches!(
        store.check_schema().await,
        Err(Error::Backend { .. })
    ));
    store.migrate().await.expect("first migration");
    let lease = acquired(
        store
            .claim(&request(&key("idem-postgres.schema", "k"), LONG))
            .await
            .expect("claim"),
    );
    store.migrate().await.expect("second migration");
    store.check_schema().await.expect("at the current version");
    let record = store
        .read(&lease.key)
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(record.fencing, 1);
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn a_foreign_table_of_the_same_name_is_refused() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    exec(
        &pool,
        format!("CREATE TABLE \"{table}\" (id int PRIMARY KEY)"),
    )
    .await;
    let store = PgStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("store");
    let refused = store.migrate().await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");
    exec(
        &pool,
        format!("COMMENT ON TABLE \"{table}\" IS 'idem-postgres schema v9'"),
    )
    .await;
    let refused = store.migrate().await;
    assert!(
        matches!(&refused, Err(Error::Backend { source }) if source.to_string().contains("v9")),
        "{refused:?}"
    );
    // A token table is not a records table.
    exec(
        &pool,
        format!("COMMENT ON TABLE \"{table}\" IS 'idem-postgres token schema v1'"),
    )
    .await;
    assert!(matches!(
        store.check_schema().await,
        Err(Error::Backend { .. })
    ));
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn table_names_are_identifiers_only() {
    for bad in [
        "",
        "idem-records",
        "t; DROP TABLE x",
        "s.t",
        "\"t\"",
        &"t".repeat(53),
    ] {
        let pool = idem_postgres::sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .expect("lazy pool");
        assert!(
            matches!(
                PgStore::builder().table(bad).build(pool),
                Err(Error::InvalidInput(_))
            ),
            "{bad:?} accepted"
        );
    }
}
