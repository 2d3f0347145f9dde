//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one socket, with
//! upgrades, and a graceful shutdown that drains in-flight requests within a
//! grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower::util::Oneshot;
use tower_service::Service as _;
use tracing::{debug, info, warn};

use crate::Body;
use crate::app::HttpService;
use crate::proxy::ClientAddr;

/// One connection's copy of the service, called in place.
///
/// hyper calls a service through `&self`, so the usual adapter clones the
/// tower service for every request and drives the clone with `oneshot`.
/// For `HttpService` a clone is one allocation per boxed layer, three on
/// the gate's path. Here the connection keeps one copy; each request polls
/// it ready and calls it under a lock that is never contended (a
/// connection's requests are dispatched one at a time from its own task).
/// A layer that is not ready at once gets the usual clone and `oneshot`.
struct PerConnection {
    service: Mutex<HttpService>,
    peer: SocketAddr,
    streams: Arc<Streams>,
}

type HttpFuture = <HttpService as tower_service::Service<Request<Body>>>::Future;
type ServiceFuture = Either<HttpFuture, Oneshot<HttpService, Request<Body>>>;

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Answering<ServiceFuture>, Tracked<ServiceFuture>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        if req.version() == http::Version::HTTP_2 {
            let req = req.map(Body::new);
            let stream = self.streams.open();
            return Either::Right(Tracked {
                fut: self.call_service(req),
                stream: Some(stream),
            });
        }
        self.streams.not_http2();
        let busy = self.streams.answering();
        let req = req.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                Body::new(RequestBody {
                    body: Some(body),
                    streams: Some(self.streams.clone()),
                })
            }
        });
        Either::Left(Answering {
            fut: self.call_service(req),
            busy: Some(busy),
        })
    }
}

