//! The reverse proxy: a `tower::Service` that forwards a request to the
//! upstream and streams the answer back.
//!
//! - Pooled connections: HTTP/1.1 for HTTP/1 callers ([`pool`]: each
//!   connection driven by the request using it), h2c (prior knowledge,
//!   hyper-util's client, one multiplexed connection) for callers that came
//!   in over HTTP/2, such as gRPC.
//! - Bodies stream both ways; nothing waits to be buffered. The h2c
//!   connection reads up to 64 KiB at a time ([`read_ahead`]), and the
//!   chunks of an answer to an HTTP/2 caller that are already there go out
//!   joined, in frames of up to 16 KiB ([`coalesce`]).
//! - Hop-by-hop headers are removed both ways; `X-Forwarded-*` are set.
//! - `Upgrade` (WebSocket…) is passed through: once the upstream answers
//!   101, both connections are upgraded and bytes copied between them
//!   ([`Tunnels`], which a shutdown drains).
//! - An HTTP/1.1 upstream that answers before it has read the request's
//!   body, and closes, has its answer passed on: a write of the body that
//!   fails because it closed waits until what it sent is read
//!   ([`early_answer`]).
//! - No response headers within the request timeout: 504, or 408 when the
//!   upstream connection was waiting on the client for more of the
//!   request's body. Upstream unreachable or broken: 502. gRPC callers get
//!   a gRPC status instead.
//! - The upstream call runs inside the service's future, never detached: if
//!   the client goes away, hyper drops the future and the upstream request
//!   with it.

mod coalesce;
#[cfg(test)]
mod counted_waker;
mod early_answer;
mod error;
mod pool;
mod read_ahead;
mod tunnel;
mod yield_write;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use coalesce::Coalesce;
pub use error::{ProxyFailure, grpc_error, is_grpc, json_error};
pub use pool::{PoolLimits, UpstreamError};
pub use tunnel::Tunnels;

use crate::config::Upstream;
use crate::headers::{is_upgrade_request, remove_hop_by_hop, set_forwarded};
use crate::metrics::Metrics;
use crate::{Body, ErrorChain};

/// The client's address, put in request extensions by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Idle HTTP/1.1 connections kept per upstream: enough for a burst of a
/// thousand concurrent requests to find theirs again, few enough that the
/// file descriptors and buffers they hold stay bounded.
const MAX_IDLE: usize = 1024;

/// An idle upstream connection older than this is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle upstream connections kept for the whole [`IDLE_TIMEOUT`]: enough
/// for steady traffic to find a warm one.
const WARM_IDLE: usize = 64;

/// The idle connections beyond the [`WARM_IDLE`] newest (a burst's) close
/// after this long unused, so the memory they hold is handed back soon
/// after the burst.
const SPARE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often idle connections past their timeouts are closed: each look
/// takes the pool's lock and reads only the expired and the first fresh
/// one, so it can be often, and the spares close within a second of their
/// timeout (their memory is released soon after: `crate::memory`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one h2c upstream stream may send that its caller has not taken
/// yet, and what all of them together may (the connection's window). All
/// HTTP/2 callers share one h2c connection: with hyper's defaults (2 MiB
/// and 5 MiB), three callers that took nothing (a flow-control window
/// kept shut) stopped every other HTTP/2 answer until the stall sweep cut
/// them. Now it takes 128, and what idgate holds for them stays bounded
/// (32 MiB). On loopback 256 KiB in flight is still far more than a
/// stream needs for full speed.
const H2C_STREAM_WINDOW: u32 = 256 << 10;
/// See [`H2C_STREAM_WINDOW`].
const H2C_CONNECTION_WINDOW: u32 = 32 << 20;

