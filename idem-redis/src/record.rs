//! The record layout, version 2, on the client's side: what a claim writes with a plain
//! `SET key value NX PX ttl GET`, and what it makes of the value that command finds; and the
//! layout of a one-time token.
//!
//! The layout is described in `lua/record.lua` and the crate docs; the scripts hold the
//! rest of the rules. A record holds no instant (the key's TTL is its expiry), which is what
//! lets the client write a claimed record without knowing Redis's time.

use idem_core::{Bytes, Error, Fingerprint, OwnerToken};

shared_with_lua! {
    /// The layout's version and phases as Lua locals, under the same names.
    LUA_LAYOUT, lua prefix "";
    /// The layout version, the first byte of every record.
    const VERSION: u8 = 2;
    /// A held lease.
    const CLAIMED: u8 = 1;
    /// A released key, kept for its fencing number.
    const VACANT: u8 = 2;
    /// Finished with a response.
    const COMPLETED: u8 = 3;
    /// Finished with a permanent failure.
    const FAILED: u8 = 4;
    /// The first integer the scripts do not handle exactly (Lua numbers are doubles): no
    /// fencing number or TTL in a record reaches it.
    #[allow(clippy::unreadable_literal)] // Lua reads it as written
    const MAX_EXACT: u64 = 9007199254740992;
}

shared_with_lua! {
    /// The token layout as Lua locals, under the same names.
    LUA_TOKEN_LAYOUT, lua prefix "";
    /// The token layout version: `version u8 | state u8 | [consumer 16 |] scope`, written
    /// by [`RedisTokenStore`](crate::RedisTokenStore), read by `lua/token_consume.lua`.
    const TOKEN_VERSION: u8 = 1;
    /// A token not used yet: `version | ISSUED | scope`.
    const ISSUED: u8 = 0;
    /// A token used by a consumer not kept: `version | USED | scope`. Only read, as used by
    /// nobody known: stores before consumers were kept wrote it, and tokens they used may
    /// still be live.
    #[allow(dead_code)]
    const USED: u8 = 1;
    /// A token used by the consumer whose bytes follow: `version | USED_BY | consumer 16 |
    /// scope`. Only the consume script writes it.
    #[allow(dead_code)]
    const USED_BY: u8 = 2;
    /// The bytes of a consumer ([`OwnerToken::as_bytes`]) in a used token.
    const CONSUMER_LEN: usize = 16;
}

/// `version | phase | fencing`.
const HEADER_LEN: usize = 10;
/// The first byte after the fingerprint flag.
const FINGERPRINT_AT: usize = HEADER_LEN + 1;
/// `header | flag [digest]` at its longest: how a claimed or finished record starts.
const HEAD_MAX: usize = FINGERPRINT_AT + 32;
/// `head | owner` at its longest: the lease (see [`lease`]).
const LEASE_MAX: usize = HEAD_MAX + 16;
/// The longest claimed record: with a fingerprint.
const CLAIMED_MAX: usize = LEASE_MAX + 8;

/// `version | phase | fencing`: how a record under `fencing` in `phase` begins.
pub(crate) fn header(phase: u8, fencing: u64) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[0] = VERSION;
    out[1] = phase;
    out[2..].copy_from_slice(&fencing.to_be_bytes());
    out
}

/// Record bytes, at most `N`, built on the stack: every call sends some, and a claim that
/// turns out a replay never looks at them again.
pub(crate) struct Built<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Built<N> {
    /// `header | fingerprint flag [digest]`: how a claimed or finished record in `phase`
    /// starts.
    fn head(phase: u8, fencing: u64, fingerprint: Option<&Fingerprint>) -> Self {
        let mut out = Self {
            bytes: [0; N],
            len: 0,
        };
        out.put(&header(phase, fencing));
        match fingerprint {
            Some(fingerprint) => {
                out.put(&[1]);
                out.put(fingerprint.as_bytes());
            }
            None => out.put(&[0]),
        }
        out
    }

