//! Every rule of the contract as a check. Each takes the store and its [`Capabilities`]
//! and returns which rule broke, if one did.
//!
//! [`Capabilities`]: crate::Capabilities

mod claim;
mod fingerprint;
mod free;
mod inspection;
mod keys;
mod lease;
mod model;
mod outcome;
mod ownership;
mod races;
mod reads;
mod replay;
mod same_lease;
mod timing;
mod unboxed;

pub use claim::{exclusive_claim, exclusive_claim_many_keys, exclusive_takeover, uncertain_claim};
pub use fingerprint::{claim_fingerprint_decides, fingerprints, granted_lease};
pub use free::free_key;
pub use inspection::inspection_and_removal;
pub use keys::{key_fidelity, namespace_isolation};
pub use lease::{lapsed_lease_still_finishes, lease_expiry, renewal, stale_lease};
pub use model::model;
pub use outcome::{bad_input, failures, retention};
pub use ownership::{lease_identity, own_retry_after_takeover, removal_fencing, spent_lease};
pub use races::{
    exclusive_every_path, finish_races_takeover, freeing_races_takeover,
    retried_claim_races_takeover,
};
pub use reads::{reads_race_claims_and_removals, reads_race_writes};
pub use replay::replay_fidelity;
pub use same_lease::{
    finishes_race_each_other, removal_races_holder, removals_race_each_other,
    retried_claim_races_own_lease,
};
pub use timing::{
    FENCING_MEMORY_CHECKED, fencing_memory, in_progress_retry_after, renewal_from_now,
    retention_from_finish,
};
pub use unboxed::unboxed_steps;
