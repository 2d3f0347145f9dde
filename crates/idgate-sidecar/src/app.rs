//! The request path of `serve`, outermost first:
//!
//! 1. **Sanitize** (every request, public paths included): hop-by-hop
//!    headers and client-sent identity headers go; in forward-auth mode the
//!    subrequest is rewritten to the original method, URI and host.
//! 2. **The gate** ([`GateLayer`]): verifies the token and applies the
//!    policy; refuses, or lets the request on with its `Identity` in the
//!    extensions.
//! 3. **Admitted**: identity headers and `--forward-token` for the upstream
//!    (proxy mode), or a 200 carrying the identity headers (forward-auth).
//! 4. **The proxy** (proxy mode).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::IntoResponse;
use futures_util::FutureExt;
use http::{HeaderMap, Request, Response};
use idgate::auth::Admission;
use idgate::{CredentialHeader, Identity};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use crate::Body;
use crate::config::{ForwardToken, Mode, Settings};
use crate::forward_auth;
use crate::headers::{
    IdentityStrip, credential_header_by_rule, forward_token, is_upgrade_request,
    method_is_canonical, remove_hop_by_hop, set_identity,
};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Tunnels};

/// Every service in the sidecar, type-erased.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The seam where the auth gate wraps the inner service (proxy or
/// forward-auth answer).
///
/// Any `tower::Layer` whose service answers with an `IntoResponse` type
/// (`Response<B>` with a streaming body) is a `GateLayer`; the real one is
/// `idgate::auth::AuthLayer`, built in [`crate::gate`]. An allowed request
/// must reach the inner service with its `idgate::Identity` in the request
/// extensions; a refusal is a response, never reaching it.
///
/// `tower::layer::util::Identity` (no gate at all) also fits: tests of the
/// proxy use it. The binary never does: [`crate::gate::build`] is the only
/// place `serve` gets its gate from, and it fails rather than return none.
///
/// When the gate's `Admission` is in the extensions, its
/// `credential_header` says which header `--forward-token` applies to.
pub trait GateLayer: Send + Sync + 'static {
    /// Wraps `inner` with the gate.
    fn wrap(&self, inner: HttpService) -> HttpService;
}

impl<L> GateLayer for L
where
    L: tower::Layer<HttpService> + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    fn wrap(&self, inner: HttpService) -> HttpService {
        BoxCloneSyncService::new(self.layer(inner).map_response(IntoResponse::into_response))
    }
}

/// The whole request path, and what a shutdown drains besides requests.
pub struct App {
    /// Serves every request.
    pub service: HttpService,
    /// The proxy's WebSocket tunnels (none in forward-auth mode).
    pub tunnels: Tunnels,
}

/// Builds the whole request path for `settings`, with `gate` in its place.
pub fn build_app(settings: &Settings, gate: &dyn GateLayer, metrics: Arc<Metrics>) -> App {
    let forward = settings.forward_token;
    let mut tunnels = Tunnels::default();
    let inner: HttpService = match &settings.mode {
        Mode::Proxy { upstream } => {
            let proxy = Proxy::new(upstream.clone(), settings.request_timeout, Some(metrics));
            tunnels = proxy.tunnels();
            // A service_fn rather than `Proxy` itself: the boxed service
            // boxes this future once, where `Proxy`'s own (already boxed)
            // future would be boxed twice.
            BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
                proxy
                    .forward_sanitized(admitted(req, forward))
                    .map(Ok::<_, Infallible>)
            }))
        }
        Mode::ForwardAuth => BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| {
            std::future::ready(Ok::<_, Infallible>(forward_auth_allow(&req)))
        })),
    };
    let gated = gate.wrap(inner);
    let service = BoxCloneSyncService::new(Sanitize {
        inner: gated,
        strip: Arc::new(IdentityStrip::new(settings.strip_headers.clone())),
        forward_auth: settings.mode == Mode::ForwardAuth,
    });
    App { service, tunnels }
}

/// Step 1: runs on every request before anything reads its headers.
#[derive(Clone)]
struct Sanitize {
    inner: HttpService,
    strip: Arc<IdentityStrip>,
    forward_auth: bool,
}

impl Service<Request<Body>> for Sanitize {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <HttpService as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Two `Host`s: a condition would read one and the upstream perhaps
        // the other. RFC 9112 §3.2 says 400. And the gate judges the path
        // the upstream gets: a target without one (authority-form
        // `GET host:port` or `CONNECT`, `OPTIONS *`) would be judged as
        // another path than the upstream's `/`. idgate tunnels no CONNECT.
        // Nor may a method be read one way by a condition and another by
        // the upstream (`delete`).
        let refused = if req
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            Some("repeated_host")
        } else if !req.uri().path().starts_with('/') {
            Some("invalid_uri")
        } else if !method_is_canonical(req.method()) {
            Some("invalid_method")
        } else {
            None
        };
        if let Some(reason) = refused {
            // A method is any token the client likes, of any length.
            let method = req.method().as_str();
            tracing::info!(
                http.reason = reason,
                http.method = method.get(..32).unwrap_or(method),
                "request refused before the gate"
            );
            let refusal =
                crate::proxy::json_error(http::StatusCode::BAD_REQUEST, "bad_request", reason);
            return Box::pin(std::future::ready(Ok(refusal)));
        }
        // Hop-by-hop first: a client could otherwise name an identity
        // header in `Connection` to have the one we set removed downstream.
        let upgrade = is_upgrade_request(&req);
        remove_hop_by_hop(req.headers_mut(), upgrade);
        self.strip.strip(req.headers_mut());
        if self.forward_auth
            && let Err(e) = forward_auth::rewrite(&mut req)
        {
            tracing::warn!(error = %e, "forward-auth subrequest refused");
            return Box::pin(std::future::ready(Ok(e.response())));
        }
        // Everything above is synchronous, so the service polled ready is
        // called here and now: no clone of the inner stack, no extra box.
        self.inner.call(req)
    }
}

/// Which header carried the token the gate verified. The gate reports it
/// in its admission; when there is none (public path, `allUsers`, or a gate
/// that does not say), Cloud Run's rule names the header a token would have
/// been read from.
fn carrier(req: &Request<Body>) -> Option<CredentialHeader> {
    req.extensions()
        .get::<Admission>()
        .and_then(|a| a.credential_header)
        .or_else(|| credential_header_by_rule(req.headers()))
}

/// Step 3, proxy mode.
fn admitted(mut req: Request<Body>, forward: ForwardToken) -> Request<Body> {
    let carrier = carrier(&req);
    let identity = req.extensions().get::<Identity>().cloned();
    if let Some(identity) = &identity {
        set_identity(req.headers_mut(), identity);
    }
    forward_token(req.headers_mut(), forward, carrier, identity.is_some());
    req
}

/// Step 3, forward-auth mode: the front proxy copies these headers to the
/// upstream (nginx `auth_request_set`, Traefik `authResponseHeaders`).
fn forward_auth_allow(req: &Request<Body>) -> Response<Body> {
    let mut headers = HeaderMap::new();
    if let Some(identity) = req.extensions().get::<Identity>() {
        set_identity(&mut headers, identity);
    }
    let mut res = Response::new(Body::empty());
    *res.headers_mut() = headers;
    res
}
