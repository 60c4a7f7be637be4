//! Where a record lives: the Redis key of an idem key.

use std::fmt::Write;

use idem_core::{Error, InvalidInput, Key};

/// The Redis key of `key`: `prefix{tag}`, where the tag is [`Key::encoded`] with `%`, `{`
/// and `}` percent-escaped.
///
/// - Unambiguous: the prefix is fixed and the escaping is injective, so two keys never
///   share a Redis key, whatever braces or percent signs they hold.
/// - One hash slot per key: the tag holds no brace, so Redis Cluster hashes exactly the
///   whole escaped key. The prefix holds no brace either ([`validate_prefix`]), so the first
///   `{` is always the tag's, and any key this crate ever adds for the same idem key
///   (`prefix{tag}suffix`) lands in the same slot.
pub(crate) fn record_key(prefix: &str, key: &Key) -> String {
    // Written straight into one string: the same bytes as escaping `key.encoded()`, which
    // is `namespace length:namespace:id`, without building that string first.
    let (namespace, id) = (key.namespace(), key.id());
    let mut out = String::with_capacity(prefix.len() + namespace.len() + id.len() + 16);
    out.push_str(prefix);
    out.push('{');
    // Writing to a String cannot fail.
    let _ = write!(out, "{}", namespace.len());
    out.push(':');
    push_escaped(&mut out, namespace);
    out.push(':');
    push_escaped(&mut out, id);
    out.push('}');
    out
}

/// `prefix{tag}` with `%`, `{` and `}` in `tag` percent-escaped: the Redis key of anything
/// identified by one string (an encoded idem key, a token), with the same guarantees as
/// [`record_key`].
pub(crate) fn tagged_key(prefix: &str, tag: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + tag.len() + 8);
    out.push_str(prefix);
    out.push('{');
    push_escaped(&mut out, tag);
    out.push('}');
    out
}

fn push_escaped(out: &mut String, text: &str) {
    // Most keys hold none of the three: copy them whole.
    if !text.contains(['%', '{', '}']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

/// A prefix with a brace would move or empty the hash tag, and with it the slot rules above.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.contains(['{', '}']) {
        return Err(InvalidInput::Other("a Redis key prefix must not contain '{' or '}'").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_key(namespace: &str, id: &str) -> String {
        record_key("p:", &Key::new(namespace, id).expect("valid key"))
    }

    /// The hash tag as Redis Cluster finds it: between the first `{` and the next `}`.
    fn hash_tag(redis_key: &str) -> &str {
        let open = redis_key.find('{').expect("has a tag") + 1;
        let close = redis_key[open..].find('}').expect("tag is closed") + open;
        &redis_key[open..close]
    }

    #[test]
    fn layout() {
        assert_eq!(redis_key("orders", "k-1"), "p:{6:orders:k-1}");
    }

    #[test]
    fn braces_and_percent_signs_are_escaped() {
        let key = redis_key("n{s}", "a}b{c%7D");
        assert_eq!(key, "p:{4:n%7Bs%7D:a%7Db%7Bc%257D}");
        // The whole escaped key is the tag, so the slot depends on all of it.
        assert_eq!(hash_tag(&key), &key[3..key.len() - 1]);
    }

    #[test]
    fn record_keys_escape_the_encoded_key() {
        for (namespace, id) in [("orders", "k-1"), ("n{s}", "a}b{c%7D"), ("ns", "é{}%")] {
            let key = Key::new(namespace, id).expect("valid key");
            assert_eq!(record_key("p:", &key), tagged_key("p:", &key.encoded()));
        }
        let long = "n".repeat(123);
        let key = Key::new(long.as_str(), "x").expect("valid key");
        assert_eq!(record_key("", &key), tagged_key("", &key.encoded()));
    }

    #[test]
    fn distinct_keys_get_distinct_redis_keys() {
        let keys = [
            redis_key("a", "}"),
            redis_key("a", "%7D"),
            redis_key("a", "%257D"),
            redis_key("a:b", "c"),
            redis_key("a", "b:c"),
            redis_key("a", "{}"),
            redis_key("a", "%7B%7D"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn prefixes_with_braces_are_rejected() {
        assert!(validate_prefix("idem:").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(matches!(
            validate_prefix("app{1}:"),
            Err(Error::InvalidInput(InvalidInput::Other(_)))
        ));
        assert!(validate_prefix("app}").is_err());
    }
}
