//! idem-mysql against the real server at `IDEM_MYSQL_URL`, in one test binary: the idem-tests
//! conformance suites (records, tokens, the executor) and idem-sql's SQL suite, all on
//! [`support::MariaDb`], then what is MySQL's own.

mod claims;
mod faults;
mod support;
mod transactional;

idem_sql::sql_conformance!(crate::support::MariaDb);
