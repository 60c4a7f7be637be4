//! The migration of both kinds of table: versioned, repeatable, the printed DDL is what
//! runs, and a table of another kind or of no idem store is refused.

use idem_core::{Consumption, Error, IdempotencyStore, Rejection, Scope, TokenStore};

use super::*;
use crate::builder::FromTable;
use std::ops::Deref;

use crate::{SqlBuilder, SqlTable, TableKind, TableName};

/// Either store: its table's maintenance through [`SqlTable`], and the DDL for a table of
/// its kind without a store.
trait Maintained<D: SqlDialect>: FromTable<D> + Deref<Target = SqlTable<D>> {
    fn migration_sql_for(table: &str) -> Result<String, Error>;
}

impl<D: SqlDialect> Maintained<D> for SqlStore<D> {
    fn migration_sql_for(table: &str) -> Result<String, Error> {
        SqlStore::<D>::migration_sql_for(table)
    }
}

impl<D: SqlDialect> Maintained<D> for SqlTokenStore<D> {
    fn migration_sql_for(table: &str) -> Result<String, Error> {
        SqlTokenStore::<D>::migration_sql_for(table)
    }
}

fn on<S: TestServer, T: FromTable<S::Dialect>>(pool: &Pool<S::Dialect>, table: &str) -> T {
    SqlBuilder::<S::Dialect, T>::new()
        .table(table)
        .build(pool.clone())
        .expect("a valid table name")
}

