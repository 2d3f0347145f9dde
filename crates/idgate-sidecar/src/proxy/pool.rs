//! HTTP/1.1 connections to the upstream, kept alive and driven by the
//! request that uses them.
//!
//! hyper-util's pooled client runs every connection in a task of its own:
//! a request travels to it through a channel, its answer comes back through
//! another, and a further task is spawned per request to hand the
//! connection back to the pool. On a loopback hop that machinery cost more
//! CPU than the proxying itself (BENCHMARKS.md, "what the profile showed").
//!
//! Here a connection is leased whole to one request, and that request's
//! task drives it: the response future polls the connection until the head
//! arrives, then the response body does, until its last byte, when the
//! connection goes back to the idle list. No task, no cross-task wakeup.
//!
//! - A connection is reused only when hyper says it can take another
//!   request (keep-alive, message complete both ways); anything else
//!   (`Connection: close`, a response body dropped midway, an error)
//!   closes it.
//! - Idle connections: newest first, at most `max_idle`, none older than
//!   `idle_timeout`. Beyond the newest `warm` of them, the spares a burst
//!   opened close once idle for `spare_idle_timeout`: each holds about
//!   25 KiB of hyper's buffers, so keeping a thousand of them for the
//!   whole timeout kept the sidecar's RSS near the burst's peak for a
//!   minute and a half (BENCHMARKS.md, "Memory after a burst"). The oldest
//!   are closed as they pass their limit, when a connection comes back and
//!   by a periodic sweep, so a burst's connections do not stay open under
//!   the light traffic that follows. One the upstream closed is noticed
//!   when it is next taken (a poll reads the end of stream) and skipped.
//! - A request that hyper hands back unsent (the reused connection was
//!   closed under it) is sent again once on a new connection.
//! - So is a request without a body and of a safe method (GET, HEAD,
//!   OPTIONS) that went out on a connection idle for [`REPLAY_AFTER_IDLE`]
//!   or more, when the upstream closes that connection before any answer:
//!   it closed the idle connection (its keep-alive timeout) as the request
//!   went out, so the request was most likely never read. nginx retries
//!   a cached connection's failure the same way. Only for those requests
//!   is a copy of the head kept, so the busy path, where connections are
//!   idle for microseconds, copies nothing.
//! - When a body ends while hyper still needs a poll to finish the
//!   exchange (the request body still being written), a task drives the
//!   connection until it is reusable or closes: rare, and never on the
//!   request's path. An exchange that stands still for [`FINISH_STALL`]
//!   (an upstream that answered early, keeps the connection and reads no
//!   more) is given up, so that the client's connection is not held.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use idgate::Clock;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use super::early_answer::{EarlyAnswer, peer_closed};
use super::yield_write::YieldBeforeWrite;
use crate::Body;

type Conn = http1::Connection<TokioIo<EarlyAnswer<YieldBeforeWrite<TcpStream>>>, Body>;

/// A request that went out on a connection idle this long may be sent
/// again if the upstream closes it before answering: upstreams close idle
/// keep-alive connections after a timeout (Node and uvicorn 5 s, gunicorn
/// 2 s), and a request can cross that close on the way. A connection idle
/// for less is not at that risk.
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// An exchange whose answer is complete but whose request body is still
/// being written is given up (its connection closed, the rest of the body
/// left to the client side's lingering read) once it has not moved for
/// this long: as long as an unread body is read after an answer
/// ([`crate::server::LINGER_TIME`]), since both are the rest of a body
/// whose answer has gone out.
const FINISH_STALL: Duration = crate::server::LINGER_TIME;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, no such host, unreachable.
    #[error("cannot connect to the upstream")]
    Connect(#[source] std::io::Error),
    /// No connection within the connect timeout.
    #[error("no connection to the upstream within {0:?}")]
    ConnectTimeout(Duration),
    /// The exchange failed after connecting.
    #[error("upstream exchange failed")]
    Http(#[source] hyper::Error),
    /// The h2c client (hyper-util's) failed, connecting or after.
    #[error("upstream h2c request failed")]
    H2c(#[source] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Connecting failed (as opposed to the exchange).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) => true,
            UpstreamError::Http(_) => false,
            UpstreamError::H2c(e) => e.is_connect(),
        }
    }
}

