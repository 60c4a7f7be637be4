//! A SQL row's columns (MySQL, PostgreSQL) into the lifecycle's entry: a value or
//! `CorruptRecord`, never a panic (times at the ends of i64, fencing numbers at the ends of
//! u64, any bytes).
#![no_main]

use arbitrary::Arbitrary;
use idem_core::Error;
use idem_sql::StoredRow;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Row {
    state: u8,
    fingerprint: Option<Vec<u8>>,
    owner: Vec<u8>,
    fencing: u64,
    lease_left_us: Option<i64>,
    trace_us: Option<i64>,
    expires_left_us: Option<i64>,
    payload: Option<Vec<u8>>,
}

fuzz_target!(|row: Row| {
    let row = StoredRow {
        state: row.state,
        fingerprint: row.fingerprint,
        owner: row.owner,
        fencing: row.fencing,
        lease_left_us: row.lease_left_us,
        trace_us: row.trace_us,
        expires_left_us: row.expires_left_us,
        payload: row.payload,
    };
    match row.into_entry() {
        Ok(_) | Err(Error::CorruptRecord { .. }) => {}
        Err(other) => panic!("a row decoded to {other:?}"),
    }
});
