//! Statements as text plus the order their placeholders take the arguments in, so one
//! call site binds the same arguments on every engine.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use crate::SqlDialect;

/// A value bound to a statement. Each dialect binds it as its driver's type: MySQL keeps
/// integers unsigned, PostgreSQL binds them as `bigint`/`smallint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// A `VARBINARY`/`bytea` value.
    Bytes(&'a [u8]),
    /// A nullable one (a claim without fingerprint).
    MaybeBytes(Option<&'a [u8]>),
    /// A span in microseconds, added to the server's clock. A [`Ttl`](idem_core::Ttl) is at
    /// most ten years, so it fits a signed column as well.
    Micros(u64),
    /// A fencing number, compared with the stored one. An engine whose column is signed
    /// binds one past its range as a value no row holds.
    Fencing(u64),
    /// A `state` value, one of [`row::state`](crate::row::state).
    State(u8),
    /// A row count (a purge batch).
    Count(u32),
}

/// One statement: its text, and which argument each placeholder takes.
///
/// Every statement of a kind takes the same arguments, in one order that its field's doc
/// names (the "canonical" order). PostgreSQL numbers its placeholders (`$1`), so its text
/// follows that order and may use one argument twice; MySQL's `?` take the arguments one
/// by one, so a MySQL text that needs them in another order, or one twice, says so with
/// [`Statement::reordered`].
#[derive(Debug, Clone)]
pub struct Statement {
    text: Arc<str>,
    order: Option<Box<[usize]>>,
}

impl Statement {
    /// A statement whose placeholders take the canonical arguments in order.
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self {
            text: text.into(),
            order: None,
        }
    }

    /// A statement whose `n`-th placeholder takes canonical argument `order[n]`.
    pub fn reordered(text: impl Into<Arc<str>>, order: &[usize]) -> Self {
        Self {
            text: text.into(),
            order: Some(order.into()),
        }
    }

    /// The text, as sqlx takes it. Statements are built only from constants and a
    /// validated [`TableName`](crate::TableName), and every value travels as a bound
    /// parameter.
    #[must_use]
    pub fn sql(&self) -> AssertSqlSafe<Arc<str>> {
        AssertSqlSafe(Arc::clone(&self.text))
    }

    /// The text.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The arguments in the order the placeholders take them. An index past `args` (a
    /// statement written for other arguments) is skipped, and the server then refuses the
    /// statement for a missing parameter.
    pub fn binds<'s, 'a>(&'s self, args: &'s [Arg<'a>]) -> impl Iterator<Item = Arg<'a>> + 's {
        let order = self.order.as_deref();
        let count = order.map_or(args.len(), <[usize]>::len);
        (0..count).filter_map(move |n| {
            let index = order.map_or(Some(n), |order| order.get(n).copied())?;
            args.get(index).copied()
        })
    }
}

/// Every statement of a record store, on one table. The canonical arguments of each are in
/// its doc.
#[derive(Debug)]
pub struct RecordStatements<D: SqlDialect> {
    /// Claims a never-seen key, reading nothing back; a key that has a row matches
    /// nothing, or fails with a duplicate key ([`SqlDialect::is_duplicate_key`]): namespace,
    /// key, fingerprint, owner, lease µs, lease + trace µs.
    pub insert: Statement,
    /// Reads a key's row (the columns of [`StoredRow`](crate::StoredRow), times relative to
    /// the statement's instant): namespace, key.
    pub select: Statement,
    /// The same read inside the caller's transaction, where a plain read could see an
    /// older snapshot: namespace, key.
    pub select_locked: Statement,
    /// Acquires a row the lifecycle says is free for this claim, re-checking that under the
    /// row lock: owner, fingerprint, lease µs, lease + trace µs, namespace, key.
    pub take_over: Statement,
    /// Completes or fails: state, payload, retention µs, namespace, key, owner, fencing.
    pub finish: Statement,
    /// Extends a lease: lease µs, lease + trace µs, namespace, key, owner, fencing.
    pub renew: Statement,
    /// Releases a lease: namespace, key, owner, fencing.
    pub release: Statement,
    /// The dialect's own statements ([`SqlDialect::Extra`]).
    pub extra: D::Extra,
}

/// Every statement of a token store, on one table.
#[derive(Debug)]
pub struct TokenStatements {
    /// Stores a new token unless it has a row: token, scope, TTL µs.
    pub insert: Statement,
    /// Reissues a token whose row has expired; a live row matches nothing: token, scope,
    /// TTL µs.
    pub replace_expired: Statement,
    /// Uses a token up and writes who did: the whole consume rule in one WHERE clause,
    /// re-checked under the row lock, so of concurrent consumes exactly one matches:
    /// token, scope, consumer.
    pub consume: Statement,
    /// A live token's `scope`, whether it was `used` and by whom (`used_by`): token.
    pub inspect: Statement,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_follow_the_placeholders() {
        let args = [Arg::Count(0), Arg::Count(1), Arg::Count(2)];
        let plain = Statement::new("s");
        assert_eq!(plain.binds(&args).collect::<Vec<_>>(), args);
        let reordered = Statement::reordered("s", &[2, 0, 0]);
        assert_eq!(
            reordered.binds(&args).collect::<Vec<_>>(),
            [Arg::Count(2), Arg::Count(0), Arg::Count(0)]
        );
    }
}
