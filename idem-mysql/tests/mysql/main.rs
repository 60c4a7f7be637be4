//! idem-mysql against the real server at IDEM_MYSQL_URL: what the conformance suite does not
//! cover, or covers only in general terms.

mod claims;
mod maintenance;
mod schema;
mod statements;
mod support;
mod transactional;
