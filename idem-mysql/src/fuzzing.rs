//! A narrow entry for the fuzz targets in the repository's `fuzz/` directory: not part of
//! the API, and hidden from the docs.

use idem_core::Error;

use crate::row::StoredRow;

/// The columns of a row as the store selects them (times already relative to the
/// statement's instant, in microseconds).
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// `state`.
    pub state: u8,
    /// `fingerprint`.
    pub fingerprint: Option<Vec<u8>>,
    /// `owner`.
    pub owner: Vec<u8>,
    /// `fencing`.
    pub fencing: u64,
    /// `lease_until` − now.
    pub lease_left_us: Option<i64>,
    /// `expires_at` − `lease_until`.
    pub trace_us: Option<i64>,
    /// `expires_at` − now.
    pub expires_left_us: Option<i64>,
    /// `payload`.
    pub payload: Option<Vec<u8>>,
}

/// Decodes a row into the lifecycle's entry: `Ok` or [`Error::CorruptRecord`], never a
/// panic.
pub fn decode_row(columns: Columns) -> Result<(), Error> {
    StoredRow::from_columns(
        columns.state,
        columns.fingerprint,
        columns.owner,
        columns.fencing,
        columns.lease_left_us,
        columns.trace_us,
        columns.expires_left_us,
        columns.payload,
    )
    .into_entry()
    .map(drop)
}
