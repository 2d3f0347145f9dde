//! Step 5: each issuer's signing keys, fetched once and kept fresh.
//!
//! One cache per issuer. Requests never wait on the network once the cache
//! is warm: keys are refreshed in the background before they expire. An
//! unknown `kid` forces at most one refresh per `refresh_interval`, shared
//! by every request that wants it (single flight). A failed, empty or
//! unparsable answer never replaces good keys; the old ones keep serving
//! for up to `stale_if_error` past their expiry, with exponential backoff
//! between attempts.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::Clock;

/// Limits of the key cache. Every one is configurable; the defaults are the
/// design's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwksSettings {
    /// Shortest key-set lifetime, whatever `Cache-Control` says. Default 5 min.
    pub min_ttl: Duration,
    /// Longest key-set lifetime. Default 24 h.
    pub max_ttl: Duration,
    /// Lifetime when the answer has no `max-age`. Default 1 h.
    pub default_ttl: Duration,
    /// Least time between two refreshes forced by an unknown `kid`. Default 30 s.
    pub refresh_interval: Duration,
    /// How long past expiry cached keys keep serving while fetches fail. Default 12 h.
    pub stale_if_error: Duration,
    /// Whole-fetch timeout, body included. Default 5 s.
    pub fetch_timeout: Duration,
    /// Largest body read; a longer answer is cut off and refused. Default 1 MiB.
    pub max_body_bytes: usize,
    /// First wait after a failed fetch; doubles with each failure. Default 1 s.
    pub backoff_initial: Duration,
    /// Longest wait between failed fetches. Default 60 s.
    pub backoff_max: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_ttl: Duration::from_secs(5 * 60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(12 * 3600),
            fetch_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A public key from the issuer's key set, parsed once.
///
/// An RSA key's modulus and exponent become an aws-lc key object the first
/// time an algorithm uses it, and stay one: verifying through the JWK's raw
/// numbers instead rebuilds the key, and its Montgomery constants, on every
/// signature, a third of an uncached verification's cost.
pub struct VerifyingKey {
    material: Material,
    /// One parsed key per algorithm this key has been used with (an RSA key
    /// without `alg` may serve RS256 and PS256 alike; each needs its own
    /// aws-lc parameters). `None` inside: the key does not fit the
    /// algorithm (too short, wrong curve).
    parsed: [std::sync::OnceLock<Option<ParsedPublicKey>>; ALGORITHMS.len()],
    /// The JWK's `kid`.
    pub(crate) kid: Box<str>,
    /// The JWK's `alg`, when it names one: a token must then use exactly it.
    pub alg: Option<Algorithm>,
}

#[derive(PartialEq, Eq)]
enum Material {
    /// Big-endian modulus and exponent, no leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y` on `curve`.
    Ec { curve: Algorithm, point: Vec<u8> },
}

/// The asymmetric algorithms a key can verify, and the aws-lc parameters
/// for each (the same ones jsonwebtoken's aws-lc backend uses: RSA keys of
/// 2048 to 8192 bits, fixed-length ECDSA signatures).
const ALGORITHMS: [(Algorithm, Params); 8] = [
    (
        Algorithm::RS256,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
    ),
    (
        Algorithm::RS384,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
    ),
    (
        Algorithm::RS512,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
    ),
    (
        Algorithm::PS256,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
    ),
    (
        Algorithm::PS384,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
    ),
    (
        Algorithm::PS512,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
    ),
    (Algorithm::ES256, Params::Ec(&sig::ECDSA_P256_SHA256_FIXED)),
    (Algorithm::ES384, Params::Ec(&sig::ECDSA_P384_SHA384_FIXED)),
];

/// A big-endian number as aws-lc takes it: some encoders (Java's
/// `BigInteger`) put a zero byte in front of a modulus whose top bit is set.
fn without_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// The algorithms a key of this cache can verify.
pub(crate) fn supported_algorithms() -> impl Iterator<Item = Algorithm> {
    ALGORITHMS.iter().map(|(a, _)| *a)
}

/// aws-lc's parameters, typed as each kind of key is parsed with them.
#[derive(Clone, Copy)]
enum Params {
    Rsa(&'static sig::RsaParameters),
    Ec(&'static sig::EcdsaVerificationAlgorithm),
}

impl VerifyingKey {
    fn rsa(n: &str, e: &str) -> Option<VerifyingKey> {
        let n = without_leading_zeros(URL_SAFE_NO_PAD.decode(n).ok()?);
        let e = without_leading_zeros(URL_SAFE_NO_PAD.decode(e).ok()?);
        // What aws-lc verifies with (2,048 to 8,192 bits; an odd exponent
        // from 3 to 33 bits), checked when the set is read: a key that
        // could verify nothing is skipped, so that a set of only such keys
        // is refused (the keys in force stay) and such a key cannot shadow
        // a good one listed after it under the same kid.
        let bits = |v: &[u8]| {
            v.first()
                .map_or(0, |b| v.len() * 8 - b.leading_zeros() as usize)
        };
        let odd = e.last().is_some_and(|b| b & 1 == 1);
        if !(2048..=8192).contains(&bits(&n)) || !(2..=33).contains(&bits(&e)) || !odd {
            return None;
        }
        Some(VerifyingKey::new(Material::Rsa { n, e }))
    }

    fn ec(curve: &str, x: &str, y: &str) -> Option<VerifyingKey> {
        let (curve, len) = match curve {
            "P-256" => (Algorithm::ES256, 32),
            "P-384" => (Algorithm::ES384, 48),
            _ => return None,
        };
        let x = URL_SAFE_NO_PAD.decode(x).ok()?;
        let y = URL_SAFE_NO_PAD.decode(y).ok()?;
        if x.len() != len || y.len() != len {
            return None;
        }
        let mut point = Vec::with_capacity(1 + 2 * len);
        point.push(4);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let key = VerifyingKey::new(Material::Ec { curve, point });
        // A point off the curve is skipped now rather than failing every
        // token signed by its kid.
        key.prepare(curve).then_some(key)
    }

    /// Parses the key for `alg` ahead of the first token; false when it
    /// cannot serve `alg`.
    fn prepare(&self, alg: Algorithm) -> bool {
        algorithm_index(alg).is_some_and(|i| self.parsed[i].get_or_init(|| self.parse(i)).is_some())
    }

    fn new(material: Material) -> VerifyingKey {
        VerifyingKey {
            material,
            parsed: Default::default(),
            kid: Box::default(),
            alg: None,
        }
    }

    /// Whether `signature` (decoded: the verifier decodes every segment
    /// once, while taking the token apart) is `alg`'s signature of
    /// `message` by this key. Any doubt (an algorithm this key cannot do, a
    /// key too short for it, a signature of the wrong length) is `false`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let Some(index) = algorithm_index(alg) else {
            return false;
        };
        let Some(key) = self.parsed[index].get_or_init(|| self.parse(index)) else {
            return false;
        };
        key.verify_sig(message, signature).is_ok()
    }

    fn parse(&self, index: usize) -> Option<ParsedPublicKey> {
        match (&self.material, ALGORITHMS[index]) {
            (Material::Rsa { n, e }, (_, Params::Rsa(params))) => RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok(),
            (Material::Ec { curve, point }, (alg, Params::Ec(params))) if *curve == alg => {
                ParsedPublicKey::new(params, point).ok()
            }
            _ => None,
        }
    }
}

fn algorithm_index(alg: Algorithm) -> Option<usize> {
    ALGORITHMS.iter().position(|(a, _)| *a == alg)
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Key sets of up to this many keys are scanned by [`KeyCache::holds`].
const SCANNED_SET: usize = 8;

/// One successful fetch.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) keys: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Duration,
    refresh_at: Duration,
    expires_at: Duration,
}

/// Why a key could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// No keys at all (never loaded, or stale beyond `stale_if_error`).
    Unavailable,
    /// Keys are loaded, but none has this `kid`.
    UnknownKid,
}

