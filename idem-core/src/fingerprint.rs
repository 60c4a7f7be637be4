//! Request fingerprints: a digest of the request stored with its claim.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::executor::json;

/// A SHA-256 digest of a request, stored with its claim so that a key reused for a
/// *different* request is caught ([`Error::FingerprintMismatch`]) instead of replaying an
/// unrelated response: the IETF `Idempotency-Key` draft's 422 case.
///
/// Two constructors, both stable across processes, platforms and releases:
/// - [`Fingerprint::of`] hashes any serde-serializable value through a canonical JSON form
///   (object keys sorted, no whitespace), so field order and map iteration order do not
///   matter;
/// - [`Fingerprint::from_bytes`] hashes raw bytes, such as an HTTP request body.
///
/// ```
/// use idem_core::Fingerprint;
/// use std::collections::HashMap;
///
/// let a: HashMap<&str, u32> = [("amount", 100), ("account", 7)].into();
/// let b: HashMap<&str, u32> = [("account", 7), ("amount", 100)].into();
/// assert_eq!(Fingerprint::of(&a)?, Fingerprint::of(&b)?);
/// # Ok::<(), idem_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

/// Domain separation, so a fingerprint never equals a plain SHA-256 of the same bytes and
/// the two constructors never collide with each other.
const VALUE_DOMAIN: &[u8] = b"idem.fingerprint.v1.json\0";
const BYTES_DOMAIN: &[u8] = b"idem.fingerprint.v1.bytes\0";

