//! Settings: from flags, `IDGATE_*` environment variables and a TOML file,
//! in that order of precedence, then defaults.
//!
//! [`load`] reads all three, reports *every* problem at once (each naming its
//! source: `--audience`, `IDGATE_CLOCK_SKEW`, `config.toml: jwks_min_ttl`),
//! and produces a [`Settings`] of plain, checked values. Nothing here binds a
//! port or touches the network.
//!
//! Rules worth knowing:
//!
//! - A list setting comes whole from one source: `--audience` given twice
//!   replaces `IDGATE_AUDIENCE`, it does not add to it.
//! - In the environment, empty values count as unset and lists are
//!   comma-separated (`IDGATE_AUDIENCE=a,b`).
//! - In the file, keys are the flag names with `_` (`jwks_min_ttl = "5m"`),
//!   lists are arrays (a single string is a list of one), an unknown key is
//!   an error, and relative paths are taken from the file's directory.
//! - `--listen` defaults to `0.0.0.0:$PORT` when `PORT` is set (Cloud Run
//!   sets it), else `0.0.0.0:8080`.
//!
//! ## Issuers
//!
//! Google is trusted (`https://accounts.google.com` and
//! `accounts.google.com`, keys from Google's JWKS) unless
//! `--google-issuer false`. `--issuer URL` adds another issuer whose keys come
//! from `URL/.well-known/openid-configuration`. Its callers are
//! `principal://POOL/subject/SUB` members (`--issuer-pool`); only with
//! `--issuer-trust-emails` do its verified `email` claims name
//! `user:`/`serviceAccount:` members as Google's do. That is what a dev issuer
//! or a test double needs, and it lets such an issuer speak for any account:
//! turn it on only for issuers you control.
//! `--jwks-url` says where keys come from without discovery: with no
//! `--issuer`, one `--jwks-url` points the Google preset elsewhere (a mirror,
//! a test double); with `--issuer`s, give none (all use discovery) or exactly
//! one per issuer, paired in order.

mod args;
mod env;
mod error;
mod parse;
mod source;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;

pub use args::SettingsArgs;
pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, ConfigErrors, Origin, ValueError};

use idgate::policy::{MEMBER_FLAG_SOURCE, PolicyError};
use source::{KEYS, Layer, OTHER_VARS, Sources, env_name};

/// Every setting, checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Proxy to an upstream, or answer auth subrequests.
    pub mode: Mode,
    /// Where the gate listens.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// How tokens are checked.
    pub verifier: VerifierSettings,
    /// Who is allowed.
    pub policy: PolicySettings,
    /// What the upstream receives of the token.
    pub forward_token: ForwardToken,
    /// Which status codes denials use.
    pub status_codes: StatusCodes,
    /// Path prefixes served without a token (whole segments).
    pub public_paths: Vec<String>,
    /// Extra identity headers to remove from client requests, besides the
    /// built-in list.
    pub strip_headers: Vec<HeaderPattern>,
    /// Time for the upstream to answer with headers before a 504.
    pub request_timeout: Duration,
    /// Time for in-flight requests to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How many client connections are served at once.
    pub max_connections: ConnectionCap,
    /// Log output format.
    pub log_format: LogFormat,
}

/// How many client connections `serve` serves at once; a newcomer waits
/// for a place (the others in the listen backlog), and while it waits,
/// connections between requests are closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionCap {
    /// The open-files limit less a reserve, halved when proxying (the
    /// default): each client connection may need an upstream one, and a
    /// connection accepted without a descriptor left for its upstream
    /// would get a 502.
    #[default]
    FromOpenFiles,
    /// At most this many (`--max-connections N`).
    At(std::num::NonZeroUsize),
    /// No cap (`--max-connections 0`).
    Off,
}

impl ConnectionCap {
    /// Descriptors kept for everything but client connections and their
    /// upstream ones: listeners, the admin server, key fetches, the
    /// policy watch.
    const RESERVE: u64 = 64;