/// Limits of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Idle connections kept for reuse.
    pub max_idle: usize,
    /// An idle connection older than this is closed rather than reused.
    pub idle_timeout: Duration,
    /// Idle connections kept for the whole `idle_timeout` (the newest).
    pub warm: usize,
    /// Idle connections beyond the `warm` ones close once idle this long.
    pub spare_idle_timeout: Duration,
    /// Bound on establishing one connection.
    pub connect_timeout: Duration,
}

/// The pool of one upstream. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// `host:port`, as `TcpStream::connect` takes it (IP literals are not
    /// resolved; names are, on every new connection).
    target: String,
    limits: PoolLimits,
    builder: http1::Builder,
    /// Requests sent again on a new connection (`resend`).
    resends: Counter,
    /// Oldest at the front, newest at the back (taken first).
    idle: Mutex<VecDeque<Idle>>,
    clock: Arc<dyn Clock>,
}

struct Idle {
    lease: Lease,
    /// When it went idle, on the clock's monotonic scale.
    since: Duration,
}

/// A connection leased to one request.
///
/// The connection's state (hyper's buffers and parser, about 700 bytes)
/// sits behind a box allocated once per connection: a lease moves several
/// times per request (out of the idle list, into the request's future, into
/// the response body, back to the list), and each move copies only the
/// lease itself.
struct Lease {
    send: http1::SendRequest<Body>,
    /// `None` once the connection future has completed (closed).
    conn: Option<Box<Conn>>,
}

impl Lease {
    /// Polls the connection: reads, writes and state changes happen here.
    /// Returns true while it is open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = &mut self.conn
            && Pin::new(&mut **c).poll(cx).is_ready()
        {
            // Closed or failed: hyper has answered any pending request
            // with an error.
            self.conn = None;
        }
        self.conn.is_some()
    }
}

