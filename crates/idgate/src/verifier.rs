//! Steps 2–7: from a bearer token to a verified [`Identity`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::hot_tokens::{Slots, TOKEN_SLOTS, TokenCopy};
use crate::jwks::{JwksSettings, KeyCache, KeyCacheStatus, KeyMiss, KeySource, VerifyingKey};
use crate::token::{Json, Segment, UnverifiedToken};
use crate::token_key::{KeyBits, TokenKeyer};
use crate::{Clock, Identity, IssuerTag, Reason, SystemClock};

/// Google's JWKS for ID tokens (the v3 certs endpoint).
pub const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The two `iss` values Google signs ID tokens with.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// The audience of `gcloud auth print-identity-token` tokens. A token for it
/// was minted for no particular service: configure it only on purpose.
pub const GCLOUD_AUDIENCE: &str = "32555940559.apps.googleusercontent.com";

/// A refusal: the stable reason code, and a detail for logs and
/// `idgate check`. The detail never holds the token or the expected
/// audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason code.
    pub reason: Reason,
    /// What exactly was wrong, for people.
    pub detail: Cow<'static, str>,
}

impl Rejection {
    /// A rejection with a detail.
    pub fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

/// One trusted token issuer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuerConfig {
    /// A short name for logs and metrics labels (`google` for the preset).
    pub name: String,
    /// The `iss` values this issuer signs with.
    pub issuers: Vec<String>,
    /// Where its JWK Set is (unused with `discovery`).
    pub jwks_url: String,
    /// Read the JWK Set's URL from the issuer's discovery document
    /// (`ISSUER/.well-known/openid-configuration`, whose `issuer` must be
    /// the first of `issuers`) with each key fetch, so that keys that
    /// move are followed (once a URL is known, the document is read beside
    /// the fetch from it, not before); while it cannot be read, the last
    /// URL it gave serves. An issuer down at startup leaves its keys
    /// unavailable (and readiness false), with the fetches' backoff, rather
    /// than failing the build.
    pub discovery: bool,
    /// The algorithms it may use. Google: RS256 only.
    pub algorithms: Vec<Algorithm>,
    /// Google issuer: emails name `user:`/`serviceAccount:` principals.
    pub google: bool,
    /// For other issuers, the workload identity pool path that
    /// `principal://`/`principalSet://` members name.
    pub pool: Option<String>,
}

impl IssuerConfig {
    /// Google's issuer: both `iss` spellings, the v3 certs URL, RS256 only.
    pub fn google() -> Self {
        IssuerConfig {
            name: "google".into(),
            issuers: GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect(),
            jwks_url: GOOGLE_CERTS_URL.into(),
            discovery: false,
            algorithms: vec![Algorithm::RS256],
            google: true,
            pool: None,
        }
    }

    /// Another OIDC issuer (RS256 unless [`IssuerConfig::with_algorithms`]).
    pub fn new(
        name: impl Into<String>,
        issuer: impl Into<String>,
        jwks_url: impl Into<String>,
    ) -> Self {
        IssuerConfig {
            name: name.into(),
            issuers: vec![issuer.into()],
            jwks_url: jwks_url.into(),
            discovery: false,
            algorithms: vec![Algorithm::RS256],
            google: false,
            pool: None,
        }
    }

    /// Fetch keys from another URL (a test issuer, a mirror).
    pub fn with_jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = url.into();
        self.discovery = false;
        self
    }

    /// Find the keys through the issuer's discovery document (see
    /// [`IssuerConfig::discovery`]).
    pub fn with_discovery(mut self) -> Self {
        self.discovery = true;
        self
    }

    /// Accept exactly these algorithms.
    pub fn with_algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// Name this issuer's subjects in IAM as members of this pool.
    pub fn with_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// Also accept this `iss` spelling.
    pub fn with_issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }
}

