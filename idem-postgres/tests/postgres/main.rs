//! idem-postgres against the real server at `IDEM_POSTGRES_URL`, in one test binary: the
//! idem-tests conformance suites (records, tokens, the executor) and idem-sql's SQL suite,
//! all on [`support::PostgreSql`], then what is PostgreSQL's own.

mod claims;
mod faults;
mod schema;
mod support;
mod tokens;
mod transactional;

idem_sql::sql_conformance!(crate::support::PostgreSql);