    /// The cap, given the soft limit on open files and whether each client
    /// connection may need an upstream one; `None` for no cap.
    pub fn resolve(self, open_files: u64, upstream: bool) -> Option<usize> {
        match self {
            ConnectionCap::FromOpenFiles => {
                let free = open_files.saturating_sub(Self::RESERVE);
                let cap = if upstream { free / 2 } else { free };
                Some(usize::try_from(cap).unwrap_or(usize::MAX).max(1))
            }
            ConnectionCap::At(n) => Some(n.get()),
            ConnectionCap::Off => None,
        }
    }
}

/// What `serve` does with an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Forward it to the upstream.
    Proxy {
        /// Where to.
        upstream: Upstream,
    },
    /// Answer 200 with identity headers: the request was an auth subrequest
    /// from nginx, Traefik or Envoy.
    ForwardAuth,
}

/// A plain-HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Authority,
    /// A path prefix put before every request path, without a trailing `/`
    /// (empty for none).
    pub base_path: String,
}

/// Token verification settings, handed to the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifierSettings {
    /// Accepted `aud` values; never empty.
    pub audiences: Vec<String>,
    /// Whether Google's issuer is trusted (`--google-issuer`).
    pub google: bool,
    /// Where the Google preset fetches keys, when not Google's own JWKS.
    pub google_jwks_url: Option<String>,
    /// Extra trusted issuers.
    pub issuers: Vec<IssuerSettings>,
    /// Allowed clock difference.
    pub clock_skew: Duration,
    /// Longest accepted token in bytes.
    pub max_token_bytes: usize,
    /// Verified tokens kept in memory.
    pub token_cache_capacity: u64,
    /// Key-set cache settings.
    pub jwks: JwksSettings,
}

/// An extra issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// The `iss` value, exactly as tokens spell it.
    pub issuer: String,
    /// Where its keys come from.
    pub keys: KeySource,
    /// The workload identity pool its callers belong to (`--issuer-pool`).
    pub pool: Option<String>,
    /// Whether its verified emails name `user:`/`serviceAccount:` members
    /// (`--issuer-trust-emails`): only for issuers the operator controls.
    pub trust_emails: bool,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `ISSUER/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// This JWKS URL.
    JwksUrl(String),
}

/// Key-set cache lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Shortest lifetime, whatever `Cache-Control` says.
    pub min_ttl: Duration,
    /// Longest lifetime.
    pub max_ttl: Duration,
    /// At most one forced refresh per issuer per this interval.
    pub refresh_interval: Duration,
    /// How long old keys keep serving while refreshes fail.
    pub stale_if_error: Duration,
}

/// Where the allowlist comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySettings {
    /// IAM policy files, merged.
    pub files: Vec<PathBuf>,
    /// Members allowed by flag.
    pub members: Vec<String>,
    /// Group membership file.
    pub groups_file: Option<PathBuf>,
    /// Roles that grant invoke; `None` for the default set.
    pub invoker_roles: Option<Vec<String>>,
    /// Workload identity pools named by `--issuer-pool`.
    pub pools: Vec<String>,
}

impl PolicySettings {
    /// Every file whose change should reload the policy.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .chain(self.groups_file.as_ref())
            .cloned()
            .collect()
    }
}

/// What the upstream receives of the caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardToken {
    /// The token with its signature replaced, as Cloud Run does: the
    /// upstream can read the claims but cannot replay the token.
    #[default]
    Stripped,
    /// The token as sent.
    Full,
    /// No credential header at all.
    None,
}

/// Which status codes denials use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusCodes {
    /// 401 with `WWW-Authenticate` for a missing or bad token, 403 for a
    /// principal that is not allowed.
    #[default]
    Rfc6750,
    /// Cloud Run's: 403 for a request without a token too.
    CloudRun,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line with Cloud Logging's `severity`.
    #[default]
    Json,
    /// For humans at a terminal.
    Text,
}

/// A header name to strip: exact, or a prefix (written `x-my-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    /// This header.
    Exact(HeaderName),
    /// Every header starting with this (lower case).
    Prefix(String),
}

impl HeaderPattern {
    /// Whether `name` (lower case, as `http` stores names) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(h) => h.as_str() == name,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for HeaderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderPattern::Exact(h) => f.write_str(h.as_str()),
            HeaderPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Defaults, named so docs, help and tests agree.
pub mod defaults {
    use std::time::Duration;

