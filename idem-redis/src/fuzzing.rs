//! A narrow entry for the fuzz targets in the repository's `fuzz/` directory: not part of
//! the API, and hidden from the docs.

use idem_core::Error;

/// Decodes a record value the way a claim reads what `SET NX GET` found: `Ok` for a value
/// of record layout v2, [`Error::CorruptRecord`] for anything else. Never panics.
pub fn decode_record(raw: &[u8]) -> Result<(), Error> {
    crate::record::found(raw.to_vec()).map(drop)
}
