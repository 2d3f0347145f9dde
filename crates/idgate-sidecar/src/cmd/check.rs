//! `idgate check`: the whole decision about one token, step by step, with
//! the settings `serve` would use.
//!
//! The verdict is the library's: [`idgate::Verifier::verify`] for the token and
//! [`PolicyHandle::decide`] for the caller, exactly as the gate runs them
//! (a public path needs no token; with `allUsers` a bad token does not stop
//! a request). The steps around it explain that verdict: what the token
//! says, which configured issuer and key it names, its times relative to
//! now, the audience, the principal and the binding.
//!
//! The configured audiences are printed in an audience denial: this is the
//! operator's tool, run with the operator's own settings (the sidecar never
//! tells a *client* what it expected). The token itself and its signature
//! are never printed.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use idgate::auth::Gate;
use idgate::policy::{Decision, Grant, PolicyHandle, PolicySources, RequestContext};
use idgate::token::UnverifiedToken;
use idgate::verifier::GOOGLE_ISSUERS;
use idgate::{Clock as _, GOOGLE_CERTS_URL, Identity, Reason, Rejection, SystemClock};
use serde_json::{Value, json};

use super::when;
use crate::config::{self, ConfigError, ConfigErrors, Env, KeySource, Settings, SettingsArgs};
use crate::gate;

/// Tokens longer than this are a lifetime error for the verifier too.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `idgate check` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Exit status: 0 allowed, 1 denied, 2 a usage or settings problem.
The settings are those of `idgate serve` (flags, IDGATE_* variables, --config);
--upstream is not needed. Keys are fetched live from each issuer.")]
pub struct CheckArgs {
    /// The token (the text after `Bearer `). Absent or `-`: read from stdin,
    /// which keeps it out of the shell history.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The request's method, for IAM conditions on `request.method`.
    #[arg(long, value_name = "METHOD", default_value = "GET")]
    pub method: String,

    /// The request's path, for public paths and conditions on `request.path`.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub path: String,

    /// The request's host, for conditions on `request.host`.
    #[arg(long, value_name = "HOST", default_value = "")]
    pub host: String,

    /// text (one aligned line per step) or json (one object, for scripts).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The settings.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Checked and fine.
    Pass,
    /// Where the decision was made against the caller.
    Fail,
    /// Not reached: an earlier step decided.
    Skip,
}

/// One line of the explanation.
#[derive(Debug, Clone)]
pub struct Step {
    /// `credential`, `header`, `issuer`, `key`, `signature`, `exp`, `nbf`,
    /// `iat`, `lifetime`, `audience`, `principal` or `policy`.
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was seen, and why it failed.
    pub detail: String,
}

/// The whole explanation and the decision.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every step, in the order the gate takes them.
    pub steps: Vec<Step>,
    /// Allowed or not.
    pub allowed: bool,
    /// The reason code when denied.
    pub reason: Option<Reason>,
    /// Why, in words.
    pub explanation: String,
    /// The verified caller, as IAM names it.
    pub principal: Option<String>,
    /// The binding that allowed the request.
    pub grant: Option<Grant>,
}

/// The steps in the gate's order; a verifier rejection falls on one of them.
const STEPS: [&str; 12] = [
    "credential",
    "header",
    "issuer",
    "key",
    "signature",
    "exp",
    "nbf",
    "iat",
    "lifetime",
    "audience",
    "principal",
    "policy",
];

