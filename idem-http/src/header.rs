//! The header names the layer reads and writes.

use http::HeaderName;

/// The request header the draft names: `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header added to replayed responses, `Idempotent-Replayed: true` (Stripe's name; the
/// draft names none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
