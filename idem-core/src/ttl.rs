//! Times to live, validated once.

use std::time::Duration;

use crate::error::{Error, InvalidInput};

/// A time to live of at least one millisecond, in whole milliseconds.
///
/// Stores work in milliseconds (Redis `PX`, MySQL `TIMESTAMP(6)` arithmetic), so a TTL is
/// kept as whole milliseconds; sub-millisecond parts are rounded up rather than lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u64);

impl Ttl {
    /// The longest TTL accepted: about ten years. Longer ones are almost always a unit mistake.
    pub const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 60 * 60);

    /// Validates a TTL: zero is [`InvalidInput::ZeroTtl`]; over [`Ttl::MAX`] is
    /// [`InvalidInput::TtlOutOfRange`].
    ///
    /// # Errors
    ///
    /// [`InvalidInput::ZeroTtl`] for zero; [`InvalidInput::TtlOutOfRange`] over [`Ttl::MAX`].
    pub fn new(ttl: Duration) -> Result<Self, Error> {
        if ttl.is_zero() {
            return Err(InvalidInput::ZeroTtl.into());
        }
        if ttl > Self::MAX {
            return Err(InvalidInput::TtlOutOfRange {
                ttl,
                max: Self::MAX,
            }
            .into());
        }
        let millis = ttl.as_nanos().div_ceil(1_000_000);
        // In range by the check above: MAX is far below u64::MAX milliseconds.
        Ok(Self(u64::try_from(millis).unwrap_or(u64::MAX)))
    }

    /// A TTL of `millis` milliseconds, brought into range: zero becomes one millisecond,
    /// anything over [`Ttl::MAX`] becomes `MAX`. For constants that need no `Result`.
    #[must_use]
    pub const fn from_millis_clamped(millis: u64) -> Self {
        const MAX_MILLIS: u64 = Ttl::MAX.as_secs() * 1000;
        if millis == 0 {
            Self(1)
        } else if millis > MAX_MILLIS {
            Self(MAX_MILLIS)
        } else {
            Self(millis)
        }
    }

    /// A TTL of whole seconds.
    ///
    /// # Errors
    ///
    /// As [`Ttl::new`]: zero, or over [`Ttl::MAX`].
    pub fn from_secs(secs: u64) -> Result<Self, Error> {
        Self::new(Duration::from_secs(secs))
    }

    /// A TTL of whole milliseconds.
    ///
    /// # Errors
    ///
    /// As [`Ttl::new`]: zero, or over [`Ttl::MAX`].
    pub fn from_millis(millis: u64) -> Result<Self, Error> {
        Self::new(Duration::from_millis(millis))
    }

    /// The TTL in milliseconds, never zero.
    #[must_use]
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// The TTL as a [`Duration`].
    #[must_use]
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = Error;

    fn try_from(ttl: Duration) -> Result<Self, Error> {
        Self::new(ttl)
    }
}

impl From<Ttl> for Duration {
    fn from(ttl: Ttl) -> Self {
        ttl.as_duration()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_rejected() {
        assert!(matches!(
            Ttl::new(Duration::ZERO),
            Err(Error::InvalidInput(InvalidInput::ZeroTtl))
        ));
    }

    #[test]
    fn too_long_is_rejected() {
        assert!(matches!(
            Ttl::new(Ttl::MAX + Duration::from_secs(1)),
            Err(Error::InvalidInput(InvalidInput::TtlOutOfRange { .. }))
        ));
        assert!(Ttl::new(Ttl::MAX).is_ok());
    }

    /// The longest TTL is about ten years, as documented: nine years is a TTL, eleven is
    /// refused as a unit mistake.
    #[test]
    fn the_longest_ttl_is_about_ten_years() {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 60 * 60);
        assert!(Ttl::new(YEAR * 9).is_ok());
        assert!(matches!(
            Ttl::new(YEAR * 11),
            Err(Error::InvalidInput(InvalidInput::TtlOutOfRange { .. }))
        ));
    }

    /// A TTL converts back to the duration it holds.
    #[test]
    fn a_ttl_converts_back_to_its_duration() {
        let ttl = Ttl::from_millis(1500).expect("a valid TTL");
        assert_eq!(Duration::from(ttl), Duration::from_millis(1500));
    }

    #[test]
    fn clamped_constructor_stays_in_range() {
        assert_eq!(Ttl::from_millis_clamped(0).as_millis(), 1);
        assert_eq!(Ttl::from_millis_clamped(1500).as_millis(), 1500);
        let max = Ttl::new(Ttl::MAX).map(Ttl::as_millis).ok();
        assert_eq!(Some(Ttl::from_millis_clamped(u64::MAX).as_millis()), max);
    }

    #[test]
    fn sub_millisecond_rounds_up() {
        assert_eq!(
            Ttl::new(Duration::from_nanos(1)).map(Ttl::as_millis).ok(),
            Some(1)
        );
        assert_eq!(
            Ttl::new(Duration::from_micros(1500))
                .map(Ttl::as_millis)
                .ok(),
            Some(2)
        );
        assert_eq!(Ttl::from_secs(3).map(Ttl::as_millis).ok(), Some(3000));
    }
}
