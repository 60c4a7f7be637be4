use bytes::Bytes;
use idem_core::{Claim, RecordState};

use crate::context::{Ctx, Doing, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// Completed and failed payloads come back byte for byte: empty, only spaces, ending in
/// whitespace, every byte value, valid and invalid UTF-8, NULs, and 1 MiB.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a replayed payload differs from
/// the stored one by any byte; or when a store call the check needs fails unexpectedly.
pub async fn replay_fidelity(store: Store, capabilities: Capabilities) -> CheckResult {
    run("replay_fidelity", store, capabilities, |ctx| async move {
        for (i, payload) in payloads(ctx.caps.max_payload).into_iter().enumerate() {
            let completed = ctx.key(&format!("completed-{i}"))?;
            let lease = ctx.acquire(&completed, LONG).await?;
            ctx.complete(&lease, payload.clone()).await?;
            expect_replay(&ctx, &completed, Claim::Completed(payload.clone())).await?;

            let failed = ctx.key(&format!("failed-{i}"))?;
            let lease = ctx.acquire(&failed, LONG).await?;
            ctx.store
                .fail(&lease, payload.clone(), ttl(RETENTION)?)
                .await
                .doing("fail")?;
            expect_replay(&ctx, &failed, Claim::Failed(payload)).await?;
        }
        Ok(())
    })
    .await
}

async fn expect_replay(ctx: &Ctx, key: &idem_core::Key, expected: Claim) -> Result<(), String> {
    // Twice: a replay must not consume or alter what is stored.
    for attempt in 0..2 {
        let found = ctx.probe(key).await?;
        ensure!(
            found == expected,
            "replay {attempt} of {key}: expected {}, got {}",
            describe(&expected),
            describe(&found)
        );
    }
    let stored = ctx.read(key).await?.map(|record| record.state);
    let expected_state = match expected {
        Claim::Completed(response) => RecordState::Completed { response },
        Claim::Failed(failure) => RecordState::Failed { failure },
        _ => return Err("expect_replay takes a finished claim".into()),
    };
    ensure!(
        stored.as_ref() == Some(&expected_state),
        "read of {key} did not return the stored payload byte for byte"
    );
    Ok(())
}

/// Summarizes a claim without dumping a megabyte.
fn describe(claim: &Claim) -> String {
    match claim {
        Claim::Completed(bytes) => format!(
            "Completed({} bytes, starting {:?})",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        ),
        Claim::Failed(bytes) => format!(
            "Failed({} bytes, starting {:?})",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        ),
        other => format!("{other:?}"),
    }
}

fn payloads(max_payload: usize) -> Vec<Bytes> {
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let big = pseudo_random(max_payload.min(1024 * 1024));
    vec![
        Bytes::new(),
        // What a `CHAR` column, or a string type compared with trailing spaces ignored,
        // would cut.
        Bytes::from_static(b"   "),
        Bytes::from_static(b"{\"ok\":true}  \t\r\n "),
        Bytes::from(every_byte),
        Bytes::from("héllo wörld ✓ 🙂 日本語".as_bytes().to_vec()),
        // Invalid UTF-8: a lone continuation byte, an overlong form, a truncated sequence.
        Bytes::from_static(&[0x80, 0xc0, 0xaf, 0xff, 0xfe, 0xe2, 0x82]),
        Bytes::from_static(&[0, 0, 0, 1, 0, 0]),
        Bytes::from(big),
    ]
}

/// Deterministic bytes with every value, so a store that re-encodes or truncates shows.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
