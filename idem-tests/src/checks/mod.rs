//! Every rule of the contract as a check. Each takes the store and its [`Capabilities`]
//! and returns which rule broke, if one did.
//!
//! [`Capabilities`]: crate::Capabilities

mod claim;
mod fingerprint;
mod inspection;
mod keys;
mod lease;
mod outcome;
mod replay;

pub use claim::{exclusive_claim, exclusive_claim_many_keys, exclusive_takeover, uncertain_claim};
pub use fingerprint::fingerprints;
pub use inspection::inspection_and_removal;
pub use keys::{key_fidelity, namespace_isolation};
pub use lease::{lapsed_lease_still_finishes, lease_expiry, renewal, stale_lease};
pub use outcome::{bad_input, failures, retention};
pub use replay::replay_fidelity;
