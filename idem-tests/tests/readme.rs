//! The workspace README's figures about this suite ("Writing your own store") are the
//! suite's own: how many tests `conformance!` stamps out, and how many broken stores prove
//! it can fail. They went stale twice as checks and defects were added.

use idem_tests::broken::Defect;
use idem_tests::broken::tokens::TokenDefect;
use idem_tests::{CHECKS, TYPED_CHECKS};

const README: &str = include_str!("../../README.md");

/// The README's text with every run of whitespace (line breaks included) made one space, so
/// a sentence is found wherever its lines wrap.
fn readme() -> String {
    README.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The number written between `before` and `after` in the README, or what was there instead.
fn figure(before: &str, after: &str) -> Result<usize, String> {
    let text = readme();
    let start = text
        .find(before)
        .ok_or_else(|| format!("the README no longer says {before:?}"))?
        + before.len();
    let rest = &text[start..];
    let written = rest
        .find(after)
        .map(|end| &rest[..end])
        .ok_or_else(|| format!("the README no longer says {after:?} after {before:?}"))?;
    written
        .parse()
        .map_err(|_| format!("{before:?} is followed by {written:?}, not a number"))
}

#[test]
fn the_readme_counts_the_conformance_tests() {
    assert_eq!(
        figure("one named test per rule, ", " in all"),
        Ok(CHECKS.len() + TYPED_CHECKS.len())
    );
}

#[test]
fn the_readme_counts_the_broken_stores() {
    assert_eq!(
        figure("`idem_tests::broken` holds ", " stores with one deliberate"),
        Ok(Defect::ALL.len())
    );
    assert_eq!(
        figure("defect each, plus ", " token stores"),
        Ok(TokenDefect::ALL.len())
    );
}
