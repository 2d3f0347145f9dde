//! The compiled policy: members indexed by what an identity can be looked
//! up by, so a decision costs a few hash lookups whatever the policy's size,
//! and conditions run only on the bindings that name the caller.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use smallvec::SmallVec;

use super::condition::{Condition, Outcome, request_context};
use super::error::BindingAt;
use super::groups::Groups;
use super::member::Member;
use super::{Decision, Denial, Grant, RequestContext};
use crate::identity::{Identity, PrincipalRef};
use crate::reason::Reason;

/// A compiled invoker policy: immutable, cheap to share (`Send + Sync`),
/// built by [`Policy::load`] or [`Policy::from_members`].
///
/// Only bindings whose role grants invoke are kept; the others cannot
/// change a decision.
pub struct Policy {
    bindings: Vec<Binding>,
    users: HashMap<String, Vec<Entry>>,
    service_accounts: HashMap<String, Vec<Entry>>,
    domains: HashMap<String, Vec<Entry>>,
    all_users: Vec<Entry>,
    all_authenticated: Vec<Entry>,
    pools: HashMap<String, PoolIndex>,
    member_count: usize,
}

struct Binding {
    source: Arc<str>,
    index: usize,
    role: Arc<str>,
    condition: Option<Condition>,
}

/// One way a binding names someone: the binding, and the member as written
/// (for a group, the `group:` member, not the user found in it).
#[derive(Clone)]
struct Entry {
    binding: usize,
    member: Arc<str>,
}

/// The entries that may admit one caller, in the order they are tried.
type Candidates<'a> = SmallVec<[&'a Entry; 8]>;

