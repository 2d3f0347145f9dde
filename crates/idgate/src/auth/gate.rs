//! The whole decision for one request: credential, token, policy.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::HeaderMap;

use crate::credential::{self, CredentialHeader};
use crate::policy::{Decision, Grant, Policy, PolicyHandle, RequestContext};
use crate::verifier::{CacheMiss, Lookup};
use crate::{Identity, Reason, Rejection, Verifier};

/// Which status codes denials get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StatusCodes {
    /// RFC 6750: 401 for a missing or invalid token, 403 for a principal
    /// the policy does not allow, 503 when no keys were ever loaded.
    #[default]
    Rfc6750,
    /// What Cloud Run answers: as RFC 6750, except 403 for a request with
    /// no token at all. For testing locally what production will do.
    CloudRun,
}

/// What the gate decided about a request that may go on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Admission {
    /// The verified caller; `None` when an `allUsers` binding or a public
    /// path let the request in without one.
    pub identity: Option<Identity>,
    /// Which header carried the token that verified.
    pub credential_header: Option<CredentialHeader>,
    /// The binding that allowed the request (`None` on a public path).
    pub grant: Option<Grant>,
    /// Why there is no identity when a binding let the request in without
    /// one (`allUsers`): [`Reason::MissingToken`], or why its token was
    /// refused. `None` with an identity, and on a public path (where no
    /// token is looked at).
    pub anonymous_reason: Option<Reason>,
    /// The gate's status codes, for an answer given further on (the
    /// [`Identity`] extractor's refusal of an anonymous caller).
    pub status_codes: StatusCodes,
}

/// Why the gate refused a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Refusal {
    /// The reason code and its detail.
    pub rejection: Rejection,
    /// The caller, when the token verified but the policy said no.
    pub principal: Option<String>,
}

/// The gate's answer.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Let the request through.
    Allowed(Admission),
    /// Refuse it.
    Denied(Refusal),
}

impl Outcome {
    /// The reason code of a refusal.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Allowed(_) => None,
            Outcome::Denied(r) => Some(r.rejection.reason),
        }
    }
}

/// One decision, as reported to [`GateBuilder::on_decision`] hooks (metrics,
/// audit logs).
#[derive(Debug)]
#[non_exhaustive]
pub struct DecisionEvent<'a> {
    /// The decision.
    pub outcome: &'a Outcome,
    /// Time spent deciding (verification and policy).
    pub elapsed: Duration,
    /// The request method.
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
}

type Hook = Arc<dyn Fn(&DecisionEvent<'_>) + Send + Sync>;

/// The request facts the gate needs: for the layer they come from the
/// request itself; for forward-auth, from the `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Headers carrying the credential.
    pub headers: &'a HeaderMap,
    /// Method of the original request.
    pub method: &'a str,
    /// Host of the original request.
    pub host: &'a str,
    /// Path of the original request (no query).
    pub path: &'a str,
}

/// Verifier + policy + the per-deployment rules around them. Shared by
/// the tower layer, the sidecar's forward-auth endpoint and `idgate check`.
pub struct Gate {
    verifier: Arc<Verifier>,
    policy: Arc<PolicyHandle>,
    public_paths: Vec<String>,
    status_codes: StatusCodes,
    hooks: Vec<Hook>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("verifier", &self.verifier)
            .field("public_paths", &self.public_paths)
            .field("status_codes", &self.status_codes)
            .finish_non_exhaustive()
    }
}

/// Problems in a gate's configuration, all of them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid auth layer configuration: {}", .0.join("; "))]
pub struct GateConfigError(pub Vec<String>);

/// Builds a [`Gate`] (and from it an [`AuthLayer`](super::AuthLayer)).
#[must_use]
pub struct GateBuilder {
    verifier: Arc<Verifier>,
    policy: Arc<PolicyHandle>,
    public_paths: Vec<String>,
    status_codes: StatusCodes,
    hooks: Vec<Hook>,
}

