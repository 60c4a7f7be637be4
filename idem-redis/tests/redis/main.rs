//! Every integration test of idem-redis, in one binary (one link instead of eleven): the
//! lifecycle and token rules against the shared server, the conformance suites, corrupt
//! records, round trips counted with `INFO commandstats`, faults on private servers, Redis
//! Cluster, and Valkey (whose `SET ... IFEQ` finishes records).

mod common;
mod outage;

mod cluster;
mod conformance;
mod corrupt;
mod executor_conformance;
mod faults;
mod lifecycle;
mod replicas;
mod round_trips;
mod sabotage;
mod token_conformance;
mod token_corrupt;
mod token_faults;
mod token_lifecycle;
mod token_round_trips;
mod valkey;