/// Runs `check`.
pub fn run(args: CheckArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    let loaded = match load_settings(&args.settings, env) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("idgate: {errors}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    let raw = match args.token.as_deref() {
        Some(t) if t != "-" => t.to_owned(),
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the token from stdin (paste it, then Ctrl-D)");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the token from stdin")?;
            s
        }
    };
    // The method as `serve` would take it: a lower-case letter is refused
    // there before the gate, so judging it here would say what never happens.
    if crate::headers::canonical_method(args.method.as_bytes()).is_none() {
        eprintln!(
            "idgate: --method {:?}: idgate serve refuses it (400 invalid_method: not a method, \
             or one with a lower-case letter); give {:?}",
            args.method,
            args.method.to_ascii_uppercase()
        );
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    let Some(token) = bare_token(&raw) else {
        eprintln!("idgate: no token: give --token TOKEN or pipe it on stdin");
        return Ok(ExitCode::from(super::EXIT_USAGE));
    };
    if args.format == Format::Text {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let request = Request {
        method: args.method.clone(),
        path: args.path.clone(),
        host: args.host.clone(),
    };
    let report = match runtime.block_on(examine(&loaded.settings, token, &request)) {
        Ok(r) => r,
        Err(problems) => {
            eprintln!("idgate: {problems}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", report.json(&request)),
    }
    Ok(if report.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The settings as `serve` loads them, without needing `--upstream`: when
/// the only thing missing is the upstream, a placeholder stands in (check
/// never forwards anything).
fn load_settings(args: &SettingsArgs, env: &dyn Env) -> Result<config::Loaded, ConfigErrors> {
    match config::load(args, env) {
        Ok(l) => Ok(l),
        Err(ConfigErrors(errors))
            if errors
                .iter()
                .any(|e| matches!(e, ConfigError::MissingUpstream)) =>
        {
            let mut with_upstream = args.clone();
            with_upstream.upstream = Some("http://127.0.0.1:9".into());
            config::load(&with_upstream, env)
        }
        Err(e) => Err(e),
    }
}

/// The token without surrounding whitespace or a `Bearer ` prefix (so a
/// pasted header value works too); `None` when nothing is left.
fn bare_token(raw: &str) -> Option<&str> {
    let t = raw.trim();
    let t = match t.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => t,
    };
    (!t.is_empty()).then_some(t)
}

/// What the policy's conditions see of the request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `request.method`.
    pub method: String,
    /// `request.path`.
    pub path: String,
    /// `request.host`.
    pub host: String,
}

/// Where the keys of each configured issuer come from, in words.
fn key_url(settings: &Settings, issuer_name: &str, discovered: Option<&str>) -> String {
    if issuer_name == "google" {
        return settings
            .verifier
            .google_jwks_url
            .clone()
            .unwrap_or_else(|| GOOGLE_CERTS_URL.to_owned());
    }
    match settings
        .verifier
        .issuers
        .iter()
        .find(|i| i.issuer == issuer_name)
        .map(|i| &i.keys)
    {
        Some(KeySource::JwksUrl(url)) => url.clone(),
        Some(KeySource::Discovery) => discovered
            .map(str::to_owned)
            .unwrap_or_else(|| "its discovery document".into()),
        None => "?".into(),
    }
}

/// The configured issuer an `iss` names: its name (the verifier's label)
/// and a description.
fn configured_issuer(settings: &Settings, iss: &str) -> Option<(String, String)> {
    if settings.verifier.google && GOOGLE_ISSUERS.contains(&iss) {
        let keys = key_url(settings, "google", None);
        return Some(("google".into(), format!("Google (keys from {keys})")));
    }
    settings
        .verifier
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .map(|i| {
            let mut d = match &i.keys {
                KeySource::Discovery => "configured with --issuer (keys by discovery)".to_owned(),
                KeySource::JwksUrl(url) => format!("configured with --issuer (keys from {url})"),
            };
            if i.trust_emails {
                d.push_str(", its emails trusted as Google's (--issuer-trust-emails)");
            }
            if let Some(pool) = &i.pool {
                d.push_str(&format!(", pool {pool}"));
            }
            (i.issuer.clone(), d)
        })
}

fn issuer_names(settings: &Settings) -> String {
    let google = settings
        .verifier
        .google
        .then(|| "Google (https://accounts.google.com, accounts.google.com)".to_owned());
    let names: Vec<String> = google
        .into_iter()
        .chain(settings.verifier.issuers.iter().map(|i| i.issuer.clone()))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Which step a verifier rejection belongs to.
fn step_of(rejection: &Rejection, parsed: bool) -> &'static str {
    let d = rejection.detail.as_ref();
    match rejection.reason {
        Reason::TokenTooLarge => "credential",
        Reason::UnsupportedAlgorithm => "header",
        Reason::UnknownIssuer => "issuer",
        Reason::UnknownKey | Reason::KeysUnavailable => "key",
        Reason::BadSignature => "signature",
        Reason::Expired => "exp",
        Reason::NotYetValid => "nbf",
        Reason::IssuedInFuture => "iat",
        Reason::LifetimeTooLong => "lifetime",
        Reason::AudienceMismatch => "audience",
        Reason::MalformedToken if !parsed => "credential",
        Reason::MalformedToken => {
            if d.contains("signature") {
                "signature"
            } else if d.contains("header") || d.contains("crit") {
                "header"
            } else if d.contains("iss") {
                "issuer"
            } else if d.contains("exp is not after iat") {
                "lifetime"
            } else if d.contains("exp") {
                "exp"
            } else if d.contains("nbf") {
                "nbf"
            } else if d.contains("iat") {
                "iat"
            } else if d.contains("sub") {
                "principal"
            } else {
                "credential"
            }
        }
        _ => "credential",
    }
}

/// A claim as a short quoted string for a detail line.
fn quoted(v: Option<&Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => {
            let s = other.to_string();
            if s.len() > 120 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(117).map_or(s.len(), |(i, _)| i)]
                )
            } else {
                s
            }
        }
    }
}

