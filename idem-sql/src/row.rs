//! A stored row as the lifecycle's [`Entry`], so the rules are decided by
//! `idem_core::backend::lifecycle` itself rather than restated per engine.
//!
//! The lifecycle works on a millisecond clock from any origin. Rows are read with their
//! times already relative to the statement's instant (microseconds, computed by the server
//! on its own clock), so the entry is placed on a synthetic clock whose "now" is [`NOW`].

use bytes::Bytes;
use idem_core::backend::lifecycle::{self, Entry, Phase};
use idem_core::{Error, Fingerprint, OwnerToken, Ttl};

/// "Now" on the synthetic clock: far enough from zero that any past instant a row can hold
/// stays positive, far enough from `u64::MAX` that any future one fits.
pub const NOW: u64 = 1 << 62;

/// The `state` column's values, the same on every engine.
pub mod state {
    /// Held by a lease.
    pub const CLAIMED: u8 = 1;
    /// Released; kept only to remember the fencing number.
    pub const VACANT: u8 = 2;
    /// Finished with a response.
    pub const COMPLETED: u8 = 3;
    /// Finished with a permanent failure.
    pub const FAILED: u8 = 4;
}

/// One record row, its columns as the engine's driver decoded them, times as microseconds
/// from the statement's instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// One of [`state`].
    pub state: u8,
    /// 32 bytes, or `None` for a claim without fingerprint.
    pub fingerprint: Option<Vec<u8>>,
    /// The owner token: 16 bytes.
    pub owner: Vec<u8>,
    /// The fencing number of the latest acquisition.
    pub fencing: u64,
    /// `lease_until - now`, while claimed.
    pub lease_left_us: Option<i64>,
    /// `expires_at - lease_until`: for a claimed row, the trace the lifecycle keeps after
    /// the lease ([`lifecycle::trace_ttl`]).
    pub trace_us: Option<i64>,
    /// `expires_at - now`.
    pub expires_left_us: Option<i64>,
    /// The response or failure of a finished row.
    pub payload: Option<Vec<u8>>,
}

impl StoredRow {
    /// The lifecycle entry this row stands for, at [`NOW`]; a row no store of this shape
    /// could have written is [`Error::CorruptRecord`], unless it has expired: an expired
    /// row is absent whatever it holds (the purge deletes it without reading it), so it
    /// is an expired vacant entry, which the lifecycle treats as no entry at all.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRecord`] for an unknown state byte, a missing column its state needs, or a
    /// fingerprint, owner or payload of the wrong shape.
    pub fn into_entry(self) -> Result<Entry, Error> {
        let expires_at = at(required(self.expires_left_us, "expires_at")?);
        if expires_at <= NOW {
            return Ok(Entry::new(Phase::Vacant, self.fencing, None, expires_at));
        }
        let fingerprint = self
            .fingerprint
            .as_deref()
            .map(Fingerprint::try_from)
            .transpose()?;
        let phase = match self.state {
            state::CLAIMED => Phase::Claimed {
                owner: owner(&self.owner)?,
                lease_until: at(required(self.lease_left_us, "lease_until")?),
                lease_ttl: millis(required(self.trace_us, "lease_until")?),
            },
            state::VACANT => Phase::Vacant,
            state::COMPLETED => Phase::Completed(payload(self.payload)?),
            state::FAILED => Phase::Failed(payload(self.payload)?),
            other => return Err(Error::corrupt(format!("unknown state byte {other}"))),
        };
        Ok(Entry::new(phase, self.fencing, fingerprint, expires_at))
    }
}

/// A signed fencing column (PostgreSQL's `bigint`) as the lease's number; a negative one is
/// [`Error::CorruptRecord`].
///
/// # Errors
///
/// [`Error::CorruptRecord`] for a negative number.
pub fn fencing(stored: i64) -> Result<u64, Error> {
    u64::try_from(stored).map_err(|_| Error::corrupt(format!("a negative fencing number {stored}")))
}

/// The lease TTL and the whole life of a claimed row (lease + trace), in microseconds: what
/// an insert, a takeover and a renewal add to the server's clock.
#[must_use]
pub fn claim_spans(lease_ttl: Ttl) -> (u64, u64) {
    let lease = lease_ttl.as_millis();
    let life = lease.saturating_add(lifecycle::trace_ttl(lease));
    (micros(lease), micros(life))
}

/// Milliseconds as microseconds, the unit every statement adds to the server's clock.
#[must_use]
pub fn micros(millis: u64) -> u64 {
    millis.saturating_mul(1000)
}