impl GateBuilder {
    /// A gate over this verifier and policy.
    pub fn new(verifier: Arc<Verifier>, policy: Arc<PolicyHandle>) -> Self {
        GateBuilder {
            verifier,
            policy,
            public_paths: Vec::new(),
            status_codes: StatusCodes::default(),
            hooks: Vec::new(),
        }
    }

    /// Let requests under this path prefix through without a token. The
    /// prefix matches whole segments: `/public` covers `/public` and
    /// `/public/x`, not `/publicity`; `/` covers every path. No identity is
    /// attached on them. A request path the upstream could read as another
    /// one is never public, whatever the prefix: one with a `%` escape (of
    /// any character, so that no decoder can turn it into `..` or `/`), a
    /// `;`, `\`, `//` or a dot segment goes through the gate as any other
    /// path, and without a token gets 401. A prefix with `%`,
    /// `\`, `//`, `?`, `#` or dot segments is refused by
    /// [`GateBuilder::build`]: no request path could match it.
    pub fn public_path(mut self, prefix: impl Into<String>) -> Self {
        self.public_paths.push(prefix.into());
        self
    }

    /// Which status codes denials get.
    pub fn status_codes(mut self, codes: StatusCodes) -> Self {
        self.status_codes = codes;
        self
    }

    /// Call `hook` after every decision (metrics, audit). Hooks run on the
    /// request path: keep them cheap.
    pub fn on_decision(
        mut self,
        hook: impl Fn(&DecisionEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Check the settings and build the gate.
    pub fn build(self) -> Result<Gate, GateConfigError> {
        let mut problems = Vec::new();
        for p in &self.public_paths {
            if let Some(problem) = public_path_problem(p) {
                problems.push(format!(
                    "public path {p:?} {problem} (no request path could match it)"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(GateConfigError(problems));
        }
        let public_paths = self
            .public_paths
            .into_iter()
            .map(|p| {
                if p.len() > 1 {
                    p.trim_end_matches('/').to_owned()
                } else {
                    p
                }
            })
            .collect();
        Ok(Gate {
            verifier: self.verifier,
            policy: self.policy,
            public_paths,
            status_codes: self.status_codes,
            hooks: self.hooks,
        })
    }
}

/// Why `prefix` cannot be a public path prefix, if it cannot: one no
/// request path could match ([`Gate::is_public`] never lets such a path
/// through).
pub fn public_path_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        Some("must start with /")
    } else if prefix.contains(['%', '\\', '?', '#']) || prefix.contains("//") {
        Some("must not contain %, \\, ?, # or //")
    } else if prefix.split('/').any(|seg| seg == "." || seg == "..") {
        Some("must not contain . or .. segments")
    } else {
        None
    }
}

impl Gate {
    /// Start building a gate.
    pub fn builder(verifier: Arc<Verifier>, policy: Arc<PolicyHandle>) -> GateBuilder {
        GateBuilder::new(verifier, policy)
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// The policy handle (for reloads).
    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.policy
    }

    /// Which status codes denials get.
    pub fn status_codes(&self) -> StatusCodes {
        self.status_codes
    }

    /// Whether `path` is under a public prefix.
    pub fn is_public(&self, path: &str) -> bool {
        let under_a_prefix = self.public_paths.iter().any(|p| {
            p == "/"
                || path == p
                || (path.len() > p.len()
                    && path.starts_with(p.as_str())
                    && path.as_bytes()[p.len()] == b'/')
        });
        // A path the upstream could read as another one (dot segments,
        // `;parameters`, `//`, escapes) is never public.
        under_a_prefix && !path.contains('%') && crate::policy::ambiguous_path(path).is_none()
    }

    /// Decide about one request.
    pub async fn check(&self, req: RequestFacts<'_>) -> Outcome {
        match self.check_now(req) {
            Ok(outcome) => outcome,
            Err(pending) => self.check_after_miss(req, pending).await,
        }
    }

    /// The decision, when it can be made without waiting: everything but
    /// a token the verified-token cache does not hold, which needs its
    /// signature checked (and perhaps keys fetched first) by
    /// [`Gate::check_after_miss`]. Reports the decision it makes (hooks,
    /// log) as [`Gate::check`] does.
    ///
    /// The tower layer decides here, in `call`, for nearly every request:
    /// no future to allocate, no copy of the inner service.
    pub(crate) fn check_now(&self, req: RequestFacts<'_>) -> Result<Outcome, Pending> {
        let started = Instant::now();
        let outcome = self.decide_now(&req, started)?;
        self.report(&req, &outcome, started);
        Ok(outcome)
    }

    /// The rest of [`Gate::check_now`]'s work, for the same request.
    pub(crate) async fn check_after_miss(
        &self,
        req: RequestFacts<'_>,
        pending: Pending,
    ) -> Outcome {
        let outcome = self.decide_after_miss(&req, pending).await;
        self.report(&req, &outcome, pending.started);
        outcome
    }

    fn report(&self, req: &RequestFacts<'_>, outcome: &Outcome, started: Instant) {
        let event = DecisionEvent {
            outcome,
            elapsed: started.elapsed(),
            method: req.method,
            path: req.path,
        };
        log_decision(&event);
        for h in &self.hooks {
            h(&event);
        }
    }

    fn decide_now(&self, req: &RequestFacts<'_>, started: Instant) -> Result<Outcome, Pending> {
        if self.is_public(req.path) {
            return Ok(Outcome::Allowed(Admission {
                identity: None,
                credential_header: None,
                grant: None,
                anonymous_reason: None,
                status_codes: self.status_codes,
            }));
        }
        // One reading of the clock for the policy's `request.time` and a
        // cache hit's times (a miss checks the token's times again once it
        // has the key, which may take a fetch).
        let now = self.verifier.clock().unix_now();
        let ctx = context(req, now);
        let policy = self.policy.current();
        // Found, not yet checked against the alphabet: a cache hit is a
        // token that passed that check when it verified, and a miss gets
        // the whole extraction again (`decide_after_miss`).
        let found = credential::find(req.headers, self.verifier.max_token_bytes())
            .and_then(|c| c.ok_or_else(no_token));
        let cred = match found {
            Ok(c) => c,
            Err(rejection) => return Ok(self.anonymous(&policy, &ctx, rejection)),
        };
        match self.verifier.lookup(cred.token, now.as_secs()) {
            Lookup::Hit(identity) => Ok(self.verified(&policy, &ctx, identity, cred.header)),
            Lookup::Refused(rejection) => Ok(self.anonymous(&policy, &ctx, rejection)),
            Lookup::Miss(miss) => Err(Pending { miss, started }),
        }
    }

    async fn decide_after_miss(&self, req: &RequestFacts<'_>, pending: Pending) -> Outcome {
        // The same headers as in `decide_now`, which found a token in them;
        // now its alphabet is checked too.
        let extracted = credential::extract(req.headers, self.verifier.max_token_bytes())
            .and_then(|c| c.ok_or_else(no_token));
        let verified = match extracted {
            Ok(cred) => self
                .verifier
                .verify_miss(cred.token, pending.miss)
                .await
                .map(|identity| (identity, cred.header)),
            Err(rejection) => Err(rejection),
        };
        // The policy and the time as they are once the key is in hand: the
        // wait can be a key fetch (seconds), and a policy reloaded in the
        // meantime (a member removed) applies to this request too.
        let ctx = context(req, self.verifier.clock().unix_now());
        let policy = self.policy.current();
        match verified {
            Ok((identity, header)) => self.verified(&policy, &ctx, identity, header),
            Err(rejection) => self.anonymous(&policy, &ctx, rejection),
        }
    }
}

fn no_token() -> Rejection {
    Rejection::new(Reason::MissingToken, "no bearer token in the request")
}

/// A decision [`Gate::check_now`] could not make without waiting, and what
/// it had worked out, for [`Gate::check_after_miss`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    miss: CacheMiss,
    started: Instant,
}

fn context<'a>(req: &RequestFacts<'a>, now: Duration) -> RequestContext<'a> {
    RequestContext {
        time: UNIX_EPOCH + now,
        method: req.method,
        host: req.host,
        path: req.path,
    }
}

