//! The invoker policy: who may invoke, as Cloud Run's IAM check decides it.
//!
//! The sources are IAM policies exactly as `gcloud run services
//! get-iam-policy SERVICE --format=json` (or its default YAML) prints them,
//! several merged (a service's and its project's), plus members given
//! directly (`--member`, each a `roles/run.invoker` binding). A binding
//! admits its members when its role grants invoke
//! ([`DEFAULT_INVOKER_ROLES`] unless configured) and its condition, if any,
//! holds.
//!
//! | member | matches |
//! |---|---|
//! | `user:EMAIL`, `serviceAccount:EMAIL` | a Google identity with that *verified* email, of that kind (`*.gserviceaccount.com` is a service account) |
//! | `group:EMAIL` | the users and service accounts of the group in the groups file (ID tokens carry no groups) |
//! | `domain:DOMAIN` | a Google identity whose `hd` claim is DOMAIN; never the email's domain |
//! | `allUsers` | anyone, even with no token |
//! | `allAuthenticatedUsers` | any verified Google identity (or one of an issuer whose emails are trusted as Google's); not an extra issuer's pool identities |
//! | `deleted:…` | no one |
//! | `principal://POOL/subject/S` | an identity of the pool's issuer whose `sub` is S |
//! | `principalSet://POOL/attribute.NAME/VALUE` | … whose claim NAME is VALUE, or a list holding it |
//! | `principalSet://POOL/*` | any identity of the pool's issuer |
//!
//! Emails and domains compare ASCII-case-insensitively, with no Unicode
//! folding and no `+tag` or dot stripping. A policy file's members that IAM
//! knows but no verified ID token can name (a GKE Kubernetes service
//! account, a pool no issuer maps to, a pool group, a project's service
//! accounts by number) never match, with a warning. Anything else is a
//! configuration error, reported with its file, binding and member; a policy
//! with errors is never used.
//!
//! Conditions are CEL, compiled by the `cel` crate, over `request.time`,
//! `request.path`, `request.host` and `request.method`. One that fails when
//! evaluated, or gives something other than a bool, does not hold; so does
//! one that reads `request.path` when the path could reach the upstream as
//! another path (dot segments, a `;parameter`, `//`, a backslash, an escaped
//! letter, digit, `.`, `/` or `%`: [`ambiguous_path`]). An
//! expression may be at most 4 KiB long and 32 levels deep, so that no
//! policy file can exhaust a thread's stack.
//!
//! ```
//! use std::time::SystemTime;
//! use idgate::policy::{Decision, Policy, RequestContext};
//! use idgate::{Identity, IssuerTag, Reason};
//!
//! let policy = Policy::from_members(&["user:alice@example.com"])?;
//! let google = IssuerTag { name: "google".into(), google: true, pool: None };
//! let claims = serde_json::json!({
//!     "sub": "1", "email": "Alice@Example.com", "email_verified": true,
//! });
//! let serde_json::Value::Object(claims) = claims else { unreachable!() };
//! let alice = Identity::from_verified_claims(&google, "aud".into(), claims, String::new());
//! let ctx = RequestContext { time: SystemTime::now(), method: "GET", host: "svc", path: "/" };
//!
//! match policy.decide(Some(&alice), &ctx) {
//!     Decision::Allowed(grant) => assert_eq!(&*grant.member, "user:alice@example.com"),
//!     Decision::Denied(denial) => panic!("{denial}"),
//! }
//! let nobody = policy.decide(None, &ctx);
//! assert_eq!(nobody.reason(), Some(Reason::MissingToken));
//! # Ok::<(), idgate::policy::PolicyErrors>(())
//! ```

mod condition;
mod document;
mod error;
mod groups;
mod handle;
mod index;
mod load;
mod member;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use condition::{REQUEST_FIELDS, ambiguous_path};
pub use error::{BindingAt, MEMBER_FLAG_SOURCE, PolicyError, PolicyErrors};
pub use handle::PolicyHandle;
pub use index::Policy;

use crate::clock::Clock;
use crate::reason::Reason;

/// The roles that grant invoke unless configured otherwise: those that
/// carry `run.routes.invoke`.
pub const DEFAULT_INVOKER_ROLES: [&str; 5] = [
    "roles/run.invoker",
    "roles/run.servicesInvoker",
    "roles/run.admin",
    "roles/editor",
    "roles/owner",
];

/// What a condition can see of the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// `request.time`. Take it from a [`Clock`] so that tests can move it.
    pub time: SystemTime,
    /// `request.method`: `GET`, `POST`, … (for gRPC, `POST`).
    pub method: &'a str,
    /// `request.host`: the `Host` header or `:authority`.
    pub host: &'a str,
    /// `request.path`: the path, without the query.
    pub path: &'a str,
}

impl<'a> RequestContext<'a> {
    /// A context whose time is `clock`'s now.
    pub fn from_clock(clock: &dyn Clock, method: &'a str, host: &'a str, path: &'a str) -> Self {
        RequestContext {
            time: UNIX_EPOCH + clock.unix_now(),
            method,
            host,
            path,
        }
    }
}

