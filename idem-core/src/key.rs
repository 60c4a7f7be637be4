//! Idempotency keys: a namespace plus the client's key.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::LazyLock;

use crate::error::{Error, InputField, InvalidInput};

/// The longest namespace or key accepted, in bytes.
///
/// 255 bytes holds any key clients send in practice (UUIDs, hashes, message IDs) and fits a
/// MySQL unique index on `VARBINARY(255)` twice over within InnoDB's 3072-byte limit.
pub const MAX_KEY_LEN: usize = 255;

/// An idempotency key: a namespace (a tenant or an operation's scope) and the key the client
/// sent. The same key in two namespaces names two independent records.
///
/// A `Key` is valid by construction: both parts are non-empty, at most [`MAX_KEY_LEN`] bytes
/// and free of control characters, so a store never sees a malformed key.
///
/// ```
/// use idem_core::Key;
///
/// let key = Key::new("payments", "9f6c1c3e-4d8a-4c1e-b1a9-0b8f7f1f2a10")?;
/// assert_eq!(key.namespace(), "payments");
/// assert!(Key::new("payments", "").is_err());
/// # Ok::<(), idem_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Key {
    /// Both parts in one allocation, namespace first: a key is cloned into every lease and
    /// held by every stored record, so one allocation instead of two is worth the split.
    /// (Not an `Arc<str>`, whose clones would be free: its two counters would make every
    /// stored record 16 bytes larger, and the store's footprint is held to moka's.)
    text: Box<str>,
    /// Where the namespace ends in `text`.
    split: u16,
    /// The hash of `text` under [`HASH_SEED`], taken once when the key is built. A store
    /// hashes a key several times per step (its lock, its maps, its cache); each of those
    /// then hashes these four bytes instead of the text. (It fits beside `split`: a key is
    /// no larger for it.)
    hash: u32,
}

/// The seed of every key's [`hash`](Key::hash): random per process, so that clients, who
/// choose the keys, cannot choose keys that collide.
static HASH_SEED: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

impl Key {
    /// Validates and builds a key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field ([`InputField::Namespace`](crate::InputField) or
    /// [`InputField::Key`](crate::InputField)):
    /// [`InvalidInput::Empty`], [`InvalidInput::TooLong`] (over [`MAX_KEY_LEN`] bytes) or
    /// [`InvalidInput::ControlCharacter`].
    pub fn new(namespace: impl AsRef<str>, id: impl AsRef<str>) -> Result<Self, Error> {
        let (namespace, id) = (namespace.as_ref(), id.as_ref());
        validate(InputField::Namespace, namespace)?;
        validate(InputField::Key, id)?;
        let text = joined(namespace, id);
        Ok(Self {
            // A 64-bit hash folded to 32: collisions only cost a comparison of the texts.
            hash: HASH_SEED.hash_one(&*text) as u32,
            text,
            // Both parts are at most MAX_KEY_LEN bytes, so the split fits a u16.
            split: namespace.len() as u16,
        })
    }

    /// The namespace part.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.text[..usize::from(self.split)]
    }

    /// The client's key.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.text[usize::from(self.split)..]
    }

    /// An unambiguous single-string encoding of both parts, for stores that index one
    /// string: the namespace's length in decimal, `:`, the namespace, `:`, the key.
    ///
    /// Length-prefixing makes `("a:b", "c")` and `("a", "b:c")` encode differently, which a
    /// plain separator would not.
    #[must_use]
    pub fn encoded(&self) -> String {
        format!("{}:{}:{}", self.split, self.namespace(), self.id())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        // The hashes first: two different keys almost never get past them.
        self.hash == other.hash && self.split == other.split && self.text == other.text
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// Writes the hash the key carries: equal keys carry equal hashes, and a hasher then
    /// mixes four bytes instead of the whole text.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// By namespace, then by key.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.namespace(), self.id()).cmp(&(other.namespace(), other.id()))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?}/{:?})", self.namespace(), self.id())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.id())
    }
}

/// `namespace` then `id`, in one exact allocation: keys are built on every request.
fn joined(namespace: &str, id: &str) -> Box<str> {
    let mut text = String::with_capacity(namespace.len() + id.len());
    text.push_str(namespace);
    text.push_str(id);
    text.into_boxed_str()
}

pub(crate) fn validate(field: InputField, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::Empty { field });
    }
    if value.len() > MAX_KEY_LEN {
        return Err(InvalidInput::TooLong {
            field,
            len: value.len(),
            max: MAX_KEY_LEN,
        });
    }
    if let Some(at) = control_at(value) {
        return Err(InvalidInput::ControlCharacter { field, at });
    }
    Ok(())
}