#[derive(Default)]
struct PoolIndex {
    subjects: HashMap<String, Vec<Entry>>,
    all: Vec<Entry>,
    /// attribute name → value → entries.
    attributes: HashMap<String, HashMap<String, Vec<Entry>>>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("bindings", &self.bindings.len())
            .field("members", &self.member_count)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Policy`] binding by binding.
pub(super) struct Builder {
    policy: Policy,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            policy: Policy {
                bindings: Vec::new(),
                users: HashMap::new(),
                service_accounts: HashMap::new(),
                domains: HashMap::new(),
                all_users: Vec::new(),
                all_authenticated: Vec::new(),
                pools: HashMap::new(),
                member_count: 0,
            },
        }
    }

    /// Adds a binding that grants invoke; its members follow with
    /// [`Builder::add_member`].
    pub fn add_binding(&mut self, at: &BindingAt, condition: Option<Condition>) -> usize {
        let id = self.policy.bindings.len();
        self.policy.bindings.push(Binding {
            source: at.file.as_str().into(),
            index: at.index,
            role: at.role.as_str().into(),
            condition,
        });
        id
    }

    /// Indexes one member of a binding. A `group:` member is indexed under
    /// each user and service account of the flattened group. Returns a
    /// note when the member can match no one.
    pub fn add_member(
        &mut self,
        binding: usize,
        raw: &str,
        member: Member,
        groups: Option<&Groups>,
    ) -> Option<String> {
        let p = &mut self.policy;
        p.member_count += 1;
        let entry = Entry {
            binding,
            member: Arc::from(raw),
        };
        match member {
            Member::User(e) => p.users.entry(e).or_default().push(entry),
            Member::ServiceAccount(e) => p.service_accounts.entry(e).or_default().push(entry),
            Member::Domain(d) => p.domains.entry(d).or_default().push(entry),
            Member::AllUsers => p.all_users.push(entry),
            Member::AllAuthenticatedUsers => p.all_authenticated.push(entry),
            Member::Deleted | Member::Unmatchable => {}
            Member::Principal { pool, subject } => p
                .pools
                .entry(pool)
                .or_default()
                .subjects
                .entry(subject)
                .or_default()
                .push(entry),
            Member::PrincipalSetAll { pool } => p.pools.entry(pool).or_default().all.push(entry),
            Member::PrincipalSetAttribute {
                pool,
                attribute,
                value,
            } => p
                .pools
                .entry(pool)
                .or_default()
                .attributes
                .entry(attribute)
                .or_default()
                .entry(value)
                .or_default()
                .push(entry),
            Member::Group(g) => {
                let Some(groups) = groups else {
                    return Some("matches no one: no groups file is configured".into());
                };
                let Some(flat) = groups.flat.get(&g) else {
                    return Some(format!(
                        "matches no one: the group is not defined in {}",
                        groups.file
                    ));
                };
                for u in &flat.users {
                    p.users.entry(u.clone()).or_default().push(entry.clone());
                }
                for sa in &flat.service_accounts {
                    p.service_accounts
                        .entry(sa.clone())
                        .or_default()
                        .push(entry.clone());
                }
                if flat.users.is_empty() && flat.service_accounts.is_empty() {
                    return Some("matches no one: the group is empty".into());
                }
            }
        }
        None
    }

    pub fn finish(self) -> Policy {
        self.policy
    }
}

impl Policy {
    /// Decides whether `identity` (`None`: the request had no token) may
    /// invoke, for the request described by `ctx`.
    ///
    /// Unconditional bindings are tried before conditional ones, each group
    /// in file order; the first that admits the caller is the [`Grant`].
    pub fn decide(&self, identity: Option<&Identity>, ctx: &RequestContext<'_>) -> Decision {
        // On the stack for any caller named by up to eight entries.
        let mut candidates: Candidates<'_> = SmallVec::new();
        if let Some(id) = identity {
            self.candidates(id, &mut candidates);
        }
        candidates.extend(&self.all_users);
        // The sort is stable and candidates come most specific first, so a
        // binding that names the caller both as `user:…` and as
        // `allAuthenticatedUsers` is explained by the former.
        let conditional = |e: &&Entry| self.binding(e).condition.is_some();
        candidates.sort_by_key(|e| (conditional(e), e.binding));
        candidates.dedup_by_key(|e| e.binding);

        let mut context = None;
        let mut unmet = Vec::new();
        for entry in candidates {
            let binding = self.binding(entry);
            let Some(condition) = &binding.condition else {
                return Decision::Allowed(self.grant(entry, None));
            };
            let context = context.get_or_insert_with(|| request_context(ctx));
            match condition.evaluate(context, ctx.path) {
                Outcome::True => {
                    return Decision::Allowed(self.grant(entry, Some(condition.name.clone())));
                }
                Outcome::False => unmet.push(format!(
                    "{} {} if {:?} ({}): false",
                    binding.role, entry.member, condition.name, binding.source
                )),
                Outcome::Failed(why) => unmet.push(format!(
                    "{} {} if {:?} ({}): {why}",
                    binding.role, entry.member, condition.name, binding.source
                )),
            }
        }
        Decision::Denied(deny(identity, unmet))
    }

    /// The entries that name `id`, most specific first: the hash lookups
    /// this whole module is built for.
    fn candidates<'a>(&'a self, id: &Identity, out: &mut Candidates<'a>) {
        if id.is_google() {
            // The principal is a user or service account only for a
            // verified email, and tells the two apart.
            let (map, email) = match id.principal_ref() {
                PrincipalRef::User(e) => (&self.users, Some(e)),
                PrincipalRef::ServiceAccount(e) => (&self.service_accounts, Some(e)),
                PrincipalRef::Subject(..) => (&self.users, None),
            };
            if let Some(entries) = email.and_then(|e| map.get(&*ascii_lowercase(e))) {
                out.extend(entries);
            }
            // `hd` only: anyone can register a consumer account with an
            // email on any domain, but only Workspace sets `hd`.
            if let Some(entries) = id
                .hosted_domain()
                .and_then(|hd| self.domains.get(&*ascii_lowercase(hd)))
            {
                out.extend(entries);
            }
        }
        // An issuer's pool names its callers whether or not their emails
        // are also trusted (`--issuer-trust-emails`).
        if let Some(pool) = id.pool().and_then(|p| self.pools.get(p)) {
            if let Some(entries) = pool.subjects.get(id.subject()) {
                out.extend(entries);
            }
            for (name, values) in &pool.attributes {
                match id.claims().get(name) {
                    Some(Value::String(s)) => out.extend(values.get(s).into_iter().flatten()),
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Value::String(s) = item {
                                out.extend(values.get(s).into_iter().flatten());
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.extend(&pool.all);
        }
        // IAM's `allAuthenticatedUsers` is anyone signed in with a Google
        // account or a service account: not every workflow an extra issuer
        // (a CI provider) signs for, which may set any audience it likes.
        // `principalSet://POOL/*` admits a whole pool.
        if id.is_google() {
            out.extend(&self.all_authenticated);
        }
    }

    fn binding(&self, e: &Entry) -> &Binding {
        &self.bindings[e.binding]
    }

    fn grant(&self, e: &Entry, condition: Option<Arc<str>>) -> Grant {
        let b = self.binding(e);
        Grant {
            role: b.role.clone(),
            member: e.member.clone(),
            condition,
            source: b.source.clone(),
            binding: b.index,
        }
    }

    /// How many bindings grant invoke (bindings of other roles are not
    /// kept).
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// How many members those bindings list, as written (a `group:` member
    /// counts once, however many people it holds).
    pub fn member_count(&self) -> usize {
        self.member_count
    }
}

/// The policy's keys are lowercase; most emails and domains already are,
/// and are looked up without a copy.
fn ascii_lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn deny(identity: Option<&Identity>, unmet: Vec<String>) -> Denial {
    let principal = identity.map(Identity::principal_string);
    let named = principal.as_deref().unwrap_or("allUsers");
    let mut detail = match identity.and_then(|id| id.email().filter(|_| !id.email_verified())) {
        Some(email) => format!(
            "the token's email {email} is not verified (email_verified is not true), \
             so no user:, serviceAccount: or group: member can match; "
        ),
        None if identity.is_none() => "no token; ".to_owned(),
        // A Google service account's ID token carries its email only when
        // asked for: without it, the caller can only be named by subject.
        None if identity.is_some_and(|id| id.is_google() && id.email().is_none()) => {
            "the token has no email claim, so no user: or serviceAccount: member can match \
             (a Google service account's token has one only when minted with \
             --include-email, or includeEmail in generateIdToken); "
                .to_owned()
        }
        None => String::new(),
    };
    if unmet.is_empty() {
        detail.push_str(&format!("no binding that grants invoke names {named}"));
    } else {
        detail.push_str(&format!(
            "the bindings that name {named} are conditional, and no condition held: {}",
            unmet.join("; ")
        ));
    }
    let reason = match identity {
        None => Reason::MissingToken,
        Some(id) if id.email().is_some() && !id.email_verified() => Reason::EmailUnverified,
        Some(_) => Reason::NotAllowed,
    };
    Denial {
        reason,
        principal,
        detail,
    }
}
