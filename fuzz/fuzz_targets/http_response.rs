//! idem-http's stored responses, as a replay reads them from the store: the response a
//! replay sends or the reason it answers "unreadable", never a panic; what decodes has one
//! reading (encoding it again decodes to the same response).
#![no_main]

use idem_http::fuzzing::{Replay, replay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    match replay(raw) {
        Ok(Replay::Response { status, stable, .. }) => {
            assert!(
                raw.starts_with(b"IH1") || raw.starts_with(b"IH2"),
                "a response decoded from {raw:02x?}"
            );
            assert!((100..1000).contains(&status));
            assert!(stable, "{raw:02x?} decodes to a response that re-encodes differently");
        }
        Ok(Replay::TooLarge { status }) => {
            assert!(raw.starts_with(b"IHM"), "a marker decoded from {raw:02x?}");
            assert!((100..1000).contains(&status));
        }
        Ok(Replay::BodyFailed { status }) => {
            assert!(raw.starts_with(b"IHF"), "a marker decoded from {raw:02x?}");
            assert!((100..1000).contains(&status));
        }
        Err(_) => {}
    }
});
