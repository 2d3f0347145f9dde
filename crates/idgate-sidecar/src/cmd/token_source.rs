//! Where `idgate proxy` gets its ID tokens, and how it keeps one fresh.
//!
//! Sources ([`SourceSpec`], `--token-source`):
//!
//! | spec | token from |
//! |---|---|
//! | `dev:URL` | a dev issuer's mint endpoint, for `--email` |
//! | `metadata` | the GCE metadata server (`$GCE_METADATA_HOST`, else `metadata.google.internal`), as on Cloud Run, GCE and GKE |
//! | `key:FILE` | a service-account JSON key: a self-signed JWT assertion exchanged at the key's `token_uri` |
//! | `gcloud` | `gcloud auth print-identity-token --audiences=AUD` |
//! | `token:T`, `file:PATH` | this token (the file is read again at each refresh) |
//!
//! [`TokenCache`] holds the current token and refreshes it before it
//! expires: in the background once it is due (see [`Timing`]), one fetch at
//! a time however many requests want one, and never hands out a token past
//! its usable time: a request then waits for the fetch, and gets an error
//! if it fails.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use idgate::Clock;
use idgate::token::{Json, UnverifiedToken};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::mint::{self, MintRequest, short_body};
use super::when;
use crate::config::Env;

/// The metadata server's host when `GCE_METADATA_HOST` is not set.
pub const METADATA_HOST: &str = "metadata.google.internal";

/// A `--token-source`, parsed but not yet used (no I/O).
#[derive(Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `dev:URL`.
    Dev(String),
    /// `metadata`.
    Metadata,
    /// `key:FILE`.
    Key(PathBuf),
    /// `gcloud`.
    Gcloud,
    /// `token:T`.
    Token(String),
    /// `file:PATH`.
    File(PathBuf),
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never a token in a log line.
            SourceSpec::Token(_) => f.write_str("Token(..)"),
            SourceSpec::Dev(u) => f.debug_tuple("Dev").field(u).finish(),
            SourceSpec::Metadata => f.write_str("Metadata"),
            SourceSpec::Key(p) => f.debug_tuple("Key").field(p).finish(),
            SourceSpec::Gcloud => f.write_str("Gcloud"),
            SourceSpec::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let nonempty = |v: &str, what: &str| {
            if v.trim().is_empty() {
                Err(format!("{what} is empty"))
            } else {
                Ok(v.trim().to_owned())
            }
        };
        match s.split_once(':') {
            _ if s == "metadata" => Ok(SourceSpec::Metadata),
            _ if s == "gcloud" => Ok(SourceSpec::Gcloud),
            Some(("dev", url)) => {
                let url = nonempty(url, "the dev issuer URL")?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("dev:{url}: expected an http(s) URL"));
                }
                Ok(SourceSpec::Dev(url))
            }
            Some(("key", path)) => Ok(SourceSpec::Key(nonempty(path, "the key file")?.into())),
            Some(("token", t)) => Ok(SourceSpec::Token(nonempty(t, "the token")?)),
            Some(("file", path)) => Ok(SourceSpec::File(nonempty(path, "the file")?.into())),
            _ => {
                Err("expected dev:URL, metadata, key:FILE, gcloud, token:TOKEN or file:PATH".into())
            }
        }
    }
}

/// Why a source gave no token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The request did not get an answer.
    #[error("cannot reach {url}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than 2xx.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// Where.
        url: String,
        /// The status.
        status: u16,
        /// The body, on one line and cut short.
        body: String,
    },
    /// An answer without a usable token.
    #[error("{from} gave no ID token: {why}")]
    NoToken {
        /// Where.
        from: String,
        /// What was wrong.
        why: String,
    },
    /// The dev issuer could not be asked.
    #[error("dev issuer")]
    Dev(#[source] anyhow::Error),
    /// `gcloud` is not installed.
    #[error(
        "gcloud is not on PATH: install the Google Cloud SDK, or choose another --token-source (metadata, key:FILE, dev:URL)"
    )]
    GcloudMissing,
    /// `gcloud` could not be run or failed.
    #[error("gcloud auth print-identity-token failed: {0}")]
    Gcloud(String),
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A service-account key file that cannot be used.
    #[error("{}: {why}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The token is past its usable time and the source has no newer one.
    #[error("its token expired {ago} ago")]
    Expired {
        /// How long ago, in words.
        ago: String,
    },
}