    /// `--listen` without `PORT`.
    pub const LISTEN: &str = "0.0.0.0:8080";
    /// `--admin-listen`.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    /// `--clock-skew`.
    pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
    /// The largest `--clock-skew` the verifier accepts.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
    /// `--max-token-bytes`: 16 KiB.
    pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
    /// `--token-cache-capacity`.
    pub const TOKEN_CACHE_CAPACITY: u64 = 10_000;
    /// `--jwks-min-ttl`.
    pub const JWKS_MIN_TTL: Duration = Duration::from_secs(5 * 60);
    /// `--jwks-max-ttl`.
    pub const JWKS_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
    /// `--jwks-refresh-interval`.
    pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
    /// `--jwks-stale-if-error`.
    pub const JWKS_STALE_IF_ERROR: Duration = Duration::from_secs(12 * 3600);
    /// `--request-timeout`: Cloud Run's default request timeout.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
    /// `--shutdown-grace`.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
}

/// Settings plus what is worth a warning but not a refusal.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// Things to log once logging is up (misspelt variables, plain-http key
    /// URLs).
    pub warnings: Vec<String>,
}

/// Read flags, environment and config file; check everything; report every
/// problem at once.
///
/// Policy and groups files are checked for readability here; parsing them is
/// the policy module's job, done when the gate is built (which `serve
/// --check-config` also does).
pub fn load(args: &SettingsArgs, env: &dyn Env) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let config_path = args.config.clone().or_else(|| {
        env.var("IDGATE_CONFIG")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
    });
    let file = match &config_path {
        Some(path) => Layer::from_file(path, &mut errors),
        None => Layer::default(),
    };
    resolve(args, env, file, errors)
}

/// [`load`] with the config file's text given instead of read: `path` names
/// it in errors and is where its relative paths start; `args.config` and
/// `IDGATE_CONFIG` are ignored. Policy and groups files are still read.
/// For the `config` fuzz target.
#[doc(hidden)]
pub fn load_toml(
    path: &Path,
    toml: &str,
    args: &SettingsArgs,
    env: &dyn Env,
) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let file = Layer::from_toml(path, toml, &mut errors);
    resolve(args, env, file, errors)
}

