//! From [`PolicySources`] to a [`Policy`]: read everything, check
//! everything, report every problem at once.

use std::collections::HashSet;
use std::path::Path;

use super::condition::Condition;
use super::document::{BindingSpec, member_flag_bindings, policy_from_bytes, read_policy};
use super::error::{MEMBER_FLAG_SOURCE, PolicyError, PolicyErrors};
use super::groups::{self, Groups};
use super::index::Builder;
use super::member::{Member, parse_file_member, parse_member};
use super::{DEFAULT_INVOKER_ROLES, Loaded, PolicySources};

/// A policy document held in memory rather than in a file: its name (whose
/// extension picks the format) and its bytes.
pub(super) struct InMemory<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

enum Document<'a> {
    File(&'a Path),
    InMemory(&'a InMemory<'a>),
}

pub(super) fn load(
    sources: &PolicySources,
    in_memory: Option<InMemory<'_>>,
) -> Result<Loaded, PolicyErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let roles = invoker_roles(sources.invoker_roles.as_deref(), &mut errors);
    let pools = pools(&sources.pools, &mut errors);
    let groups = sources
        .groups_file
        .as_deref()
        .and_then(|path| groups::load(path, &mut errors, &mut warnings));

    let mut builder = Builder::new();
    let mut compile =
        |specs: Vec<BindingSpec>, errors: &mut Vec<PolicyError>, warnings: &mut Vec<String>| {
            for spec in specs {
                compile_binding(
                    spec,
                    &roles,
                    &pools,
                    groups.as_ref(),
                    &mut builder,
                    errors,
                    warnings,
                );
            }
        };
    let files = sources.files.iter().map(|p| Document::File(p));
    for document in files.chain(in_memory.as_ref().map(Document::InMemory)) {
        let start = errors.len();
        let doc = match document {
            Document::File(path) => read_policy(path, &mut errors),
            Document::InMemory(d) => policy_from_bytes(d.name, d.bytes, &mut errors),
        };
        warnings.extend(doc.warnings);
        let mut file_errors = errors.split_off(start);
        compile(doc.bindings, &mut file_errors, &mut warnings);
        // A file's errors read in binding order, whichever pass found them
        // (the sort is stable: a binding's own errors keep their order).
        file_errors.sort_by_key(|e| e.binding().map(|b| b.index));
        errors.append(&mut file_errors);
    }
    compile(
        member_flag_bindings(&sources.members),
        &mut errors,
        &mut warnings,
    );
    let policy = builder.finish();
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    if policy.binding_count() == 0 {
        warnings.push("no binding grants invoke: every request will be denied".into());
    }
    Ok(Loaded { policy, warnings })
}

fn compile_binding(
    spec: BindingSpec,
    roles: &HashSet<String>,
    pools: &[String],
    groups: Option<&Groups>,
    builder: &mut Builder,
    errors: &mut Vec<PolicyError>,
    warnings: &mut Vec<String>,
) {
    let at = spec.at;
    let from_flag = at.file == MEMBER_FLAG_SOURCE;
    // A `--member` flag means "may invoke", whatever roles are configured.
    if !from_flag && !roles.contains(&at.role) {
        // Version 1 reads of a conditional policy rename the role, so the
        // binding silently stops granting: worth more than a debug line.
        if at.role.contains("_withcond_") {
            warnings.push(format!(
                "{at}: a conditional binding as a version 1 policy shows it; \
                 fetch the policy as version 3 (gcloud does) to keep its condition"
            ));
        }
        // Members of other roles are not checked either: a project policy
        // holds members (other pools, other kinds) that have nothing to do
        // with invoking, and they cannot change a decision.
        tracing::debug!(binding = %at, "role does not grant invoke; binding ignored");
        return;
    }
    let before = errors.len();
    let condition = spec
        .condition
        .as_ref()
        .and_then(|c| match Condition::compile(c) {
            Ok(compiled) => {
                if let Some(w) = &compiled.warning {
                    warnings.push(format!("{at}: condition {:?} {w}", compiled.name));
                }
                Some(compiled)
            }
            Err(problems) => {
                errors.extend(problems.into_iter().map(|message| PolicyError::Condition {
                    at: at.clone(),
                    title: c.name().to_owned(),
                    message,
                }));
                None
            }
        });
    let mut members: Vec<(&str, Member)> = Vec::with_capacity(spec.members.len());
    for raw in &spec.members {
        let parsed = if from_flag {
            parse_member(raw, pools)
        } else {
            parse_file_member(raw, pools)
        };
        match parsed {
            Ok(parsed) => {
                if let Some(w) = parsed.warning {
                    warnings.push(format!("{at}: member {raw:?} {w}"));
                }
                if parsed.member == Member::AllAuthenticatedUsers && !pools.is_empty() {
                    warnings.push(format!(
                        "{at}: member \"allAuthenticatedUsers\" admits Google identities only, \
                         as in IAM, not the callers of --issuer-pool issuers: name them with \
                         principalSet://POOL/* if they are meant"
                    ));
                }
                members.push((raw, parsed.member));
            }
            Err(message) => errors.push(PolicyError::Member {
                at: at.clone(),
                member: raw.clone(),
                message,
            }),
        }
    }
    if spec.members.is_empty() {
        warnings.push(format!("{at}: no members"));
    }
    if errors.len() > before {
        return;
    }
    let binding = builder.add_binding(&at, condition);
    for (raw, member) in members {
        if let Some(w) = builder.add_member(binding, raw, member, groups) {
            warnings.push(format!("{at}: member {raw:?} {w}"));
        }
    }
}

fn invoker_roles(configured: Option<&[String]>, errors: &mut Vec<PolicyError>) -> HashSet<String> {
    let Some(roles) = configured else {
        return DEFAULT_INVOKER_ROLES
            .iter()
            .map(|r| (*r).to_owned())
            .collect();
    };
    if roles.is_empty() {
        errors.push(PolicyError::InvokerRole {
            role: String::new(),
            message: "the list is empty, so nothing could ever be allowed".into(),
        });
    }
    let mut out = HashSet::new();
    for role in roles {
        // Predefined roles, and custom roles of a project or organization.
        let shaped = ["roles/", "projects/", "organizations/"]
            .iter()
            .any(|p| role.len() > p.len() && role.starts_with(p));
        if !shaped || role.chars().any(char::is_whitespace) {
            errors.push(PolicyError::InvokerRole {
                role: role.clone(),
                message: "not a role name (roles/…, projects/…/roles/… or organizations/…/roles/…)"
                    .into(),
            });
            continue;
        }
        out.insert(role.clone());
    }
    out
}

fn pools(configured: &[String], errors: &mut Vec<PolicyError>) -> Vec<String> {
    let mut out = Vec::new();
    for pool in configured {
        let path = pool.trim_end_matches('/');
        let message = if path.is_empty() {
            "empty"
        } else if path.contains("://") {
            "give the pool's path without a scheme (iam.googleapis.com/projects/…/workloadIdentityPools/…)"
        } else if path.chars().any(char::is_whitespace) {
            "contains whitespace"
        } else {
            out.push(path.to_owned());
            continue;
        };
        errors.push(PolicyError::Pool {
            pool: pool.clone(),
            message: message.into(),
        });
    }
    out
}