impl Pool {
    /// A pool for `target` (`host:port`), timing idleness on `clock`,
    /// counting in `resends` the requests it sends again. Does no I/O.
    pub fn new(
        target: String,
        limits: PoolLimits,
        clock: Arc<dyn Clock>,
        resends: Counter,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                target,
                limits,
                builder: http1::Builder::new(),
                resends,
                idle: Mutex::new(VecDeque::new()),
                clock,
            }),
        }
    }

    /// Closes idle connections past their limit (see [`PoolLimits`]) every
    /// `period`, until the pool is dropped. Needs a tokio runtime.
    pub fn sweep_every(&self, period: Duration) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = Weak::upgrade(&shared) else {
                    return;
                };
                shared.expire();
            }
        });
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared.lock().len()
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the response
    /// head; its body drives the connection and returns it to the pool.
    ///
    /// This future is part of every proxied request's boxed future, so it
    /// is built from combinators that keep only the live step, and the rare
    /// steps (a new connection, the retry) are boxed futures of their own:
    /// it stays near the size of one exchange (a few hundred bytes) instead
    /// of the kilobytes an `async fn` with every step inline took.
    pub fn send(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + use<> {
        let pool = self.clone();
        match self.checkout() {
            Some((lease, idle)) => {
                let replay = if idle >= REPLAY_AFTER_IDLE {
                    replayable(&req)
                } else {
                    None
                };
                Either::Left(exchange(lease, req).then(move |sent| match sent {
                    Ok(sent) => Either::Left(std::future::ready(Ok(pool.respond(sent)))),
                    Err(e) => Either::Right(Box::pin(pool.resend(e, replay))),
                }))
            }
            None => Either::Right(Box::pin(pool.connect_and_send(req))),
        }
    }

    /// A request that failed on a reused connection goes once more, on a
    /// fresh one: one hyper hands back unsent (the connection had closed),
    /// or the `replay` copy of one the upstream closed its connection on
    /// before answering.
    async fn resend(
        self,
        mut e: TrySendError<Request<Body>>,
        replay: Option<Box<Request<()>>>,
    ) -> Result<Response<Body>, UpstreamError> {
        if let Some(req) = e.take_message() {
            self.shared.resends.inc();
            return self.connect_and_send(req).await;
        }
        let e = e.into_error();
        match replay {
            Some(req) if closed_before_answering(&e) => {
                tracing::debug!(
                    error = %crate::ErrorChain(&e),
                    "the upstream closed an idle connection as a request went out: sent again on a new one"
                );
                self.shared.resends.inc();
                self.connect_and_send((*req).map(|()| Body::empty())).await
            }
            _ => Err(UpstreamError::Http(e)),
        }
    }

    async fn connect_and_send(self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let lease = self.connect().await?;
        let sent = exchange(lease, req)
            .await
            .map_err(|e| UpstreamError::Http(e.into_error()))?;
        Ok(self.respond(sent))
    }

    /// The response, with a body that hands the connection back when done.
    fn respond(self, (res, lease): Sent) -> Response<Body> {
        res.map(|incoming| {
            Body::new(PooledBody {
                incoming,
                lease: Some(lease),
                pool: self.shared,
            })
        })
    }

    /// The newest idle connection that is still open and young enough,
    /// and how long it was idle.
    fn checkout(&self) -> Option<(Lease, Duration)> {
        let now = self.shared.clock.monotonic();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let Idle { mut lease, since } = self.shared.lock().pop_back()?;
            if now.saturating_sub(since) > self.shared.limits.idle_timeout {
                // Everything before it in the list is older still. They
                // close (a syscall each) after the lock is let go.
                let expired = std::mem::take(&mut *self.shared.lock());
                crate::memory::closed(expired.len() + 1);
                return None;
            }
            // A poll notices a close (or stray bytes) from the upstream
            // while the connection sat idle. The real waker is registered
            // by the request's own poll.
            if lease.drive(&mut cx) && lease.send.is_ready() {
                return Some((lease, now.saturating_sub(since)));
            }
        }
    }

    async fn connect(&self) -> Result<Lease, UpstreamError> {
        let timeout = self.shared.limits.connect_timeout;
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(self.shared.target.as_str()))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
                Err(_) => return Err(UpstreamError::ConnectTimeout(timeout)),
            };
        let _ = stream.set_nodelay(true);
        let (send, conn) = self
            .shared
            .builder
            .handshake(TokioIo::new(EarlyAnswer::new(
                YieldBeforeWrite::for_this_runtime(stream),
            )))
            .await
            .map_err(UpstreamError::Http)?;
        Ok(Lease {
            send,
            conn: Some(Box::new(conn)),
        })
    }

    /// A new connection for a request that may switch protocols. It runs
    /// in its own task (the upgraded stream outlives the request) and is
    /// never pooled.
    pub async fn send_upgrade(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Lease { mut send, conn } = self.connect().await?;
        if let Some(conn) = conn {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
        }
        send.send_request(req).await.map_err(UpstreamError::Http)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Back to the idle list, or closed when the list is full. Those past
    /// their limit go first. Connections close (a syscall each) after the
    /// lock is let go.
    fn put(&self, lease: Lease) {
        let now = self.clock.monotonic();
        let (expired, refused) = {
            let mut idle = self.lock();
            let expired = Self::take_expired(&mut idle, now, &self.limits);
            if idle.len() < self.limits.max_idle {
                idle.push_back(Idle { lease, since: now });
                (expired, None)
            } else {
                (expired, Some(lease))
            }
        };
        if refused.is_some() {
            crate::memory::closed(1);
        }
        drop((expired, refused));
    }

    /// Closes the idle connections past their limit; returns how many.
    fn expire(&self) -> usize {
        let now = self.clock.monotonic();
        let expired = Self::take_expired(&mut self.lock(), now, &self.limits);
        expired.len()
    }

    /// Takes out of the list the idle connections past the idle timeout
    /// and the spares (all but the newest `warm`) past the spare timeout,
    /// counting them as closed. Both are at the list's front: it is ordered
    /// oldest first, and the spares are the oldest.
    fn take_expired(idle: &mut VecDeque<Idle>, now: Duration, limits: &PoolLimits) -> Vec<Idle> {
        let spares = idle.len().saturating_sub(limits.warm);
        let fresh = idle
            .iter()
            .enumerate()
            .position(|(i, entry)| {
                let age = now.saturating_sub(entry.since);
                age <= limits.idle_timeout && (i >= spares || age <= limits.spare_idle_timeout)
            })
            .unwrap_or(idle.len());
        if fresh == 0 {
            return Vec::new();
        }
        crate::memory::closed(fresh);
        idle.drain(..fresh).collect()
    }

    /// The response is complete: reuse the connection if hyper can, or let
    /// a task finish the exchange first.
    fn release(self: Arc<Self>, mut lease: Lease, cx: &mut Context<'_>) {
        if !lease.drive(cx) {
            return;
        }
        if lease.send.is_ready() {
            self.put(lease);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // A request body that never ends (a client that stops sending)
            // must not hold the connection, or this task, for ever; nor
            // may an exchange that stands still (an upstream that answered
            // and reads no more) hold it up to that bound: until the lease
            // goes, the client's connection waits for its body to end,
            // and its next request waits with it.
            let ready = {
                let lease = &mut lease;
                let bound = tokio::time::sleep(self.limits.idle_timeout);
                let stall = tokio::time::sleep(FINISH_STALL);
                tokio::pin!(bound, stall);
                std::future::poll_fn(|cx| {
                    if !lease.drive(cx) {
                        return Poll::Ready(false);
                    }
                    if let Poll::Ready(r) = lease.send.poll_ready(cx) {
                        return Poll::Ready(r.is_ok());
                    }
                    if bound.as_mut().poll(cx).is_ready() || stall.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    // Woken by the exchange, not by a timer: it moved.
                    stall
                        .as_mut()
                        .reset(tokio::time::Instant::now() + FINISH_STALL);
                    let _ = stall.as_mut().poll(cx);
                    Poll::Pending
                })
                .await
            };
            if ready {
                self.put(lease);
            }
        });
    }
}

