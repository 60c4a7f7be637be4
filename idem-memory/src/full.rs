//! The refusal of a store at capacity.

/// The source of [`Error::Unavailable`](idem_core::Error::Unavailable) when a memory store
/// is at capacity.
///
/// Only the memory stores make one; an application finds it with
/// `source.downcast_ref::<StoreFull>()` and reads the capacity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("the memory store holds its capacity of {capacity} bytes")]
pub struct StoreFull {
    /// The capacity in bytes.
    pub capacity: u64,
}

impl StoreFull {
    pub(crate) const fn new(capacity: u64) -> Self {
        Self { capacity }
    }
}
