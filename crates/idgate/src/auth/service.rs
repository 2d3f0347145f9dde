use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::AuthBody;
use super::future::{ResponseFuture, admit};
use super::gate::{Gate, Outcome, RequestFacts};
use super::response::is_grpc;

/// What the gate reads of a request. The path is the one the client asked
/// for: under a nested axum router the request's own URI has lost the
/// nest's prefix, and axum keeps the whole one as `OriginalUri`.
fn facts<B>(req: &Request<B>) -> RequestFacts<'_> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    RequestFacts {
        headers: req.headers(),
        method: req.method().as_str(),
        host,
        path: path(req),
    }
}

#[cfg(feature = "axum")]
fn path<B>(req: &Request<B>) -> &str {
    req.extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or(req.uri().path(), |original| original.0.path())
}

#[cfg(not(feature = "axum"))]
fn path<B>(req: &Request<B>) -> &str {
    req.uri().path()
}

/// The service [`AuthLayer`](super::AuthLayer) makes: `inner` behind the gate.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Auth<S> {
    pub(crate) fn new(inner: S, gate: Arc<Gate>) -> Self {
        Auth { inner, gate }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let codes = self.gate.status_codes();
        // Nearly every request is decided here and now (a token the cache
        // holds, none, or a bad one): the service polled ready is called at
        // once, with no future of the gate's to allocate.
        let pending = match self.gate.check_now(facts(&req)) {
            Ok(Outcome::Allowed(admission)) => {
                admit(&mut req, admission);
                return ResponseFuture::calling(self.inner.call(req), codes);
            }
            Ok(Outcome::Denied(refusal)) => {
                let grpc = is_grpc(req.headers());
                return ResponseFuture::refused(refusal, grpc, codes);
            }
            Err(pending) => pending,
        };
        // A token to verify. The clone is not ready; the service polled
        // ready goes with this request, the clone stays for the next
        // (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let check = Box::pin(async move {
            let outcome = gate.check_after_miss(facts(&req), pending).await;
            (outcome, req)
        });
        ResponseFuture::checking(check, inner, codes)
    }
}