/// A copy of `req`'s head, if it may be sent again: a safe method and no
/// body, so that sending it twice does what sending it once does. Boxed,
/// so that the request's future grows by a pointer, not by a head.
fn replayable(req: &Request<Body>) -> Option<Box<Request<()>>> {
    let safe = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(Box::new(copy))
}

/// Whether the exchange failed because the upstream closed the connection
/// before a response head: the end of stream, or a reset.
fn closed_before_answering(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || std::iter::successors(std::error::Error::source(e), |c| c.source())
            .find_map(|c| c.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                peer_closed(io.kind()) || io.kind() == std::io::ErrorKind::ConnectionAborted
            })
}

/// A response head and the connection it came on.
type Sent = (Response<Incoming>, Lease);

pin_project_lite::pin_project! {
    /// One request on a leased connection: polls the connection until the
    /// response head arrives (or the exchange fails, when the connection
    /// is dropped and hyper may hand the request back unsent).
    struct Exchange<F> {
        lease: Option<Lease>,
        #[pin]
        response: F,
    }
}

/// Sends `req` on `lease`. The request goes to hyper at once, so the
/// future keeps only hyper's response future and the lease.
fn exchange(
    mut lease: Lease,
    req: Request<Body>,
) -> Exchange<impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + Send>
{
    let response = lease.send.try_send_request(req);
    Exchange {
        lease: Some(lease),
        response,
    }
}

impl<F> Future for Exchange<F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>>,
{
    type Output = Result<Sent, TrySendError<Request<Body>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(lease) = this.lease.as_mut() {
            lease.drive(cx);
        }
        let sent = std::task::ready!(this.response.poll(cx));
        let lease = this
            .lease
            .take()
            .expect("Exchange polled after it completed");
        Poll::Ready(sent.map(|res| (res, lease)))
    }
}

/// The upstream's response body, which also drives its connection.
struct PooledBody {
    incoming: Incoming,
    /// Taken when the body has ended and the connection was released.
    lease: Option<Lease>,
    pool: Arc<Shared>,
}

