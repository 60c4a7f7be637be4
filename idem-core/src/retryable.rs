//! Whether an operation's error is worth retrying.

/// Tells the executor what to do with an operation's error.
///
/// - retryable (a timeout calling a payment provider, a lock conflict): the key is released
///   and the next request with it runs the operation again;
/// - permanent (a declined card, a validation error): the error is stored and replayed to
///   every repeat, exactly like a success.
///
/// ```
/// use idem_core::Retryable;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum PaymentError { Declined, ProviderTimeout }
///
/// impl Retryable for PaymentError {
///     fn is_retryable(&self) -> bool {
///         matches!(self, PaymentError::ProviderTimeout)
///     }
/// }
/// ```
pub trait Retryable {
    /// Whether a later request with the same key should run the operation again.
    fn is_retryable(&self) -> bool;
}