/// A time claim as the verifier reads it (a number past `u64` is not a
/// time there, so it is not one here either).
fn numeric(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_number)
        .and_then(idgate::identity::numeric_date)
}

/// Verifies `token` and decides about it with the policy, as the gate
/// would, explaining each step. `Err` for settings the library refuses
/// (reported like any settings problem).
pub async fn examine(
    settings: &Settings,
    token: &str,
    request: &Request,
) -> Result<Report, String> {
    let clock = SystemClock::new();
    let now = clock.unix_now().as_secs();
    let parsed = UnverifiedToken::parse(token);
    let iss = parsed
        .as_ref()
        .ok()
        .and_then(|t| t.claim_str("iss"))
        .map(str::to_owned);

    // Keys: discover only the token's own issuer; the others get their
    // discovery URL as a placeholder, never fetched.
    let mut discovery_error = None;
    let mut discovered = None;
    if let Some(iss) = &iss
        && let Some(i) = settings.verifier.issuers.iter().find(|i| &i.issuer == iss)
        && i.keys == KeySource::Discovery
    {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(idgate::jwks::redirect_policy())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        match idgate::jwks::discover_jwks_url(&client, iss).await {
            Ok(url) => discovered = Some(url),
            Err(e) => discovery_error = Some(crate::ErrorChain(&e).to_string()),
        }
    }
    let verifier = gate::verifier_builder(settings, |i| match (&iss, &discovered) {
        (Some(t), Some(url)) if t == i => Some(url.clone()),
        _ => None,
    })
    .max_lifetime(MAX_LIFETIME)
    .build()
    .map_err(|e| format!("verifier: {e}"))?;
    let verifier = Arc::new(verifier);
    let (policy, _warnings) = PolicyHandle::new(PolicySources {
        files: settings.policy.files.clone(),
        members: settings.policy.members.clone(),
        groups_file: settings.policy.groups_file.clone(),
        invoker_roles: settings.policy.invoker_roles.clone(),
        pools: settings.policy.pools.clone(),
    })
    .map_err(|e| format!("policy: {}", e.to_string().replace('\n', "; ")))?;
    let policy = Arc::new(policy);
    let mut gate = Gate::builder(verifier.clone(), policy.clone());
    for p in &settings.public_paths {
        gate = gate.public_path(p.clone());
    }
    let gate = gate.build().map_err(|e| format!("gate: {e}"))?;

    let verdict = verifier.verify(token).await;
    let ctx = RequestContext {
        time: UNIX_EPOCH + clock.unix_now(),
        method: &request.method,
        host: &request.host,
        path: &request.path,
    };

    let failed_at = match &verdict {
        Err(r) => Some(step_of(r, parsed.is_ok())),
        Ok(_) => None,
    };
    let failed_index = failed_at.and_then(|s| STEPS.iter().position(|x| *x == s));
    let status_of = |name: &str| -> Status {
        let i = STEPS.iter().position(|x| *x == name).unwrap_or(0);
        match failed_index {
            Some(f) if i < f => Status::Pass,
            Some(f) if i == f => Status::Fail,
            Some(_) => Status::Skip,
            None => Status::Pass,
        }
    };
    let rejection = verdict.as_ref().err();
    // The detail of a step: what was seen, then (when it failed) why.
    let with_failure = |name: &str, seen: String| -> String {
        match rejection {
            Some(r) if failed_at == Some(name) => {
                if seen.is_empty() {
                    r.detail.to_string()
                } else {
                    format!("{seen}: {}", r.detail)
                }
            }
            _ => seen,
        }
    };

    let mut steps = Vec::new();
    let mut push = |name: &'static str, detail: String| {
        steps.push(Step {
            name,
            status: status_of(name),
            detail,
        });
    };

    // Credential.
    let segments = token.split('.').count();
    let form = if segments == 3 {
        "compact JWS (header.payload.signature)".to_owned()
    } else {
        format!("{segments} dot-separated segment(s); a JWS has 3")
    };
    let mut seen = format!(
        "{} bytes (limit {}), {form}",
        token.len(),
        settings.verifier.max_token_bytes
    );
    if let (Err(e), Some(r)) = (&parsed, rejection)
        && r.reason != Reason::TokenTooLarge
        && failed_at == Some("credential")
        && e.detail != r.detail
    {
        seen.push_str(&format!(": {}", e.detail));
    }
    push("credential", with_failure("credential", seen));

    let Ok(t) = &parsed else {
        // Nothing else can be read from a token that does not parse; the
        // policy step is `finish`'s.
        for name in &STEPS[1..STEPS.len() - 1] {
            push(name, "not reached".into());
        }
        return Ok(finish(
            steps, verdict, &policy, &gate, &ctx, request, settings,
        ));
    };

    // The whole header and claims, nested members too: what this report
    // quotes is what the token says.
    let (header, claims) = (t.header.to_map(), t.claims.to_map());

    // Header.
    let mut seen = format!(
        "alg {}, kid {}, typ {}",
        t.header_str("alg").unwrap_or("(none)"),
        quoted(header.get("kid")),
        t.header_str("typ").unwrap_or("(none)")
    );
    let ignored: Vec<&str> = ["jku", "x5u", "jwk", "x5c"]
        .into_iter()
        .filter(|k| header.contains_key(*k))
        .collect();
    if !ignored.is_empty() {
        seen.push_str(&format!("; ignored, never fetched: {}", ignored.join(", ")));
    }
    if let Some(crit) = header.get("crit") {
        seen.push_str(&format!("; crit {crit}"));
    }
    push("header", with_failure("header", seen));

    // Issuer.
    let issuer = iss.as_deref().and_then(|i| configured_issuer(settings, i));
    let seen = match (&iss, &issuer) {
        (Some(i), Some((_, how))) => format!("iss {i:?}: {how}"),
        (Some(i), None) => format!(
            "iss {i:?} is not a configured issuer (configured: {})",
            issuer_names(settings)
        ),
        (None, _) => format!("iss {}", quoted(claims.get("iss"))),
    };
    let seen = if failed_at == Some("issuer") && issuer.is_none() && iss.is_some() {
        // The detail above already says it all.
        seen
    } else {
        with_failure("issuer", seen)
    };
    push("issuer", seen);

    // Key.
    let kid = quoted(header.get("kid"));
    let seen = match &issuer {
        Some((name, _)) => {
            let url = key_url(settings, name, discovered.as_deref());
            let status = verifier
                .stats()
                .issuers
                .into_iter()
                .find(|s| &*s.issuer == name.as_str());
            let count = status.as_ref().map_or(0, |s| s.keys);
            let count = if count == 1 {
                "1 key".to_owned()
            } else {
                format!("{count} keys")
            };
            let mut s = match status_of("key") {
                Status::Fail => format!("kid {kid}, key set from {url} ({count})"),
                Status::Pass => {
                    format!("kid {kid} is in the key set from {url} ({count}, fetched now)")
                }
                Status::Skip => format!("kid {kid}, keys at {url} (not fetched)"),
            };
            if let Some(e) = &discovery_error {
                s.push_str(&format!("; discovery failed: {e}"));
            }
            if status_of("key") == Status::Fail
                && let Some(e) = status.and_then(|s| s.last_error)
            {
                s.push_str(&format!("; last fetch: {e}"));
            }
            s
        }
        None => format!("kid {kid}"),
    };
    push("key", with_failure("key", seen));

    // Signature.
    let seen = match status_of("signature") {
        Status::Pass => format!(
            "{} signature verifies with key {kid}",
            t.header_str("alg").unwrap_or("?")
        ),
        Status::Fail if rejection.map(|r| r.reason) == Some(Reason::BadSignature) => {
            "the token was changed after signing, or signed by another key with this kid".into()
        }
        _ => String::new(),
    };
    push("signature", with_failure("signature", seen));

    // Times.
    let skew = settings.verifier.clock_skew.as_secs();
    let exp = numeric(claims.get("exp"));
    let iat = numeric(claims.get("iat"));
    let nbf = numeric(claims.get("nbf"));
    let time_seen = |name: &str, v: Option<u64>| match v {
        Some(v) => format!("{name} {}", when::at(v, now)),
        None if claims.contains_key(name) => {
            format!("{name} {} is not a time", quoted(claims.get(name)))
        }
        None => format!("no {name} claim"),
    };
    let mut seen = time_seen("exp", exp);
    if failed_at == Some("exp") && rejection.map(|r| r.reason) == Some(Reason::Expired) {
        seen.push_str(&format!(" (clock skew allowed: {skew}s)"));
    }
    push("exp", with_failure("exp", seen));
    push("nbf", with_failure("nbf", time_seen("nbf", nbf)));
    push("iat", with_failure("iat", time_seen("iat", iat)));
    let seen = match (exp, iat) {
        (Some(e), Some(i)) if e > i => format!(
            "{} (exp − iat; at most {}h)",
            when::short(e - i),
            MAX_LIFETIME.as_secs() / 3600
        ),
        (Some(_), Some(_)) => "exp is not after iat".into(),
        _ => "unknown without exp and iat".into(),
    };
    push("lifetime", with_failure("lifetime", seen));

    // Audience.
    let aud = quoted(claims.get("aud"));
    let configured = settings.verifier.audiences.join(", ");
    let seen = match status_of("audience") {
        Status::Pass => format!("aud {aud} is a configured audience"),
        Status::Fail if rejection.is_some_and(|r| r.detail.contains("gcloud")) => {
            format!("aud {aud}")
        }
        Status::Fail => {
            format!("aud {aud} is not one of the configured audiences ({configured})")
        }
        Status::Skip => format!("aud {aud}"),
    };
    let seen = if seen.contains("configured audiences") {
        seen
    } else {
        with_failure("audience", seen)
    };
    push("audience", seen);

    // Principal.
    let seen = match &verdict {
        Ok(id) => principal_detail(id),
        Err(_) => {
            let email = t.claim_str("email").unwrap_or("(none)");
            format!("unverified: email {email:?}")
        }
    };
    push("principal", with_failure("principal", seen));

    Ok(finish(
        steps, verdict, &policy, &gate, &ctx, request, settings,
    ))
}