/// Where the first control character (`char::is_control`: U+0000–U+001F and U+007F–U+009F)
/// starts, found in the UTF-8 bytes without decoding them: those characters are the bytes
/// below 0x20 and 0x7F, and 0xC2 followed by 0x80–0x9F. (0xC2 only ever leads a character,
/// so a match is always a character's start.) Keys are validated on every request, and
/// decoding each character cost several times this scan.
fn control_at(value: &str) -> Option<usize> {
    let bytes = value.as_bytes();
    bytes.iter().enumerate().find_map(|(at, &byte)| match byte {
        0x00..=0x1F | 0x7F => Some(at),
        0xC2 if matches!(bytes.get(at + 1), Some(0x80..=0x9F)) => Some(at),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(namespace: &str, id: &str) -> InvalidInput {
        match Key::new(namespace, id) {
            Err(Error::InvalidInput(reason)) => reason,
            other => panic!("expected InvalidInput for {namespace:?}/{id:?}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_keys() {
        let key = Key::new("orders", "ab-12_ü🙂").expect("valid key");
        assert_eq!(key.namespace(), "orders");
        assert_eq!(key.id(), "ab-12_ü🙂");
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            Key::new("n", longest.clone()).expect("255 bytes").id(),
            longest
        );
    }

    #[test]
    fn rejects_empty_parts() {
        assert_eq!(
            rejection("", "k"),
            InvalidInput::Empty {
                field: InputField::Namespace
            }
        );
        assert_eq!(
            rejection("n", ""),
            InvalidInput::Empty {
                field: InputField::Key
            }
        );
    }

    #[test]
    fn rejects_oversized_parts_by_bytes_not_chars() {
        let too_long = "é".repeat(128); // 256 bytes, 128 chars
        assert_eq!(
            rejection("n", &too_long),
            InvalidInput::TooLong {
                field: InputField::Key,
                len: 256,
                max: MAX_KEY_LEN
            }
        );
        assert!(matches!(
            rejection(&"n".repeat(256), "k"),
            InvalidInput::TooLong {
                field: InputField::Namespace,
                ..
            }
        ));
    }

    #[test]
    fn rejects_control_characters() {
        assert_eq!(
            rejection("n", "ab\ncd"),
            InvalidInput::ControlCharacter {
                field: InputField::Key,
                at: 2
            }
        );
        assert!(matches!(
            rejection("n\0", "k"),
            InvalidInput::ControlCharacter {
                field: InputField::Namespace,
                at: 1
            }
        ));
        assert!(matches!(
            rejection("n", "\u{7f}"),
            InvalidInput::ControlCharacter { .. }
        ));
    }

    #[test]
    fn parts_with_the_same_concatenation_stay_distinct() {
        let a = Key::new("ab", "c").expect("valid");
        let b = Key::new("a", "bc").expect("valid");
        assert_ne!(a, b);
        assert_eq!((a.namespace(), a.id()), ("ab", "c"));
        assert_eq!((b.namespace(), b.id()), ("a", "bc"));
        assert!(b < a, "ordered by namespace first");
    }

    /// Equal keys hash alike under any hasher (their carried hash is of their text), and
    /// the hash decides nothing: keys whose texts run together alike share it and still
    /// differ.
    #[test]
    fn equal_keys_hash_alike_and_differ_by_their_parts() {
        use std::hash::{BuildHasher, RandomState};

        let state = RandomState::new();
        let (a, b) = (Key::new("orders", "o-1"), Key::new("orders", "o-1"));
        let (a, b) = (a.expect("valid"), b.expect("valid"));
        assert_eq!(a, b);
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        assert_ne!(a, Key::new("orders", "o-2").expect("valid"));
        let (c, d) = (Key::new("ab", "c"), Key::new("a", "bc"));
        let (c, d) = (c.expect("valid"), d.expect("valid"));
        assert_eq!(state.hash_one(&c), state.hash_one(&d));
        assert_ne!(c, d);
    }

    /// Distinct keys carry distinct hashes (all but a rare 32-bit collision): a store's
    /// maps and locks spread keys by them, and keys that all hashed alike would pile into
    /// one bucket, every lookup a walk through all the keys held.
    #[test]
    fn distinct_keys_spread_their_hashes() {
        use std::collections::HashSet;
        use std::hash::{BuildHasher, RandomState};

        let state = RandomState::new();
        let hashes: HashSet<u64> = (0..100)
            .map(|i| state.hash_one(Key::new("orders", format!("o-{i}")).expect("valid")))
            .collect();
        assert!(hashes.len() >= 99, "100 keys, {} hashes", hashes.len());
    }

    #[test]
    fn a_key_shows_both_parts() {
        let key = Key::new("orders", "o-1").expect("valid");
        assert_eq!(key.to_string(), "orders/o-1");
        assert_eq!(format!("{key:?}"), r#"Key("orders"/"o-1")"#);
    }

    #[test]
    fn encoding_is_unambiguous() {
        let a = Key::new("a:b", "c").expect("valid");
        let b = Key::new("a", "b:c").expect("valid");
        assert_ne!(a.encoded(), b.encoded());
        assert_eq!(a.encoded(), "3:a:b:c");
    }

    #[test]
    fn the_byte_scan_finds_exactly_the_control_characters() {
        // Every scalar value, alone and after a multi-byte character, against `is_control`.
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            for prefix in ["", "é"] {
                let text = format!("{prefix}{c}x");
                let expected = c.is_control().then_some(prefix.len());
                assert_eq!(control_at(&text), expected, "{c:?} after {prefix:?}");
            }
        }
        assert_eq!(control_at("ok\u{85}"), Some(2));
        assert_eq!(control_at("\u{a0}\u{c2}"), None);
    }
}