/// What an issuer's key cache looks like now, for readiness and metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeyCacheStatus {
    /// The configured issuer's name.
    pub issuer: Arc<str>,
    /// Whether usable keys are loaded.
    pub ready: bool,
    /// How many keys the current set has.
    pub keys: usize,
    /// Time since the current set was fetched.
    pub age: Option<Duration>,
    /// Successful fetches so far.
    pub fetches_ok: u64,
    /// Failed fetches so far (network, status, body, parse, empty set).
    pub fetches_failed: u64,
    /// The last failure, while failing.
    pub last_error: Option<String>,
}

type FetchFuture = Shared<BoxFuture<'static, ()>>;

#[derive(Default)]
struct FetchState {
    inflight: Option<FetchFuture>,
    last_forced: Option<Duration>,
    failures: u32,
    retry_at: Duration,
    last_error: Option<String>,
}

/// The key cache of one issuer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct KeyCache(Arc<Inner>);

struct Inner {
    issuer: Arc<str>,
    source: KeySource,
    settings: JwksSettings,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    current: ArcSwapOption<KeySet>,
    state: Mutex<FetchState>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
}

/// Where an issuer's key set is.
pub(crate) enum KeySource {
    /// At this URL.
    Url(String),
    /// At the `jwks_uri` of the issuer's discovery document, read again
    /// with every fetch of the key set (beside the fetch from the URL it
    /// last gave, so in one round trip while that URL holds; a moved URL is
    /// fetched once the document names it): an issuer that moves its keys is
    /// followed, rather than fetched at the old URL until a restart. While
    /// the document cannot be read, the last URL it gave is used; until it
    /// has been read once, there is no key set to fetch (an issuer down at
    /// startup delays its keys, not the process).
    Discovery {
        issuer: String,
        found: arc_swap::ArcSwapOption<String>,
    },
}

