use std::sync::Arc;

use tower_layer::Layer;

use super::gate::Gate;
use super::service::Auth;

/// A tower layer that lets a request through only with a verified token
/// whose principal the policy allows. Holds only configuration: building
/// the [`Gate`] is where settings are checked, so `layer` never fails and
/// does no I/O.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    gate: Arc<Gate>,
}

impl AuthLayer {
    /// A layer around an already-built gate.
    pub fn new(gate: Arc<Gate>) -> Self {
        AuthLayer { gate }
    }

    /// The gate this layer applies.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth::new(inner, self.gate.clone())
    }
}
