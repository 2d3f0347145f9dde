//! The admin listener: `/healthz`, `/readyz`, `/metrics`, on its own
//! address (default loopback) so probes and scrapes never pass the gate and
//! the public port exposes nothing but the upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};

use crate::metrics::Metrics;

/// Whether the gate can decide requests (for the verifier: keys loaded for
/// every issuer).
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Readiness as `/readyz` reports it: the check, asked each time (keys
/// usable for every issuer: a failed refresh keeps old keys usable for
/// `--jwks-stale-if-error`, and only past that do requests get 503 and the
/// sidecar stop being ready), and not ready once shutdown begins (so load
/// balancers stop sending while in-flight requests drain).
#[derive(Clone)]
pub struct Readiness {
    check: ReadyCheck,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Readiness driven by `check`.
    pub fn new(check: ReadyCheck) -> Readiness {
        Readiness {
            check,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether to answer `/readyz` with 200.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && (self.check)()
    }

    /// Shutdown has begun: not ready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// The admin routes.
pub fn router(readiness: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_check_then_drains() {
        let keys_usable = Arc::new(AtomicBool::new(false));
        let k = keys_usable.clone();
        let r = Readiness::new(Arc::new(move || k.load(Ordering::Relaxed)));
        assert!(!r.is_ready());
        keys_usable.store(true, Ordering::Relaxed);
        assert!(r.is_ready());
        // Keys past their stale-if-error window: every request gets 503,
        // and the sidecar says so.
        keys_usable.store(false, Ordering::Relaxed);
        assert!(!r.is_ready());
        keys_usable.store(true, Ordering::Relaxed);
        assert!(r.is_ready());
        r.start_draining();
        assert!(!r.is_ready());
    }
}