    /// Appends `bytes`: each caller's `N` has room for all it puts.
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.bytes[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A claimed record, `header | fingerprint flag [digest] | owner | trace TTL`.
pub(crate) type Claimed = Built<CLAIMED_MAX>;

impl Claimed {
    pub(crate) fn new(
        fencing: u64,
        fingerprint: Option<&Fingerprint>,
        owner: &OwnerToken,
        trace_ttl: u64,
    ) -> Self {
        let mut out = claimed_prefix(fencing, fingerprint, owner);
        out.put(&trace_ttl.to_be_bytes());
        out
    }
}

/// The lease as the transition scripts compare it (`lua/held.lua`): how its claimed record
/// starts, `header | fingerprint flag [digest] | owner`.
pub(crate) fn lease(
    fencing: u64,
    fingerprint: Option<&Fingerprint>,
    owner: &OwnerToken,
) -> Built<LEASE_MAX> {
    claimed_prefix(fencing, fingerprint, owner)
}

/// `header | fingerprint flag [digest] | owner`, in a buffer of `N` with room for more.
fn claimed_prefix<const N: usize>(
    fencing: u64,
    fingerprint: Option<&Fingerprint>,
    owner: &OwnerToken,
) -> Built<N> {
    let mut out = Built::head(CLAIMED, fencing, fingerprint);
    out.put(owner.as_bytes());
    out
}

/// How a finished record starts, ahead of its payload: `header | fingerprint flag
/// [digest]`. The finish script writes it and the payload as they come when the lease's
/// fingerprint field is the claim's, and puts the claim's field in place of this one if not.
pub(crate) fn finished_head(
    phase: u8,
    fencing: u64,
    fingerprint: Option<&Fingerprint>,
) -> Built<HEAD_MAX> {
    Built::head(phase, fencing, fingerprint)
}

/// What a claim found under its key.
#[derive(Debug)]
pub(crate) enum Found {
    /// A finished record: `phase` is [`COMPLETED`] or [`FAILED`].
    Finished {
        phase: u8,
        fingerprint: Option<Fingerprint>,
        payload: Bytes,
    },
    /// A claimed or released record: only Redis's clock can tell whether it is free, so
    /// the claim script decides (and checks the rest of the record).
    Held,
}

/// Reads the value a claim found; anything that does not decode is
/// [`Error::CorruptRecord`], with the reasons the scripts give.
pub(crate) fn found(raw: Vec<u8>) -> Result<Found, Error> {
    if raw.len() < HEADER_LEN {
        return Err(Error::corrupt(format!(
            "record of {} bytes is shorter than its header",
            raw.len()
        )));
    }
    if raw[0] != VERSION {
        return Err(Error::corrupt(format!("unknown record version {}", raw[0])));
    }
    let mut fencing = [0; 8];
    fencing.copy_from_slice(&raw[2..HEADER_LEN]);
    if !(1..MAX_EXACT).contains(&u64::from_be_bytes(fencing)) {
        return Err(Error::corrupt("fencing number out of range"));
    }
    let phase = raw[1];
    match phase {
        CLAIMED | VACANT => Ok(Found::Held),
        COMPLETED | FAILED => finished(phase, raw),
        other => Err(Error::corrupt(format!("unknown phase {other}"))),
    }
}

fn finished(phase: u8, raw: Vec<u8>) -> Result<Found, Error> {
    let (fingerprint, body) = match raw.get(HEADER_LEN) {
        None => return Err(Error::corrupt("record lacks its fingerprint flag")),
        Some(0) => (None, FINGERPRINT_AT),
        Some(1) => {
            let digest = raw
                .get(FINGERPRINT_AT..FINGERPRINT_AT + 32)
                .ok_or_else(|| Error::corrupt("truncated fingerprint"))?;
            (Some(Fingerprint::try_from(digest)?), FINGERPRINT_AT + 32)
        }
        Some(flag) => return Err(Error::corrupt(format!("bad fingerprint flag {flag}"))),
    };
    Ok(Found::Finished {
        phase,
        fingerprint,
        // The payload is the tail of the reply's own buffer: no copy.
        payload: Bytes::from(raw).slice(body..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_records_are_held() {
        let owner = OwnerToken::random();
        let fingerprint = Fingerprint::from_digest([7; 32]);
        for fp in [None, Some(&fingerprint)] {
            let raw = Claimed::new(3, fp, &owner, 60_000).as_bytes().to_vec();
            assert_eq!(raw.len(), if fp.is_some() { 67 } else { 35 });
            assert_eq!(&raw[raw.len() - 24..raw.len() - 8], owner.as_bytes());
            assert_eq!(raw[HEADER_LEN], u8::from(fp.is_some()));
            assert_eq!(&raw[..HEADER_LEN], &header(CLAIMED, 3));
            assert!(matches!(found(raw), Ok(Found::Held)));
        }
    }

    #[test]
    fn a_lease_is_how_its_claimed_record_starts() {
        // What lets the finish script compare a lease with one string.find at byte 1.
        let owner = OwnerToken::random();
        let fingerprint = Fingerprint::from_digest([7; 32]);
        for fp in [None, Some(&fingerprint)] {
            let claimed = Claimed::new(5, fp, &owner, 60_000);
            let claimed = claimed.as_bytes();
            assert_eq!(
                lease(5, fp, &owner).as_bytes(),
                &claimed[..claimed.len() - 8]
            );
            let head = finished_head(COMPLETED, 5, fp);
            assert_eq!(&head.as_bytes()[..HEADER_LEN], &header(COMPLETED, 5));
            assert_eq!(
                &head.as_bytes()[HEADER_LEN..],
                &claimed[HEADER_LEN..claimed.len() - 24]
            );
        }
    }

    #[test]
    fn finished_records_give_their_payload() {
        let mut raw = header(FAILED, 9).to_vec();
        raw.push(1);
        raw.extend_from_slice(&[5; 32]);
        raw.extend_from_slice(b"why");
        let Ok(Found::Finished {
            phase,
            fingerprint,
            payload,
        }) = found(raw)
        else {
            panic!("a finished record")
        };
        assert_eq!(phase, FAILED);
        assert_eq!(fingerprint, Some(Fingerprint::from_digest([5; 32])));
        assert_eq!(payload, Bytes::from_static(b"why"));
    }

    #[test]
    fn garbage_is_corrupt() {
        let cases: [&[u8]; 6] = [
            b"",
            b"short",
            &[1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[2, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[2, 3, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
        ];
        for raw in cases {
            assert!(
                matches!(found(raw.to_vec()), Err(Error::CorruptRecord { .. })),
                "{raw:?}"
            );
        }
    }
}
