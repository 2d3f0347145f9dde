//! The settings flags, as plain strings.
//!
//! Flags are kept unparsed here on purpose: parsing happens in
//! [`load`](super::load), beside the environment and the config file, so that
//! a bad flag is reported together with every other problem and names its
//! source the same way.

use std::path::PathBuf;

use clap::Args;

/// Every flag that feeds [`Settings`](super::Settings). Flatten it into any
/// subcommand that needs the gate's settings (`serve`, `check`).
///
/// Each flag also reads from `IDGATE_<NAME>` (lists comma-separated) and from
/// the `--config` TOML file (`<name>` with `_`, lists as arrays), in that order
/// of precedence: flag, environment, file, default.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Settings (also IDGATE_<NAME> and the --config file)")]
pub struct SettingsArgs {
    /// TOML settings file; keys are the flag names with `_` [env: IDGATE_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve on [default: 0.0.0.0:$PORT, else 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Where to forward allowed requests (`http://127.0.0.1:8081`); required in proxy mode.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,

    /// An accepted `aud`; repeat for several. At least one is required.
    #[arg(long, value_name = "AUD")]
    pub audience: Vec<String>,

    /// IAM policy file (`gcloud run services get-iam-policy` JSON or YAML); repeat to merge.
    #[arg(long, value_name = "FILE")]
    pub policy: Vec<PathBuf>,

    /// An allowed member (`user:a@b.com`, `serviceAccount:…`, `group:…`, `domain:…`, `allUsers`…); repeatable.
    #[arg(long, value_name = "MEMBER")]
    pub member: Vec<String>,

    /// Groups file: group email to member emails (ID tokens carry no groups).
    #[arg(long, value_name = "FILE")]
    pub groups: Option<PathBuf>,

    /// Also trust tokens from this issuer (its `iss`). Its callers are
    /// `principal://POOL/subject/SUB` (see --issuer-pool); only with
    /// --issuer-trust-emails do its emails name user:/serviceAccount:
    /// members. Keys come from its discovery document unless --jwks-url is
    /// given. Repeatable.
    #[arg(long, value_name = "URL")]
    pub issuer: Vec<String>,

    /// Trust Google's issuer (`https://accounts.google.com`) [default: true].
    /// `false` trusts only the --issuer list: for a dev issuer or another IdP
    /// alone, with no fetch from Google at all.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub google_issuer: Option<String>,

    /// `ISSUER=POOL`: name an --issuer's callers as members of this workload
    /// identity pool (`iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P`),
    /// for `principal://` and `principalSet://` members. Repeatable.
    #[arg(long, value_name = "ISSUER=POOL")]
    pub issuer_pool: Vec<String>,

    /// Let every --issuer's verified emails name user:/serviceAccount:
    /// members, as Google's do: for a dev issuer or test double you control,
    /// never a third-party issuer (anyone it signs for could claim any email).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub issuer_trust_emails: Option<String>,

    /// A role whose bindings grant invoke; repeat for several [default:
    /// roles/run.invoker, roles/run.servicesInvoker, roles/run.admin,
    /// roles/editor, roles/owner].
    #[arg(long, value_name = "ROLE")]
    pub invoker_role: Vec<String>,

    /// Fetch keys from here instead: with no --issuer, for the Google preset;
    /// otherwise one per --issuer, paired in order.
    #[arg(long = "jwks-url", value_name = "URL")]
    pub jwks_url: Vec<String>,

    /// Allowed clock difference for exp/nbf/iat [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub clock_skew: Option<String>,

    /// Longest accepted token, checked before any decoding [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub max_token_bytes: Option<String>,

    /// Verified tokens kept in memory [default: 10000].
    #[arg(long, value_name = "N")]
    pub token_cache_capacity: Option<String>,

    /// Shortest key-set lifetime, whatever Cache-Control says [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub jwks_min_ttl: Option<String>,

    /// Longest key-set lifetime [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub jwks_max_ttl: Option<String>,

    /// At most one forced refresh per issuer this often, on an unknown `kid` [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub jwks_refresh_interval: Option<String>,

    /// Keep serving old keys this long while refreshes fail [default: 12h].
    #[arg(long, value_name = "DURATION")]
    pub jwks_stale_if_error: Option<String>,

    /// What the upstream receives of the token: stripped (signature removed), full, none [default: stripped].
    #[arg(long, value_name = "stripped|full|none")]
    pub forward_token: Option<String>,

    /// Denial status codes: rfc6750 (401 for no token) or cloud-run (403, as Cloud Run answers) [default: rfc6750].
    #[arg(long, value_name = "rfc6750|cloud-run")]
    pub status_codes: Option<String>,

    /// proxy (forward to --upstream) or forward-auth (answer auth subrequests) [default: proxy].
    #[arg(long, value_name = "proxy|forward-auth")]
    pub mode: Option<String>,

    /// Address for /healthz, /readyz and /metrics [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// json (Cloud Logging) or text [default: json].
    #[arg(long, value_name = "json|text")]
    pub log_format: Option<String>,

    /// Give up on an upstream that has not answered with headers by then: 504 [default: 300s].
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// On SIGTERM, how long in-flight requests may take to finish [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// Client connections served at once; a newcomer waits for a place while connections between requests are closed to make room. 0: no cap [default: the open-files limit less 64, halved in proxy mode].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,

    /// A path prefix served without a token (`/healthz`, `/static/`); matches whole segments. Repeatable.
    #[arg(long, value_name = "PREFIX")]
    pub public_path: Vec<String>,

    /// Another identity header to remove from client requests (`x-user`, `x-my-*`); repeatable.
    #[arg(long, value_name = "HEADER")]
    pub strip_header: Vec<String>,
}
