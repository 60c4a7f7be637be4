//! The refusal of a store at capacity.

/// The source of [`Error::Unavailable`](idem_core::Error::Unavailable) when a memory store
/// is at capacity.
#[derive(Debug, thiserror::Error)]
#[error("the memory store holds its capacity of {capacity} bytes")]
pub struct StoreFull {
    /// The capacity in bytes.
    pub capacity: u64,
}
