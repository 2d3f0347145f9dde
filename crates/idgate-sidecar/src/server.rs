//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one socket, with
//! upgrades, and a graceful shutdown that drains in-flight requests within a
//! grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
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
}

type HttpFuture = <HttpService as tower_service::Service<Request<Body>>>::Future;

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<HttpFuture, Oneshot<HttpService, Request<Body>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        let req = req.map(Body::new);
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
    /// they are dropped.
    TimedOut(usize),
}

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting and waits up to `grace` for open connections to finish their
/// requests. Idle keep-alive connections close at once; HTTP/2 connections
/// get a GOAWAY.
///
/// Connections already upgraded (WebSocket) are not counted: they are
/// detached tunnels and end with the process.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    service: HttpService,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drained {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // With a timer, hyper enforces its limit on reading request heads: a
    // client that trickles headers cannot hold a connection forever. It
    // starts only once the first bytes have told HTTP/1.1 from h2c, so the
    // wait for those has the same deadline (`FirstByteDeadline`).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
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
        let _ = stream.set_nodelay(true);
        let hyper_svc = PerConnection {
            service: Mutex::new(service.clone()),
            peer,
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(FirstByteDeadline::new(stream, HEADER_READ_TIMEOUT)),
                hyper_svc,
            )
            .into_owned();
        let conn = graceful.watch(conn);
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, client = %peer, "connection ended with an error");
            }
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
        graceful.shutdown().await;
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

/// How long a client may take to send a whole request head, the first
/// byte included (see [`FirstByteDeadline`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection whose first read must bring something (bytes or the end)
/// within a deadline, else it fails with `TimedOut` and hyper drops it.
///
/// hyper's header read timeout starts only once the HTTP version is known,
/// and telling HTTP/1.1 from h2c takes the first bytes: without this, a
/// client that connects and sends nothing holds its connection, and a file
/// descriptor, for ever.
struct FirstByteDeadline {
    io: tokio::net::TcpStream,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl FirstByteDeadline {
    fn new(io: tokio::net::TcpStream, timeout: Duration) -> Self {
        FirstByteDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl tokio::io::AsyncRead for FirstByteDeadline {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
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

impl tokio::io::AsyncWrite for FirstByteDeadline {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