/// Where the policy comes from.
#[derive(Default, Clone, Debug)]
pub struct PolicySources {
    /// IAM policy files (JSON or YAML, as gcloud prints them), merged.
    pub files: Vec<PathBuf>,
    /// Members given directly; each becomes a binding of
    /// `roles/run.invoker` with no condition.
    pub members: Vec<String>,
    /// The groups file, since ID tokens carry no group membership: each
    /// group's email (optionally written `group:EMAIL`) mapped to its
    /// members, `user:`, `serviceAccount:` or `group:` (nested groups are
    /// flattened at load; a cycle is an error). YAML or JSON:
    ///
    /// ```yaml
    /// eng@example.com:
    ///   - user:alice@example.com
    ///   - group:sre@example.com
    /// sre@example.com:
    ///   - serviceAccount:oncall@my-project.iam.gserviceaccount.com
    /// ```
    pub groups_file: Option<PathBuf>,
    /// The roles that grant invoke; `None` for [`DEFAULT_INVOKER_ROLES`].
    pub invoker_roles: Option<Vec<String>>,
    /// The workload identity pool paths `principal://` and
    /// `principalSet://` members may name, without the scheme
    /// (`iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P`).
    pub pools: Vec<String>,
}

/// A loaded policy and what is worth a warning about it: members that can
/// never match (deleted, groups not in the groups file, a `user:` member
/// naming a service account), empty bindings, conditions lost to a version
/// 1 read.
#[derive(Debug)]
pub struct Loaded {
    /// The policy.
    pub policy: Policy,
    /// One line each, naming the file and binding.
    pub warnings: Vec<String>,
}

impl Policy {
    /// Reads and compiles the policy from its sources. Every problem in
    /// them is reported at once.
    pub fn load(sources: &PolicySources) -> Result<Loaded, PolicyErrors> {
        load::load(sources, None)
    }

    /// [`Policy::load`] with one more policy document, given as bytes as if
    /// read from a file called `name` (whose extension picks JSON or YAML).
    ///
    /// Public only for the fuzz targets in `fuzz/`; not part of the API.
    #[doc(hidden)]
    pub fn load_document(
        sources: &PolicySources,
        name: &str,
        bytes: &[u8],
    ) -> Result<Loaded, PolicyErrors> {
        load::load(sources, Some(load::InMemory { name, bytes }))
    }

    /// A policy of `roles/run.invoker` bindings for these members, as
    /// `--member` flags give them (no pools, no groups file). For tests and
    /// tools.
    pub fn from_members(members: &[&str]) -> Result<Policy, PolicyErrors> {
        let sources = PolicySources {
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            ..PolicySources::default()
        };
        Policy::load(&sources).map(|l| l.policy)
    }
}

/// The outcome of [`Policy::decide`], with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The caller may invoke; the grant says which binding allowed it.
    Allowed(Grant),
    /// The caller may not; the denial says why.
    Denied(Denial),
}

impl Decision {
    /// Whether the caller may invoke.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }

    /// The refusal's reason code, when refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allowed(_) => None,
            Decision::Denied(d) => Some(d.reason),
        }
    }
}

/// The binding that allowed a request. Its text is shared with the policy
/// (`Arc<str>`): a decision copies no strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The binding's role.
    pub role: Arc<str>,
    /// The member that admitted the caller, as written in the binding
    /// (`group:eng@example.com` when the caller is in that group).
    pub member: Arc<str>,
    /// The condition that held: its title, or its expression when untitled.
    pub condition: Option<Arc<str>>,
    /// The file the binding is in, or [`MEMBER_FLAG_SOURCE`].
    pub source: Arc<str>,
    /// The binding's position in its file's `bindings` list (or of its
    /// `--member` flag), from 0.
    pub binding: usize,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// [`Reason::MissingToken`] with no identity,
    /// [`Reason::EmailUnverified`] when the token's email is not verified,
    /// else [`Reason::NotAllowed`].
    pub reason: Reason,
    /// How IAM names the caller (`user:…`, `principal://…`), when there is
    /// one.
    pub principal: Option<String>,
    /// What was looked for and why nothing matched, including the
    /// conditions that did not hold.
    pub detail: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allowed by {} for {} (", self.role, self.member)?;
        if *self.source == *MEMBER_FLAG_SOURCE {
            write!(f, "{}[{}])", self.source, self.binding)?;
        } else {
            write!(f, "{}: bindings[{}])", self.source, self.binding)?;
        }
        if let Some(c) = &self.condition {
            write!(f, " if {c:?}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allowed(g) => g.fmt(f),
            Decision::Denied(d) => write!(f, "denied: {d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        assert_send_sync::<Policy>();
        assert_send_sync::<PolicyHandle>();
        assert_send_sync::<PolicyErrors>();
    }
}