/// Forwards requests to one upstream. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    http1: pool::Pool,
    h2c: Client<read_ahead::Connector, Body>,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    tunnels: Tunnels,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.upstream)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to `upstream` that gives up after `timeout` without response
    /// headers. Builds its connection pools; does no I/O. Inside a tokio
    /// runtime it also starts the task that closes expired idle connections.
    pub fn new(upstream: Upstream, timeout: Duration, metrics: Option<Arc<Metrics>>) -> Proxy {
        Self::with_clock(
            upstream,
            timeout,
            metrics,
            Arc::new(idgate::SystemClock::new()),
        )
    }

    /// [`Proxy::new`] with the clock the HTTP/1.1 pool reads connections'
    /// idle times by (which requests may be sent again, which idle
    /// connections expire): a manual one in tests.
    pub(crate) fn with_clock(
        upstream: Upstream,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
        clock: Arc<dyn idgate::Clock>,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Connecting counts against the request timeout; a separate, shorter
        // bound makes "nobody listening" a quick 502 rather than a 504.
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let port = upstream.authority.port_u16().unwrap_or(80);
        let http1 = pool::Pool::new(
            format!("{}:{port}", upstream.authority.host()),
            PoolLimits {
                max_idle: MAX_IDLE,
                idle_timeout: IDLE_TIMEOUT,
                warm: WARM_IDLE,
                spare_idle_timeout: SPARE_IDLE_TIMEOUT,
                connect_timeout: timeout.min(Duration::from_secs(10)),
            },
            clock,
            metrics
                .as_ref()
                .map(|m| m.upstream_resends())
                .unwrap_or_default(),
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            http1.sweep_every(SWEEP_EVERY);
        }
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http2_only(true)
            .http2_initial_stream_window_size(H2C_STREAM_WINDOW)
            .http2_initial_connection_window_size(H2C_CONNECTION_WINDOW)
            .build(read_ahead::connector(connector));
        Proxy {
            inner: Arc::new(Inner {
                upstream,
                http1,
                h2c,
                timeout,
                metrics,
                tunnels: Tunnels::default(),
            }),
        }
    }

    /// Its WebSocket tunnels, for a shutdown to drain.
    pub fn tunnels(&self) -> Tunnels {
        self.inner.tunnels.clone()
    }
}

impl Proxy {
    /// Forwards `req` and answers with the upstream's response, or with
    /// the proxy's own error answer (502, 504, or their gRPC statuses).
    ///
    /// The request is rewritten for the upstream and handed to a connection
    /// when this is called, inside a tokio runtime; the future waits for the
    /// answer.
    pub fn forward(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        self.inner.forward(req, false)
    }

    /// [`Proxy::forward`] for a request whose hop-by-hop headers are gone
    /// already (the app's first step removes them from every request), so
    /// that the request is not scanned for them twice.
    pub(crate) fn forward_sanitized(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        self.inner.forward(req, true)
    }
}

impl tower_service::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.inner.forward(req, false).map(Ok))
    }
}