impl Gate {
    /// The request goes on without an identity when `allUsers` lets it: a bad
    /// token does not stop it then. Otherwise refused for `rejection`.
    fn anonymous(
        &self,
        policy: &Policy,
        ctx: &RequestContext<'_>,
        rejection: Rejection,
    ) -> Outcome {
        match policy.decide(None, ctx) {
            Decision::Allowed(grant) => Outcome::Allowed(Admission {
                identity: None,
                credential_header: None,
                grant: Some(grant),
                anonymous_reason: Some(rejection.reason),
                status_codes: self.status_codes,
            }),
            Decision::Denied(_) => Outcome::Denied(Refusal {
                rejection,
                principal: None,
            }),
        }
    }

    /// The policy's answer for a verified caller.
    fn verified(
        &self,
        policy: &Policy,
        ctx: &RequestContext<'_>,
        identity: Identity,
        header: CredentialHeader,
    ) -> Outcome {
        match policy.decide(Some(&identity), ctx) {
            Decision::Allowed(grant) => Outcome::Allowed(Admission {
                identity: Some(identity),
                credential_header: Some(header),
                grant: Some(grant),
                anonymous_reason: None,
                status_codes: self.status_codes,
            }),
            Decision::Denied(denial) => Outcome::Denied(Refusal {
                rejection: Rejection::new(denial.reason, denial.detail),
                principal: denial
                    .principal
                    .or_else(|| Some(identity.principal().to_string())),
            }),
        }
    }
}