impl KeySource {
    /// The key set's URL, or the discovery document's while it is not
    /// known: for logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery { issuer, found } => match &*found.load() {
                Some(url) => url.to_string(),
                None => discovery_url(issuer),
            },
        }
    }
}

/// An issuer's OpenID Connect discovery document's URL.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Why an issuer's discovery document was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Fetching failed (network, status, body).
    #[error("cannot fetch {url}")]
    Fetch {
        /// The discovery URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The answer is over 1 MiB.
    #[error("{url} answered over 1 MiB")]
    TooLarge {
        /// The discovery URL.
        url: String,
    },
    /// The answer is not a discovery document.
    #[error("{url} is not a discovery document")]
    Document {
        /// The discovery URL.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The document names another issuer (OpenID Connect Discovery §4.3).
    #[error("the document says its issuer is {found:?}")]
    IssuerMismatch {
        /// What it said.
        found: String,
    },
    /// No usable `jwks_uri`.
    #[error("the document has no http(s) jwks_uri")]
    NoJwksUri,
    /// An `https://` issuer whose document points at keys over plain HTTP,
    /// where anyone on the path could swap them.
    #[error("the jwks_uri {url:?} is plain http to another host than the issuer's")]
    InsecureJwksUri {
        /// The `jwks_uri` it gave.
        url: String,
    },
}

/// How key and discovery fetches follow redirects: at most five, and never
/// from `https` to anything else, where anyone on the path could answer
/// with keys of their own. Another host is fine (Google's keys are not on
/// accounts.google.com).
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if is_downgrade(attempt.previous(), attempt.url()) {
            attempt.error("a redirect from https to plain http")
        } else if attempt.previous().len() > 5 {
            attempt.error("more than five redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Whether a redirect to `to` leaves https, after `previous`.
fn is_downgrade(previous: &[reqwest::Url], to: &reqwest::Url) -> bool {
    to.scheme() != "https" && previous.iter().any(|u| u.scheme() == "https")
}

/// The discovery document's `jwks_uri`, if keys may be fetched from it: an
/// http(s) URL; https when the issuer is; and a plain-http one only on the
/// issuer's own host or on loopback. A plain-http issuer was warned about
/// at start (or is a dev issuer on loopback); its document must not send
/// the key fetch in the clear to a host no warning named.
fn usable_jwks_uri(issuer: &str, jwks_uri: Option<String>) -> Result<String, DiscoveryError> {
    let url = jwks_uri
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .ok_or(DiscoveryError::NoJwksUri)?;
    if url.starts_with("https://") {
        return Ok(url);
    }
    let host = |u: &str| reqwest::Url::parse(u).ok()?.host_str().map(str::to_owned);
    let keys_host = host(&url);
    let same_host = keys_host.is_some() && keys_host == host(issuer);
    let loopback = keys_host
        .as_deref()
        .is_some_and(crate::verifier::is_loopback_host);
    if issuer.starts_with("https://") || !(same_host || loopback) {
        return Err(DiscoveryError::InsecureJwksUri { url });
    }
    Ok(url)
}

/// The largest discovery document read.
const MAX_DISCOVERY_BYTES: usize = 1 << 20;

/// Reads an issuer's JWKS URL from its discovery document, whose `issuer`
/// must be `issuer` exactly.
pub async fn discover_jwks_url(
    client: &reqwest::Client,
    issuer: &str,
) -> Result<String, DiscoveryError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        issuer: String,
        jwks_uri: Option<String>,
    }
    let url = discovery_url(issuer);
    let fetch = |source| DiscoveryError::Fetch {
        url: url.clone(),
        source,
    };
    let mut resp = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fetch)?;
    // A discovery document is a few KiB; 1 MiB, as for a key set, is plenty.
    let Some(body) = read_capped(&mut resp, MAX_DISCOVERY_BYTES)
        .await
        .map_err(fetch)?
    else {
        return Err(DiscoveryError::TooLarge { url });
    };
    let doc: Doc = serde_json::from_slice(&body).map_err(|source| DiscoveryError::Document {
        url: url.clone(),
        source,
    })?;
    if doc.issuer != issuer {
        return Err(DiscoveryError::IssuerMismatch { found: doc.issuer });
    }
    usable_jwks_uri(issuer, doc.jwks_uri)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Keys are missing or due: subject to backoff after failures.
    Scheduled,
    /// An unknown `kid`: subject to `refresh_interval`.
    UnknownKid,
}