fn principal_detail(id: &Identity) -> String {
    let p = id.principal().to_string();
    match (id.email(), id.email_verified(), id.is_google()) {
        (Some(e), false, _) => {
            format!("{p} (email {e:?} is not verified: it names no user:/serviceAccount: member)")
        }
        (Some(e), true, false) => format!(
            "{p} (issuer {} is not trusted for emails, so {e:?} names no user: member; see --issuer-trust-emails)",
            id.issuer_name()
        ),
        _ => p,
    }
}

/// The policy step and the decision, as the gate makes it.
fn finish(
    mut steps: Vec<Step>,
    verdict: Result<Identity, Rejection>,
    policy: &PolicyHandle,
    gate: &Gate,
    ctx: &RequestContext<'_>,
    request: &Request,
    settings: &Settings,
) -> Report {
    let policy_step = |status, detail| Step {
        name: "policy",
        status,
        detail,
    };
    if gate.is_public(&request.path) {
        let prefix = settings
            .public_paths
            .iter()
            .find(|p| {
                p.as_str() == "/"
                    || request.path == **p
                    || request
                        .path
                        .starts_with(&format!("{}/", p.trim_end_matches('/')))
            })
            .cloned()
            .unwrap_or_default();
        let why = format!(
            "path {:?} is public (--public-path {prefix}): no token needed",
            request.path
        );
        steps.push(policy_step(Status::Pass, why.clone()));
        return Report {
            steps,
            allowed: true,
            reason: None,
            explanation: why,
            principal: verdict.ok().map(|id| id.principal().to_string()),
            grant: None,
        };
    }
    match verdict {
        Ok(identity) => {
            let principal = identity.principal().to_string();
            match policy.decide(Some(&identity), ctx) {
                Decision::Allowed(grant) => {
                    steps.push(policy_step(Status::Pass, grant_words(&grant)));
                    Report {
                        steps,
                        allowed: true,
                        reason: None,
                        explanation: grant_words(&grant),
                        principal: Some(principal),
                        grant: Some(grant),
                    }
                }
                Decision::Denied(denial) => {
                    steps.push(policy_step(Status::Fail, denial.detail.clone()));
                    Report {
                        steps,
                        allowed: false,
                        reason: Some(denial.reason),
                        explanation: denial.detail,
                        principal: Some(denial.principal.unwrap_or(principal)),
                        grant: None,
                    }
                }
            }
        }
        Err(rejection) => match policy.decide(None, ctx) {
            // allUsers needs no token, so a bad one does not stop the
            // request (the gate's rule).
            Decision::Allowed(grant) => {
                let why = format!(
                    "{}; the token did not verify ({}), but this binding needs none",
                    grant_words(&grant),
                    rejection.reason
                );
                steps.push(policy_step(Status::Pass, why.clone()));
                Report {
                    steps,
                    allowed: true,
                    reason: None,
                    explanation: why,
                    principal: None,
                    grant: Some(grant),
                }
            }
            Decision::Denied(_) => {
                steps.push(policy_step(
                    Status::Skip,
                    "not reached: the token did not verify".into(),
                ));
                Report {
                    steps,
                    allowed: false,
                    reason: Some(rejection.reason),
                    explanation: rejection.detail.into_owned(),
                    principal: None,
                    grant: None,
                }
            }
        },
    }
}

