//! The layer: what [`tower`](tower_layer) stacks to make a service idempotent.

use std::fmt;
use std::sync::Arc;

use idem_core::attempt::Engine;
use tower_layer::Layer;

use crate::estimate::RunTimes;
use crate::service::IdempotencyService;
use crate::settings::Settings;

/// A tower [`Layer`] that makes the wrapped service idempotent per `Idempotency-Key`, on
/// any [`IdempotencyStore`](idem_core::IdempotencyStore). Made by
/// [`IdempotencyLayer::builder`]; see the [crate docs](crate) for the behaviour.
///
/// Cloning is cheap: clones share the store and the settings.
pub struct IdempotencyLayer<S> {
    pub(crate) engine: Engine<S>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) runs: Arc<RunTimes>,
}

impl<S> Clone for IdempotencyLayer<S> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            settings: Arc::clone(&self.settings),
            runs: Arc::clone(&self.runs),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("engine", &self.engine)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S, Inner> Layer<Inner> for IdempotencyLayer<S> {
    type Service = IdempotencyService<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        IdempotencyService::new(
            self.engine.clone(),
            Arc::clone(&self.settings),
            Arc::clone(&self.runs),
            inner,
        )
    }
}
