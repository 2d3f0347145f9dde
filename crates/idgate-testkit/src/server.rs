//! The HTTP side of [`Issuer`](crate::Issuer): routes, handlers and the
//! accept loop.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::Stream;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::issuer::{Failure, Shared};
use crate::mint::{DEFAULT_TTL_SECS, google_claims, now_unix};

/// Longest lifetime the mint endpoint grants; long enough for any
/// lifetime-limit test, short enough that `exp` stays an ordinary number.
const MAX_TTL_SECS: u64 = 10 * 366 * 24 * 3600;

/// Chunk size of [`Failure::Oversized`] bodies.
const OVERSIZED_CHUNK: usize = 64 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", get(token_get).post(token_post))
        .with_state(shared)
}

/// Accepts connections until the task is aborted. The connections live in a
/// `JoinSet` owned by this future, so aborting it closes them all, hanging
/// ones included.
pub(crate) async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(err) = served {
                            tracing::debug!(error = %err, "test issuer connection ended");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %err, "test issuer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    json_response(shared.discovery().to_string().into())
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    match shared.failure() {
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, "injected jwks failure\n").into_response()
        }
        Failure::Hang => std::future::pending::<Response>().await,
        Failure::Garbage => jwks_response(&shared, Body::from("<html>not json</html>\n")),
        Failure::EmptyKeys => jwks_response(&shared, Body::from(r#"{"keys":[]}"#)),
        Failure::Oversized(len) => jwks_response(&shared, Body::from_stream(oversized(len))),
        Failure::Slow { chunk, every } => {
            let body = Bytes::from(shared.jwks().to_string());
            jwks_response(&shared, Body::from_stream(trickle(body, chunk, every)))
        }
        Failure::None => jwks_response(&shared, Body::from(shared.jwks().to_string())),
    }
}

fn json_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 JSON response with the configured caching headers.
fn jwks_response(shared: &Shared, body: Body) -> Response {
    let mut response = json_response(body);
    set_cache_headers(shared, response.headers_mut());
    response
}

fn set_cache_headers(shared: &Shared, headers: &mut HeaderMap) {
    if let Some(value) = shared.cache_control() {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                headers.insert(header::CACHE_CONTROL, value);
            }
            Err(_) => tracing::warn!(value, "test issuer: cache-control is not a header value"),
        }
    }
    if let Some(age) = shared.age() {
        headers.insert(header::AGE, HeaderValue::from(age));
    }
}

/// `len` bytes of `{"keys":[],"padding":"xxx…"}` (cut short if `len` is
/// smaller than the frame), produced a chunk at a time.
fn oversized(len: usize) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    const PREFIX: &[u8] = br#"{"keys":[],"padding":""#;
    const SUFFIX: &[u8] = br#""}"#;
    let padding = Bytes::from(vec![b'x'; OVERSIZED_CHUNK]);
    futures_util::stream::unfold(0usize, move |pos| {
        let padding = padding.clone();
        async move {
            if pos >= len {
                return None;
            }
            let chunk = if len < PREFIX.len() + SUFFIX.len() {
                let frame = [PREFIX, SUFFIX].concat();
                Bytes::from(frame[..len].to_vec())
            } else if pos < PREFIX.len() {
                Bytes::from_static(&PREFIX[pos..])
            } else if pos < len - SUFFIX.len() {
                padding.slice(..OVERSIZED_CHUNK.min(len - SUFFIX.len() - pos))
            } else {
                Bytes::from_static(&SUFFIX[pos - (len - SUFFIX.len())..])
            };
            let next = pos + chunk.len();
            Some((Ok(chunk), next))
        }
    })
}

/// `body`, `chunk` bytes at a time, each after a pause of `every`.
fn trickle(
    body: Bytes,
    chunk: usize,
    every: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let chunk = chunk.max(1);
    futures_util::stream::unfold(0usize, move |pos| {
        let body = body.clone();
        async move {
            if pos >= body.len() {
                return None;
            }
            tokio::time::sleep(every).await;
            let end = body.len().min(pos.saturating_add(chunk));
            Some((Ok(body.slice(pos..end)), end))
        }
    })
}