fn required(value: Option<i64>, column: &str) -> Result<i64, Error> {
    value.ok_or_else(|| Error::corrupt(format!("{column} is NULL")))
}

fn owner(bytes: &[u8]) -> Result<OwnerToken, Error> {
    let token: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::corrupt(format!("an owner token is 16 bytes, found {}", bytes.len()))
    })?;
    Ok(OwnerToken::from_bytes(token))
}

fn payload(stored: Option<Vec<u8>>) -> Result<Bytes, Error> {
    stored
        .map(Bytes::from)
        .ok_or_else(|| Error::corrupt("a finished record has no payload"))
}

/// Microseconds from now as a point on the synthetic millisecond clock, rounded up, so that
/// "later than now" on the server (`> 0 µs`) stays "later than now" in the lifecycle
/// (`> NOW`), and "not later" stays "not later".
fn at(offset_us: i64) -> u64 {
    NOW.saturating_add_signed(ceil_millis(offset_us))
}

/// A non-negative span in microseconds as whole milliseconds, rounded up.
fn millis(span_us: i64) -> u64 {
    u64::try_from(ceil_millis(span_us)).unwrap_or(0)
}

fn ceil_millis(us: i64) -> i64 {
    us.div_euclid(1000) + i64::from(us.rem_euclid(1000) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: u8) -> StoredRow {
        StoredRow {
            state,
            fingerprint: None,
            owner: vec![7; 16],
            fencing: 3,
            lease_left_us: Some(1_500),
            trace_us: Some(60_000_000),
            expires_left_us: Some(61_500),
            payload: Some(b"body".to_vec()),
        }
    }

    #[test]
    fn rounding_keeps_the_sign_of_the_server_comparison() {
        assert_eq!(at(1), NOW + 1);
        assert_eq!(at(1_000), NOW + 1);
        assert_eq!(at(1_001), NOW + 2);
        assert_eq!(at(0), NOW);
        assert_eq!(at(-1), NOW);
        assert_eq!(at(-999), NOW);
        assert_eq!(at(-1_000), NOW - 1);
        assert_eq!(at(-1_001), NOW - 1);
    }

    #[test]
    fn decodes_each_state() {
        let claimed = row(state::CLAIMED).into_entry().expect("claimed");
        assert_eq!(
            claimed.phase,
            Phase::Claimed {
                owner: OwnerToken::from_bytes([7; 16]),
                lease_until: NOW + 2,
                lease_ttl: 60_000,
            }
        );
        assert_eq!(claimed.expires_at, NOW + 62);
        assert_eq!(
            row(state::VACANT).into_entry().map(|e| e.phase).ok(),
            Some(Phase::Vacant)
        );
        assert_eq!(
            row(state::FAILED).into_entry().map(|e| e.phase).ok(),
            Some(Phase::Failed(Bytes::from_static(b"body")))
        );
    }

    #[test]
    fn undecodable_rows_are_corrupt() {
        let corrupt = |r: StoredRow| matches!(r.into_entry(), Err(Error::CorruptRecord { .. }));
        assert!(corrupt(row(0)));
        assert!(corrupt(row(9)));
        assert!(corrupt(StoredRow {
            fingerprint: Some(vec![1; 31]),
            ..row(state::CLAIMED)
        }));
        assert!(corrupt(StoredRow {
            owner: vec![1; 15],
            ..row(state::CLAIMED)
        }));
        assert!(corrupt(StoredRow {
            lease_left_us: None,
            ..row(state::CLAIMED)
        }));
        assert!(corrupt(StoredRow {
            payload: None,
            ..row(state::COMPLETED)
        }));
        assert!(corrupt(StoredRow {
            expires_left_us: None,
            ..row(state::VACANT)
        }));
        assert!(matches!(fencing(-1), Err(Error::CorruptRecord { .. })));
    }

    #[test]
    fn expired_rows_are_absent_whatever_they_hold() {
        for expires_left_us in [0, -1, -60_000_000] {
            let entry = StoredRow {
                state: 9,
                fingerprint: Some(vec![1; 31]),
                owner: vec![1; 15],
                lease_left_us: None,
                payload: None,
                expires_left_us: Some(expires_left_us),
                ..row(state::CLAIMED)
            }
            .into_entry()
            .expect("an expired row decodes");
            assert!(entry.is_expired(NOW), "{expires_left_us}");
        }
        assert_eq!(fencing(i64::MAX).ok(), Some(i64::MAX as u64));
    }
}
