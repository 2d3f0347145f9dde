//! `idgate proxy`: a local reverse proxy that adds a fresh ID token to every
//! request, as `gcloud run services proxy` does for a private Cloud Run
//! service. Point a browser or `curl` at `http://127.0.0.1:8080` and it
//! reaches `--target` as an authenticated caller.
//!
//! The target may be `http` or `https` (rustls, the platform's roots via
//! reqwest). Requests and responses stream; redirects are passed back, not
//! followed. Not supported: protocol upgrades (WebSocket) and HTTP/2
//! (so no gRPC).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use idgate::{CredentialHeader, SystemClock};
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tracing::warn;

use super::token_source::{ResolveError, SourceSpec, TokenCache, TokenSource};
use super::when;
use crate::Body;
use crate::app::HttpService;
use crate::config::Env;
use crate::headers::remove_hop_by_hop;
use crate::serve::ShutdownSignal;

/// `idgate proxy` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Token sources:
  dev:URL     a dev issuer's mint endpoint (`idgate dev-issuer`), for --email
  metadata    the metadata server on Cloud Run, GCE, GKE ($GCE_METADATA_HOST, else metadata.google.internal)
  key:FILE    a service-account JSON key, exchanged at its token_uri
  gcloud      gcloud auth print-identity-token --audiences=AUD (needs service-account credentials)
  token:T     this token;  file:PATH  the token in this file (read again at each refresh)

The token is refreshed in the background at 80% of its lifetime or 5 min before it
expires, whichever comes first; a request never carries an expired token.")]
pub struct ProxyArgs {
    /// The service to reach: `https://my-svc-abc123-uc.a.run.app` (a path
    /// is put before every request path).
    #[arg(long, value_name = "URL")]
    pub target: String,

    /// Where to listen (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The tokens' `aud` [default: the target's origin, scheme://host[:port],
    /// as Cloud Run expects].
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,

    /// Where tokens come from: dev:URL, metadata, key:FILE, gcloud,
    /// token:TOKEN or file:PATH.
    #[arg(long, value_name = "SOURCE")]
    pub token_source: SourceSpec,

    /// For dev:URL: whose token to mint.
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,

    /// Send the token in `X-Serverless-Authorization` and leave the
    /// client's own `Authorization` alone (Cloud Run reads the former
    /// first).
    #[arg(long)]
    pub serverless_authorization: bool,
}

/// The target, split for forwarding.
#[derive(Debug, Clone)]
pub struct Target {
    /// `scheme://authority`.
    pub origin: String,
    /// A path put before every request path, without a trailing `/`.
    pub base_path: String,
}

