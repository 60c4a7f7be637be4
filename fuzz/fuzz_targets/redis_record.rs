//! Redis record layout v2, as a claim reads the value `SET NX GET` found: a value or
//! `CorruptRecord`, never a panic.
#![no_main]

use idem_core::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    match idem_redis::fuzzing::decode_record(raw) {
        Ok(()) | Err(Error::CorruptRecord { .. }) => {}
        Err(other) => panic!("a record decoded to {other:?}"),
    }
});