/// Something that gives ID tokens for an audience. [`TokenSource`] is the
/// real one; tests pass their own.
pub trait FetchToken: Send + Sync + 'static {
    /// One fresh token for `audience`.
    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, SourceError>>;
    /// The source in words, for messages: `the metadata server (HOST)`.
    fn describe(&self) -> String;
}

/// A service-account JSON key, the fields that matter.
#[derive(Clone)]
pub struct ServiceAccountKey {
    /// The file it came from.
    pub path: PathBuf,
    /// `client_email`.
    pub client_email: String,
    /// `token_uri`.
    pub token_uri: String,
    /// `private_key_id`, the assertion's `kid`.
    pub private_key_id: Option<String>,
    key: Arc<RsaKeyPair>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("path", &self.path)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Reads and checks a key file as `gcloud iam service-accounts keys
    /// create` writes it.
    pub fn load(path: &Path) -> Result<ServiceAccountKey, SourceError> {
        let bad = |why: String| SourceError::BadKeyFile {
            path: path.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
            path: path.to_owned(),
            source,
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let field = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(t) = field("type")
            && t != "service_account"
        {
            return Err(bad(format!(
                "type is {t:?}, not \"service_account\" (only service-account keys can mint ID tokens this way)"
            )));
        }
        let client_email = field("client_email").ok_or_else(|| bad("no client_email".into()))?;
        let token_uri =
            field("token_uri").unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        let pem = field("private_key").ok_or_else(|| bad("no private_key".into()))?;
        let der = pem_der(&pem).ok_or_else(|| bad("private_key is not a PEM key".into()))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| RsaKeyPair::from_der(&der))
            .map_err(|e| bad(format!("private_key is not an RSA key ({e})")))?;
        Ok(ServiceAccountKey {
            path: path.to_owned(),
            client_email,
            token_uri,
            private_key_id: field("private_key_id"),
            key: Arc::new(key),
        })
    }

    /// The self-signed JWT that asks `token_uri` for an ID token for
    /// `audience` (Google's JWT-bearer grant with `target_audience`).
    pub fn assertion(&self, audience: &str, now: u64) -> Result<String, SourceError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = json!({
            "iss": self.client_email,
            "sub": self.client_email,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
            "target_audience": audience,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| SourceError::BadKeyFile {
                path: self.path.clone(),
                why: "cannot sign with private_key".into(),
            })?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The DER inside the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let mut lines = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    lines.next()?;
    let body: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    STANDARD.decode(body).ok()
}

/// A usable source.
#[derive(Debug)]
pub enum TokenSource {
    /// A dev issuer's mint endpoint.
    Dev {
        /// The issuer (or mint endpoint) URL.
        url: String,
        /// Whose token.
        email: String,
        /// Shared client.
        client: reqwest::Client,
    },
    /// The metadata server.
    Metadata {
        /// `host[:port]`.
        host: String,
        /// Shared client.
        client: reqwest::Client,
    },
    /// A service-account key file.
    Key {
        /// The key.
        key: ServiceAccountKey,
        /// Shared client.
        client: reqwest::Client,
    },
    /// The gcloud CLI.
    Gcloud,
    /// A fixed token.
    Token(FixedToken),
    /// A file holding a token, read at each fetch.
    File(PathBuf),
}

/// A token given on the command line; never printed.
pub struct FixedToken(String);

impl fmt::Debug for FixedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedToken(..)")
    }
}