impl KeyCache {
    pub(crate) fn new(
        issuer: Arc<str>,
        source: KeySource,
        settings: JwksSettings,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        KeyCache(Arc::new(Inner {
            issuer,
            source,
            settings,
            client,
            clock,
            current: ArcSwapOption::empty(),
            state: Mutex::new(FetchState::default()),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
        }))
    }

    /// The key named `kid`, fetching only when the cache is cold, expired,
    /// or does not know the kid (rate-limited).
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyMiss> {
        let inner = &self.0;
        let now = inner.clock.monotonic();
        let mut snap = inner.current.load_full();
        match &snap {
            Some(s) if now < s.refresh_at => {}
            Some(s) if inner.usable(s, now) => {
                // Due, or past expiry while fetches fail: refresh behind the
                // request's back and keep serving what we have (until
                // `stale_if_error` runs out). Only a cache with nothing
                // usable makes a request wait on the network.
                drop(inner.start(Trigger::Scheduled));
            }
            Some(_) => {
                // Stale past `stale_if_error`: the request that starts a
                // fetch (once the backoff allows one) waits for it, so the
                // first after the issuer heals is served; the others are
                // answered at once rather than pile up on a dead issuer.
                if let Some(f) = inner.start_new(Trigger::Scheduled) {
                    f.await;
                }
                snap = inner.current.load_full();
            }
            None => {
                // Cold: wait for the fetch, the running one or a new one.
                if let Some(f) = inner.start(Trigger::Scheduled) {
                    f.await;
                }
                // Also when nothing started: a fetch may have finished
                // since `snap` was taken.
                snap = inner.current.load_full();
            }
        }
        let Some(set) = snap.filter(|s| inner.usable(s, inner.clock.monotonic())) else {
            return Err(KeyMiss::Unavailable);
        };
        if let Some(k) = set.keys.get(kid) {
            return Ok(k.clone());
        }
        let Some(f) = inner.start(Trigger::UnknownKid) else {
            return Err(KeyMiss::UnknownKid);
        };
        f.await;
        match inner.current.load_full() {
            Some(s) if inner.usable(&s, inner.clock.monotonic()) => {
                s.keys.get(kid).cloned().ok_or(KeyMiss::UnknownKid)
            }
            _ => Err(KeyMiss::Unavailable),
        }
    }

    /// Whether `key` is still in the current set, under its `kid` and with
    /// the same material (for verified-token cache hits, so a dropped key,
    /// or a `kid` republished with another key, stops admitting tokens the
    /// old key verified). A refresh keeps the very `Arc` of a key that did
    /// not change, so this is a pointer comparison. A set holds only the
    /// `Arc`s made for its own `kid`s, so for a set of a few keys (Google
    /// publishes two or three) the pointers are compared without hashing
    /// the `kid` (SipHash of Google's 40 characters, about as long as the
    /// scan); a larger set is looked up by `kid`.
    pub(crate) fn holds(&self, key: &Arc<VerifyingKey>) -> bool {
        let now = self.0.clock.monotonic();
        self.0.current.load().as_ref().is_some_and(|s| {
            self.0.usable(s, now)
                && if s.keys.len() <= SCANNED_SET {
                    s.keys.values().any(|k| Arc::ptr_eq(k, key))
                } else {
                    s.keys.get(&*key.kid).is_some_and(|k| Arc::ptr_eq(k, key))
                }
        })
    }

    /// Fetch now unless a fetch is running (then wait for it).
    pub(crate) async fn refresh(&self) {
        let f = {
            let mut st = self.0.lock();
            match &st.inflight {
                Some(f) => f.clone(),
                None => Inner::launch(&self.0, &mut st),
            }
        };
        f.await;
    }

    pub(crate) fn status(&self) -> KeyCacheStatus {
        let inner = &self.0;
        let now = inner.clock.monotonic();
        let snap = inner.current.load();
        let st = inner.lock();
        KeyCacheStatus {
            issuer: inner.issuer.clone(),
            ready: snap.as_ref().is_some_and(|s| inner.usable(s, now)),
            keys: snap.as_ref().map_or(0, |s| s.keys.len()),
            age: snap.as_ref().map(|s| now.saturating_sub(s.fetched_at)),
            fetches_ok: inner.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: inner.fetches_failed.load(Ordering::Relaxed),
            last_error: st.last_error.clone(),
        }
    }

