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

/// Readiness as `/readyz` reports it: it flips to ready once, the first
/// time the check passes, and back only when shutdown begins (so load
/// balancers stop sending while in-flight requests drain).
#[derive(Clone)]
pub struct Readiness {
    check: ReadyCheck,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Readiness driven by `check`.
    pub fn new(check: ReadyCheck) -> Readiness {
        Readiness {
            check,
            ready: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether to answer `/readyz` with 200.
    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Acquire) {
            return false;
        }
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let now = (self.check)();
        if now {
            self.ready.store(true, Ordering::Release);
        }
        now
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
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn readiness_latches_then_drains() {
        let calls = Arc::new(AtomicUsize::new(0));
        let keys_loaded = Arc::new(AtomicBool::new(false));
        let (c, k) = (calls.clone(), keys_loaded.clone());
        let r = Readiness::new(Arc::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
            k.load(Ordering::Relaxed)
        }));
        assert!(!r.is_ready());
        keys_loaded.store(true, Ordering::Relaxed);
        assert!(r.is_ready());
        keys_loaded.store(false, Ordering::Relaxed);
        assert!(
            r.is_ready(),
            "flips once: a later failed refresh keeps old keys serving"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the check is not called once ready"
        );
        r.start_draining();
        assert!(!r.is_ready());
    }
}