impl Inner {
    /// See [`Proxy::forward`]. The future is boxed with every proxied
    /// request, so all the rewriting happens here, before it exists, and
    /// it holds only the exchange and what the answer needs: about 500
    /// bytes, where an `async fn` doing the same kept the request, its
    /// parts and each branch's future (3.5 KiB, copied on every move).
    fn forward(
        self: &Arc<Self>,
        req: Request<Body>,
        sanitized: bool,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        let upgrade = is_upgrade_request(&req);
        let grpc = is_grpc(req.headers());
        let (mut parts, body) = req.into_parts();
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        let client_ip = parts.extensions.get::<ClientAddr>().map(|a| a.0.ip());
        let h2 = parts.version == Version::HTTP_2;

        if !sanitized {
            remove_hop_by_hop(&mut parts.headers, upgrade);
        }
        set_forwarded(
            &mut parts.headers,
            client_ip,
            parts.uri.authority().map(|a| a.as_str()),
        );
        if h2 {
            // The upstream request's :authority is the upstream; a Host
            // header saying otherwise would contradict it.
            parts.headers.remove(http::header::HOST);
        }

        let uri = match self.upstream_uri(&parts.uri, h2) {
            Ok(uri) => uri,
            Err(e) => {
                warn!(error = %e, "cannot build the upstream URI");
                let refusal = json_error(StatusCode::BAD_REQUEST, "bad_request", "invalid_uri");
                return Either::Left(std::future::ready(refusal));
            }
        };
        if !h2 && !parts.headers.contains_key(http::header::HOST) {
            // HTTP/1.0 callers may send none; HTTP/1.1 requires one.
            if let Ok(host) = http::HeaderValue::from_str(self.upstream.authority.as_str()) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        // HTTP/2 carries request trailers through to the upstream, where
        // a client's `x-idgate-principal` there would pass every header
        // rule; gRPC sends none. (HTTP/1.1 sends none upstream: the
        // `Trailer` header that would announce them is hop-by-hop.)
        // (A body already at its end has none: no wrapper to allocate.)
        // A body still to come is watched, so that a timeout can tell a
        // client that stopped sending from an upstream that stopped
        // answering (or reading).
        let (body, body_waits) = if http_body::Body::is_end_stream(&body) || upgrade {
            (body, None)
        } else {
            let waits = Arc::new(AtomicBool::new(false));
            let body = if h2 {
                Body::new(Watched::new(body.map_frame(without_trailers), &waits))
            } else {
                Body::new(Watched::new(body, &waits))
            };
            (body, Some(waits))
        };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *out.headers_mut() = parts.headers;

        let started = Instant::now();
        // Each branch's future is built here, taking `out` with it; the
        // upgrade's, the largest and the rarest, is boxed.
        let exchange = if h2 {
            Either::Left(Either::Left(
                self.h2c
                    .request(out)
                    .map(|r| Ok(r.map_err(UpstreamError::H2c)?.map(Body::new))),
            ))
        } else if client_upgrade.is_some() {
            let pool = self.http1.clone();
            Either::Left(Either::Right(Box::pin(async move {
                Ok(pool.send_upgrade(out).await?.map(Body::new))
            })))
        } else {
            Either::Right(self.http1.send(out))
        };
        let me = self.clone();
        Either::Right(
            tokio::time::timeout(self.timeout, exchange).map(move |result| {
                me.answer(result, started, grpc, h2, client_upgrade, body_waits)
            }),
        )
    }

    /// The client's answer, from the exchange's outcome.
    fn answer(
        &self,
        result: Result<Result<Response<Body>, UpstreamError>, tokio::time::error::Elapsed>,
        started: Instant,
        grpc: bool,
        h2: bool,
        client_upgrade: Option<OnUpgrade>,
        body_waits: Option<Arc<AtomicBool>>,
    ) -> Response<Body> {
        let failure = match &result {
            Err(_) if body_waits.is_some_and(|w| w.load(Ordering::Relaxed)) => {
                Some(ProxyFailure::BodyTimeout)
            }
            Err(_) => Some(ProxyFailure::Timeout),
            Ok(Err(e)) if e.is_connect() => Some(ProxyFailure::Unreachable),
            Ok(Err(_)) => Some(ProxyFailure::Broken),
            Ok(Ok(_)) => None,
        };
        if let Some(m) = &self.metrics {
            m.record_upstream(started.elapsed(), failure);
        }
        let mut res = match result {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                // The error's chain names the cause (refused, reset…); it
                // never contains request headers.
                warn!(
                    proxy.failure = failure.map_or("", ProxyFailure::as_str),
                    error = %ErrorChain(&e),
                    "upstream request failed"
                );
                return failure.unwrap_or(ProxyFailure::Broken).response(grpc);
            }
            Err(_) => {
                let failure = failure.unwrap_or(ProxyFailure::Timeout);
                let what = if failure == ProxyFailure::BodyTimeout {
                    "the client stopped sending the request body before the upstream answered"
                } else {
                    "upstream did not answer in time"
                };
                warn!(proxy.failure = failure.as_str(), timeout = ?self.timeout, "{what}");
                return failure.response(grpc);
            }
        };

        let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            match client_upgrade {
                Some(client_upgrade) => {
                    let upstream_upgrade = hyper::upgrade::on(&mut res);
                    self.tunnels.open(client_upgrade, upstream_upgrade);
                }
                None => {
                    warn!("upstream switched protocols on a request that did not ask to");
                    return ProxyFailure::Broken.response(grpc);
                }
            }
        }
        remove_hop_by_hop(res.headers_mut(), switching);
        if h2 && more_than_a_frame(res.body()) {
            res = res.map(|body| Body::new(Coalesce::new(body)));
        }
        res
    }

    /// The upstream request's URI: origin-form (`/path?query`) for
    /// HTTP/1.1, absolute for h2c (whose `:authority` it gives).
    fn upstream_uri(&self, uri: &Uri, absolute: bool) -> Result<Uri, http::Error> {
        let pq = if self.upstream.base_path.is_empty() {
            // The request's own path and query, shared rather than copied
            // and parsed again.
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{}{pq}", self.upstream.base_path))?
        };
        if !absolute {
            return Ok(Uri::from(pq));
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.upstream.authority.clone());
        parts.path_and_query = Some(pq);
        Ok(Uri::from_parts(parts)?)
    }
}

