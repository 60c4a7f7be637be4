#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod builder;
mod call;
mod claim;
mod dialect;
pub mod driver;
mod ops;
pub mod purge;
pub mod row;
mod sql_table;
mod statement;
mod store;
mod table;
#[cfg(feature = "testing")]
pub mod testing;
mod token_store;
pub mod tokens;
mod transaction;

pub use builder::{FromTable, SqlBuilder};
pub use call::{CallPolicy, CallTimedOut};
pub use claim::{ClaimSteps, ROUNDS, claim};
pub use dialect::{Connection, Pool, Row, SqlDialect};
pub use purge::PurgeExpired;
pub use row::StoredRow;
pub use sql_table::SqlTable;
pub use statement::{Arg, RecordStatements, Statement, TokenStatements};
pub use store::SqlStore;
pub use table::{Migration, TableKind, TableName};
pub use token_store::SqlTokenStore;
pub use tokens::StoredToken;