/// What the mint endpoint accepts, from the query string or a JSON body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    email: String,
    audience: String,
    #[serde(default)]
    hd: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    email_verified: Option<bool>,
    /// Extra claims, merged over the defaults (JSON body only).
    #[serde(default)]
    claims: Option<Map<String, Value>>,
}

async fn token_get(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<MintRequest>, QueryRejection>,
) -> Response {
    if let Some(refusal) = foreign_host(&shared, &headers) {
        return refusal;
    }
    match query {
        Ok(Query(request)) => mint_response(&shared, request),
        Err(rejection) => bad_request(&format!("invalid token request: {}", rejection.body_text())),
    }
}

async fn token_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = foreign_host(&shared, &headers) {
        return refusal;
    }
    match serde_json::from_slice::<MintRequest>(&body) {
        Ok(request) => mint_response(&shared, request),
        Err(err) => bad_request(&format!("invalid token request: {err}")),
    }
}

/// Mints only for a request that names this issuer by a name no web page
/// can point elsewhere: an IP address, `localhost` (or a name under it), or
/// the issuer URL's own host. A page on another site could otherwise rebind
/// its name to 127.0.0.1 and read the tokens it mints for itself
/// (DNS rebinding); a `Host` it names is its own. The refusal, for any
/// other name.
fn foreign_host(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let allowed = host.and_then(host_name).is_some_and(|h| {
        h == "localhost"
            || h.ends_with(".localhost")
            || h.parse::<std::net::IpAddr>().is_ok()
            || shared.host_name() == Some(h.as_str())
    });
    if allowed {
        return None;
    }
    let message = format!(
        "the mint endpoint answers requests that name it by an IP address, localhost or the \
         issuer URL's host ({}); this one named {:?}\n",
        shared.url(),
        host.unwrap_or("nothing"),
    );
    Some((StatusCode::FORBIDDEN, message).into_response())
}

/// The host an authority (`host:port`, `[v6]:port`) names, as compared
/// (see [`comparable`]).
pub(crate) fn host_name(authority: &str) -> Option<String> {
    let authority: Authority = authority.parse().ok()?;
    Some(comparable(authority.host()))
}

/// The host of an URL, as compared (see [`comparable`]).
pub(crate) fn url_host_name(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.host().map(comparable)
}

/// A host as compared: lower case, without IPv6 brackets or a trailing dot.
fn comparable(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn mint_response(shared: &Shared, request: MintRequest) -> Response {
    match mint_claims(shared, request) {
        Ok(claims) => {
            let token = shared.mint(&claims);
            tracing::debug!(email = %claims["email"], aud = %claims["aud"], "test issuer minted a token");
            let mut response = Response::new(Body::from(token));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(message) => bad_request(&message),
    }
}

fn mint_claims(shared: &Shared, request: MintRequest) -> Result<Value, String> {
    if request.email.trim().is_empty() {
        return Err("email must not be empty".into());
    }
    if request.audience.trim().is_empty() {
        return Err("audience must not be empty".into());
    }
    let ttl = request.ttl.unwrap_or(DEFAULT_TTL_SECS);
    if ttl > MAX_TTL_SECS {
        return Err(format!("ttl must be at most {MAX_TTL_SECS} seconds"));
    }
    let now = now_unix();
    let mut claims = google_claims(shared.url(), &request.email, &request.audience, now);
    let Value::Object(map) = &mut claims else {
        return Err("internal error: claims are not an object".into());
    };
    map.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    if let Some(verified) = request.email_verified {
        map.insert("email_verified".into(), Value::Bool(verified));
    }
    if let Some(hd) = request.hd {
        if hd.trim().is_empty() {
            return Err("hd must not be empty when given".into());
        }
        map.insert("hd".into(), Value::String(hd));
    }
    if let Some(extra) = request.claims {
        map.extend(extra);
    }
    Ok(claims)
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}
