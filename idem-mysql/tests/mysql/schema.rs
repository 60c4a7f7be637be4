//! The migration: versioned, repeatable, and the printed DDL is what runs.

use idem_core::{Error, IdempotencyStore};
use idem_mysql::MySqlStore;
use idem_mysql::sqlx::{self, AssertSqlSafe};

use crate::support::*;

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    let store = MySqlStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("table");
    assert!(matches!(
        store.check_schema().await,
        Err(Error::Backend { .. })
    ));
    store.migrate().await.expect("first migration");
    let lease = acquired(
        store
            .claim(&request(&key("idem-mysql.schema", "k"), LONG))
            .await
            .expect("claim"),
    );
    store.migrate().await.expect("second migration");
    store.check_schema().await.expect("at the current version");
    // The row written in between survived.
    let record = store
        .read(&lease.key)
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(record.fencing, 1);
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn the_printed_ddl_is_what_runs() {
    let pool = pool(2).await;
    let migrated = fresh_table(&pool).await;
    let printed = fresh_table(&pool).await;
    let store = MySqlStore::builder()
        .table(&migrated)
        .build(pool.clone())
        .expect("table");
    store.migrate().await.expect("migrate");

    let ddl = MySqlStore::migration_sql_for(&printed).expect("ddl");
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
    let by_hand = MySqlStore::builder()
        .table(&printed)
        .build(pool.clone())
        .expect("table");
    by_hand
        .check_schema()
        .await
        .expect("hand-applied DDL is at the current version");
    by_hand
        .migrate()
        .await
        .expect("and migrate leaves it alone");

    drop_table(&pool, &migrated).await;
    drop_table(&pool, &printed).await;
}

#[tokio::test]
async fn a_foreign_table_of_the_same_name_is_refused() {
    let pool = pool(2).await;
    let table = fresh_table(&pool).await;
    exec(
        &pool,
        format!("CREATE TABLE `{table}` (id INT PRIMARY KEY) COMMENT='not ours'"),
    )
    .await;
    let store = MySqlStore::builder()
        .table(&table)
        .build(pool.clone())
        .expect("table");
    let refused = store.migrate().await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");
    exec(
        &pool,
        format!("ALTER TABLE `{table}` COMMENT='idem-mysql schema v9'"),
    )
    .await;
    let refused = store.migrate().await;
    assert!(
        matches!(&refused, Err(Error::Backend { source }) if source.to_string().contains("v9")),
        "{refused:?}"
    );
    drop_table(&pool, &table).await;
}

#[test]
fn table_names_are_identifiers_only() {
    for bad in [
        "",
        "idem-records",
        "t; DROP TABLE x",
        "db.t",
        "`t`",
        &"t".repeat(65),
    ] {
        assert!(
            matches!(
                MySqlStore::migration_sql_for(bad),
                Err(Error::InvalidInput(_))
            ),
            "{bad:?} accepted"
        );
    }
}