impl TokenSource {
    /// Makes `spec` usable: reads a key file, picks the metadata host.
    /// `email` is for `dev:`.
    pub fn resolve(
        spec: &SourceSpec,
        email: Option<&str>,
        env: &dyn Env,
    ) -> Result<TokenSource, ResolveError> {
        // `local`: the dev issuer and the metadata server are never reached
        // through `HTTP(S)_PROXY` (the proxy would see the token, and a
        // metadata server refuses proxied requests, as Google's own clients
        // know); Google's token endpoint (`key:`) may need the proxy.
        // Neither follows redirects: a token endpoint has no business
        // sending the request, and its assertion, elsewhere.
        let client = |local: bool| {
            let builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none());
            let builder = if local { builder.no_proxy() } else { builder };
            builder
                .build()
                .map_err(|e| ResolveError::Usage(format!("cannot build an HTTP client: {e}")))
        };
        Ok(match spec {
            SourceSpec::Dev(url) => TokenSource::Dev {
                url: url.clone(),
                email: email
                    .filter(|e| !e.trim().is_empty())
                    .ok_or_else(|| {
                        ResolveError::Usage(
                            "--token-source dev:URL needs --email (whose token to mint)".into(),
                        )
                    })?
                    .to_owned(),
                client: client(true)?,
            },
            SourceSpec::Metadata => TokenSource::Metadata {
                host: env
                    .var("GCE_METADATA_HOST")
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| METADATA_HOST.to_owned()),
                client: client(true)?,
            },
            SourceSpec::Key(path) => TokenSource::Key {
                key: ServiceAccountKey::load(path).map_err(ResolveError::Source)?,
                client: client(false)?,
            },
            SourceSpec::Gcloud => TokenSource::Gcloud,
            SourceSpec::Token(t) => TokenSource::Token(FixedToken(t.clone())),
            SourceSpec::File(p) => TokenSource::File(p.clone()),
        })
    }

    async fn fetch_now(&self, audience: &str) -> Result<String, SourceError> {
        match self {
            TokenSource::Dev { url, email, client } => {
                mint::mint_remote(client, url, &MintRequest::new(email.clone(), audience))
                    .await
                    .map_err(SourceError::Dev)
            }
            TokenSource::Metadata { host, client } => {
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/identity"
                );
                let res = client
                    .get(&url)
                    .query(&[("audience", audience), ("format", "full")])
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await
                    .map_err(|source| SourceError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
                token_body(&url, res).await
            }
            TokenSource::Key { key, client } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let assertion = key.assertion(audience, now)?;
                let url = key.token_uri.clone();
                let res = client
                    .post(&url)
                    .form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", assertion.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|source| SourceError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
                let body = token_body(&url, res).await?;
                let doc: Value = serde_json::from_str(&body).map_err(|_| SourceError::NoToken {
                    from: url.clone(),
                    why: "the answer is not JSON".into(),
                })?;
                doc.get("id_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or(SourceError::NoToken {
                        from: url,
                        why: "the answer has no id_token (is token_uri Google's OAuth token endpoint?)".into(),
                    })
            }
            TokenSource::Gcloud => gcloud(audience).await,
            TokenSource::Token(FixedToken(t)) => Ok(t.clone()),
            TokenSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| s.trim().to_owned())
                .map_err(|source| SourceError::Read {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Why `--token-source` cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The flags do not go together.
    #[error("{0}")]
    Usage(String),
    /// The source's own setup failed (an unreadable key file).
    #[error(transparent)]
    Source(SourceError),
}

async fn token_body(url: &str, res: reqwest::Response) -> Result<String, SourceError> {
    let status = res.status();
    let body = res
        .text()
        .await
        .map_err(|source| SourceError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    if !status.is_success() {
        return Err(SourceError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            body: short_body(&body),
        });
    }
    Ok(body.trim().to_owned())
}

async fn gcloud(audience: &str) -> Result<String, SourceError> {
    let out = tokio::process::Command::new("gcloud")
        .args([
            "auth",
            "print-identity-token",
            &format!("--audiences={audience}"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::GcloudMissing,
            _ => SourceError::Gcloud(e.to_string()),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(SourceError::Gcloud(format!(
            "{}: {}",
            out.status,
            short_body(&err)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl FetchToken for TokenSource {
    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
        self.fetch_now(audience).boxed()
    }

    fn describe(&self) -> String {
        match self {
            TokenSource::Dev { url, email, .. } => {
                format!("the dev issuer at {} (for {email})", mint::mint_url(url))
            }
            TokenSource::Metadata { host, .. } => format!("the metadata server ({host})"),
            TokenSource::Key { key, .. } => format!(
                "key file {} ({}, via {})",
                key.path.display(),
                key.client_email,
                key.token_uri
            ),
            TokenSource::Gcloud => "gcloud auth print-identity-token".into(),
            TokenSource::Token(_) => "the fixed token (--token-source token:…)".into(),
            TokenSource::File(p) => format!("file {}", p.display()),
        }
    }
}

/// When a token is refreshed and until when it is handed out, from its
/// `iat` and `exp` (lifetime `L = exp − iat`):
///
/// - refresh at 80 % of its lifetime or 5 min before `exp`, whichever comes
///   first, but never before half its lifetime (a 4 s token is refreshed
///   after 2 s, not at once and forever);
/// - usable until `exp` minus a safety margin of a tenth of its lifetime,
///   at most 30 s, so it does not expire on its way to the service.
///
/// A token with no readable `exp` never expires here and is fetched again
/// every 5 min.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Unix time (s) to start a background refresh.
    pub refresh_at: Duration,
    /// Unix time (s) after which the token is not handed out.
    pub usable_until: Option<Duration>,
    /// `exp`, when readable.
    pub expires_at: Option<Duration>,
}

impl Timing {
    /// The timing of `token`, fetched at `now`.
    pub fn of(token: &str, now: Duration) -> Timing {
        let claims = UnverifiedToken::parse(token).ok().map(|t| t.claims);
        let num = |k: &str| {
            claims
                .as_ref()
                .and_then(|c| match c.get(k)? {
                    Json::Number(n) => n.as_u64(),
                    _ => None,
                })
                .map(Duration::from_secs)
        };
        let Some(exp) = num("exp") else {
            return Timing {
                refresh_at: now + Duration::from_secs(300),
                usable_until: None,
                expires_at: None,
            };
        };
        // A token issued "in the future" by a skewed clock counts from now.
        let iat = num("iat").filter(|i| *i < exp).unwrap_or(now).min(now);
        let lifetime = exp.saturating_sub(iat);
        let margin = (lifetime / 5)
            .max(Duration::from_secs(300))
            .min(lifetime / 2);
        let safety = (lifetime / 10).min(Duration::from_secs(30));
        Timing {
            refresh_at: exp.saturating_sub(margin),
            usable_until: Some(exp.saturating_sub(safety)),
            expires_at: Some(exp),
        }
    }

    fn usable(&self, now: Duration) -> bool {
        self.usable_until.is_none_or(|u| now < u)
    }
}

#[derive(Clone)]
struct Current {
    token: Arc<str>,
    timing: Timing,
}

/// A fetch's outcome, shareable between everyone waiting for it.
type Fetch = Shared<BoxFuture<'static, Result<Current, Arc<SourceError>>>>;

struct State {
    current: Option<Current>,
    inflight: Option<Fetch>,
    failures: u32,
    /// After a failure, requests start no fetch before this (the clock's
    /// monotonic time, so a wall clock stepped back cannot stretch it):
    /// 1 s, doubling to 30 s, as the background refresher waits.
    retry_at: Duration,
    /// The last failure, answered to requests until `retry_at`.
    last_error: Option<Arc<SourceError>>,
}

struct Inner {
    source: Box<dyn FetchToken>,
    audience: String,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// The current token for one audience, refreshed before it expires.
/// Cheap to clone.
#[derive(Clone)]
pub struct TokenCache(Arc<Inner>);

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("audience", &self.0.audience)
            .field("source", &self.0.source.describe())
            .finish_non_exhaustive()
    }
}

/// What went wrong getting a token, for the 502 body and the log.
#[derive(Debug, Clone)]
pub struct TokenError(pub Arc<SourceError>);

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::ErrorChain(self.0.as_ref()))
    }
}

impl std::error::Error for TokenError {}

/// How long to wait after `misses` failed attempts in a row (at least
/// one): 1 s, doubling to 30 s. The background refresher and requests
/// keep the same schedule.
fn retry_delay(misses: u32) -> Duration {
    Duration::from_secs(1 << (misses.clamp(1, 6) - 1)).min(Duration::from_secs(30))
}

impl TokenCache {
    /// A cache with no token yet; the first [`TokenCache::token`] fetches.
    pub fn new(source: Box<dyn FetchToken>, audience: String, clock: Arc<dyn Clock>) -> Self {
        TokenCache(Arc::new(Inner {
            source,
            audience,
            clock,
            state: Mutex::new(State {
                current: None,
                inflight: None,
                failures: 0,
                retry_at: Duration::ZERO,
                last_error: None,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The audience tokens are fetched for.
    pub fn audience(&self) -> &str {
        &self.0.audience
    }

    /// The source, in words.
    pub fn describe(&self) -> String {
        self.0.source.describe()
    }

    /// A token that is not past its usable time. Starts a background
    /// refresh when the current one is due; waits for a fetch only when
    /// there is no usable token. After a failure, no request starts a
    /// fetch until the backoff has passed (a failing source is not asked
    /// once per request): the last error answers meanwhile.
    pub async fn token(&self) -> Result<Arc<str>, TokenError> {
        let now = self.0.clock.unix_now();
        let current = self.lock().current.clone();
        if let Some(c) = current
            && c.timing.usable(now)
        {
            if now >= c.timing.refresh_at {
                drop(self.fetch_unless_backing_off());
            }
            return Ok(c.token);
        }
        let fresh = match self.fetch_unless_backing_off() {
            Ok(fetch) => fetch.await.map_err(TokenError)?,
            Err(last) => return Err(TokenError(last)),
        };
        if fresh.timing.usable(self.0.clock.unix_now()) {
            Ok(fresh.token)
        } else {
            let ago = fresh
                .timing
                .expires_at
                .map(|e| self.0.clock.unix_now().saturating_sub(e).as_secs())
                .unwrap_or(0);
            Err(TokenError(Arc::new(SourceError::Expired {
                ago: when::short(ago),
            })))
        }
    }

    /// The current token's timing, if there is one.
    pub fn timing(&self) -> Option<Timing> {
        self.lock().current.as_ref().map(|c| c.timing)
    }

    /// Fetches now unless a fetch is running, and waits for it. Failures
    /// keep the current token (while it is usable).
    pub async fn refresh(&self) -> Result<Timing, TokenError> {
        self.fetch().await.map(|c| c.timing).map_err(TokenError)
    }

    /// The running fetch, or a new one unless a failure's backoff is still
    /// running (then the failure).
    fn fetch_unless_backing_off(&self) -> Result<Fetch, Arc<SourceError>> {
        {
            let now = self.0.clock.monotonic();
            let st = self.lock();
            if st.inflight.is_none()
                && now < st.retry_at
                && let Some(last) = &st.last_error
            {
                return Err(last.clone());
            }
        }
        Ok(self.fetch())
    }

    /// The running fetch, or a new one. It runs on its own task, so a
    /// request that gives up waiting does not cancel it.
    fn fetch(&self) -> Fetch {
        let mut st = self.lock();
        if let Some(f) = &st.inflight {
            return f.clone();
        }
        let this = self.clone();
        let fut: Fetch = async move {
            let result = this.0.source.fetch(&this.0.audience).await;
            let mut st = this.lock();
            st.inflight = None;
            match result {
                Ok(token) => {
                    let timing = Timing::of(&token, this.0.clock.unix_now());
                    let current = Current {
                        token: token.into(),
                        timing,
                    };
                    st.current = Some(current.clone());
                    st.failures = 0;
                    st.retry_at = Duration::ZERO;
                    st.last_error = None;
                    Ok(current)
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    st.retry_at = this.0.clock.monotonic() + retry_delay(st.failures);
                    let e = Arc::new(e);
                    st.last_error = Some(e.clone());
                    Err(e)
                }
            }
        }
        .boxed()
        .shared();
        st.inflight = Some(fut.clone());
        drop(st);
        tokio::spawn(fut.clone());
        fut
    }

    /// Keeps the token fresh on the real clock until the returned task is
    /// aborted: refreshes when due, retries failures with backoff (1 s
    /// doubling to 30 s), and logs both.
    pub fn spawn_refresher(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // Failed or fruitless attempts in a row.
            let mut misses = 0;
            loop {
                let now = this.0.clock.unix_now();
                let wait = match this.timing() {
                    Some(t) => t.refresh_at.saturating_sub(now),
                    None => Duration::ZERO,
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match this.refresh().await {
                    Ok(t) if t.refresh_at <= this.0.clock.unix_now() => {
                        // The source had nothing fresher (a fixed token,
                        // a file not yet rewritten): ask again later, not
                        // in a loop.
                        let left = t
                            .usable_until
                            .map(|u| u.saturating_sub(this.0.clock.unix_now()).as_secs());
                        misses += 1;
                        warn!(
                            token.usable_for = %left.map_or("ever".into(), when::short),
                            retry_in = %when::short(retry_delay(misses).as_secs()),
                            "the token source gave no fresher token"
                        );
                        tokio::time::sleep(retry_delay(misses)).await;
                    }
                    Ok(t) => {
                        misses = 0;
                        let now = this.0.clock.unix_now().as_secs();
                        match t.expires_at {
                            Some(exp) => info!(
                                token.expires_in = %when::short(exp.as_secs().saturating_sub(now)),
                                "token refreshed"
                            ),
                            None => info!("token refreshed"),
                        }
                    }
                    Err(e) => {
                        let now = this.0.clock.unix_now();
                        let left = this
                            .timing()
                            .and_then(|t| t.usable_until)
                            .map(|u| u.saturating_sub(now));
                        match left {
                            Some(l) if !l.is_zero() => warn!(
                                error = %e,
                                token.usable_for = %when::short(l.as_secs()),
                                "token source failed; the current token is still used"
                            ),
                            _ => warn!(
                                error = %e,
                                "token source failed; requests get 502 until it recovers"
                            ),
                        }
                        misses += 1;
                        tokio::time::sleep(retry_delay(misses)).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(claims: Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn specs_parse() {
        assert_eq!("metadata".parse::<SourceSpec>(), Ok(SourceSpec::Metadata));
        assert_eq!("gcloud".parse::<SourceSpec>(), Ok(SourceSpec::Gcloud));
        assert_eq!(
            "dev:http://127.0.0.1:8900".parse::<SourceSpec>(),
            Ok(SourceSpec::Dev("http://127.0.0.1:8900".into()))
        );
        assert_eq!(
            "key:sa.json".parse::<SourceSpec>(),
            Ok(SourceSpec::Key("sa.json".into()))
        );
        assert_eq!(
            "token:a.b.c".parse::<SourceSpec>(),
            Ok(SourceSpec::Token("a.b.c".into()))
        );
        assert!("dev:".parse::<SourceSpec>().is_err());
        assert!("dev:ftp://x".parse::<SourceSpec>().is_err());
        assert!("vault".parse::<SourceSpec>().is_err());
        assert_eq!(
            format!("{:?}", SourceSpec::Token("secret".into())),
            "Token(..)"
        );
    }

    #[test]
    fn an_hour_token_refreshes_at_48_minutes() {
        let t = token_with(json!({"iat": 1000, "exp": 4600}));
        let timing = Timing::of(&t, Duration::from_secs(1000));
        assert_eq!(timing.refresh_at, Duration::from_secs(1000 + 48 * 60));
        assert_eq!(timing.usable_until, Some(Duration::from_secs(4600 - 30)));
    }

    #[test]
    fn a_ten_minute_token_refreshes_5_minutes_before_exp() {
        let t = token_with(json!({"iat": 0, "exp": 600}));
        let timing = Timing::of(&t, Duration::ZERO);
        assert_eq!(timing.refresh_at, Duration::from_secs(300));
    }

    #[test]
    fn a_short_token_refreshes_at_half_its_life() {
        let t = token_with(json!({"iat": 100, "exp": 104}));
        let timing = Timing::of(&t, Duration::from_secs(100));
        assert_eq!(timing.refresh_at, Duration::from_secs(102));
        assert_eq!(timing.usable_until, Some(Duration::from_millis(103_600)));
    }

    #[test]
    fn a_token_without_exp_is_fetched_again_every_5_minutes() {
        let timing = Timing::of("opaque", Duration::from_secs(10));
        assert_eq!(timing.refresh_at, Duration::from_secs(310));
        assert!(timing.usable(Duration::from_secs(1_000_000)));
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = "junk\n-----BEGIN PRIVATE KEY-----\nAAEC\nAwQ=\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_der(pem), Some(vec![0, 1, 2, 3, 4]));
        assert_eq!(pem_der("no pem"), None);
    }
}