/// `roles/run.invoker for user:a@b.com (policy.json: bindings[0]) if "cond"`.
fn grant_words(g: &Grant) -> String {
    let s = g.to_string();
    s.strip_prefix("allowed by ")
        .map(str::to_owned)
        .unwrap_or(s)
}

impl Report {
    /// One aligned line per step, then the decision.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let mark = match s.status {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            out.push_str(&format!("{:<10}  {mark}  {}\n", s.name, s.detail));
        }
        if self.allowed {
            out.push_str(&format!(
                "{:<10}  ALLOWED  {}\n",
                "decision", self.explanation
            ));
        } else {
            let reason = self.reason.map_or("denied", Reason::as_str);
            out.push_str(&format!(
                "{:<10}  DENIED   {reason}: {}\n",
                "decision", self.explanation
            ));
        }
        out
    }

    /// One JSON object: `decision`, `reason`, `principal`, `binding`,
    /// `steps` (`ok` is `null` for steps not reached), `request`.
    pub fn json(&self, request: &Request) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "step": s.name,
                    "ok": match s.status {
                        Status::Pass => Value::Bool(true),
                        Status::Fail => Value::Bool(false),
                        Status::Skip => Value::Null,
                    },
                    "detail": s.detail,
                })
            })
            .collect();
        json!({
            "decision": if self.allowed { "allowed" } else { "denied" },
            "reason": self.reason.map(Reason::as_str),
            "explanation": self.explanation,
            "principal": self.principal,
            "binding": self.grant.as_ref().map(|g| json!({
                "role": &*g.role,
                "member": &*g.member,
                "condition": g.condition.as_deref(),
                "source": &*g.source,
                "index": g.binding,
            })),
            "request": {
                "method": request.method,
                "path": request.path,
                "host": request.host,
            },
            "steps": steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_verifier_reads_them() {
        use serde_json::json;
        assert_eq!(numeric(Some(&json!(1_750_000_000))), Some(1_750_000_000));
        assert_eq!(numeric(Some(&json!(1.5e9))), Some(1_500_000_000));
        assert_eq!(numeric(Some(&json!(1e20))), None, "past u64: not a time");
        assert_eq!(numeric(Some(&json!(-1))), None);
        assert_eq!(numeric(Some(&json!("1"))), None);
        assert_eq!(numeric(None), None);
    }

    #[test]
    fn bare_tokens() {
        assert_eq!(bare_token("  a.b.c\n"), Some("a.b.c"));
        assert_eq!(bare_token("Bearer a.b.c"), Some("a.b.c"));
        assert_eq!(bare_token("bearer   a.b.c "), Some("a.b.c"));
        assert_eq!(bare_token(" \n"), None);
    }
}
