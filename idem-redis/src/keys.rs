//! Where a record lives: the Redis key of an idem key.

use std::fmt;
use std::io;

use idem_core::{Error, InvalidInput, Key};
use redis::{RedisWrite, ToRedisArgs};

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
    let (namespace, id) = (key.namespace(), key.id());
    let mut out = String::with_capacity(prefix.len() + namespace.len() + id.len() + 16);
    // Writing to a String cannot fail.
    let _ = write_record_key(&mut out, prefix, key);
    out
}

/// [`record_key`] written where it goes (a command's buffer), with no string of its own:
/// the same bytes as escaping `key.encoded()`, which is `namespace length:namespace:id`,
/// without building that string either.
fn write_record_key(out: &mut impl fmt::Write, prefix: &str, key: &Key) -> fmt::Result {
    let (namespace, id) = (key.namespace(), key.id());
    out.write_str(prefix)?;
    out.write_char('{')?;
    // Not `write!`: the formatting machinery cost every claim and finish more than the rest
    // of its key's writing together.
    out.write_str(itoa::Buffer::new().format(namespace.len()))?;
    out.write_char(':')?;
    push_escaped(out, namespace)?;
    out.write_char(':')?;
    push_escaped(out, id)?;
    out.write_char('}')
}

/// The Redis key of an idem key as a command argument, written straight into the command
/// (see [`record_key`]): a claim builds no key string.
pub(crate) struct RecordKey<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) key: &'a Key,
}

impl ToRedisArgs for RecordKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut writer = TextWriter(out.writer_for_next_arg());
        // The writer is a growable buffer: it cannot fail.
        let _ = write_record_key(&mut writer, self.prefix, self.key);
    }
}

/// Text into a byte sink.
struct TextWriter<W>(W);

impl<W: io::Write> fmt::Write for TextWriter<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.write_all(text.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// `prefix{tag}` with `%`, `{` and `}` in `tag` percent-escaped: the Redis key of anything
/// identified by one string (an encoded idem key, a token), with the same guarantees as
/// [`record_key`].
pub(crate) fn tagged_key(prefix: &str, tag: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + tag.len() + 8);
    out.push_str(prefix);
    out.push('{');
    // Writing to a String cannot fail.
    let _ = push_escaped(&mut out, tag);
    out.push('}');
    out
}

fn push_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    // Most keys hold none of the three: copy them whole.
    if !text.contains(['%', '{', '}']) {
        return out.write_str(text);
    }
    for c in text.chars() {
        match c {
            '%' => out.write_str("%25")?,
            '{' => out.write_str("%7B")?,
            '}' => out.write_str("%7D")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
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

    /// The escape writes what escaping each character would, wherever the three fall
    /// (first, last, side by side, next to characters of several bytes), and copies a text
    /// without them whole.
    #[test]
    fn escaping_matches_character_by_character() {
        let reference = |text: &str| -> String {
            text.chars()
                .map(|c| match c {
                    '%' => "%25".to_owned(),
                    '{' => "%7B".to_owned(),
                    '}' => "%7D".to_owned(),
                    c => c.to_string(),
                })
                .collect()
        };
        for text in [
            "",
            "plain",
            "%",
            "{}",
            "}{%%",
            "a%",
            "%a",
            "é{€}ü%",
            "{{x}}",
            "日本%語",
        ] {
            let mut out = String::new();
            push_escaped(&mut out, text).expect("a String takes anything");
            assert_eq!(out, reference(text), "{text:?}");
        }
    }

    #[test]
    fn command_arguments_are_the_same_bytes() {
        for (namespace, id) in [("orders", "k-1"), ("n{s}", "a}b{c%7D"), ("ns", "é{}%")] {
            let key = Key::new(namespace, id).expect("valid key");
            let arg = RecordKey {
                prefix: "p:",
                key: &key,
            };
            let written = arg.to_redis_args();
            assert_eq!(written, vec![record_key("p:", &key).into_bytes()]);
        }
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