/// A request body on its way upstream that records, each time the upstream
/// connection asks it for more, whether the client had nothing yet
/// (`waits`). When the request times out, that tells who held it up: a
/// client that stopped sending leaves it set; an upstream that stopped
/// reading stops asking, and leaves it clear after the last part it took.
struct Watched<B> {
    body: B,
    waits: Arc<AtomicBool>,
}

impl<B> Watched<B> {
    fn new(body: B, waits: &Arc<AtomicBool>) -> Self {
        Watched {
            body,
            waits: Arc::clone(waits),
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.waits.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether an answer's body is worth [`Coalesce`]: one not known to fit
/// in a single frame. Most small answers give their length, and wrapping
/// them would only cost an allocation.
fn more_than_a_frame(body: &Body) -> bool {
    use http_body::Body as _;
    !body.is_end_stream()
        && body
            .size_hint()
            .upper()
            .is_none_or(|upper| upper > coalesce::FRAME as u64)
}

/// A request body's frames, its trailers emptied out.
fn without_trailers(frame: http_body::Frame<bytes::Bytes>) -> http_body::Frame<bytes::Bytes> {
    if frame.is_trailers() {
        http_body::Frame::data(bytes::Bytes::new())
    } else {
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every proxied request boxes this future (and copies it on each
    /// move). Under 1 KiB it is also served from the allocator's
    /// per-thread cache rather than its slower path for large chunks. An
    /// `async fn` holding every step inline made it 3.5 KiB (BENCHMARKS.md,
    /// "Smaller futures").
    #[tokio::test]
    async fn the_forwarding_future_stays_small() {
        let upstream = crate::config::Upstream {
            authority: http::uri::Authority::from_static("127.0.0.1:9"),
            base_path: String::new(),
        };
        let proxy = Proxy::new(upstream, Duration::from_secs(5), None);
        let forwarding = proxy.forward(Request::new(Body::empty()));
        let size = std::mem::size_of_val(&forwarding);
        assert!(size <= 1024, "the forwarding future is {size} bytes");
    }

    /// The proxy hands its pool the metrics' resend counter: a GET that
    /// crosses the upstream's close of an idle connection is answered on a
    /// new one, and `idgate_upstream_resends_total` says so. (The pool's
    /// own tests cover when a request is sent again; this, that an
    /// operator sees it.)
    #[tokio::test]
    async fn a_request_sent_again_shows_in_the_metrics() {
        // The pool's scripted upstream: `/vanish-on-reuse` is answered as
        // the first request on its connection, and otherwise the
        // connection is closed unanswered.
        let up = pool::tests::upstream().await;
        let upstream = crate::config::Upstream {
            authority: up.target.parse().unwrap(),
            base_path: String::new(),
        };
        let clock = Arc::new(idgate::ManualClock::starting_now());
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::with_clock(
            upstream,
            Duration::from_secs(30),
            Some(metrics.clone()),
            clock.clone(),
        );
        let get = || {
            let req = Request::get("/vanish-on-reuse").header("host", "upstream");
            let answer = proxy.forward(req.body(Body::empty()).unwrap());
            async {
                let answer = tokio::time::timeout(Duration::from_secs(20), answer)
                    .await
                    .expect("an answer");
                let status = answer.status();
                let body = answer.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            }
        };

        assert_eq!(get().await, (StatusCode::OK, "ok".into()));
        assert!(!metrics.encode().contains("idgate_upstream_resends_total 1"));
        // Idle long enough that the upstream may have closed it meanwhile.
        clock.advance(pool::REPLAY_AFTER_IDLE);
        assert_eq!(get().await, (StatusCode::OK, "ok".into()));
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        let text = metrics.encode();
        assert!(text.contains("idgate_upstream_resends_total 1\n"), "{text}");
        assert!(
            text.contains("idgate_upstream_duration_seconds_count{result=\"ok\"} 2\n"),
            "{text}"
        );
    }
}