    /// Keep the cache warm: fetch now, then before each expiry, retrying
    /// with backoff after failures. Ends when the cache is dropped.
    pub(crate) fn spawn_refresher(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Some(f) = inner.start(Trigger::Scheduled) {
                        f.await;
                    }
                    let now = inner.clock.monotonic();
                    let st = inner.lock();
                    // Fresh keys wait for their refresh time even after a
                    // failed unknown-kid fetch; only due keys retry sooner.
                    let due = match inner.current.load().as_ref() {
                        Some(s) if st.failures == 0 || now < s.refresh_at => s.refresh_at,
                        _ => st.retry_at,
                    };
                    // Never spin: at least a short pause between rounds.
                    due.saturating_sub(now).max(Duration::from_millis(50))
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, s: &KeySet, now: Duration) -> bool {
        now < s.expires_at + self.settings.stale_if_error
    }

    /// Start a fetch or join the running one; `None` when rules say no.
    fn start(self: &Arc<Self>, trigger: Trigger) -> Option<FetchFuture> {
        self.start_or(trigger, true)
    }

    /// Start a fetch; `None` when one is running or rules say no.
    fn start_new(self: &Arc<Self>, trigger: Trigger) -> Option<FetchFuture> {
        self.start_or(trigger, false)
    }

    fn start_or(self: &Arc<Self>, trigger: Trigger, join: bool) -> Option<FetchFuture> {
        let now = self.clock.monotonic();
        let mut st = self.lock();
        if let Some(f) = &st.inflight {
            return join.then(|| f.clone());
        }
        // A fetch may have finished between the caller's look at `current`
        // and this lock (`finish` stores under it): fresh keys, nothing due.
        let fresh = self
            .current
            .load()
            .as_ref()
            .is_some_and(|s| now < s.refresh_at);
        match trigger {
            Trigger::Scheduled if fresh => return None,
            Trigger::Scheduled if now < st.retry_at => return None,
            Trigger::UnknownKid => {
                if st
                    .last_forced
                    .is_some_and(|t| now < t + self.settings.refresh_interval)
                {
                    return None;
                }
                st.last_forced = Some(now);
            }
            Trigger::Scheduled => {}
        }
        Some(Inner::launch(self, &mut st))
    }

    /// Spawn the fetch so it completes even if every waiter goes away.
    fn launch(this: &Arc<Self>, st: &mut FetchState) -> FetchFuture {
        let inner = this.clone();
        let fut = async move {
            let result = inner.fetch().await;
            inner.finish(result);
        }
        .boxed()
        .shared();
        st.inflight = Some(fut.clone());
        tokio::spawn(fut.clone());
        fut
    }

