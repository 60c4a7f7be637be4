//! Reading the `Idempotency-Key` header: an RFC 8941 structured-field string.

use std::borrow::Cow;

use http::HeaderMap;
use http::HeaderName;
use sfv::{BareItem, Item, Parser};

/// How the header's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySyntax {
    /// Only a structured-field string (`"8e03978e-…"`), as the draft defines the header.
    Strict,
    /// Also a bare value of RFC 9110 token characters (`8e03978e-…`), as many clients send;
    /// it names the same key as its quoted spelling.
    AllowBare,
}

/// What the key header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyHeader<'a> {
    /// No header.
    Missing,
    /// A malformed header, with what is wrong for the client's 400.
    Invalid(String),
    /// The client's key, unquoted: borrowed from the header unless unescaping changed it
    /// (the key is copied once more into its [`Key`](idem_core::Key) anyway).
    Valid(Cow<'a, str>),
}

/// Reads the key from `headers`. Several header lines are refused: a field that must be
/// an item cannot be split over lines.
pub(crate) fn read_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    syntax: KeySyntax,
) -> KeyHeader<'a> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return KeyHeader::Missing;
    };
    if values.next().is_some() {
        return KeyHeader::Invalid(format!("more than one {name} header"));
    }
    parse_key(value.as_bytes(), name, syntax)
}

fn parse_key<'a>(value: &'a [u8], name: &HeaderName, syntax: KeySyntax) -> KeyHeader<'a> {
    if let Some(key) = plain_string(value) {
        return KeyHeader::Valid(Cow::Borrowed(key));
    }
    match Parser::new(value).parse_item::<Item>() {
        Ok(Item {
            bare_item: BareItem::String(key),
            params,
        }) if params.is_empty() => KeyHeader::Valid(Cow::Owned(key.as_str().to_owned())),
        Ok(Item { params, .. }) if !params.is_empty() => KeyHeader::Invalid(format!(
            "the {name} header must be a structured-field string without parameters"
        )),
        _ if syntax == KeySyntax::AllowBare && is_bare_token(value) => {
            // Only token characters: ASCII, so this never allocates.
            KeyHeader::Valid(String::from_utf8_lossy(value))
        }
        _ => KeyHeader::Invalid(format!(
            "the {name} header must be a structured-field string, such as \
             \"8e03978e-40d5-43e8-bc93-6894a57f9324\" with its double quotes"
        )),
    }
}

/// The key of a structured-field string with nothing to unescape and nothing around it
/// (`"8e03978e-…"`, as nearly every client sends it), read without the parser: the
/// characters inside the quotes, which RFC 8941 allows unescaped (visible ASCII and space,
/// but no `"` or `\`), are the key as they stand. Anything else goes to the parser.
fn plain_string(value: &[u8]) -> Option<&str> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner
        .iter()
        .all(|&byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\')
    {
        return None;
    }
    // Only ASCII, so this never fails.
    std::str::from_utf8(inner).ok()
}

/// An RFC 9110 `token`: no quotes, commas, semicolons or spaces, so a bare value can never
/// be a mangled structured field (`"abc`, `"k";x=1`, `a, b`).
fn is_bare_token(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str, syntax: KeySyntax) -> KeyHeader<'_> {
        parse_key(value.as_bytes(), &crate::IDEMPOTENCY_KEY, syntax)
    }

    fn valid(key: &str) -> KeyHeader<'_> {
        KeyHeader::Valid(Cow::Borrowed(key))
    }

    #[test]
    fn a_structured_string_is_the_key() {
        for syntax in [KeySyntax::Strict, KeySyntax::AllowBare] {
            assert_eq!(parse("\"abc\"", syntax), valid("abc"));
            assert_eq!(
                parse("  \"abc\"  ", syntax),
                valid("abc"),
                "SP around is allowed"
            );
            assert_eq!(parse(r#""a\"b\\c""#, syntax), valid(r#"a"b\c"#), "escapes");
            assert_eq!(
                parse("\"\"", syntax),
                valid(""),
                "empty: Key::new refuses it"
            );
        }
    }

    #[test]
    fn mangled_values_are_refused_in_both_modes() {
        for syntax in [KeySyntax::Strict, KeySyntax::AllowBare] {
            for value in [
                "\"abc",
                "\"k\";x=1",
                "a, b",
                "\"a\", \"b\"",
                "abc\"",
                "",
                "a b",
                "\"tab\there\"",
                "\"é\"",
            ] {
                assert!(
                    matches!(parse(value, syntax), KeyHeader::Invalid(_)),
                    "{value:?} in {syntax:?}"
                );
            }
        }
    }

    #[test]
    fn the_plain_string_shortcut_reads_what_the_parser_reads() {
        let mut values: Vec<Vec<u8>> = [
            "\"abc\"",
            "\"\"",
            "\"a b ~!#\"",
            "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
            "\"a\\\"b\"",
            "\"a\\\\\"",
            "\"k\";x=1",
            " \"abc\"",
            "\"abc\" ",
            "\"",
            "\"a\"b\"",
            "\"tab\there\"",
        ]
        .iter()
        .map(|value| value.as_bytes().to_vec())
        .collect();
        // Every byte inside the quotes, the shortcut's whole decision.
        values.extend((0..=255u8).map(|byte| vec![b'"', b'k', byte, b'"']));
        for value in values {
            let parsed = match Parser::new(&value).parse_item::<Item>() {
                Ok(Item {
                    bare_item: BareItem::String(key),
                    params,
                }) if params.is_empty() => Some(key.as_str().to_owned()),
                _ => None,
            };
            match plain_string(&value) {
                Some(key) => assert_eq!(Some(key.to_owned()), parsed, "{value:?}"),
                // Missed only for escapes or space around the quotes.
                None if parsed.is_some() => assert!(
                    value.contains(&b'\\') || !value.starts_with(b"\"") || !value.ends_with(b"\""),
                    "{value:?}"
                ),
                None => {}
            }
        }
        assert_eq!(
            plain_string(b"\"a b ~!#\""),
            Some("a b ~!#"),
            "taken when it can be"
        );
        assert_eq!(
            plain_string(b"\"a\\\"b\""),
            None,
            "escapes go to the parser"
        );
    }

    #[test]
    fn bare_tokens_only_when_allowed() {
        for value in ["abc", "7c0e3a5e-2b1d-4f7a-9d55-1a0c3f1b8e42", "12", "a.b~c"] {
            assert!(
                matches!(parse(value, KeySyntax::Strict), KeyHeader::Invalid(_)),
                "{value:?} is not a string"
            );
            assert_eq!(parse(value, KeySyntax::AllowBare), valid(value));
        }
    }

    #[test]
    fn several_header_lines_are_refused() {
        let mut headers = HeaderMap::new();
        let name = crate::IDEMPOTENCY_KEY;
        assert_eq!(
            read_key(&headers, &name, KeySyntax::Strict),
            KeyHeader::Missing
        );
        headers.append(&name, http::HeaderValue::from_static("\"a\""));
        assert_eq!(read_key(&headers, &name, KeySyntax::Strict), valid("a"));
        headers.append(&name, http::HeaderValue::from_static("\"b\""));
        assert!(matches!(
            read_key(&headers, &name, KeySyntax::Strict),
            KeyHeader::Invalid(_)
        ));
    }
}