/// Problems in a verifier's configuration, all of them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid verifier configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Counters for metrics.
#[derive(Debug, Default)]
struct Counters {
    cache_hits: AtomicU64,
    hot_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// What the verifier has done, for metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifierStats {
    /// Verified-token cache hits.
    pub token_cache_hits: u64,
    /// Of those, the hits served by a hot slot, with no map searched: a
    /// token slot (the token compared with its copy) or a key slot (the
    /// token's cache key read back).
    pub token_cache_hot_hits: u64,
    /// Verified-token cache misses (signature checked).
    pub token_cache_misses: u64,
    /// Entries in the verified-token cache.
    pub token_cache_entries: u64,
    /// Each issuer's key cache.
    pub issuers: Vec<KeyCacheStatus>,
}

struct Issuer {
    tag: IssuerTag,
    algorithms: Vec<Algorithm>,
    keys: KeyCache,
}

#[derive(Clone)]
struct CachedToken {
    identity: Identity,
    /// Its index in `Verifier::issuers`. This and `valid_from` are 32
    /// bits each, so the entry is no larger than before `valid_from` came.
    issuer: u32,
    /// The later of `iat` and `nbf`: a hit re-checks it as it does `exp`,
    /// so a clock stepped back (NTP, a restored VM) refuses on a hit what
    /// the full check would refuse. Unix seconds; past 2106 it saturates,
    /// and every hit then takes the full check instead.
    valid_from: u32,
    /// The key that verified it (shared with the key set: no copy of the
    /// kid per entry).
    key: Arc<VerifyingKey>,
}

/// What [`Verifier::lookup`] found.
pub(crate) enum Lookup {
    /// A verified-token cache hit that still holds.
    Hit(Identity),
    /// Refused before any signature check.
    Refused(Rejection),
    /// Needs the full verification: [`Verifier::verify_miss`].
    Miss(CacheMiss),
}

/// A cache miss, and what the lookup already worked out for the full
/// verification: the cache key (computing it twice would cost a miss
/// 0.3 µs). Not the time: the full check reads the clock again once it
/// has the key, which can take a fetch of the key set (seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheMiss {
    key: Option<u128>,
}

/// The verified-token cache: a map from each token's key to its
/// verification, the hot slots in front of it, and what makes the keys.
struct TokenCache {
    keyer: TokenKeyer,
    map: moka::sync::Cache<u128, CachedToken, KeyBits>,
    /// Tokens repeated by their callers, found by their bytes.
    by_token: Slots<TokenCopy, CachedToken>,
    /// Tokens seen again, found by their key.
    by_key: Slots<u128, CachedToken>,
}

/// Verifies ID tokens: strict parsing, issuer, key, signature, times and
/// audience. Build one per process and share it (`Arc<Verifier>`).
pub struct Verifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    all_algorithms: Vec<Algorithm>,
    audiences: Vec<String>,
    clock_skew: u64,
    max_lifetime: u64,
    max_token_bytes: usize,
    token_cache: Option<TokenCache>,
    clock: Arc<dyn Clock>,
    counters: Counters,
    warnings: Vec<String>,
}

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`,
/// `::1`): the one place a plain-http key URL cannot be tampered with in
/// transit.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| &*i.tag.name)
                    .collect::<Vec<_>>(),
            )
            .field("audiences", &self.audiences.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Verifier`]; every setting is checked in [`VerifierBuilder::build`].
#[derive(Debug, Clone)]
#[must_use]
pub struct VerifierBuilder {
    issuers: Vec<IssuerConfig>,
    audiences: Vec<String>,
    clock_skew: Duration,
    max_lifetime: Duration,
    max_token_bytes: usize,
    token_cache_capacity: u64,
    jwks: JwksSettings,
    clock: Option<Arc<dyn Clock>>,
    client: Option<reqwest::Client>,
}

impl Default for VerifierBuilder {
    fn default() -> Self {
        VerifierBuilder {
            issuers: Vec::new(),
            audiences: Vec::new(),
            clock_skew: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(24 * 3600),
            max_token_bytes: 16 * 1024,
            token_cache_capacity: 10_000,
            jwks: JwksSettings::default(),
            clock: None,
            client: None,
        }
    }
}