/// Migrating twice is harmless.
pub async fn migrating_twice_is_harmless<S: TestServer>() {
    let pool = S::pool(2).await;
    let table = S::fresh_table(&pool).await;
    let store: SqlStore<S::Dialect> = on::<S, _>(&pool, &table);
    assert!(matches!(
        store.check_schema().await,
        Err(Error::Backend { .. })
    ));
    store.migrate().await.expect("first migration");
    let lease = acquired(
        store
            .claim(&request(&key(&namespace::<S>("schema"), "k"), LONG))
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
    drop_table::<S>(&pool, &table).await;

    let table = S::fresh_table(&pool).await;
    let store: SqlTokenStore<S::Dialect> = on::<S, _>(&pool, &table);
    let missing = store.check_schema().await;
    let how = format!("{}::migrate", S::Dialect::TOKENS.store);
    assert!(
        matches!(&missing, Err(Error::Backend { source }) if source.to_string().contains(&how)),
        "{missing:?}"
    );
    store.migrate().await.expect("first migration");
    let token = tokens::new_token(&store);
    let scope = Scope::new(namespace::<S>("schema")).expect("scope");
    store.issue(&token, &scope, ttl(LONG)).await.expect("issue");
    store.migrate().await.expect("second migration");
    store.check_schema().await.expect("at the current version");
    // The token issued in between survived.
    let answer = store
        .consume(&token, &scope, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(answer, Consumption::Consumed);
    drop_table::<S>(&pool, &table).await;
}

/// For both kinds: the DDL printed for a table is the DDL `migrate` ran, renamed; applied by
/// hand, as a DBA would, it makes the same table, which the store then recognises as
/// current.
pub async fn the_printed_ddl_is_what_runs<S: TestServer>() {
    let pool = S::pool(2).await;
    printed_ddl::<S, SqlStore<S::Dialect>>(&pool).await;
    printed_ddl::<S, SqlTokenStore<S::Dialect>>(&pool).await;
}

async fn printed_ddl<S: TestServer, T: Maintained<S::Dialect>>(pool: &Pool<S::Dialect>) {
    let migrated = S::fresh_table(pool).await;
    let printed = S::fresh_table(pool).await;
    let store: T = on::<S, _>(pool, &migrated);
    store.migrate().await.expect("migrate");

    let ddl = T::migration_sql_for(&printed).expect("ddl");
    assert_eq!(ddl, store.migration_sql().replace(&migrated, &printed));
    let create = format!("CREATE TABLE IF NOT EXISTS {}", quoted::<S>(&printed));
    assert!(ddl.contains(&create), "{ddl}");
    S::exec(pool, ddl).await;
    let definition = S::definition(pool, &migrated).await;
    assert!(definition.contains(T::KIND.comment_prefix), "{definition}");
    assert_eq!(S::definition(pool, &printed).await, definition);
    let by_hand: T = on::<S, _>(pool, &printed);
    by_hand
        .check_schema()
        .await
        .expect("hand-applied DDL is at the current version");
    by_hand
        .migrate()
        .await
        .expect("and migrate leaves it alone");

    drop_table::<S>(pool, &migrated).await;
    drop_table::<S>(pool, &printed).await;
}

/// A token table at the version before this build's, holding a used and an unused token,
/// is brought to this build's schema by `migrate` (several instances at once), and ends as
/// a table made at this version would be. Its rows keep working: the token used before
/// the migration kept no consumer, so it is used for everyone, its first consumer
/// included; the unused one is consumed, and its consumer's resend is consumed again.
pub async fn a_previous_token_table_is_migrated_and_its_used_tokens_stay_used<S: TestServer>() {
    let pool = S::pool(4).await;
    let kind = S::Dialect::TOKENS;
    let (_, previous) = kind
        .migrations
        .split_last()
        .expect("the token table has versions");
    let table = S::fresh_table(&pool).await;
    let name = TableName::new(&table, S::Dialect::MAX_TABLE_NAME).expect("valid");
    for step in previous {
        S::exec(&pool, (step.ddl)(&name)).await;
    }
    let store: SqlTokenStore<S::Dialect> = on::<S, _>(&pool, &table);
    let behind = store.check_schema().await;
    assert!(
        matches!(&behind, Err(Error::Backend { source }) if source.to_string().contains(&format!("this build uses v{}", kind.version()))),
        "{behind:?}"
    );

    // Rows as the previous build left them: its INSERT is this build's (it names no
    // column added since), and its consume only set `used_at`.
    let alice = Scope::new(namespace::<S>("previous")).expect("scope");
    let (used, unused) = (tokens::new_token(&store), tokens::new_token(&store));
    for token in [&used, &unused] {
        store.issue(token, &alice, ttl(LONG)).await.expect("issue");
    }
    let consume_before = format!(
        "UPDATE {} SET used_at = expires_at WHERE token = {}",
        quoted::<S>(&table),
        S::placeholder(1)
    );
    let args = [Arg::Bytes(used.as_str().as_bytes())];
    assert_eq!(execute::<S>(&pool, consume_before, &args).await, 1);

    // Instances starting together migrate one after the other.
    let instances: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for instance in instances {
        instance.await.expect("no panic").expect("migrate");
    }
    store.check_schema().await.expect("at the current version");
    let made_now = S::fresh_table(&pool).await;
    let current: SqlTokenStore<S::Dialect> = on::<S, _>(&pool, &made_now);
    current.migrate().await.expect("migrate a new table");
    assert_eq!(
        S::definition(&pool, &table).await,
        S::definition(&pool, &made_now).await,
        "a migrated table is a table made at this version"
    );
    drop_table::<S>(&pool, &made_now).await;

    assert_eq!(tokens::stored_consumer::<S>(&store, &used).await, "-");
    let used_row = tokens::raw_token_row::<S>(&store, &used).await;
    let first = idem_core::OwnerToken::random();
    for consumer in [&first, &first, &idem_core::OwnerToken::random()] {
        let answer = store.consume(&used, &alice, consumer).await;
        assert_eq!(
            answer.expect("consume"),
            Consumption::Rejected(Rejection::AlreadyUsed),
            "used before the consumer was kept: used for everyone"
        );
    }
    assert_eq!(
        tokens::raw_token_row::<S>(&store, &used).await,
        used_row,
        "refusals write nothing"
    );
    for (consumer, answer) in [
        (&first, Consumption::Consumed),
        (&first, Consumption::Consumed),
        (
            &idem_core::OwnerToken::random(),
            Consumption::Rejected(Rejection::AlreadyUsed),
        ),
    ] {
        let consumed = store.consume(&unused, &alice, consumer).await;
        assert_eq!(consumed.expect("consume"), answer);
    }
    drop_table::<S>(&pool, &table).await;
}

/// A foreign table of the same name is refused.
pub async fn a_foreign_table_of_the_same_name_is_refused<S: TestServer>() {
    let pool = S::pool(2).await;
    let table = S::fresh_table(&pool).await;
    S::exec(&pool, S::foreign_table(&table)).await;
    let store: SqlStore<S::Dialect> = on::<S, _>(&pool, &table);
    let refused = store.migrate().await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");
    let records = S::Dialect::RECORDS.comment_prefix;
    S::exec(&pool, S::set_comment(&table, &format!("{records}9"))).await;
    let refused = store.migrate().await;
    assert!(
        matches!(&refused, Err(Error::Backend { source }) if source.to_string().contains("v9")),
        "{refused:?}"
    );
    // A token table is not a records table.
    let tokens = S::Dialect::TOKENS.comment_prefix;
    S::exec(&pool, S::set_comment(&table, &format!("{tokens}1"))).await;
    assert!(matches!(
        store.check_schema().await,
        Err(Error::Backend { .. })
    ));
    drop_table::<S>(&pool, &table).await;
}

/// Neither store takes the other kind of table.
pub async fn neither_store_takes_the_other_kind_of_table<S: TestServer>() {
    let pool = S::pool(2).await;
    let records = S::fresh_table(&pool).await;
    let tokens = S::fresh_table(&pool).await;
    let record_store: SqlStore<S::Dialect> = on::<S, _>(&pool, &records);
    let token_store: SqlTokenStore<S::Dialect> = on::<S, _>(&pool, &tokens);
    record_store.migrate().await.expect("records table");
    token_store.migrate().await.expect("token table");

    let on_records: SqlTokenStore<S::Dialect> = on::<S, _>(&pool, &records);
    let refused = on_records.migrate().await;
    let not_tokens = format!("not {}", S::Dialect::TOKENS.noun);
    assert!(
        matches!(&refused, Err(Error::Backend { source }) if source.to_string().contains(&not_tokens)),
        "{refused:?}"
    );
    let on_tokens: SqlStore<S::Dialect> = on::<S, _>(&pool, &tokens);
    let refused = on_tokens.migrate().await;
    assert!(matches!(refused, Err(Error::Backend { .. })), "{refused:?}");

    drop_table::<S>(&pool, &records).await;
    drop_table::<S>(&pool, &tokens).await;
}

/// For both kinds: a name that is not an identifier, or longer than the engine takes, is
/// refused before any SQL; the default names and comments are the documented ones.
pub async fn table_names_are_identifiers_only<S: TestServer>() {
    identifiers_only::<S, SqlStore<S::Dialect>>();
    identifiers_only::<S, SqlTokenStore<S::Dialect>>();
    defaults::<S, SqlStore<S::Dialect>>(S::Dialect::RECORDS, "idem_records");
    defaults::<S, SqlTokenStore<S::Dialect>>(S::Dialect::TOKENS, "idem_tokens");
    assert_eq!(SqlTokenStore::<S::Dialect>::DEFAULT_TABLE, "idem_tokens");
}

fn identifiers_only<S: TestServer, T: Maintained<S::Dialect>>() {
    let quoted = quoted::<S>("t");
    let too_long = "t".repeat(S::Dialect::MAX_TABLE_NAME + 1);
    for bad in [
        "",
        "idem-records",
        "t; DROP TABLE x",
        "db.t",
        &quoted,
        &too_long,
    ] {
        assert!(
            matches!(T::migration_sql_for(bad), Err(Error::InvalidInput(_))),
            "{bad:?} accepted"
        );
        let built = SqlBuilder::<S::Dialect, T>::new()
            .table(bad)
            .build(S::unreachable_pool());
        assert!(
            matches!(built, Err(Error::InvalidInput(_))),
            "{bad:?} accepted"
        );
    }
    let longest = "t".repeat(S::Dialect::MAX_TABLE_NAME);
    assert!(T::migration_sql_for(&longest).is_ok());
}

fn defaults<S: TestServer, T: Maintained<S::Dialect>>(kind: &TableKind, name: &str) {
    assert_eq!(kind.default_table, name);
    let ddl = T::migration_sql_for(name).expect("ddl");
    let create = format!("CREATE TABLE IF NOT EXISTS {}", quoted::<S>(name));
    assert!(ddl.contains(&create), "{ddl}");
    let comment = format!("{}{}", kind.comment_prefix, kind.version());
    assert!(ddl.contains(&comment), "{ddl}");
}
