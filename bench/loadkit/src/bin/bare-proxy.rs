//! `bare-proxy LISTEN UPSTREAM [JWKS_URL AUDIENCE MEMBER]`: the least a
//! reverse proxy built on hyper 1 and tokio can do, for `bench/sidecar.sh`'s
//! `hyper-bare` variant; with the last three, also the least an
//! authenticating one must do (`hyper-bare-gate`).
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
//! With a JWKS URL, audience and member, every request first goes through
//! idgate's own [`Gate`] (credential, verified-token cache, policy) and,
//! allowed, on with idgate's identity headers and its token stripped of its
//! signature (`idgate serve`'s defaults); refused, it gets the gate's status
//! and no body. What an authenticating proxy cannot do without, and nothing
//! else: the distance from here to `idgate serve` is the cost of the rest
//! of idgate's request path.
//!
//! Built with the system allocator (not `loadkit`'s counting one), with the
//! workspace's release profile.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use idgate::auth::{Gate, Outcome, RequestFacts, status_for};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{IssuerConfig, Verifier};
use idgate_sidecar::config::ForwardToken;
use idgate_sidecar::headers::{forward_token, set_identity};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, gate) = match args.as_slice() {
        [listen, upstream] => (listen, upstream, None),
        [listen, upstream, jwks, audience, member] => {
            (listen, upstream, Some((jwks, audience, member)))
        }
        _ => anyhow::bail!(
            "usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR [JWKS_URL AUDIENCE MEMBER] (addresses host:port)"
        ),
    };
    let listen: SocketAddr = listen.parse().context("LISTEN_ADDR")?;
    let upstream: SocketAddr = upstream.parse().context("UPSTREAM_ADDR")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let gate = match gate {
            Some((jwks, audience, member)) => {
                Some(Arc::new(build_gate(jwks, audience, member).await?))
            }
            None => None,
        };
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let gate = gate.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, upstream, gate).await {
                    eprintln!("bare-proxy: connection ended: {e:#}");
                }
            });
        }
    })
}

/// idgate's gate for Google-shaped tokens from `jwks`, with its keys loaded.
async fn build_gate(jwks: &str, audience: &str, member: &str) -> anyhow::Result<Gate> {
    let verifier = Verifier::builder()
        .issuer(IssuerConfig::google().with_jwks_url(jwks))
        .audiences([audience])
        .build()?;
    verifier.refresh_keys().await;
    anyhow::ensure!(verifier.is_ready(), "no keys from {jwks}");
    let (policy, _) = PolicyHandle::new(PolicySources {
        members: vec![member.to_owned()],
        ..PolicySources::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Gate::builder(Arc::new(verifier), Arc::new(policy)).build()?)
}

type Answer = Response<Either<Incoming, http_body_util::Empty<bytes::Bytes>>>;

/// One client connection and the upstream connection that serves it, both
/// polled from this one task.
async fn connection(
    stream: TcpStream,
    upstream: SocketAddr,
    gate: Option<Arc<Gate>>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, up_conn) = client::handshake::<_, Incoming>(TokioIo::new(up)).await?;
    // HTTP/1.1 serves one request at a time per connection: the sender is
    // taken by the request in flight and put back once its head is in.
    let sender = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = sender.clone();
        let gate = gate.clone();
        async move {
            if let Some(gate) = gate {
                let outcome = gate
                    .check(RequestFacts {
                        headers: req.headers(),
                        method: req.method().as_str(),
                        host: "",
                        path: req.uri().path(),
                    })
                    .await;
                match outcome {
                    Outcome::Allowed(admission) => {
                        if let Some(identity) = &admission.identity {
                            set_identity(req.headers_mut(), identity);
                        }
                        forward_token(
                            req.headers_mut(),
                            ForwardToken::Stripped,
                            admission.credential_header,
                            admission.identity.is_some(),
                        );
                    }
                    Outcome::Denied(refusal) => {
                        let status = status_for(refusal.rejection.reason, gate.status_codes());
                        let mut res: Answer = Response::new(Either::Right(Default::default()));
                        *res.status_mut() = status;
                        return anyhow::Ok(res);
                    }
                }
            }
            let taken = sender.lock().unwrap_or_else(PoisonError::into_inner).take();
            let mut s = taken.context("a second request in flight on one connection")?;
            s.ready().await?;
            let res: Response<Incoming> = s.send_request(req).await?;
            *sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
            anyhow::Ok(res.map(Either::Left))
        }
    });
    let down = server::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = down => r.context("client side")?,
        r = up_conn => r.context("upstream side")?,
    }
    Ok(())
}