    fn finish(&self, result: Result<KeySet, String>) {
        let now = self.clock.monotonic();
        let mut st = self.lock();
        st.inflight = None;
        match result {
            Ok(mut set) => {
                // An unchanged key keeps its `Arc` (and the aws-lc key parsed
                // from it): cached verifications it made stay good.
                if let Some(old) = self.current.load().as_ref() {
                    for (kid, key) in set.keys.iter_mut() {
                        if let Some(prev) = old.keys.get(kid)
                            && prev.material == key.material
                            && prev.alg == key.alg
                        {
                            *key = prev.clone();
                        }
                    }
                }
                tracing::debug!(jwks.issuer = %self.issuer, jwks.keys = set.keys.len(), "jwks refreshed");
                self.current.store(Some(Arc::new(set)));
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                st.failures = 0;
                st.retry_at = Duration::ZERO;
                st.last_error = None;
            }
            Err(error) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                st.failures = st.failures.saturating_add(1);
                let backoff = self
                    .settings
                    .backoff_initial
                    .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
                    .min(self.settings.backoff_max);
                // Jitter keeps a fleet of sidecars from retrying in step.
                st.retry_at = now + backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
                let serving = self.current.load().is_some();
                tracing::warn!(
                    jwks.issuer = %self.issuer,
                    jwks.url = %self.source.describe(),
                    jwks.failures = st.failures,
                    jwks.retry_in_ms = backoff.as_millis() as u64,
                    jwks.serving_cached = serving,
                    error = %error,
                    "jwks fetch failed"
                );
                st.last_error = Some(error);
            }
        }
    }

    /// Reads the discovery document's `jwks_uri` and remembers it in
    /// `found` (logging a new one).
    async fn discover(
        &self,
        issuer: &str,
        found: &arc_swap::ArcSwapOption<String>,
    ) -> Result<Arc<String>, String> {
        let discovery = discover_jwks_url(&self.client, issuer);
        let url = tokio::time::timeout(self.settings.fetch_timeout, discovery)
            .await
            .map_err(|_| {
                format!(
                    "discovery: no answer from {} within {:?}",
                    discovery_url(issuer),
                    self.settings.fetch_timeout
                )
            })?
            .map_err(|e| format!("discovery: {}", error_chain(&e)))?;
        let url = Arc::new(url);
        if found.load().as_ref() != Some(&url) {
            tracing::info!(jwks.issuer = %self.issuer, jwks.url = %url, "discovered JWKS URL");
            found.store(Some(url.clone()));
        }
        Ok(url)
    }

    /// A fresh key set from wherever the issuer keeps it. For a discovery
    /// issuer whose URL is known, the document is read again beside the
    /// fetch from that URL rather than before it, so a fetch a request
    /// waits on (an unknown `kid`) takes one round trip, not two, while the
    /// URL stays put. A URL that moved is fetched as soon as the document
    /// names it, and the fetch from the old one is dropped, answered or not
    /// (an old host that no longer answers must not hold the request for
    /// the fetch timeout). A document that cannot be read leaves the keys
    /// from the URL it last gave.
    async fn fetch(&self) -> Result<KeySet, String> {
        use futures_util::future::{Either, ready, select};

        let (issuer, found) = match &self.source {
            KeySource::Url(url) => return self.fetch_from(url).await,
            KeySource::Discovery { issuer, found } => (issuer, found),
        };
        let Some(known) = found.load_full() else {
            let url = self.discover(issuer, found).await?;
            return self.fetch_from(&url).await;
        };
        let document = std::pin::pin!(self.discover(issuer, found));
        // Boxed, so that dropping it below closes its connection at once.
        let from_known = Box::pin(self.fetch_from(&known));
        // The keys from the known URL, still coming or already here.
        let (read, keys) = match select(document, from_known).await {
            Either::Left((read, coming)) => (read, Either::Left(coming)),
            Either::Right((here, document)) => (document.await, Either::Right(ready(here))),
        };
        match read {
            Ok(url) if url != known => {
                drop(keys);
                self.fetch_from(&url).await
            }
            Ok(_) => keys.await,
            Err(error) => {
                tracing::warn!(
                    jwks.issuer = %self.issuer,
                    jwks.url = %known,
                    error,
                    "discovery failed; keys come from the last URL it gave"
                );
                keys.await
            }
        }
    }

    async fn fetch_from(&self, url: &str) -> Result<KeySet, String> {
        let s = &self.settings;
        let mut resp = self
            .client
            .get(url)
            .timeout(s.fetch_timeout)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let ttl = ttl_from_headers(resp.headers(), s);
        if resp
            .content_length()
            .is_some_and(|n| n > s.max_body_bytes as u64)
        {
            return Err(format!("body is over the {} byte cap", s.max_body_bytes));
        }
        let Some(body) = read_capped(&mut resp, s.max_body_bytes)
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?
        else {
            return Err(format!("body is over the {} byte cap", s.max_body_bytes));
        };
        let keys = parse_jwks(&body)?;
        let now = self.clock.monotonic();
        Ok(KeySet {
            keys,
            fetched_at: now,
            // Refresh somewhere in the last 5-15 % of the lifetime.
            refresh_at: now + ttl.mul_f64(0.85 + 0.1 * fastrand::f64()),
            expires_at: now + ttl,
        })
    }
}

