//! `bare-proxy LISTEN UPSTREAM`: the least a reverse proxy built on hyper
//! 1 and tokio can do, for `bench/sidecar.sh`'s `hyper-bare` variant.
//!
//! It tells what the HTTP stack idgate stands on costs before idgate adds
//! anything: the same single-threaded runtime `idgate serve` uses on one
//! CPU, hyper's HTTP/1.1 server and client, and each upstream connection
//! driven by the task of the client connection it serves (as idgate's pool
//! does), so no channel or task sits between the two. Nothing else: no
//! header rewriting, no hop-by-hop removal, no timeouts, no metrics, no
//! logs, no boxing; one upstream connection per client connection, opened
//! with it. Not a proxy to deploy: a floor to measure against.
//!
//! Built with the system allocator (not `loadkit`'s counting one), with the
//! workspace's release profile.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR (both host:port)");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN_ADDR")?;
    let upstream: SocketAddr = upstream.parse().context("UPSTREAM_ADDR")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(e) = connection(stream, upstream).await {
                    eprintln!("bare-proxy: connection ended: {e:#}");
                }
            });
        }
    })
}

/// One client connection and the upstream connection that serves it, both
/// polled from this one task.
async fn connection(stream: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, up_conn) = client::handshake::<_, Incoming>(TokioIo::new(up)).await?;
    // HTTP/1.1 serves one request at a time per connection: the sender is
    // taken by the request in flight and put back once its head is in.
    let sender = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let taken = sender.lock().unwrap_or_else(PoisonError::into_inner).take();
            let mut s = taken.context("a second request in flight on one connection")?;
            s.ready().await?;
            let res: Response<Incoming> = s.send_request(req).await?;
            *sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
            anyhow::Ok(res)
        }
    });
    let down = server::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = down => r.context("client side")?,
        r = up_conn => r.context("upstream side")?,
    }
    Ok(())
}