/// Everything after reading the config file: `errors` holds the file's.
fn resolve(
    args: &SettingsArgs,
    env: &dyn Env,
    file: Layer,
    errors: Vec<ConfigError>,
) -> Result<Loaded, ConfigErrors> {
    let mut warnings = Vec::new();
    let mut src = Sources {
        layers: vec![Layer::from_args(args), Layer::from_env(env), file],
        errors,
    };

    for name in env.names() {
        let known = KEYS.iter().any(|(flag, _)| env_name(flag) == name)
            || OTHER_VARS.contains(&name.as_str());
        if name.starts_with("IDGATE_") && !known {
            warnings.push(format!("{name} is set but is not an idgate setting"));
        }
    }

    let forward_auth = choice(
        &mut src,
        "--mode",
        &[("proxy", false), ("forward-auth", true)],
        "proxy, forward-auth",
    );
    let mode = match forward_auth {
        // An invalid --mode is already reported; say nothing about upstream.
        None if src.origin("--mode").is_some() => None,
        Some(true) => {
            if let Some(origin) = src.origin("--upstream") {
                src.errors.push(ConfigError::Conflict {
                    origin,
                    message: "forward-auth mode has no upstream; remove it".into(),
                });
            }
            Some(Mode::ForwardAuth)
        }
        None | Some(false) => match src.origin("--upstream") {
            None => {
                src.errors.push(ConfigError::MissingUpstream);
                None
            }
            Some(_) => value(&mut src, "--upstream", parse::upstream)
                .map(|(upstream, _)| Mode::Proxy { upstream }),
        },
    };

    let listen = match src.origin("--listen") {
        Some(_) => value(&mut src, "--listen", parse::address).map(|(addr, _)| addr),
        None => match env.var("PORT").filter(|p| !p.trim().is_empty()) {
            Some(port) => match port.trim().parse::<u16>() {
                Ok(port) => Some(SocketAddr::from(([0, 0, 0, 0], port))),
                Err(e) => {
                    src.errors.push(ConfigError::InvalidValue {
                        origin: Origin::Env("PORT".into()),
                        value: port,
                        problem: ValueError::Number(e),
                    });
                    None
                }
            },
            None => defaults::LISTEN.parse().ok(),
        },
    };
    let admin_listen = or_default(
        value(&mut src, "--admin-listen", parse::address),
        defaults::ADMIN_LISTEN.parse().ok(),
    );
    // The same port on overlapping addresses: one of the two binds fails
    // (0.0.0.0:9090 takes 127.0.0.1:9090 too).
    if let (Some(l), Some(a)) = (listen, admin_listen)
        && l.port() == a.port()
        && l.port() != 0
        && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
    {
        src.errors.push(ConfigError::Conflict {
            origin: src.origin("--admin-listen").unwrap_or(Origin::Default),
            message: format!("{a} overlaps --listen ({l}): same port"),
        });
    }

    // The upstream must not be idgate itself: each request would come back
    // through the gate, thousands of times over, until its headers grew too
    // long (a loop one `allUsers` or public-path request sets off).
    if let (Some(Mode::Proxy { upstream }), Some(l)) = (&mode, listen)
        && upstream.authority.port_u16().unwrap_or(80) == l.port()
    {
        let host = upstream.authority.host();
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        let loops = if l.ip().is_unspecified() {
            // Listening everywhere: any address of this machine comes back.
            idgate::verifier::is_loopback_host(host) || ip.is_some_and(|ip| ip.is_unspecified())
        } else {
            ip == Some(l.ip()) || (host.eq_ignore_ascii_case("localhost") && l.ip().is_loopback())
        };
        if loops {
            src.errors.push(ConfigError::Conflict {
                origin: src.origin("--upstream").unwrap_or(Origin::Default),
                message: format!(
                    "{} is idgate's own --listen ({l}): requests would loop",
                    upstream.authority
                ),
            });
        }
    }

    let audiences = match src.origin("--audience") {
        None => {
            src.errors.push(ConfigError::MissingAudience);
            Vec::new()
        }
        Some(_) => match src.list("--audience") {
            // The wrong type: already reported.
            None => Vec::new(),
            Some((list, origin)) => {
                if list.is_empty() {
                    src.errors.push(ConfigError::MissingAudience);
                }
                for a in &list {
                    if a.trim() != a || a.is_empty() {
                        src.errors.push(invalid(
                            &origin,
                            a,
                            ValueError::Url("must not be empty or padded with spaces".into()),
                        ));
                    }
                }
                list
            }
        },
    };

    let issuers = src
        .list("--issuer")
        .unwrap_or((Vec::new(), Origin::Default));
    let jwks_urls = src
        .list("--jwks-url")
        .unwrap_or((Vec::new(), Origin::Default));
    for url in &issuers.0 {
        if let Err(problem) = parse::key_url(url, &mut warnings, "issuer") {
            src.errors.push(invalid(&issuers.1, url, problem));
        }
    }
    for url in &jwks_urls.0 {
        if let Err(problem) = parse::key_url(url, &mut warnings, "JWKS URL") {
            src.errors.push(invalid(&jwks_urls.1, url, problem));
        }
    }
    let (google_jwks_url, extra_issuers) = match (issuers.0.len(), jwks_urls.0.len()) {
        (0, 0) => (None, Vec::new()),
        (0, 1) => (jwks_urls.0.first().cloned(), Vec::new()),
        (0, n) => {
            src.errors.push(ConfigError::Conflict {
                origin: jwks_urls.1.clone(),
                message: format!(
                    "{n} JWKS URLs but no --issuer: one points the Google preset elsewhere, more need one --issuer each"
                ),
            });
            (None, Vec::new())
        }
        (_, 0) => (
            None,
            issuers
                .0
                .iter()
                .map(|i| IssuerSettings {
                    issuer: i.clone(),
                    keys: KeySource::Discovery,
                    pool: None,
                    trust_emails: false,
                })
                .collect(),
        ),
        (i, j) if i == j => (
            None,
            issuers
                .0
                .iter()
                .zip(&jwks_urls.0)
                .map(|(i, u)| IssuerSettings {
                    issuer: i.clone(),
                    keys: KeySource::JwksUrl(u.clone()),
                    pool: None,
                    trust_emails: false,
                })
                .collect(),
        ),
        (i, j) => {
            src.errors.push(ConfigError::Conflict {
                origin: jwks_urls.1.clone(),
                message: format!(
                    "{j} JWKS URLs for {i} issuers: give none (discovery) or one per issuer, in the same order"
                ),
            });
            (None, Vec::new())
        }
    };

    let google = value(&mut src, "--google-issuer", parse::boolean).is_none_or(|(b, origin)| {
        if !b && extra_issuers.is_empty() {
            src.errors.push(ConfigError::Conflict {
                origin,
                message: "false leaves no issuer to trust: add an --issuer".into(),
            });
        }
        b
    });
    if google {
        for iss in &issuers.0 {
            if idgate::verifier::GOOGLE_ISSUERS.contains(&iss.trim_end_matches('/')) {
                src.errors.push(ConfigError::Conflict {
                    origin: issuers.1.clone(),
                    message: format!(
                        "{iss} is Google's issuer, trusted already (--google-issuer false to \
                         trust only the --issuer list)"
                    ),
                });
            }
        }
    }
    let mut extra_issuers = extra_issuers;
    let trust_emails =
        value(&mut src, "--issuer-trust-emails", parse::boolean).map(|(b, origin)| {
            if b && extra_issuers.is_empty() {
                src.errors.push(ConfigError::Conflict {
                    origin,
                    message: "--issuer-trust-emails without any --issuer".into(),
                });
            }
            b
        });
    let mut pools = Vec::new();
    let pools_origin = src.origin("--issuer-pool");
    if let Some((pairs, origin)) = src.list("--issuer-pool") {
        for pair in &pairs {
            let parsed = pair
                .split_once('=')
                .map(|(i, p)| (i.trim(), p.trim().trim_end_matches('/')));
            match parsed {
                Some((iss, pool)) if !pool.is_empty() && !pool.contains("://") => {
                    match extra_issuers.iter_mut().find(|i| i.issuer == iss) {
                        Some(i) if i.pool.is_none() => {
                            i.pool = Some(pool.to_owned());
                            pools.push(pool.to_owned());
                        }
                        Some(_) => src.errors.push(invalid(
                            &origin,
                            pair,
                            ValueError::Url(format!("{iss} is given a pool twice")),
                        )),
                        None => src.errors.push(invalid(
                            &origin,
                            pair,
                            ValueError::Url(format!("{iss} is not an --issuer")),
                        )),
                    }
                }
                _ => src.errors.push(invalid(
                    &origin,
                    pair,
                    ValueError::Url(
                        "expected ISSUER=POOL, POOL without a scheme: iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P".into(),
                    ),
                )),
            }
        }
    }
    if trust_emails == Some(true) {
        for i in &mut extra_issuers {
            i.trust_emails = true;
        }
        warnings.push(format!(
            "--issuer-trust-emails: {} may name any user:/serviceAccount: member; use it only for issuers you control",
            extra_issuers.iter().map(|i| i.issuer.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let roles_origin = src.origin("--invoker-role");
    let invoker_roles = src.list("--invoker-role").and_then(|(roles, origin)| {
        if roles.iter().any(|r| !role_shaped(r)) {
            src.errors.push(ConfigError::Conflict {
                origin,
                message: "each invoker role must look like roles/NAME".into(),
            });
        }
        (!roles.is_empty()).then_some(roles)
    });

    let clock_skew = duration(&mut src, "--clock-skew", defaults::CLOCK_SKEW);
    if clock_skew > defaults::MAX_CLOCK_SKEW {
        src.errors.push(ConfigError::Conflict {
            origin: src.origin("--clock-skew").unwrap_or(Origin::Default),
            message: format!(
                "{} is over the {} maximum",
                humantime::format_duration(clock_skew),
                humantime::format_duration(defaults::MAX_CLOCK_SKEW)
            ),
        });
    }
    let max_token_bytes = or_default(
        value(&mut src, "--max-token-bytes", parse::positive),
        Some(defaults::MAX_TOKEN_BYTES as u64),
    );
    if max_token_bytes.is_some_and(|n| n < 64) {
        src.errors.push(ConfigError::Conflict {
            origin: src.origin("--max-token-bytes").unwrap_or(Origin::Default),
            message: "under 64 bytes, too small for any JWT".into(),
        });
    }
    let token_cache_capacity = or_default(
        value(&mut src, "--token-cache-capacity", parse::count),
        Some(defaults::TOKEN_CACHE_CAPACITY),
    );
    let jwks = JwksSettings {
        min_ttl: duration(&mut src, "--jwks-min-ttl", defaults::JWKS_MIN_TTL),
        max_ttl: duration(&mut src, "--jwks-max-ttl", defaults::JWKS_MAX_TTL),
        refresh_interval: duration(
            &mut src,
            "--jwks-refresh-interval",
            defaults::JWKS_REFRESH_INTERVAL,
        ),
        stale_if_error: duration(
            &mut src,
            "--jwks-stale-if-error",
            defaults::JWKS_STALE_IF_ERROR,
        ),
    };
    // Either under a second lets one issuer's `Cache-Control: no-cache`,
    // or a stream of unknown `kid`s, have the key set fetched back to back.
    for (flag, d) in [
        ("--jwks-min-ttl", jwks.min_ttl),
        ("--jwks-refresh-interval", jwks.refresh_interval),
    ] {
        if d < Duration::from_secs(1) {
            src.errors.push(ConfigError::Conflict {
                origin: src.origin(flag).unwrap_or(Origin::Default),
                message: format!(
                    "{} is under 1s: the key set could be fetched many times a second",
                    humantime::format_duration(d)
                ),
            });
        }
    }
    if jwks.min_ttl > jwks.max_ttl {
        src.errors.push(ConfigError::Conflict {
            origin: src.origin("--jwks-min-ttl").unwrap_or(Origin::Default),
            message: format!(
                "{} is longer than the maximum TTL {}",
                humantime::format_duration(jwks.min_ttl),
                humantime::format_duration(jwks.max_ttl)
            ),
        });
    }

    let mut policy = PolicySettings::default();
    if let Some((files, origin)) = src.paths("--policy") {
        for path in &files {
            check_readable(&mut src.errors, &origin, path);
        }
        policy.files = files;
    }
    if let Some((mut files, origin)) = src.paths("--groups") {
        if files.len() > 1 {
            // A TOML list: one groups file only, not the last one silently.
            src.errors.push(ConfigError::Conflict {
                origin: origin.clone(),
                message: format!("one groups file only, {} given", files.len()),
            });
        } else if let Some(path) = files.pop() {
            check_readable(&mut src.errors, &origin, &path);
            policy.groups_file = Some(path);
        }
    }
    let mut member_syntax_ok = true;
    let members_origin = src.origin("--member");
    if let Some((members, origin)) = src.list("--member") {
        for m in &members {
            if let Err(problem) = parse::member(m) {
                member_syntax_ok = false;
                src.errors.push(invalid(&origin, m, problem));
            }
        }
        policy.members = members;
    }

    if policy.files.is_empty() && policy.members.is_empty() {
        warnings.push(
            "no --policy and no --member: every request outside --public-path will be refused (not_allowed)"
                .into(),
        );
    }

    let forward_token = choice(
        &mut src,
        "--forward-token",
        &[
            ("stripped", ForwardToken::Stripped),
            ("full", ForwardToken::Full),
            ("none", ForwardToken::None),
        ],
        "stripped, full, none",
    )
    .unwrap_or_default();
    let status_codes = choice(
        &mut src,
        "--status-codes",
        &[
            ("rfc6750", StatusCodes::Rfc6750),
            ("cloud-run", StatusCodes::CloudRun),
        ],
        "rfc6750, cloud-run",
    )
    .unwrap_or_default();
    let log_format = choice(
        &mut src,
        "--log-format",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        "json, text",
    )
    .unwrap_or_default();
    let request_timeout = duration(&mut src, "--request-timeout", defaults::REQUEST_TIMEOUT);
    let shutdown_grace = duration(&mut src, "--shutdown-grace", defaults::SHUTDOWN_GRACE);
    let max_connections = match value(&mut src, "--max-connections", parse::count) {
        None => ConnectionCap::FromOpenFiles,
        // 0 is no cap; a number past usize is as good as none too.
        Some((n, _)) => std::num::NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX))
            .map_or(ConnectionCap::Off, ConnectionCap::At),
    };
    if request_timeout.is_zero() {
        src.errors.push(ConfigError::Conflict {
            origin: src.origin("--request-timeout").unwrap_or(Origin::Default),
            message: "must be greater than zero".into(),
        });
    }

    let public_paths = each(&mut src, "--public-path", parse::public_path);
    let strip_headers = each(&mut src, "--strip-header", parse::header_pattern);
    if mode == Some(Mode::ForwardAuth) {
        for pattern in &strip_headers {
            let read = crate::forward_auth::REQUEST_HEADERS;
            if let Some(header) = read.iter().find(|h| pattern.matches(h.as_str())) {
                src.errors.push(ConfigError::Conflict {
                    origin: src.origin("--strip-header").unwrap_or(Origin::Default),
                    message: format!(
                        "{pattern} would remove {header}, which forward-auth reads the original \
                         request from (the subrequest's own path would be judged instead)"
                    ),
                });
            }
        }
    }

    // Load the policy as the gate will, so its problems are listed with
    // every other one, in the same run.
    let sources = idgate::policy::PolicySources {
        files: policy.files.clone(),
        members: policy.members.clone(),
        groups_file: policy.groups_file.clone(),
        invoker_roles: invoker_roles.clone(),
        pools: pools.clone(),
    };
    if let Err(errors) = idgate::policy::Policy::load(&sources) {
        for e in errors.0 {
            let from_members = e.file() == Some(MEMBER_FLAG_SOURCE);
            // Unreadable files, bad member syntax and roles not shaped
            // roles/NAME were already reported above, with the flag,
            // variable or key they came from.
            let reported = match &e {
                PolicyError::Read { .. } => true,
                PolicyError::InvokerRole { role, .. } => !role_shaped(role),
                _ => from_members && !member_syntax_ok,
            };
            if reported {
                continue;
            }
            // Members, roles and pools are settings: name the one at fault
            // (the policy module calls every member `--member`, wherever
            // it came from).
            let origin = match &e {
                PolicyError::Member { .. } if from_members => members_origin.as_ref(),
                PolicyError::InvokerRole { .. } => roles_origin.as_ref(),
                PolicyError::Pool { .. } => pools_origin.as_ref(),
                _ => None,
            };
            match (origin, e) {
                (
                    Some(origin),
                    PolicyError::Member {
                        member: value,
                        message,
                        ..
                    }
                    | PolicyError::InvokerRole {
                        role: value,
                        message,
                    }
                    | PolicyError::Pool {
                        pool: value,
                        message,
                    },
                ) => src
                    .errors
                    .push(invalid(origin, &value, ValueError::Policy(message))),
                (_, e) => src.errors.push(ConfigError::Policy(e)),
            }
        }
    }

    if !src.errors.is_empty() {
        return Err(ConfigErrors(src.errors));
    }
    let (
        Some(mode),
        Some(listen),
        Some(admin_listen),
        Some(max_token_bytes),
        Some(token_cache_capacity),
    ) = (
        mode,
        listen,
        admin_listen,
        max_token_bytes,
        token_cache_capacity,
    )
    else {
        // Each None above came with an error, so this is unreachable in
        // practice; stay total anyway.
        return Err(ConfigErrors(vec![ConfigError::Conflict {
            origin: Origin::Default,
            message: "incomplete settings".into(),
        }]));
    };
    let settings = Settings {
        mode,
        listen,
        admin_listen,
        verifier: VerifierSettings {
            audiences,
            google,
            google_jwks_url,
            issuers: extra_issuers,
            clock_skew,
            max_token_bytes: usize::try_from(max_token_bytes).unwrap_or(usize::MAX),
            token_cache_capacity,
            jwks,
        },
        policy: PolicySettings {
            invoker_roles,
            pools,
            ..policy
        },
        forward_token,
        status_codes,
        public_paths,
        strip_headers,
        request_timeout,
        shutdown_grace,
        max_connections,
        log_format,
    };
    Ok(Loaded { settings, warnings })
}

/// What `--invoker-role` takes: `roles/NAME`.
fn role_shaped(role: &str) -> bool {
    role.len() > "roles/".len() && role.starts_with("roles/")
}

fn invalid(origin: &Origin, value: &str, problem: ValueError) -> ConfigError {
    ConfigError::InvalidValue {
        origin: origin.clone(),
        value: value.to_owned(),
        problem,
    }
}

fn value<T>(
    src: &mut Sources,
    flag: &str,
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> Option<(T, Origin)> {
    let (raw, origin) = src.single(flag)?;
    match parse(raw.trim()) {
        Ok(v) => Some((v, origin)),
        Err(problem) => {
            src.errors.push(invalid(&origin, &raw, problem));
            None
        }
    }
}

fn each<T>(src: &mut Sources, flag: &str, parse: impl Fn(&str) -> Result<T, ValueError>) -> Vec<T> {
    let Some((raw, origin)) = src.list(flag) else {
        return Vec::new();
    };
    raw.iter()
        .filter_map(|r| match parse(r) {
            Ok(v) => Some(v),
            Err(problem) => {
                src.errors.push(invalid(&origin, r, problem));
                None
            }
        })
        .collect()
}

/// The value, or the default when the setting is absent. `None` when the
/// setting was present but invalid (the error is already recorded).
fn or_default<T>(parsed: Option<(T, Origin)>, default: Option<T>) -> Option<T> {
    match parsed {
        Some((v, _)) => Some(v),
        None => default,
    }
}

fn duration(src: &mut Sources, flag: &str, default: Duration) -> Duration {
    value(src, flag, parse::duration).map_or(default, |(d, _)| d)
}

fn choice<T: Copy>(
    src: &mut Sources,
    flag: &str,
    words: &[(&str, T)],
    expected: &'static str,
) -> Option<T> {
    value(src, flag, |s| {
        words
            .iter()
            .find(|(w, _)| *w == s)
            .map(|(_, v)| *v)
            .ok_or(ValueError::Choice { expected })
    })
    .map(|(v, _)| v)
}

fn check_readable(errors: &mut Vec<ConfigError>, origin: &Origin, path: &std::path::Path) {
    if let Err(source) = std::fs::read(path) {
        errors.push(ConfigError::UnreadableFile {
            origin: origin.clone(),
            path: path.to_path_buf(),
            source,
        });
    }
}

impl Settings {
    /// A few lines for `--check-config` and the startup log: what will run,
    /// never a secret.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mode = match &self.mode {
            Mode::Proxy { upstream } => {
                format!(
                    "proxy to http://{}{}",
                    upstream.authority, upstream.base_path
                )
            }
            Mode::ForwardAuth => "forward-auth".into(),
        };
        let google = self
            .verifier
            .google
            .then(|| match &self.verifier.google_jwks_url {
                Some(url) => format!("google (keys from {url})"),
                None => "google".into(),
            });
        let issuers: Vec<String> = google
            .into_iter()
            .chain(self.verifier.issuers.iter().map(|i| match &i.keys {
                KeySource::Discovery => i.issuer.clone(),
                KeySource::JwksUrl(url) => format!("{} (keys from {url})", i.issuer),
            }))
            .collect();
        let _ = fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "mode: {mode}\nlisten: {}\nadmin: {}\naudiences: {}\nissuers: {}\npolicy files: {}\nmembers: {}\ngroups file: {}\npublic paths: {}\n",
                self.listen,
                self.admin_listen,
                self.verifier.audiences.join(", "),
                issuers.join(", "),
                self.policy.files.len(),
                self.policy.members.len(),
                self.policy
                    .groups_file
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string()),
                if self.public_paths.is_empty() {
                    "none".into()
                } else {
                    self.public_paths.join(", ")
                },
            ),
        );
        s
    }
}

#[cfg(test)]
mod tests;
