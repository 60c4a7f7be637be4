//! A handler's panic, caught where the layer can still settle its key.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a panic unwinds with, to resume it once the key is settled.
pub(crate) type Panic = Box<dyn Any + Send>;

/// What `f` returns, or the panic it unwound with.
///
/// Whatever `f` touches (a handler's future, polled) is dropped after a panic, never used
/// again, so the state the panic left it in is never observed: asserting unwind safety is
/// sound.
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(f))
}
