use idem_core::{Claim, Key, MAX_KEY_LEN};

use crate::context::{Ctx, Doing, LONG, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// The same key in two namespaces is two independent records.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a write in one namespace shows in
/// the other; or when a store call the check needs fails unexpectedly.
pub async fn namespace_isolation(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "namespace_isolation",
        store,
        capabilities,
        |ctx| async move {
            let left = Key::new(format!("{}.left", ctx.namespace), "order-1").doing("key")?;
            let right = Key::new(format!("{}.right", ctx.namespace), "order-1").doing("key")?;
            let left_lease = ctx.acquire(&left, LONG).await?;
            let right_lease = ctx
                .acquire(&right, LONG)
                .await
                .map_err(|e| format!("the same key in another namespace must be free: {e}"))?;
            ctx.complete(&left_lease, &b"left"[..]).await?;
            ctx.complete(&right_lease, &b"right"[..]).await?;
            ensure!(
                ctx.probe(&left).await? == Claim::Completed((&b"left"[..]).into()),
                "left namespace replays another record"
            );
            ensure!(
                ctx.probe(&right).await? == Claim::Completed((&b"right"[..]).into()),
                "right namespace replays another record"
            );
            ctx.store.remove(&left).await.doing("remove")?;
            ensure!(
                ctx.read(&right).await?.is_some(),
                "removing a key in one namespace removed it in another"
            );
            Ok(())
        },
    )
    .await
}

/// Keys are stored exactly, both parts: keys that a careless encoding, separator,
/// collation, truncation or normalization would merge stay distinct, whether the
/// difference is in the namespace or in the id (at the maximum length of either part,
/// and of both at once); and removing one of them leaves the others' records (a removal
/// matching keys as a pattern, `LIKE` or a glob, or by prefix would take them too).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when two distinct keys share a record,
/// or removing one key takes another's record with it; or when a store call the check needs
/// fails unexpectedly.
pub async fn key_fidelity(store: Store, capabilities: Capabilities) -> CheckResult {
    run("key_fidelity", store, capabilities, |ctx| async move {
        let ns = ctx.namespace.clone();
        let long_a = longest("", 'a');
        let long_b = longest("", 'b');
        // The namespace at its maximum length too: a narrower namespace column (or a
        // whole-key column narrower than both parts) keeps only a prefix of it, and the
        // checks' own namespaces are far shorter than the limit.
        let long_ns_a = longest(&ns, 'a');
        let long_ns_b = longest(&ns, 'b');
        let groups: Vec<Vec<(String, String)>> = vec![
            // A separator inside a part must not move the boundary between the parts.
            vec![(format!("{ns}:x"), "y".into()), (ns.clone(), "x:y".into())],
            // Case, trailing space, Unicode normalization and collation equivalence.
            pairs(&ns, &["Key", "key", "KEY"]),
            pairs(&ns, &["k", "k ", " k"]),
            pairs(&ns, &["\u{e9}", "e\u{301}"]),
            pairs(&ns, &["straße", "strasse"]),
            // Keys of the maximum length that differ only in the last byte.
            pairs(&ns, &[&long_a, &long_b]),
            vec![
                (long_ns_a.clone(), "k".into()),
                (long_ns_b.clone(), "k".into()),
            ],
            pairs(&long_ns_a, &[&long_a, &long_b]),
            // Characters that are special somewhere: hash tags, wildcards, quotes, escapes.
            pairs(&ns, &["{t}", "t", "{t", "t}"]),
            pairs(&ns, &["a%", "a_", "a\\", "a'", "a\""]),
            pairs(&ns, &["a*", "a?", "a[b]", "ab", "a"]),
            // Characters of four UTF-8 bytes, which a three-byte character set (MySQL's
            // `utf8`) cannot hold and keeps as `?` or cuts off. (Ids no other group uses:
            // a key is completed once here, and a group may not count on the removals of
            // the groups before it.)
            pairs(&ns, &["u\u{1F600}", "u\u{1F601}", "u?", "u"]),
        ];
        let groups = groups.into_iter().chain(namespace_groups(&ns));
        for group in groups {
            check_distinct(&ctx, &group).await?;
        }
        Ok(())
    })
    .await
}

/// `start`, padded to [`MAX_KEY_LEN`] bytes, ending in `last`: two such strings differ only
/// in their last byte.
fn longest(start: &str, last: char) -> String {
    let pad = MAX_KEY_LEN.saturating_sub(start.len() + last.len_utf8());
    format!("{start}{}{last}", "k".repeat(pad))
}

/// Characters some encoding treats specially: separators, escapes, quotes, wildcards.
const SEPARATORS: [&str; 16] = [
    ":", "/", "|", ".", "#", "\\", " ", "-", "_", "{", "}", "%", "'", "\"", ",", "\u{2028}",
];

/// The namespace's turn: every separator at the boundary moved either way, and the
/// namespace varied in case, spacing, Unicode normalization and characters of four bytes.
fn namespace_groups(ns: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = SEPARATORS
        .iter()
        .map(|sep| {
            vec![
                (format!("{ns}{sep}nx"), "ny".to_owned()),
                (ns.to_owned(), format!("nx{sep}ny")),
                (format!("{ns}{sep}"), "nxny".to_owned()),
                (format!("{ns}{sep}nx{sep}"), "ny".to_owned()),
                (ns.to_owned(), format!("{sep}nxny")),
                (format!("{ns}\\{sep}nx"), "ny".to_owned()),
            ]
        })
        .collect();
    for variants in [
        ["A", "a", "\u{c5}"],
        ["b ", " b", "b"],
        ["\u{e9}", "e\u{301}", "e"],
        ["straße", "strasse", "STRASSE"],
        ["\u{1F600}", "\u{1F601}", "?"],
    ] {
        groups.push(
            variants
                .iter()
                .map(|v| (format!("{ns}.{v}"), "k".to_owned()))
                .collect(),
        );
    }
    groups
}

fn pairs(namespace: &str, ids: &[&str]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| (namespace.to_owned(), (*id).to_owned()))
        .collect()
}

/// Completes every key of a group with its own payload, checks each replays its own, then
/// removes them one by one: each removal leaves the keys not removed yet replaying theirs.
async fn check_distinct(ctx: &Ctx, group: &[(String, String)]) -> Result<(), String> {
    let keys = group
        .iter()
        .map(|(namespace, id)| Key::new(namespace.clone(), id.clone()).doing("key"))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, key) in keys.iter().enumerate() {
        let lease = ctx.acquire(key, LONG).await.map_err(|e| {
            format!(
                "{key:?} should be a key of its own, distinct from {:?}: {e}",
                &keys[..i]
            )
        })?;
        ctx.complete(&lease, i.to_string().into_bytes()).await?;
    }
    for (i, key) in keys.iter().enumerate() {
        let replay = ctx.probe(key).await?;
        ensure!(
            replay == Claim::Completed(i.to_string().into_bytes().into()),
            "{key:?} replayed another key's record: {replay:?}"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        ensure!(
            ctx.remove(key).await?,
            "removing {key:?}, completed, said there was no record"
        );
        for (j, other) in keys.iter().enumerate().skip(i + 1) {
            let replay = ctx.probe(other).await?;
            ensure!(
                replay == Claim::Completed(j.to_string().into_bytes().into()),
                "removing {key:?} took {other:?}'s record with it: a repeat of {other:?} got \
                 {replay:?}"
            );
        }
    }
    Ok(())
}