impl Fingerprint {
    /// The fingerprint of a serializable value, through its canonical JSON form.
    ///
    /// Fails with [`Error::Serialization`] for values JSON cannot hold (maps with non-string
    /// keys, NaN or infinite floats, for example).
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `value` fails to serialize or JSON cannot hold it (a map with
    /// non-string keys, a NaN or infinite float, for example).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let serialization = |e: serde_json::Error| Error::Serialization {
            source: Box::new(e),
        };
        // `to_value` turns a NaN or infinite float into `null`, so two different requests
        // (`NaN` and `None`, `inf` and `-inf`) would share a fingerprint and a key reused for
        // the second would replay the first's outcome. The executor's writer refuses them,
        // as it does for outcomes.
        json::encoded(value, |_| ()).map_err(serialization)?;
        let value = serde_json::to_value(value).map_err(serialization)?;
        let mut canonical = Vec::with_capacity(128);
        write_canonical(&value, &mut canonical);
        let mut hasher = Sha256::new();
        hasher.update(VALUE_DOMAIN);
        hasher.update(&canonical);
        Ok(Self(hasher.finalize().into()))
    }

    /// The fingerprint of raw bytes.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self::from_byte_parts([bytes])
    }

    /// The fingerprint of `parts` one after the other: the same as
    /// [`from_bytes`](Self::from_bytes) of their concatenation, without copying them into one
    /// buffer first (a request's fields and its body, say).
    ///
    /// ```
    /// use idem_core::Fingerprint;
    ///
    /// let parts: [&[u8]; 3] = [b"POST ", b"/payments ", b"{\"cents\":100}"];
    /// assert_eq!(
    ///     Fingerprint::from_byte_parts(parts),
    ///     Fingerprint::from_bytes(b"POST /payments {\"cents\":100}"),
    /// );
    /// ```
    #[must_use]
    pub fn from_byte_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(BYTES_DOMAIN);
        for part in parts {
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// Rebuilds a fingerprint from the 32 bytes a store kept.
    #[must_use]
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The 32 digest bytes, for storing.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<&[u8]> for Fingerprint {
    type Error = Error;

    /// Reads 32 stored bytes back; any other length is a corrupt record.
    fn try_from(bytes: &[u8]) -> Result<Self, Error> {
        let digest: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::corrupt(format!("a fingerprint is 32 bytes, found {}", bytes.len()))
        })?;
        Ok(Self(digest))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Writes JSON with object keys sorted by their UTF-8 bytes, whatever map type `serde_json`
/// was built with (its `preserve_order` feature may be switched on by another crate).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a scalar `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn a_non_finite_float_is_refused_not_fingerprinted_as_null() {
        #[derive(Serialize)]
        struct Refund {
            cents: Option<f64>,
        }
        for float in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for refused in [
                Fingerprint::of(&float),
                Fingerprint::of(&Refund { cents: Some(float) }),
                Fingerprint::of(&vec![1.0, float]),
            ] {
                assert!(
                    matches!(refused, Err(Error::Serialization { .. })),
                    "{float}: got {refused:?}"
                );
            }
        }
        // What is refused would otherwise be the fingerprint of `null`: another request's.
        assert!(Fingerprint::of(&Refund { cents: None }).is_ok());
        assert!(Fingerprint::of(&f32::MAX).is_ok());
    }

    #[derive(Serialize)]
    struct Transfer {
        from: &'static str,
        to: &'static str,
        cents: u64,
        memo: Option<&'static str>,
        tags: Vec<&'static str>,
    }

    fn transfer() -> Transfer {
        Transfer {
            from: "acct-1",
            to: "acct-2",
            cents: 12_345,
            memo: Some("rent \"march\""),
            tags: vec!["a", "ü"],
        }
    }

    #[test]
    fn pinned_digest_of_a_struct() {
        // Pinned: changing the canonical form breaks every fingerprint already stored.
        let fp = Fingerprint::of(&transfer()).expect("serializable");
        // Computed independently: sha256(b"idem.fingerprint.v1.json\0" + canonical JSON).
        assert_eq!(
            fp.to_string(),
            "9b83f2a2b12f877fd5d944002ed27f62e8f3d4108385267fc05b37f55498bed9"
        );
    }

    #[test]
    fn pinned_digest_of_bytes() {
        assert_eq!(
            Fingerprint::from_bytes(b"POST /payments {\"cents\":100}").to_string(),
            "3d26551516ce49cfb71476aa0bc6651c98db57c7553323268e3ef00839bd29c2"
        );
    }

    #[test]
    fn a_fingerprint_shows_its_digest_in_hex() {
        let print = Fingerprint::from_bytes(b"");
        let hex = print.to_string();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(format!("{print:?}"), format!("Fingerprint({hex})"));
    }

    #[test]
    fn parts_hash_as_their_concatenation() {
        let whole = b"POST /payments {\"cents\":100}";
        for cut in 0..=whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(
                Fingerprint::from_byte_parts([a, b]),
                Fingerprint::from_bytes(whole)
            );
        }
    }

    #[test]
    fn map_order_does_not_matter() {
        let mut hashed = HashMap::new();
        let mut sorted = BTreeMap::new();
        for i in 0..64 {
            hashed.insert(format!("k{i}"), i);
            sorted.insert(format!("k{i}"), i);
        }
        assert_eq!(Fingerprint::of(&hashed).ok(), Fingerprint::of(&sorted).ok());
    }

    #[test]
    fn different_values_differ() {
        let mut other = transfer();
        other.cents += 1;
        assert_ne!(
            Fingerprint::of(&transfer()).ok(),
            Fingerprint::of(&other).ok()
        );
        // The two constructors are domain-separated.
        assert_ne!(
            Fingerprint::of("x").ok(),
            Some(Fingerprint::from_bytes(b"\"x\""))
        );
    }

    #[test]
    fn round_trips_through_stored_bytes() {
        let fp = Fingerprint::from_bytes(b"body");
        assert_eq!(Fingerprint::try_from(&fp.as_bytes()[..]).ok(), Some(fp));
        assert!(matches!(
            Fingerprint::try_from(&[1u8, 2, 3][..]),
            Err(Error::CorruptRecord { .. })
        ));
    }

    /// A fingerprint rebuilt from the digest a store kept is the one that was stored.
    #[test]
    fn a_fingerprint_rebuilt_from_its_digest_is_the_same() {
        let fp = Fingerprint::from_bytes(b"body");
        assert_eq!(Fingerprint::from_digest(*fp.as_bytes()), fp);
    }

    #[test]
    fn unserializable_values_are_a_typed_error() {
        let mut map = HashMap::new();
        map.insert((1, 2), "tuple keys are not JSON");
        assert!(matches!(
            Fingerprint::of(&map),
            Err(Error::Serialization { .. })
        ));
    }
}
