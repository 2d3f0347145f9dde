use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::AuthBody;
use super::future::ResponseFuture;
use super::gate::{Gate, RequestFacts};

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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone is not ready; the service polled ready goes with this
        // request, the clone stays for the next (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let check = Box::pin(async move {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("");
            let outcome = gate
                .check(RequestFacts {
                    headers: req.headers(),
                    method: req.method().as_str(),
                    host,
                    path: req.uri().path(),
                })
                .await;
            (outcome, req)
        });
        ResponseFuture::new(check, inner, self.gate.status_codes())
    }
}