/// The longest path or detail a log line carries, in bytes: both can come
/// from the client (a 64 KiB path, an `iss` or `kid` of its choosing), and a
/// refusal is logged at INFO, so a line must not cost as much as a request.
const LOGGED_FIELD_MAX: usize = 512;

/// The longest method a log line carries whole (the longest registered
/// one is 17 bytes).
const LOGGED_METHOD_MAX: usize = 32;

/// `s` cut to at most `max` bytes, at a character boundary.
fn clipped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn log_decision(e: &DecisionEvent<'_>) {
    let path = clipped(e.path, LOGGED_FIELD_MAX);
    // A method is any token the client likes, of any length.
    let method = clipped(e.method, LOGGED_METHOD_MAX);
    match e.outcome {
        Outcome::Allowed(a) => tracing::debug!(
            auth.decision = "allowed",
            auth.principal = a
                .identity
                .as_ref()
                .map(|i| i.principal().to_string())
                .as_deref()
                .unwrap_or("anonymous"),
            auth.role = a.grant.as_ref().map(|g| &*g.role).unwrap_or(""),
            auth.member = a.grant.as_ref().map(|g| &*g.member).unwrap_or(""),
            http.method = method,
            http.path = path,
            elapsed_us = e.elapsed.as_micros() as u64,
            "request allowed"
        ),
        Outcome::Denied(d) => tracing::info!(
            auth.decision = "denied",
            auth.reason = d.rejection.reason.as_str(),
            auth.detail = clipped(&d.rejection.detail, LOGGED_FIELD_MAX),
            auth.principal = d.principal.as_deref().unwrap_or(""),
            http.method = method,
            http.path = path,
            elapsed_us = e.elapsed.as_micros() as u64,
            "request denied"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn logged_fields_are_clipped_at_a_character_boundary() {
        assert_eq!(clipped("/short", 512), "/short");
        let long = "/".repeat(70_000);
        assert_eq!(clipped(&long, 512).len(), 512);
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(clipped("aé", 2), "a");
        assert_eq!(clipped("aé", 3), "aé");
    }
}