/// A response's body, or `None` once it passes `max` bytes (read no
/// further).
async fn read_capped(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `max-age` minus `Age`, clamped; `no-store`/`no-cache` mean the minimum.
fn ttl_from_headers(h: &http::HeaderMap, s: &JwksSettings) -> Duration {
    let cc = h
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if cc.iter().any(|d| d == "no-store" || d == "no-cache") {
        return s.min_ttl;
    }
    let max_age = cc
        .iter()
        .filter_map(|d| d.strip_prefix("max-age="))
        .find_map(|v| v.trim_matches('"').parse::<u64>().ok());
    let Some(max_age) = max_age else {
        return s.default_ttl.clamp(s.min_ttl, s.max_ttl);
    };
    let age = h
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(max_age.saturating_sub(age)).clamp(s.min_ttl, s.max_ttl)
}

/// Parse a JWK Set, keeping the signing keys we can use. Keys of unknown
/// type, for encryption, or without a `kid` are skipped; an empty result is
/// an error, so it never replaces good keys.
///
/// Public only for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("body has no \"keys\" array")?;
    let mut out = HashMap::new();
    for jwk in keys {
        let field = |k: &str| jwk.get(k).and_then(Value::as_str);
        let Some(kid) = field("kid").filter(|k| !k.is_empty()) else {
            continue;
        };
        // A key for something else than checking signatures (RFC 7517
        // §4.2-4.3): `use` other than "sig" (or not a string), `key_ops`
        // without "verify".
        // null, as serializers write an unset option, is absent.
        let set = |k: &str| jwk.get(k).filter(|v| !v.is_null());
        let other_use = set("use").is_some_and(|u| u.as_str() != Some("sig"));
        let other_ops = set("key_ops").is_some_and(|ops| {
            !ops.as_array()
                .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
        });
        if other_use || other_ops {
            continue;
        }
        let alg = match field("alg") {
            None => None,
            Some(a) => match Algorithm::from_str(a) {
                Ok(a) => Some(a),
                Err(_) => continue,
            },
        };
        let key = match (field("kty"), field("crv")) {
            (Some("RSA"), _) => match (field("n"), field("e")) {
                (Some(n), Some(e)) => VerifyingKey::rsa(n, e),
                _ => None,
            },
            (Some("EC"), Some(crv)) => match (field("x"), field("y")) {
                (Some(x), Some(y)) => VerifyingKey::ec(crv, x, y),
                _ => None,
            },
            _ => None,
        };
        let Some(mut key) = key else { continue };
        key.alg = alg;
        key.kid = kid.into();
        if let Some(alg) = alg {
            // Parsed now, off the request path. A key that cannot do its own
            // alg (an RSA key aws-lc refuses) stays listed: its tokens fail
            // as bad signatures.
            key.prepare(alg);
        }
        // A kid listed twice is ambiguous: keep the first, as most issuers'
        // clients do, rather than let the order of a later fetch decide.
        out.entry(kid.to_owned()).or_insert_with(|| Arc::new(key));
    }
    if out.is_empty() {
        return Err("key set has no usable signing keys".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// Keys are never fetched over plain http once https was asked for:
    /// anyone on the path could answer with keys of their own.
    #[test]
    fn keys_never_leave_https() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let https = [url("https://idp.example/jwks")];
        assert!(is_downgrade(&https, &url("http://idp.example/jwks")));
        assert!(!is_downgrade(&https, &url("https://keys.example/jwks")));
        assert!(!is_downgrade(
            &[url("http://127.0.0.1:1/jwks")],
            &url("http://127.0.0.1:2/")
        ));

        let found = |iss: &str, uri: Option<&str>| usable_jwks_uri(iss, uri.map(str::to_owned));
        assert!(matches!(
            found("https://idp.example", Some("http://idp.example/jwks")),
            Err(DiscoveryError::InsecureJwksUri { .. })
        ));
        assert_eq!(
            found("https://idp.example", Some("https://keys.example/jwks")).unwrap(),
            "https://keys.example/jwks"
        );
        // A plain-http issuer (a dev issuer on loopback) keeps http keys on
        // its own host or on loopback, and nowhere else in the clear.
        assert!(found("http://127.0.0.1:8900", Some("http://127.0.0.1:8900/jwks")).is_ok());
        assert!(found("http://127.0.0.1:8900", Some("http://localhost:8901/jwks")).is_ok());
        assert!(found("http://idp.internal", Some("http://idp.internal:8080/jwks")).is_ok());
        assert!(found("http://127.0.0.1:8900", Some("https://keys.example/jwks")).is_ok());
        for elsewhere in ["http://10.0.0.5/jwks", "http://keys.example/jwks"] {
            assert!(
                matches!(
                    found("http://127.0.0.1:8900", Some(elsewhere)),
                    Err(DiscoveryError::InsecureJwksUri { .. })
                ),
                "{elsewhere}"
            );
        }
        assert!(matches!(
            found("https://idp.example", Some("ftp://idp.example/jwks")),
            Err(DiscoveryError::NoJwksUri)
        ));
        assert!(matches!(
            found("https://idp.example", None),
            Err(DiscoveryError::NoJwksUri)
        ));
    }

    #[test]
    fn ttl_rules() {
        let s = JwksSettings::default();
        let ttl = |p: &[(&str, &str)]| ttl_from_headers(&headers(p), &s).as_secs();
        assert_eq!(ttl(&[]), 3600);
        assert_eq!(ttl(&[("cache-control", "public, max-age=20000")]), 20000);
        assert_eq!(
            ttl(&[("cache-control", "public, max-age=20000"), ("age", "1000")]),
            19000
        );
        assert_eq!(ttl(&[("cache-control", "max-age=10")]), 300);
        assert_eq!(ttl(&[("cache-control", "max-age=999999")]), 86400);
        assert_eq!(
            ttl(&[("cache-control", "max-age=400"), ("age", "999")]),
            300
        );
        assert_eq!(ttl(&[("cache-control", "no-store")]), 300);
        assert_eq!(ttl(&[("cache-control", "max-age=junk")]), 3600);
    }

    /// The race behind a cold cache fetching twice: a request saw no keys,
    /// the running fetch then finished, and the request asked for a fetch.
    /// It must find the fresh set and start nothing.
    #[tokio::test]
    async fn a_scheduled_start_after_a_fetch_finished_starts_nothing() {
        let clock = Arc::new(crate::clock::ManualClock::starting_now());
        let c = KeyCache::new(
            "https://issuer.test".into(),
            KeySource::Url("http://127.0.0.1:9/jwks.json".into()),
            JwksSettings::default(),
            reqwest::Client::new(),
            clock.clone(),
        );
        let now = clock.monotonic();
        c.0.current.store(Some(Arc::new(KeySet {
            keys: HashMap::new(),
            fetched_at: now,
            refresh_at: now + Duration::from_secs(60),
            expires_at: now + Duration::from_secs(120),
        })));
        assert!(c.0.start(Trigger::Scheduled).is_none());
        assert!(c.0.lock().inflight.is_none());
        // Once due, it starts one (which fails here: nothing listens).
        clock.advance(Duration::from_secs(60));
        assert!(c.0.start(Trigger::Scheduled).is_some());
    }

    #[test]
    fn jwks_parsing_skips_what_it_cannot_use() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"nokeys":1}"#).is_err());
        let only_unknown = br#"{"keys":[{"kty":"OKP","kid":"a","crv":"Ed25519","x":"AA"}]}"#;
        assert!(parse_jwks(only_unknown).is_err());
    }

    /// Only keys meant for checking signatures: `use` "sig" or absent,
    /// `key_ops` with "verify" or absent.
    #[test]
    fn jwks_parsing_keeps_only_signature_keys() {
        let base = idgate_testkit::TestKey::generate("k").jwk();
        let with = |kid: &str, extra: serde_json::Value| {
            let mut jwk = base.clone();
            jwk["kid"] = kid.into();
            for (k, v) in extra.as_object().unwrap() {
                jwk[k] = v.clone();
            }
            jwk
        };
        let set = serde_json::json!({"keys": [
            with("plain", serde_json::json!({})),
            with("sig", serde_json::json!({"use": "sig"})),
            with("verify", serde_json::json!({"key_ops": ["sign", "verify"]})),
            with("nulls", serde_json::json!({"use": null, "key_ops": null})),
            with("enc", serde_json::json!({"use": "enc"})),
            with("use-number", serde_json::json!({"use": 1})),
            with("encrypt", serde_json::json!({"key_ops": ["encrypt", "wrapKey"]})),
            with("ops-string", serde_json::json!({"key_ops": "verify"})),
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["nulls", "plain", "sig", "verify"]);
    }

    /// An RSA key aws-lc could verify nothing with is skipped when the set
    /// is read: a set of only such keys is refused (the keys in force
    /// stay), and one cannot shadow a good key listed after it under its
    /// kid. A zero byte in front of the modulus is the same key.
    #[test]
    fn rsa_keys_that_can_verify_nothing_are_skipped() {
        let good = idgate_testkit::TestKey::generate("k").jwk();
        let b64 = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let n = URL_SAFE_NO_PAD.decode(good["n"].as_str().unwrap()).unwrap();
        let rsa = |n: &[u8], e: &[u8]| serde_json::json!({"kty": "RSA", "kid": "k", "n": b64(n), "e": b64(e)});
        let short = [0xC5; 128];
        for bad in [
            rsa(&short, &[1, 0, 1]),
            rsa(&[0xC5; 1025], &[1, 0, 1]),
            rsa(&n, &[1]),
            rsa(&n, &[1, 0, 0]),
            rsa(&n, &[1, 0, 0, 0, 0, 1]),
        ] {
            let set = serde_json::json!({"keys": [bad]});
            assert!(parse_jwks(set.to_string().as_bytes()).is_err(), "{bad}");
            let set = serde_json::json!({"keys": [bad, good]});
            let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
            assert!(
                matches!(&keys["k"].material, Material::Rsa { n: kept, .. } if *kept == n),
                "{bad} shadowed the good key"
            );
        }
        let padded = [&[0u8][..], &n].concat();
        let keys = parse_jwks(
            serde_json::json!({"keys": [rsa(&padded, &[0, 1, 0, 1])]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            matches!(&keys["k"].material, Material::Rsa { n: kept, e } if *kept == n && *e == [1, 0, 1])
        );
    }
}