impl PooledBody {
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(lease) = self.lease.take() {
            self.pool.clone().release(lease, cx);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(lease) = &mut this.lease {
            lease.drive(cx);
        }
        let frame = Pin::new(&mut this.incoming).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.release(cx),
            // An error: the connection is not reused (dropped with us).
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing in it (204, HEAD, Content-Length: 0) may be
        // dropped without ever being polled; it still frees its connection.
        // One dropped midway closes it, by dropping the lease.
        if self.lease.is_some() && self.incoming.is_end_stream() {
            self.release(&mut Context::from_waker(Waker::noop()));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The pool against a scripted HTTP/1.1 upstream on loopback that
    //! counts its connections: each test says how many it should have seen.
    //! The proxy's tests use the same upstream ([`upstream`]).

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use idgate::ManualClock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    pub(in crate::proxy) struct Upstream {
        pub(in crate::proxy) target: String,
        pub(in crate::proxy) connections: Arc<AtomicUsize>,
        /// Connections the pool closed (the upstream read their end).
        closed: Arc<AtomicUsize>,
    }

    /// Answers by path: `/ok` keeps the connection; `/close` says
    /// `Connection: close` and closes; `/then-close` answers keep-alive and
    /// closes anyway; `/empty` is a 204; `/big` sends 1 MiB; `/early`
    /// answers before reading the request body (then reads it);
    /// `/vanish-on-reuse` answers as the first request on its connection and
    /// otherwise closes the connection without answering; `/reset-on-reuse`
    /// likewise, but resets it. Other paths read
    /// the body (`Content-Length` only) before answering.
    pub(in crate::proxy) async fn upstream() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counter, closed_counter) = (connections.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let closed = closed_counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    // Reads until `buf` holds `n` bytes; false at the end.
                    async fn fill(
                        socket: &mut tokio::net::TcpStream,
                        buf: &mut Vec<u8>,
                        n: usize,
                    ) -> bool {
                        while buf.len() < n {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return false,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        true
                    }
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let more = buf.len() + 1;
                            if !fill(&mut socket, &mut buf, more).await {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        buf.drain(..head_end);
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let body_len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if path.ends_with("-on-reuse") && answered > 0 {
                            if path == "/reset-on-reuse" {
                                // A zero linger resets at once; it does not
                                // block the drop, which is why it is deprecated.
                                #[allow(deprecated)]
                                let _ = socket.set_linger(Some(Duration::ZERO));
                            }
                            return;
                        }
                        answered += 1;
                        let early = path == "/early";
                        if !early {
                            if !fill(&mut socket, &mut buf, body_len).await {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            buf.drain(..body_len);
                        }
                        let (answer, close): (Vec<u8>, bool) = match path.as_str() {
                            "/close" => (
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                                    .to_vec(),
                                true,
                            ),
                            "/then-close" => (
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                                true,
                            ),
                            "/empty" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
                            "/big" => {
                                let mut a =
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                                a.resize(a.len() + (1 << 20), b'x');
                                (a, false)
                            }
                            _ => (
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                                false,
                            ),
                        };
                        if socket.write_all(&answer).await.is_err() || close {
                            return;
                        }
                        if early {
                            if !fill(&mut socket, &mut buf, body_len).await {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            buf.drain(..body_len);
                        }
                    }
                });
            }
        });
        Upstream {
            target,
            connections,
            closed,
        }
    }

    /// The limits the tests start from: 8 idle connections, all warm,
    /// for 90 s. Each test changes what it is about.
    fn limits() -> PoolLimits {
        PoolLimits {
            max_idle: 8,
            idle_timeout: Duration::from_secs(90),
            warm: 8,
            spare_idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn pool(up: &Upstream, max_idle: usize, clock: Arc<ManualClock>) -> Pool {
        counted_pool(up, max_idle, clock).0
    }

    /// [`pool`], and its count of requests sent again.
    fn counted_pool(up: &Upstream, max_idle: usize, clock: Arc<ManualClock>) -> (Pool, Counter) {
        let limits = PoolLimits {
            max_idle,
            warm: max_idle,
            ..limits()
        };
        let resends = Counter::default();
        let pool = Pool::new(up.target.clone(), limits, clock, resends.clone());
        (pool, resends)
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header("host", "upstream")
            .body(Body::empty())
            .unwrap()
    }

    async fn fetch(pool: &Pool, path: &str) -> (http::StatusCode, Bytes) {
        let res = pool.send(get(path)).await.expect("a response");
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::starting_now())
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let up = upstream().await;
        let pool = pool(&up, 8, clock());
        for _ in 0..5 {
            assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        }
        let big = fetch(&pool, "/big").await.1;
        assert_eq!(big.len(), 1 << 20);
        // A 204's body is never polled by hyper's server; dropping it still
        // returns the connection.
        let res = pool.send(get("/empty")).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::NO_CONTENT);
        drop(res);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn connection_close_is_not_reused() {
        let up = upstream().await;
        let pool = pool(&up, 8, clock());
        assert_eq!(fetch(&pool, "/close").await.1, "ok");
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let up = upstream().await;
        let pool = pool(&up, 8, clock());
        assert_eq!(fetch(&pool, "/then-close").await.1, "ok");
        // Whether the close is seen at checkout or the request comes back
        // unsent, the caller gets its answer on a new connection.
        for _ in 0..3 {
            assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_safe_request_an_idle_connection_closed_under_is_sent_again() {
        let up = upstream().await;
        let clock = clock();
        let (pool, resends) = counted_pool(&up, 8, clock.clone());
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        clock.advance(REPLAY_AFTER_IDLE);
        // The upstream reads the request, then closes without answering, as
        // when its keep-alive timeout fires as the request arrives.
        // Or resets it. (HEAD goes last: the scripted upstream answers it
        // with a body, which spoils its connection for another request.)
        let tries = [
            (http::Method::GET, "/vanish-on-reuse"),
            (http::Method::OPTIONS, "/reset-on-reuse"),
            (http::Method::HEAD, "/vanish-on-reuse"),
        ];
        for (method, path) in tries {
            let mut req = get(path);
            *req.method_mut() = method.clone();
            let res = pool
                .send(req)
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {}", crate::ErrorChain(&e)));
            assert_eq!(res.status(), http::StatusCode::OK, "{method} {path}");
            res.into_body().collect().await.unwrap();
            clock.advance(REPLAY_AFTER_IDLE);
        }
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            4,
            "each one's connection closed, each sent again on a new one"
        );
        assert_eq!(resends.get(), 3, "each counted");
    }

    #[tokio::test]
    async fn a_request_on_a_busy_connection_or_with_effects_is_not_sent_again() {
        let up = upstream().await;
        let clock = clock();
        let (pool, resends) = counted_pool(&up, 8, clock.clone());
        // Idle for less than REPLAY_AFTER_IDLE: not at risk, not copied.
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        let sent = pool.send(get("/vanish-on-reuse")).await;
        assert!(matches!(sent, Err(UpstreamError::Http(_))), "{sent:?}");
        // Idle long enough, but a POST (even without a body), or a GET with
        // a body: sending it twice may not do what sending it once does.
        let with_body = |method: http::Method| {
            Request::builder()
                .method(method)
                .uri("/vanish-on-reuse")
                .header("host", "upstream")
                .header("content-length", "2")
                .body(Body::from("hi"))
                .unwrap()
        };
        let mut post = get("/vanish-on-reuse");
        *post.method_mut() = http::Method::POST;
        for req in [post, with_body(http::Method::GET)] {
            assert_eq!(fetch(&pool, "/ok").await.1, "ok");
            clock.advance(REPLAY_AFTER_IDLE);
            let what = format!("{} with {:?}", req.method(), req.body().size_hint().exact());
            // Bounded: a copy sent again without its body would wait for it.
            let sent = tokio::time::timeout(Duration::from_secs(10), pool.send(req))
                .await
                .expect("an answer within the deadline");
            assert!(
                matches!(sent, Err(UpstreamError::Http(_))),
                "{what}: {sent:?}"
            );
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3, "none sent again");
        assert_eq!(resends.get(), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_closes_its_connection() {
        let up = upstream().await;
        let pool = pool(&up, 8, clock());
        let res = pool.send(get("/big")).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_expire() {
        let up = upstream().await;
        let clock = clock();
        let pool = pool(&up, 2, clock.clone());
        // Four at once need four connections; two are kept.
        let bodies = futures_util::future::join_all((0..4).map(|_| pool.send(get("/ok")))).await;
        for res in bodies {
            assert_eq!(
                res.unwrap().into_body().collect().await.unwrap().to_bytes(),
                "ok"
            );
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 4);
        assert_eq!(pool.idle_count(), 2);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            4,
            "an idle one reused"
        );
        clock.advance(Duration::from_secs(91));
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            5,
            "idle past the timeout: a new one"
        );
        assert_eq!(pool.idle_count(), 1, "the expired ones were closed");
    }

    /// Waits (bounded) until the upstream has seen `n` connections closed.
    async fn until_closed(up: &Upstream, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while up.closed.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} closed",
                up.closed.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Three requests at once leave three idle connections.
    async fn three_idle(pool: &Pool) {
        let bodies = futures_util::future::join_all((0..3).map(|_| pool.send(get("/ok")))).await;
        for res in bodies {
            res.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 3);
    }

    #[tokio::test]
    async fn the_sweep_closes_expired_idle_connections_without_a_request() {
        let up = upstream().await;
        let clock = clock();
        let pool = pool(&up, 8, clock.clone());
        three_idle(&pool).await;
        pool.sweep_every(Duration::from_millis(20));
        clock.advance(Duration::from_secs(89));
        assert_eq!(pool.shared.expire(), 0, "not yet past the timeout");
        clock.advance(Duration::from_secs(2));
        until_closed(&up, 3).await;
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_returning_connection_closes_the_expired_ones_below_it() {
        let up = upstream().await;
        let clock = clock();
        let pool = pool(&up, 8, clock.clone());
        three_idle(&pool).await;
        // The newest is taken and comes back: it is fresh again, the two
        // below it keep their age.
        clock.advance(Duration::from_secs(60));
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(pool.idle_count(), 3);
        clock.advance(Duration::from_secs(40));
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(pool.idle_count(), 1, "the two past 90 s were closed");
        until_closed(&up, 2).await;
        assert_eq!(up.connections.load(Ordering::SeqCst), 3, "no new one");
    }

    /// One warm connection kept for 90 s; spares close after 10 s idle.
    fn spare_pool(up: &Upstream, clock: Arc<ManualClock>) -> Pool {
        let limits = PoolLimits {
            warm: 1,
            spare_idle_timeout: Duration::from_secs(10),
            ..limits()
        };
        Pool::new(up.target.clone(), limits, clock, Counter::default())
    }

    #[tokio::test]
    async fn spares_beyond_the_warm_ones_close_after_the_spare_timeout() {
        let up = upstream().await;
        let clock = clock();
        let pool = spare_pool(&up, clock.clone());
        three_idle(&pool).await;
        clock.advance(Duration::from_secs(10));
        assert_eq!(pool.shared.expire(), 0, "not yet past the spare timeout");
        clock.advance(Duration::from_secs(1));
        assert_eq!(pool.shared.expire(), 2, "the two spares");
        until_closed(&up, 2).await;
        assert_eq!(pool.idle_count(), 1);
        // The warm one stays until the idle timeout, and is reused.
        clock.advance(Duration::from_secs(70));
        assert_eq!(pool.shared.expire(), 0);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 3, "no new one");
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_spare_in_use_is_not_closed_by_its_old_age() {
        let up = upstream().await;
        let clock = clock();
        let pool = spare_pool(&up, clock.clone());
        three_idle(&pool).await;
        // Used again after 9 s, the newest comes back fresh; the other two
        // pass the spare timeout and go, it stays as the warm one.
        clock.advance(Duration::from_secs(9));
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        clock.advance(Duration::from_secs(5));
        assert_eq!(pool.shared.expire(), 2);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 3, "no new one");
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(target, limits(), clock(), Counter::default());
        let err = pool.send(get("/ok")).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    /// A body the test feeds chunk by chunk.
    fn fed_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        (tx, Body::from_stream(stream))
    }

    fn early_post(body: Body, len: usize) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/early")
            .header("host", "upstream")
            .header("content-length", len)
            .body(body)
            .unwrap()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 10 s"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_request_body_ends_returns_the_connection_once_it_does() {
        let up = upstream().await;
        let pool = pool(&up, 8, clock());
        let (tx, body) = fed_body();
        tx.send(Bytes::from_static(b"12345")).await.unwrap();
        let res = pool.send(early_post(body, 10)).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // The response is done but the request is not: not reusable yet.
        assert_eq!(pool.idle_count(), 0);
        tx.send(Bytes::from_static(b"67890")).await.unwrap();
        drop(tx);
        eventually("the connection back in the pool", || pool.idle_count() == 1).await;
        assert_eq!(fetch(&pool, "/ok").await.1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_body_that_never_ends_does_not_hold_its_connection() {
        let up = upstream().await;
        let limits = PoolLimits {
            idle_timeout: Duration::from_millis(200),
            spare_idle_timeout: Duration::from_millis(200),
            ..limits()
        };
        let pool = Pool::new(up.target.clone(), limits, clock(), Counter::default());
        let (tx, body) = fed_body();
        tx.send(Bytes::from_static(b"12345")).await.unwrap();
        let res = pool.send(early_post(body, 10)).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // The sender stays alive and silent: after the idle timeout the
        // connection is closed rather than kept waiting.
        eventually("the connection closed", || {
            up.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(pool.idle_count(), 0);
        drop(tx);
    }
}
