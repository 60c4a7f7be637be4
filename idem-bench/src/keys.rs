//! The keys a measurement writes: one namespace, a fresh tag per measurement, so no two
//! measurements (or runs against a shared server) share a key.

use std::sync::Arc;

use idem::{Error, Key};

/// The namespace of every idem key the bench writes.
pub const NAMESPACE: &str = "bench";

/// The idem key number `i` of the measurement `tag`.
pub fn key(tag: &str, i: usize) -> Result<Key, Error> {
    Key::new(NAMESPACE, format!("{tag}:{i}"))
}

/// A tag for the keys of one measurement, so no two measurements share a key.
pub fn fresh_tag() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string()[..8].into()
}