impl VerifierBuilder {
    /// Trust this issuer. With none, the Google preset is used.
    pub fn issuer(mut self, issuer: IssuerConfig) -> Self {
        self.issuers.push(issuer);
        self
    }
    /// Accept tokens minted for this audience. At least one is required.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }
    /// Accept tokens minted for any of these audiences.
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, auds: I) -> Self {
        self.audiences.extend(auds.into_iter().map(Into::into));
        self
    }
    /// Tolerance for `exp`, `nbf` and `iat` (default 30 s; at most 5 min).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }
    /// Longest `exp - iat` accepted (default 24 h).
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime;
        self
    }
    /// Longest token accepted, checked before decoding (default 16 KiB).
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }
    /// Verified tokens remembered (default 10,000; 0 turns the cache off).
    pub fn token_cache_capacity(mut self, entries: u64) -> Self {
        self.token_cache_capacity = entries;
        self
    }
    /// Key cache limits.
    pub fn jwks(mut self, settings: JwksSettings) -> Self {
        self.jwks = settings;
        self
    }
    /// The clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The HTTP client for key fetches (default: rustls, no proxy from env,
    /// [`redirect_policy`](crate::jwks::redirect_policy)). Give yours that
    /// redirect policy too: reqwest's own follows https to plain http.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Check every setting and build. Lists every problem at once.
    pub fn build(self) -> Result<Verifier, ConfigError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let issuers = if self.issuers.is_empty() {
            vec![IssuerConfig::google()]
        } else {
            self.issuers
        };
        if self.audiences.is_empty() {
            problems.push("at least one audience is required: audience is what stops a token minted for another service from being replayed here".into());
        }
        for a in &self.audiences {
            if a.trim().is_empty() || a.trim() != a {
                problems.push(format!(
                    "audience {a:?} is empty or has surrounding whitespace"
                ));
            }
        }
        if self.clock_skew > Duration::from_secs(300) {
            problems.push(format!(
                "clock skew {:?} is over the 5 min maximum",
                self.clock_skew
            ));
        }
        if self.max_lifetime.is_zero() {
            problems.push("max lifetime must be positive".into());
        }
        if self.max_token_bytes < 64 {
            problems.push(format!(
                "max token bytes {} is too small for any JWT",
                self.max_token_bytes
            ));
        }
        let j = &self.jwks;
        if j.min_ttl > j.max_ttl {
            problems.push(format!(
                "jwks min ttl {:?} is over max ttl {:?}",
                j.min_ttl, j.max_ttl
            ));
        }
        if j.fetch_timeout.is_zero() || j.max_body_bytes == 0 {
            problems.push("jwks fetch timeout and body cap must be positive".into());
        }
        // Under a second, an issuer's `Cache-Control: no-cache` or a stream
        // of unknown `kid`s would have the key set fetched back to back.
        for (what, d) in [
            ("jwks min ttl", j.min_ttl),
            ("jwks refresh interval", j.refresh_interval),
        ] {
            if d < Duration::from_secs(1) {
                problems.push(format!("{what} {d:?} is under 1 s"));
            }
        }
        if j.backoff_initial.is_zero() || j.backoff_initial > j.backoff_max {
            problems.push(format!(
                "jwks backoff {:?} must be positive and at most the maximum {:?}",
                j.backoff_initial, j.backoff_max
            ));
        }
        let mut by_iss = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, cfg) in issuers.iter().enumerate() {
            if !names.insert(cfg.name.as_str()) {
                problems.push(format!("issuer name {:?} is used twice", cfg.name));
            }
            if cfg.issuers.is_empty() {
                problems.push(format!("issuer {:?} has no iss value", cfg.name));
            }
            for iss in &cfg.issuers {
                if by_iss.insert(iss.clone(), i).is_some() {
                    problems.push(format!("iss {iss:?} is configured twice"));
                }
            }
            if cfg.algorithms.is_empty() {
                problems.push(format!("issuer {:?} allows no algorithm", cfg.name));
            }
            if let Some(a) = cfg.algorithms.iter().find(|a| !is_asymmetric(**a)) {
                problems.push(format!(
                    "issuer {:?}: {a:?} is a shared-secret algorithm; only public-key algorithms can be checked against a JWKS",
                    cfg.name
                ));
            } else if let Some(a) = cfg
                .algorithms
                .iter()
                .find(|a| !crate::jwks::supported_algorithms().any(|s| s == **a))
            {
                // Accepted here, it would fail every token at the key.
                let supported: Vec<String> = crate::jwks::supported_algorithms()
                    .map(|s| format!("{s:?}"))
                    .collect();
                problems.push(format!(
                    "issuer {:?}: {a:?} is not supported ({})",
                    cfg.name,
                    supported.join(", ")
                ));
            }
            let url = key_source(cfg).describe();
            match reqwest::Url::parse(&url) {
                Ok(u) if u.scheme() == "http" && !u.host_str().is_some_and(is_loopback_host) => {
                    warnings.push(format!(
                        "issuer {:?}: its keys come from {url}, plain http on a host that is not \
                         loopback: they can be forged in transit",
                        cfg.name
                    ));
                }
                Ok(u) if matches!(u.scheme(), "https" | "http") => {}
                _ if cfg.discovery => problems.push(format!(
                    "issuer {:?}: its discovery URL {url:?} is not an http(s) URL",
                    cfg.name
                )),
                _ => problems.push(format!(
                    "issuer {:?}: jwks url {url:?} is not an http(s) URL",
                    cfg.name
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let client = match self.client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .no_proxy()
                .redirect(crate::jwks::redirect_policy())
                .user_agent(concat!("idgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ConfigError(vec![format!("http client: {e}")]))?,
        };
        let mut all_algorithms: Vec<Algorithm> = Vec::new();
        let issuers = issuers
            .into_iter()
            .map(|cfg| {
                for a in &cfg.algorithms {
                    if !all_algorithms.contains(a) {
                        all_algorithms.push(*a);
                    }
                }
                let source = key_source(&cfg);
                let name: Arc<str> = cfg.name.into();
                Issuer {
                    tag: IssuerTag {
                        name: name.clone(),
                        google: cfg.google,
                        pool: cfg.pool.map(Into::into),
                    },
                    algorithms: cfg.algorithms,
                    keys: KeyCache::new(
                        name,
                        source,
                        self.jwks.clone(),
                        client.clone(),
                        clock.clone(),
                    ),
                }
            })
            .collect();
        let token_cache = if self.token_cache_capacity == 0 {
            None
        } else {
            // A system whose random source fails (never seen) gets no
            // cache rather than a key anyone could guess, and is told.
            let keyer = TokenKeyer::new();
            if keyer.is_none() {
                warnings.push(
                    "the system's random source failed: the verified-token cache is off, and every token's signature is checked"
                        .to_string(),
                );
            }
            keyer.map(|keyer| TokenCache {
                keyer,
                map: moka::sync::Cache::builder()
                    .max_capacity(self.token_cache_capacity)
                    .expire_after(UntilExpiry {
                        clock: clock.clone(),
                        skew: self.clock_skew.as_secs(),
                    })
                    .build_with_hasher(KeyBits),
                by_token: Slots::new(TOKEN_SLOTS),
                by_key: Slots::for_capacity(self.token_cache_capacity),
            })
        };
        Ok(Verifier {
            issuers,
            by_iss,
            all_algorithms,
            audiences: self.audiences,
            clock_skew: self.clock_skew.as_secs(),
            max_lifetime: self.max_lifetime.as_secs(),
            max_token_bytes: self.max_token_bytes,
            token_cache,
            clock,
            counters: Counters::default(),
            warnings,
        })
    }
}

/// Where an issuer's keys come from: its discovery document when it asks
/// for discovery (and has an `iss` to find it by), else its JWKS URL.
fn key_source(cfg: &IssuerConfig) -> KeySource {
    match cfg.issuers.first() {
        Some(iss) if cfg.discovery => KeySource::Discovery {
            issuer: iss.clone(),
            found: arc_swap::ArcSwapOption::const_empty(),
        },
        _ => KeySource::Url(cfg.jwks_url.clone()),
    }
}

fn is_asymmetric(a: Algorithm) -> bool {
    !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Entries live no longer than their token (memory only; a hit still
/// checks `exp` against the verifier's clock).
struct UntilExpiry {
    clock: Arc<dyn Clock>,
    skew: u64,
}

impl moka::Expiry<u128, CachedToken> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &u128,
        value: &CachedToken,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let deadline = value.identity.expires_at().saturating_add(self.skew);
        Some(Duration::from_secs(
            deadline.saturating_sub(self.clock.unix_now().as_secs()),
        ))
    }
}

impl Verifier {
    /// Start building a verifier.
    pub fn builder() -> VerifierBuilder {
        VerifierBuilder::default()
    }

    /// The longest credential accepted.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// The verifier's clock (the policy evaluates `request.time` on it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether every issuer has usable keys (readiness).
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.status().ready)
    }

    /// What the settings allow but should not (key URLs over plain http to
    /// a host that is not loopback), and a verified-token cache turned off
    /// for want of a random key. Log them at start.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Fetch every issuer's keys now (startup warm-up); waits for the fetches.
    pub async fn refresh_keys(&self) {
        futures_util::future::join_all(self.issuers.iter().map(|i| i.keys.refresh())).await;
    }

    /// Keep every issuer's keys warm in the background (needs a tokio
    /// runtime). The tasks end once the verifier is dropped, at their next
    /// wake-up (which can be hours later): abort the handles returned to end
    /// them at once.
    pub fn spawn_key_refreshers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .iter()
            .map(|i| i.keys.spawn_refresher())
            .collect()
    }

    /// Counters and key-cache state, for metrics.
    pub fn stats(&self) -> VerifierStats {
        VerifierStats {
            token_cache_hits: self.counters.cache_hits.load(Ordering::Relaxed),
            token_cache_hot_hits: self.counters.hot_hits.load(Ordering::Relaxed),
            token_cache_misses: self.counters.cache_misses.load(Ordering::Relaxed),
            token_cache_entries: self.token_cache.as_ref().map_or(0, |c| c.map.entry_count()),
            issuers: self.issuers.iter().map(|i| i.keys.status()).collect(),
        }
    }

    /// Verify a bearer token (the text after `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let now = self.clock.unix_now().as_secs();
        match self.lookup(token, now) {
            Lookup::Hit(identity) => Ok(identity),
            Lookup::Refused(rejection) => Err(rejection),
            Lookup::Miss(miss) => self.verify_miss(token, miss).await,
        }
    }

    /// What can be said of `token` without a signature check, so without
    /// waiting for keys: too large, or a verified-token cache hit (its hot
    /// slot, else the map); otherwise a miss, which
    /// [`Verifier::verify_miss`] takes on. `now` is the clock's Unix time in
    /// seconds.
    pub(crate) fn lookup(&self, token: &str, now: u64) -> Lookup {
        if token.len() > self.max_token_bytes {
            return Lookup::Refused(Rejection::new(
                Reason::TokenTooLarge,
                format!(
                    "token is {} bytes, over the limit of {}",
                    token.len(),
                    self.max_token_bytes
                ),
            ));
        }
        let Some(cache) = &self.token_cache else {
            return Lookup::Miss(CacheMiss { key: None });
        };
        // A slot whose entry no longer holds is emptied by the failed check.
        let good = |hit: &CachedToken| self.still_good(hit, now).then(|| hit.identity.clone());
        if let Some(identity) = cache.by_token.hit(token, good) {
            return self.hot_hit(identity);
        }
        let Some(key) = cache.keyer.key(token) else {
            return Lookup::Miss(CacheMiss { key: None });
        };
        let good_and_offered = |hit: &CachedToken| {
            let identity = good(hit)?;
            cache.by_token.offer(token, hit);
            Some(identity)
        };
        if let Some(identity) = cache.by_key.hit(&key, good_and_offered) {
            return self.hot_hit(identity);
        }
        if let Some(hit) = cache.map.get(&key) {
            if self.still_good(&hit, now) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                cache.by_key.offer(&key, &hit);
                return Lookup::Hit(hit.identity);
            }
            cache.map.invalidate(&key);
        }
        Lookup::Miss(CacheMiss { key: Some(key) })
    }

    fn hot_hit(&self, identity: Identity) -> Lookup {
        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.counters.hot_hits.fetch_add(1, Ordering::Relaxed);
        Lookup::Hit(identity)
    }

    /// The full verification of a token [`Verifier::lookup`] missed, then
    /// the verified-token cache entry for it.
    pub(crate) async fn verify_miss(
        &self,
        token: &str,
        miss: CacheMiss,
    ) -> Result<Identity, Rejection> {
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let verified = self.verify_uncached(token).await?;
        let identity = verified.identity.clone();
        if let (Some(cache), Some(key)) = (&self.token_cache, miss.key) {
            // The key must be this token's: another token's would let that
            // one borrow this verification.
            debug_assert_eq!(cache.keyer.key(token), Some(key));
            cache.map.insert(key, verified);
        }
        Ok(identity)
    }

    /// What a cached verification must still pass, since it can change
    /// with time or rotation: the token's times (`exp`, and `iat`/`nbf`
    /// against a clock stepped back), and the signing key still published.
    fn still_good(&self, hit: &CachedToken, now: u64) -> bool {
        now < hit.identity.expires_at().saturating_add(self.clock_skew)
            && u64::from(hit.valid_from) <= now.saturating_add(self.clock_skew)
            && self
                .issuers
                .get(hit.issuer as usize)
                .is_some_and(|i| i.keys.holds(&hit.key))
    }

    async fn verify_uncached(&self, token: &str) -> Result<CachedToken, Rejection> {
        let t = UnverifiedToken::parse(token)?;

        // Header.
        let alg_name = t
            .header_str("alg")
            .ok_or_else(|| Rejection::new(Reason::MalformedToken, "header has no string alg"))?;
        let alg = Algorithm::from_str(alg_name)
            .ok()
            .filter(|a| self.all_algorithms.contains(a))
            .ok_or_else(|| {
                Rejection::new(
                    Reason::UnsupportedAlgorithm,
                    format!("alg {alg_name:?} is not accepted"),
                )
            })?;
        if let Some(crit) = t.header.get("crit") {
            // We implement no JWS extension, so any critical one rejects.
            return Err(match crit {
                Json::Array(a) if !a.is_empty() && a.iter().all(|i| i.as_str().is_some()) => {
                    Rejection::new(
                        Reason::UnsupportedAlgorithm,
                        format!("crit names extensions idgate does not implement: {crit}"),
                    )
                }
                _ => Rejection::new(
                    Reason::MalformedToken,
                    "crit is not a non-empty array of strings",
                ),
            });
        }
        let kid = match t.header.get("kid") {
            Some(Json::String(k)) if !k.is_empty() => k,
            _ => return Err(Rejection::new(Reason::MalformedToken, "header has no kid")),
        };
        if t.signature_b64.is_empty() {
            return Err(Rejection::new(Reason::MalformedToken, "signature is empty"));
        }

        // Issuer: chosen before any network I/O.
        let iss = match t.claims.get("iss") {
            Some(Json::String(s)) => s,
            Some(_) => {
                return Err(Rejection::new(
                    Reason::MalformedToken,
                    "iss is not a string",
                ));
            }
            None => return Err(Rejection::new(Reason::MalformedToken, "token has no iss")),
        };
        let Some(&issuer_idx) = self.by_iss.get(iss) else {
            return Err(Rejection::new(
                Reason::UnknownIssuer,
                format!("iss {iss:?} is not a configured issuer"),
            ));
        };
        let issuer = &self.issuers[issuer_idx];
        if !issuer.algorithms.contains(&alg) {
            return Err(Rejection::new(
                Reason::UnsupportedAlgorithm,
                format!(
                    "alg {alg_name:?} is not accepted for issuer {}",
                    issuer.tag.name
                ),
            ));
        }

        // Key.
        let key = issuer.keys.key(kid).await.map_err(|miss| match miss {
            KeyMiss::Unavailable => Rejection::new(
                Reason::KeysUnavailable,
                format!("no keys loaded for issuer {}", issuer.tag.name),
            ),
            KeyMiss::UnknownKid => Rejection::new(
                Reason::UnknownKey,
                format!("kid {kid:?} is not in issuer {}'s key set", issuer.tag.name),
            ),
        })?;
        if key.alg.is_some_and(|a| a != alg) {
            return Err(Rejection::new(
                Reason::UnsupportedAlgorithm,
                format!("key {kid:?} is for {:?}, token says {alg_name}", key.alg),
            ));
        }

        // Signature.
        if !key.verify(alg, t.signing_input.as_bytes(), &t.signature) {
            return Err(Rejection::new(
                Reason::BadSignature,
                format!("signature does not verify with key {kid:?}"),
            ));
        }

        // Claims, now that they are known to come from the issuer, against
        // the clock as it reads now that the key is in hand: getting it can
        // take a fetch of the key set, and a token must not expire during
        // the wait unnoticed.
        let now = self.clock.unix_now().as_secs();
        let exp = numeric_date(&t.claims, "exp")?
            .ok_or_else(|| Rejection::new(Reason::MalformedToken, "token has no exp"))?;
        let iat = numeric_date(&t.claims, "iat")?
            .ok_or_else(|| Rejection::new(Reason::MalformedToken, "token has no iat"))?;
        let nbf = numeric_date(&t.claims, "nbf")?;
        let skew = self.clock_skew;
        if now >= exp.saturating_add(skew) {
            return Err(Rejection::new(
                Reason::Expired,
                format!("expired {}s ago", now - exp),
            ));
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(skew)
        {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("not valid for another {}s", nbf - now),
            ));
        }
        if iat > now.saturating_add(skew) {
            return Err(Rejection::new(
                Reason::IssuedInFuture,
                format!("issued {}s in the future", iat - now),
            ));
        }
        if exp <= iat {
            return Err(Rejection::new(
                Reason::MalformedToken,
                "exp is not after iat",
            ));
        }
        if exp - iat > self.max_lifetime {
            return Err(Rejection::new(
                Reason::LifetimeTooLong,
                format!(
                    "lifetime {}s is over the maximum of {}s",
                    exp - iat,
                    self.max_lifetime
                ),
            ));
        }
        match t.claims.get("aud") {
            Some(Json::String(a)) if self.audiences.iter().any(|x| x == a) => {}
            Some(Json::String(a)) if a == GCLOUD_AUDIENCE => {
                return Err(Rejection::new(
                    Reason::AudienceMismatch,
                    "aud is gcloud's own client id: a `gcloud auth print-identity-token` token is for no service; mint one with --audiences",
                ));
            }
            Some(Json::String(_)) => {
                return Err(Rejection::new(
                    Reason::AudienceMismatch,
                    "aud is not an audience of this service",
                ));
            }
            Some(Json::Array(_)) => {
                return Err(Rejection::new(
                    Reason::AudienceMismatch,
                    "aud is an array; an ID token has one audience",
                ));
            }
            Some(_) => {
                return Err(Rejection::new(
                    Reason::AudienceMismatch,
                    "aud is not a string",
                ));
            }
            None => return Err(Rejection::new(Reason::AudienceMismatch, "token has no aud")),
        }
        let sub = match t.claims.get("sub") {
            Some(Json::String(s)) if !s.is_empty() => s,
            _ => return Err(Rejection::new(Reason::MalformedToken, "token has no sub")),
        };
        // The caller's names go on as header values (`x-idgate-sub`, the
        // principal), where a control character cannot: refused here, not
        // left out of the headers of a request that goes on anyway.
        let email = match t.claims.get("email") {
            Some(Json::String(e)) => Some(e),
            _ => None,
        };
        for (claim, value) in [("sub", Some(sub)), ("email", email)] {
            if value.is_some_and(|v| v.chars().any(|c| c.is_control() && c != '\t')) {
                return Err(Rejection::new(
                    Reason::MalformedToken,
                    format!("{claim} holds a control character"),
                ));
            }
        }
        let valid_from = u32::try_from(iat.max(nbf.unwrap_or(0))).unwrap_or(u32::MAX);
        let identity = Identity::from_claims(&issuer.tag, t.claims);
        Ok(CachedToken {
            identity,
            // Issuers are configured by the handful.
            issuer: u32::try_from(issuer_idx).unwrap_or(u32::MAX),
            valid_from,
            key,
        })
    }
}

/// A NumericDate claim: a non-negative JSON number (fractions truncated).
fn numeric_date(claims: &Segment, name: &str) -> Result<Option<u64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(n)) => match crate::identity::numeric_date(n) {
            Some(v) => Ok(Some(v)),
            None => Err(Rejection::new(
                Reason::MalformedToken,
                format!("{name} is not a valid time"),
            )),
        },
        Some(_) => Err(Rejection::new(
            Reason::MalformedToken,
            format!("{name} is not a number"),
        )),
    }
}