impl Target {
    /// Parses `http(s)://host[:port][/base]`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let uri: Uri = s
            .parse()
            .map_err(|e| format!("--target {s:?} is not a URL: {e}"))?;
        let scheme = uri
            .scheme_str()
            .filter(|s| *s == "http" || *s == "https")
            .ok_or_else(|| format!("--target {s:?}: expected http:// or https://"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--target {s:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("--target {s:?}: a query string cannot be a prefix"));
        }
        Ok(Target {
            origin: format!("{scheme}://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// Runs `proxy`.
pub fn run(args: ProxyArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    let target = match Target::parse(&args.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("idgate: {e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    let audience = args
        .audience
        .clone()
        .unwrap_or_else(|| target.origin.clone());
    let source = match TokenSource::resolve(&args.token_source, args.email.as_deref(), env) {
        Ok(s) => s,
        Err(ResolveError::Usage(e)) => {
            eprintln!("idgate: {e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
        Err(ResolveError::Source(e)) => {
            eprintln!("idgate: token source: {}", crate::ErrorChain(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, not loopback: anyone who can reach it calls {} with your token",
            args.listen, target.origin
        );
    }
    let runtime = super::tool_runtime(env, "info")?;
    runtime.block_on(async move {
        let signal = ShutdownSignal::install().context("cannot listen for SIGTERM")?;
        let tokens = TokenCache::new(Box::new(source), audience.clone(), Arc::new(SystemClock::new()));
        // The first token before anything listens: a source that cannot
        // give one is a startup error, with its cause.
        if let Err(e) = tokens.token().await {
            eprintln!("idgate: no token from {}: {e}", tokens.describe());
            return Ok(ExitCode::FAILURE);
        }
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        let addr = listener.local_addr()?;
        let expires = tokens
            .timing()
            .and_then(|t| t.expires_at)
            .map(|e| {
                let now = SystemClock::new();
                format!(
                    "; this one expires {}",
                    when::relative(e.as_secs(), idgate::Clock::unix_now(&now).as_secs())
                )
            })
            .unwrap_or_default();
        println!(
            "idgate proxy: http://{addr} -> {}{}\n  audience  {audience}\n  tokens    from {}{expires}\nCtrl-C stops it.",
            target.origin,
            target.base_path,
            tokens.describe()
        );
        let refresher = tokens.spawn_refresher();
        let header = if args.serverless_authorization {
            CredentialHeader::XServerlessAuthorization.header_name()
        } else {
            header::AUTHORIZATION
        };
        let service = service(Forwarder::new(target, tokens, header)?);
        let drained = crate::server::serve(
            "proxy",
            listener,
            service,
            signal.recv(),
            Duration::from_secs(5),
            crate::server::Limits::DEFAULT,
        )
        .await;
        refresher.abort();
        tracing::info!(?drained, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Forwards requests to the target with a token attached.
#[derive(Debug, Clone)]
pub struct Forwarder {
    target: Target,
    tokens: TokenCache,
    header: HeaderName,
    client: reqwest::Client,
}

impl Forwarder {
    /// A forwarder that puts tokens from `tokens` in `header`.
    pub fn new(target: Target, tokens: TokenCache, header: HeaderName) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Forwarder {
            target,
            tokens,
            header,
            client,
        })
    }

    /// Forwards one request.
    pub async fn forward(&self, req: Request<Body>) -> Response<Body> {
        let token = match self.tokens.token().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, source = %self.tokens.describe(), "no token for the request");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "token_source_failed",
                    &format!("the token source ({}) failed: {e}", self.tokens.describe()),
                );
            }
        };
        let (parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{}{}{pq}", self.target.origin, self.target.base_path);
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers, false);
        // The target's own host, as its front end routes by it.
        headers.remove(header::HOST);
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return error(
                StatusCode::BAD_GATEWAY,
                "token_source_failed",
                "the token source gave a token that cannot be a header value",
            );
        };
        // In `Authorization`, the token must not lose to a client's own
        // `X-Serverless-Authorization`, which Cloud Run (and `idgate serve`)
        // read first.
        if self.header == header::AUTHORIZATION {
            headers.remove(CredentialHeader::XServerlessAuthorization.header_name());
        }
        headers.insert(self.header.clone(), value);
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let mut builder = self.client.request(parts.method, &url).headers(headers);
        if !empty {
            builder = builder.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        match builder.send().await {
            Ok(res) => {
                let mut out = Response::new(Body::empty());
                *out.status_mut() = res.status();
                let mut headers = res.headers().clone();
                remove_hop_by_hop(&mut headers, false);
                *out.headers_mut() = headers;
                *out.body_mut() = Body::from_stream(res.bytes_stream());
                out
            }
            Err(e) => {
                warn!(error = %crate::ErrorChain(&e), url = %url, "target request failed");
                error(
                    StatusCode::BAD_GATEWAY,
                    "target_unreachable",
                    &format!(
                        "cannot reach {}: {}",
                        self.target.origin,
                        crate::ErrorChain(&e)
                    ),
                )
            }
        }
    }
}

/// The forwarder as the server's service.
pub fn service(forwarder: Forwarder) -> HttpService {
    let forwarder = Arc::new(forwarder);
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        let f = forwarder.clone();
        async move { Ok::<_, Infallible>(f.forward(req).await) }
    }))
}

/// `{"error": "bad_gateway", "reason": …, "detail": …}`.
fn error(status: StatusCode, reason: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": "bad_gateway",
        "reason": reason,
        "detail": detail,
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://svc-abc-uc.a.run.app").unwrap();
        assert_eq!(t.origin, "https://svc-abc-uc.a.run.app");
        assert_eq!(t.base_path, "");
        let t = Target::parse("http://127.0.0.1:8081/api/").unwrap();
        assert_eq!(t.origin, "http://127.0.0.1:8081");
        assert_eq!(t.base_path, "/api");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("/relative").is_err());
        assert!(Target::parse("http://x/?q=1").is_err());
    }
}