impl PerConnection {
    fn call_service(&self, req: Request<Body>) -> ServiceFuture {
        let mut service = self.service.lock().unwrap_or_else(PoisonError::into_inner);
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(service.clone().oneshot(req)),
        }
    }
}

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// The grace period ran out with this many connections still open;
    /// they are dropped. `serve` in proxy mode counts the WebSocket
    /// tunnels it cut here too.
    TimedOut(usize),
}

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting and waits up to `grace` for open connections to finish their
/// requests. Idle keep-alive connections close at once; HTTP/2 connections
/// get a GOAWAY.
///
/// At `limits.max_connections`, a full cap changes nothing until a new
/// connection comes. Then it waits for a place, the server accepts no
/// other, and connections between requests (they have carried one and have
/// none in flight) close the same way to make room: up to
/// [`SWEEP_AT_MOST`] of them at once, and each one that gets there while
/// a connection waits. Clients kept alive but silent do not keep new ones
/// waiting.
///
/// Connections already upgraded (WebSocket) are not counted: they have
/// left hyper for the proxy's tunnels, which `crate::serve` drains beside
/// this, within the same grace ([`crate::proxy::Tunnels`]).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    service: HttpService,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
) -> Drained {
    let closing = Arc::new(Closing::default());
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // With a timer, hyper enforces its limit on reading request heads: a
    // client that trickles headers cannot hold a connection forever. It
    // starts only once the first bytes have told HTTP/1.1 from h2c, so the
    // wait for those has the same deadline (`ClientIo`).
    // The head is read into a buffer of at most MAX_HEAD_BYTES (hyper's
    // default, about 400 KiB, would let each slow client hold that much).
    // The same size caps hyper's queue of response bytes not yet written;
    // a larger body chunk still goes whole, so streaming is unaffected.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    // HTTP/2: a peer that stops answering pings is gone (its connection
    // closes even with streams open); one that keeps no stream open for
    // HTTP2_IDLE_TIMEOUT gets a GOAWAY (`Streams::watch`). HTTP/1.1
    // keep-alive connections need neither: the header read timeout closes
    // them when no request follows.
    builder
        .http2()
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut cap = limits.max_connections.map(Cap::new);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin, and keep serving.
                    warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A place for it: at the cap, it waits for one (and the rest in the
        // listen backlog), which is when connections make room.
        let permit = match &mut cap {
            None => None,
            Some(cap) => match cap.place(name, &closing, shutdown.as_mut()).await {
                Some(permit) => Some(permit),
                None => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let streams = Arc::new(Streams::default());
        let hyper_svc = PerConnection {
            service: Mutex::new(service.clone()),
            peer,
            streams: streams.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(ClientIo::new(
                    stream,
                    HEADER_READ_TIMEOUT,
                    limits.write_stall,
                    streams.clone(),
                )),
                hyper_svc,
            )
            .into_owned();
        while connections.try_join_next().is_some() {}
        let closing = closing.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let mut watch =
                std::pin::pin!(streams.watch(limits.http2_idle, limits.write_stall, peer));
            let mut watching = true;
            // Created before the first look at the flag: a close after this
            // point changes the epoch, or wakes the task.
            let mut ear = Ear::new(&closing);
            let mut shutting = false;
            // Until the connection ends: a shutdown, an HTTP/2 connection
            // left idle, or the connection cap while this one is between
            // requests closes it gracefully (in-flight requests finish;
            // idle HTTP/1.1 connections close at once; HTTP/2 gets GOAWAY).
            // An HTTP/2 client that holds a stream it was cut from is
            // dropped. The watch goes on through a shutdown's drain.
            let result = std::future::poll_fn(|cx| {
                // A sweep since the last look: this connection is closed if
                // it is between requests.
                let mut swept = false;
                if !shutting {
                    let before = ear.number;
                    ear.listen(&closing, cx);
                    if closing.flag.load(Ordering::Acquire) {
                        shutting = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    swept = ear.number != before && closing.swept.load(Ordering::SeqCst) > before;
                }
                if watching && let Poll::Ready(end) = watch.as_mut().poll(cx) {
                    watching = false;
                    match end {
                        WatchEnd::Idle if !shutting => {
                            debug!(client = %peer, "idle HTTP/2 connection: sending GOAWAY");
                            shutting = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        WatchEnd::Idle => {}
                        WatchEnd::Stuck => return Poll::Ready(Ok(())),
                    }
                }
                let polled = conn.as_mut().poll(cx);
                // Woken by a sweep: one of its closes. Else it got between
                // requests itself, while a connection waits. (The flag
                // first: on nearly every wake it is all there is to read.)
                if polled.is_pending()
                    && !shutting
                    && if swept {
                        streams.between_requests() && closing.take_from_sweep()
                    } else {
                        closing.is_at_cap() && streams.between_requests()
                    }
                {
                    debug!(client = %peer, "at the connection cap: closing a connection between requests");
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                    return conn.as_mut().poll(cx);
                }
                polled
            })
            .await;
            if let Err(e) = result {
                debug!(error = %e, client = %peer, "connection ended with an error");
            }
            crate::memory::closed(1);
        });
    }
    drop(listener);
    while connections.try_join_next().is_some() {}
    info!(
        server = name,
        connections = connections.len(),
        grace = %humantime::format_duration(grace),
        "shutting down: no longer accepting, draining in-flight requests"
    );
    let drain = async {
        closing.close();
        while connections.join_next().await.is_some() {}
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(()) => {
            info!(server = name, "drained");
            Drained::Clean
        }
        Err(_) => {
            while connections.try_join_next().is_some() {}
            let open = connections.len();
            warn!(
                server = name,
                connections = open,
                "grace period over with requests still in flight; closing their connections"
            );
            connections.abort_all();
            Drained::TimedOut(open)
        }
    }
}

/// The connection cap, and when it last warned and woke connections.
struct Cap {
    permits: Arc<Semaphore>,
    max: usize,
    logged: Option<tokio::time::Instant>,
    woken: Option<tokio::time::Instant>,
}

impl Cap {
    fn new(max: usize) -> Cap {
        Cap {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            logged: None,
            woken: None,
        }
    }

    /// A place for a connection just accepted: at once under the cap; at
    /// it, once a connection closes. `None` if `shutdown` comes first.
    ///
    /// While it waits, connections close as they get between requests (they
    /// look at `closing`'s flag when they wake); and a sweep, at most every
    /// [`CAP_WAKE_EVERY`] (it wakes every connection's task), closes up to
    /// [`SWEEP_AT_MOST`] of those already between requests, so that a
    /// burst of new clients gets in at once.
    async fn place(
        &mut self,
        name: &'static str,
        closing: &Closing,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        closing.at_cap.store(true, Ordering::Release);
        let now = tokio::time::Instant::now();
        if self.logged.is_none_or(|at| now - at >= CAP_LOG_EVERY) {
            warn!(
                server = name,
                max_connections = self.max,
                "at the connection cap: a connection waits for a place, \
                 and connections between requests are closed"
            );
            self.logged = Some(now);
        }
        let wake_at = self.woken.map_or(now, |at| at + CAP_WAKE_EVERY);
        let mut wake = std::pin::pin!(tokio::time::sleep_until(wake_at));
        let permit = loop {
            tokio::select! {
                // The semaphore is never closed.
                permit = self.permits.clone().acquire_owned() => break permit.ok(),
                // Again each time while it waits: a sweep's closes may go
                // to connections that free no place soon (a response body
                // still streaming; a GOAWAY's round trip), and those are
                // shutting down, so the next sweep's go to others.
                () = &mut wake => {
                    let now = tokio::time::Instant::now();
                    self.woken = Some(now);
                    closing.broadcast(true);
                    wake.as_mut().reset(now + CAP_WAKE_EVERY);
                }
                () = &mut shutdown => break None,
            }
        };
        closing.at_cap.store(false, Ordering::Release);
        permit
    }
}

/// Tells a server's connections to close gracefully: all of them (a
/// shutdown), or, at the connection cap, those between requests (a sweep)
/// and those that get there while the server is at the cap.
///
/// A connection looks at the flags each time its task wakes; a broadcast
/// wakes every connection's task. Each broadcast notifies the `Notify` of
/// its epoch and starts a new one, so that a connection can tell, by the
/// epoch's number, that the one it listens on has fired and it must listen
/// on the next. A connection registers its waker once per epoch, again only
/// if its task's waker changes. A `watch` receiver in a `select!`, as this
/// was, re-registered on every wake of every connection, under the one
/// lock all of a server's connections share: 855 instructions per proxied
/// request (BENCHMARKS.md, "Where it stands, 2026-12-05"), and a lock the
/// worker threads of a multi-threaded runtime contend for.
#[derive(Default)]
struct Closing {
    /// Shutting down.
    flag: AtomicBool,
    /// At the connection cap, with a connection accepted and waiting for a
    /// place (and maybe more in the listen backlog).
    at_cap: AtomicBool,
    /// How many more connections the last sweep may close.
    sweep_budget: AtomicUsize,
    /// The epoch's number, bumped under `epoch`'s lock.
    number: AtomicU64,
    /// The number of the last epoch a sweep started.
    swept: AtomicU64,
    /// What the next broadcast notifies.
    epoch: Mutex<Arc<Notify>>,
}

impl Closing {
    fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.broadcast(false);
    }

    fn is_at_cap(&self) -> bool {
        self.at_cap.load(Ordering::Acquire)
    }

    /// One of the last sweep's closes, if any is left.
    fn take_from_sweep(&self) -> bool {
        self.sweep_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Wakes every connection's task; a `sweep` closes up to
    /// [`SWEEP_AT_MOST`] of those between requests.
    fn broadcast(&self, sweep: bool) {
        let fired = {
            let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            let number = self.number.fetch_add(1, Ordering::SeqCst) + 1;
            if sweep {
                self.sweep_budget.store(SWEEP_AT_MOST, Ordering::SeqCst);
                self.swept.store(number, Ordering::SeqCst);
            }
            std::mem::replace(&mut *epoch, Arc::new(Notify::new()))
        };
        fired.notify_waiters();
    }

    /// The current epoch, and its number.
    fn epoch(&self) -> (u64, Arc<Notify>) {
        let epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        (self.number.load(Ordering::SeqCst), epoch.clone())
    }
}

/// One connection's ear for [`Closing`]'s broadcasts.
struct Ear {
    number: u64,
    signal: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
    registered: Option<Waker>,
}

impl Ear {
    fn new(closing: &Closing) -> Ear {
        let (number, epoch) = closing.epoch();
        Ear {
            number,
            signal: Box::pin(epoch.notified_owned()),
            registered: None,
        }
    }

    /// Makes sure the next broadcast wakes this task. (Its waker is
    /// registered before the epoch's number is checked: a broadcast after
    /// the check notifies a registered waker; one before it changed the
    /// number.)
    fn listen(&mut self, closing: &Closing, cx: &mut Context<'_>) {
        loop {
            if self.number != closing.number.load(Ordering::SeqCst) {
                *self = Ear::new(closing);
            }
            if self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return;
            }
            self.registered = Some(cx.waker().clone());
            // Ready: fired, so the number has moved on.
            let _ = self.signal.as_mut().poll(cx);
            if self.number == closing.number.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// At the connection cap, at most one warning this often.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// At the connection cap, every connection's task is woken at most this
/// often, for those between requests to close (a sweep).
const CAP_WAKE_EVERY: Duration = Duration::from_secs(1);

/// A sweep closes at most this many connections between requests, as
/// nginx closes at most 32 idle keep-alive connections when it runs short:
/// enough for a burst of new clients, without shedding a whole pool of a
/// front end's idle connections for each one.
const SWEEP_AT_MOST: usize = 32;

/// An HTTP/2 connection with no stream open this long is closed (GOAWAY):
/// [`Limits::DEFAULT`]'s.
pub const HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How many client connections are served, and how long one may sit
/// without progress beyond the header read timeout.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// An HTTP/2 connection with no stream open gets a GOAWAY after this.
    pub http2_idle: Duration,
    /// A response write the client takes nothing of for this long ends the
    /// connection (see `ClientIo`); an HTTP/2 response whose client takes
    /// no frame of it for this long has its stream reset (`Streams::watch`).
    pub write_stall: Duration,
    /// At most this many connections at once (`None`: no cap). At the cap
    /// a newcomer waits for a place (and the server stops accepting; the
    /// others wait in the listen backlog) while connections between
    /// requests close to make room (see [`serve`]). Upgraded connections
    /// (WebSocket tunnels) no longer count.
    pub max_connections: Option<usize>,
}

impl Limits {
    /// What `proxy` uses, and `serve` with its connection cap.
    pub const DEFAULT: Limits = Limits {
        http2_idle: HTTP2_IDLE_TIMEOUT,
        write_stall: WRITE_STALL_TIMEOUT,
        max_connections: None,
    };
}

/// How long a client may leave a response unread before its connection is
/// closed: long enough for a slow mobile link, short enough that stalled
/// clients do not pile up.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an HTTP/2 peer is pinged, and how long it has to answer.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(60);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The open HTTP/2 streams of one connection, for its idle timeout and
/// its stalled responses, or its HTTP/1 request in flight; for the
/// connection cap, whether it is between requests.
#[derive(Default)]
struct Streams {
    /// HTTP/2 streams open, or HTTP/1 requests awaiting their response head.
    open: AtomicUsize,
    /// The response bodies of the open streams that have one.
    bodies: Mutex<slab::Slab<Arc<SharedBody>>>,
    /// Bumped on every stream opened or closed.
    activity: AtomicU64,
    /// Set by the first HTTP/1 request: the idle timeout is hyper's then.
    http1: AtomicBool,
    /// Bytes came from the client since the last HTTP/1 request head was
    /// parsed (and its body, if any, had all come): maybe the next request,
    /// partly arrived.
    unread: AtomicBool,
    changed: Notify,
}

impl Streams {
    fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        StreamGuard {
            streams: self.clone(),
            body: None,
        }
    }

    /// It has carried a request and has none in flight: an HTTP/1 one whose
    /// last response head is out (a body still going out survives a
    /// graceful shutdown) and which has received nothing since (hyper
    /// would drop a request head that has partly arrived), or an HTTP/2 one
    /// with no stream open (a GOAWAY lets streams on their way through).
    /// (An HTTP/1 request still waiting for its response head must not be
    /// told to close: hyper would then send a `101 Switching Protocols`
    /// without its `Connection: upgrade`, and the WebSocket handshake would
    /// fail.)
    fn between_requests(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
            && if self.http1.load(Ordering::Relaxed) {
                !self.unread.load(Ordering::Relaxed)
            } else {
                self.activity.load(Ordering::Relaxed) > 0
            }
    }

    /// An HTTP/1 request, in flight until its response head is ready.
    fn answering(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.unread.store(false, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn not_http2(&self) {
        if !self.http1.load(Ordering::Relaxed) {
            self.http1.store(true, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Completes once no stream has been open for `idle` (`Idle`); never on
    /// an HTTP/1 connection. While streams are open, it cuts those whose
    /// client has taken nothing of their response for `stall`, looking
    /// every quarter of it, and gives up on the connection (`Stuck`) when
    /// a cut stream is still held `stall` later.
    ///
    /// Over HTTP/2 a client can keep reading its connection while leaving a
    /// stream's flow-control window shut. `ClientIo`'s write deadline never
    /// runs then, and the response body, unpolled, holds what its source
    /// sent: for the proxy, an upstream stream and its share of the window
    /// of the h2c connection all HTTP/2 callers share. Dropping the body
    /// frees both. hyper resets the client's stream when it next polls the
    /// body, which it does only once the client makes room; a client that
    /// never does would hold its connection for ever (pings answered, a
    /// stream open), so it loses it.
    async fn watch(&self, idle: Duration, stall: Duration, peer: SocketAddr) -> WatchEnd {
        let every = (stall / 4).max(Duration::from_millis(1));
        let mut sweep: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if self.http1.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let seen = self.activity.load(Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) > 0 {
                let tick = sweep.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                tokio::select! {
                    () = tick.as_mut() => {
                        if self.cut_stalled(stall, peer) {
                            return WatchEnd::Stuck;
                        }
                        tick.as_mut().reset(tokio::time::Instant::now() + every);
                    }
                    () = self.changed.notified() => {}
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(idle) => {
                    if self.activity.load(Ordering::Relaxed) == seen
                        && self.open.load(Ordering::Relaxed) == 0
                        && !self.http1.load(Ordering::Relaxed)
                    {
                        return WatchEnd::Idle;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }

    /// Drops the response bodies whose client has taken nothing for
    /// `stall`: their sources (the upstream's streams) go with them, and
    /// the client's streams are reset when hyper next polls them. True if
    /// a stream cut `stall` ago or more is still held.
    fn cut_stalled(&self, stall: Duration, peer: SocketAddr) -> bool {
        let now = millis();
        let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        let stalled: Vec<Arc<SharedBody>> = self
            .bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, b)| b.stalled_for(now) >= stall_ms)
            .map(|(_, b)| b.clone())
            .collect();
        let mut stuck = false;
        for shared in stalled {
            let mut body = shared.body.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked again under the lock: the client may have come back.
            if body.is_none() {
                stuck = true;
            } else if shared.stalled_for(now) >= stall_ms {
                let cut = body.take();
                // Counted from now, for `stuck`.
                shared.waiting_since.store(now, Ordering::Relaxed);
                drop(body);
                drop(cut);
                info!(
                    client = %peer,
                    stall = %humantime::format_duration(stall),
                    "an HTTP/2 client took nothing of a response: its stream is cut"
                );
            }
        }
        if stuck {
            info!(
                client = %peer,
                "an HTTP/2 client still holds a stream it was cut from: closing its connection"
            );
        }
        stuck
    }
}

/// Why [`Streams::watch`] ended.
enum WatchEnd {
    /// No stream open for the idle timeout: a GOAWAY.
    Idle,
    /// A cut stream still held: the connection is dropped.
    Stuck,
}

/// Milliseconds on a monotonic clock, from 1 (0 means "not waiting").
fn millis() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// An HTTP/2 response body, shared with its connection's stall sweep,
/// which may drop it.
struct SharedBody {
    body: Mutex<Option<Body>>,
    /// When the client was handed a frame it has not come back for (or the
    /// response, before its first poll), by [`millis`]; 0 while the body
    /// is waiting on its source, which is no stall of the client's.
    waiting_since: AtomicU64,
}

impl SharedBody {
    /// How long the client has had a frame to take, in ms; 0 if none.
    fn stalled_for(&self, now: u64) -> u64 {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => 0,
            since => now.saturating_sub(since),
        }
    }
}

/// One open HTTP/2 stream; closes it when dropped.
struct StreamGuard {
    streams: Arc<Streams>,
    /// Its response body's key in `Streams::bodies`, once it has one.
    body: Option<usize>,
}

impl StreamGuard {
    /// The stream's response body, watched for stalls until it is dropped.
    fn track(mut self, body: Body) -> TrackedBody {
        let shared = Arc::new(SharedBody {
            body: Mutex::new(Some(body)),
            waiting_since: AtomicU64::new(millis()),
        });
        let mut bodies = self
            .streams
            .bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.body = Some(bodies.insert(shared.clone()));
        drop(bodies);
        TrackedBody {
            shared,
            _stream: self,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(key) = self.body {
            let removed = self
                .streams
                .bodies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_remove(key);
            drop(removed);
        }
        self.streams.open.fetch_sub(1, Ordering::Relaxed);
        self.streams.touch();
    }
}

/// An HTTP/1 request in flight (see [`Streams::answering`]).
struct Busy(Arc<Streams>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1 request body: once it has all come, what the client sends
/// next is its next request (`Streams::unread`). A body left unread (the
/// gate refused the request) leaves the flag set: the connection is not
/// between requests until its next one, or hyper's header timeout.
///
/// Dropped with part of it still to come (the gate refused the request, or
/// the upstream answered before reading it all), it is read on, and thrown
/// away, for up to [`LINGER_BYTES`] and [`LINGER_TIME`] ([`linger`]).
/// Otherwise hyper closes the connection with the client still sending,
/// and the client's kernel, sent a reset for the bytes that keep coming,
/// may throw away the answer before the client reads it (RFC 9112, 9.6):
/// a 401 seen as "connection reset". Read whole, the body also leaves the
/// connection open for the client's next request.
struct RequestBody {
    /// `None` once handed to [`linger`].
    body: Option<Incoming>,
    streams: Option<Arc<Streams>>,
}

/// What of an unread request body is read after its answer (see
/// [`RequestBody`]): about what a fast client has in flight when the
/// answer reaches it. A longer body closes the connection once this much
/// has been read, as before.
pub const LINGER_BYTES: u64 = 1 << 20;

/// How long an unread request body is read for after its answer, at most.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::pin::Pin::new(&mut *body).poll_frame(cx);
        if (matches!(frame, Poll::Ready(None)) || body.is_end_stream())
            && let Some(streams) = self.streams.take()
        {
            streams.unread.store(false, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // Read whole (`streams` is taken at its end), or no runtime to read
        // the rest on: nothing to do.
        let Some(streams) = self.streams.take() else {
            return;
        };
        if let (Some(body), Ok(runtime)) = (self.body.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(linger(body, streams));
        }
    }
}

/// Reads what is left of a request body that was answered without it, up
/// to [`LINGER_BYTES`] and for at most [`LINGER_TIME`], and throws it away.
/// Read to its end, the connection is between requests again. Otherwise
/// the body is dropped and hyper closes the connection, as it would have.
async fn linger(mut body: Incoming, streams: Arc<Streams>) {
    use http_body_util::BodyExt as _;
    let read_whole = tokio::time::timeout(LINGER_TIME, async {
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > LINGER_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    if read_whole == Ok(true) {
        streams.unread.store(false, Ordering::Relaxed);
    } else {
        debug!("request body not read to its end after its answer; closing the connection");
    }
}

/// An HTTP/1 request's future, with its connection busy until it is done.
struct Answering<F> {
    fut: F,
    busy: Option<Busy>,
}

impl<F: Future + Unpin> Future for Answering<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(std::pin::Pin::new(&mut self.fut).poll(cx));
        // hyper writes the head from here: between requests.
        self.busy = None;
        Poll::Ready(res)
    }
}

/// A request's future whose response body holds its stream open.
struct Tracked<F> {
    fut: F,
    stream: Option<StreamGuard>,
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(std::pin::Pin::new(&mut self.fut).poll(cx));
        let stream = self.stream.take();
        Poll::Ready(res.map(|res| {
            res.map(|body| match stream {
                // A body already at its end goes with the headers.
                Some(stream) if !http_body::Body::is_end_stream(&body) => {
                    Body::new(stream.track(body))
                }
                _ => body,
            })
        }))
    }
}

/// A response body that keeps its HTTP/2 stream counted until it is done,
/// and tells the stall sweep when its client has a frame to take.
struct TrackedBody {
    shared: Arc<SharedBody>,
    _stream: StreamGuard,
}

impl TrackedBody {
    fn body(&self) -> std::sync::MutexGuard<'_, Option<Body>> {
        self.shared
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        // hyper polls for the next frame only once the client has room
        // for it: until then, the client is the one keeping us waiting.
        let mut body = self.body();
        let Some(inner) = body.as_mut() else {
            // Cut by the sweep: an error, so the stream is reset rather
            // than ended as if the response were whole.
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing of the response",
            )))));
        };
        let frame = std::pin::Pin::new(inner).poll_frame(cx);
        let waiting = match &frame {
            Poll::Ready(Some(Ok(_))) => millis(),
            _ => 0,
        };
        self.shared.waiting_since.store(waiting, Ordering::Relaxed);
        frame
    }

    fn is_end_stream(&self) -> bool {
        // A cut body is not at its end: its next poll is the error.
        self.body()
            .as_ref()
            .is_some_and(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body()
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

/// How long a client may take to send a whole request head, the first
/// byte included (see `ClientIo`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest HTTP/1.1 request head read, in bytes: 431 above it. Room for
/// a 16 KiB token beside the cookies and headers browsers and front ends
/// add (nginx allows 32 KiB by default, Cloud Run 64 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A client connection with the two deadlines hyper does not keep.
///
/// - Its first reads must tell the protocol (a byte that is not the
///   HTTP/2 preface's, the whole preface, or the end) within `first_byte`,
///   else the read fails with `TimedOut` and hyper drops the connection.
///   hyper's header read timeout starts only once the HTTP version is
///   known, and telling HTTP/1.1 from h2c takes those bytes: without this,
///   a client that connects and sends nothing, or only `PRI`, holds its
///   connection, and a file descriptor, for ever (or until the HTTP/2
///   idle timeout).
/// - A write that can make no progress for `write_stall` fails
///   the same way: a client that stops reading its responses (pipelined
///   requests, a response it never takes) would otherwise hold its
///   connection for ever, since hyper reads no further request head, and so
///   arms no header timeout, while a response waits to be written.
struct ClientIo {
    io: tokio::net::TcpStream,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    state: Deadline,
    write_stall: Duration,
    /// Told when bytes arrive (`Streams::unread`).
    streams: Arc<Streams>,
}

/// What an h2c connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The protocol is not known yet: the timer is the first bytes'
    /// deadline. It lasts until a byte is off the HTTP/2 preface (HTTP/1.1)
    /// or all of it has come (h2c), since hyper-util reads the whole
    /// preface with no timer of its own; `preface_seen` bytes of it have.
    FirstByte { preface_seen: usize },
    /// No deadline running.
    Idle,
    /// A write is waiting for the client: the timer is its deadline.
    Writing,
}

impl ClientIo {
    fn new(
        io: tokio::net::TcpStream,
        first_byte: Duration,
        write_stall: Duration,
        streams: Arc<Streams>,
    ) -> Self {
        ClientIo {
            io,
            timer: Box::pin(tokio::time::sleep(first_byte)),
            state: Deadline::FirstByte { preface_seen: 0 },
            write_stall,
            streams,
        }
    }

    /// After a write: clears the deadline on progress, starts it
    /// when the client is not reading, and fails once it has passed.
    fn after_write<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match result {
            Poll::Ready(r) => {
                if self.state == Deadline::Writing {
                    self.state = Deadline::Idle;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.state == Deadline::Idle {
                    let at = tokio::time::Instant::now() + self.write_stall;
                    self.timer.as_mut().reset(at);
                    self.state = Deadline::Writing;
                }
                if self.state == Deadline::Writing && self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading its responses",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl tokio::io::AsyncRead for ClientIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.streams.unread.store(true, Ordering::Relaxed);
                }
                if let Deadline::FirstByte { preface_seen } = this.state {
                    let read = &buf.filled()[before..];
                    let rest = &H2_PREFACE[preface_seen..];
                    let n = read.len().min(rest.len());
                    this.state = if read.is_empty() || read[..n] != rest[..n] || n == rest.len() {
                        // The end, HTTP/1.1, or the whole preface: known.
                        Deadline::Idle
                    } else {
                        Deadline::FirstByte {
                            preface_seen: preface_seen + n,
                        }
                    };
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if matches!(this.state, Deadline::FirstByte { .. })
                    && this.timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl tokio::io::AsyncWrite for ClientIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // A TcpStream has nothing to flush (always ready): no deadline.
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
