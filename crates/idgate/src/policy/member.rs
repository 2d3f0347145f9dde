//! IAM member strings (`user:…`, `principalSet://…`) and what they name.

use crate::identity::is_service_account_email;

/// A member, parsed. Emails and domains are ASCII-lowercased here, once, so
/// lookups compare ASCII-case-insensitively without Unicode folding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Member {
    User(String),
    ServiceAccount(String),
    Group(String),
    Domain(String),
    AllUsers,
    AllAuthenticatedUsers,
    /// `deleted:…`: IAM keeps these until the binding is edited; they never
    /// match, not even a new account that reuses the email.
    Deleted,
    /// A member IAM accepts that no ID token idgate verifies can name (a
    /// GKE Kubernetes service account, another pool, a pool group, a
    /// project's service accounts by number): in a policy file only.
    Unmatchable,
    Principal {
        pool: String,
        subject: String,
    },
    PrincipalSetAttribute {
        pool: String,
        attribute: String,
        value: String,
    },
    PrincipalSetAll {
        pool: String,
    },
}

/// What parsing a member found: the member, and a note when it is valid but
/// can never match.
#[derive(Debug)]
pub(super) struct Parsed {
    pub member: Member,
    pub warning: Option<String>,
}

/// Parses a member of a policy binding. `pools` are the configured pool
/// paths; a principal of another pool is an error, since no identity can
/// ever carry it.
pub(super) fn parse_member(raw: &str, pools: &[String]) -> Result<Parsed, String> {
    let ok = |member| {
        Ok(Parsed {
            member,
            warning: None,
        })
    };
    if raw.trim() != raw {
        return Err("has surrounding whitespace".into());
    }
    match raw {
        "allUsers" => return ok(Member::AllUsers),
        "allAuthenticatedUsers" => return ok(Member::AllAuthenticatedUsers),
        _ => {}
    }
    for special in ["allUsers", "allAuthenticatedUsers"] {
        if raw.eq_ignore_ascii_case(special) {
            return Err(format!("unknown member (IAM spells it {special})"));
        }
    }
    if let Some(rest) = raw.strip_prefix("principal://") {
        return parse_principal(rest, pools).map(|member| Parsed {
            member,
            warning: None,
        });
    }
    if let Some(rest) = raw.strip_prefix("principalSet://") {
        return parse_principal_set(rest, pools).map(|member| Parsed {
            member,
            warning: None,
        });
    }
    let Some((kind, value)) = raw.split_once(':') else {
        return Err(
            "unknown member (expected user:, serviceAccount:, group:, domain:, deleted:, \
             principal://, principalSet://, allUsers or allAuthenticatedUsers)"
                .into(),
        );
    };
    match kind {
        "user" => {
            let email = email(value)?;
            let warning = is_service_account_email(&email).then(|| {
                "names a service account, which never matches a user: member; \
                 write serviceAccount: instead"
                    .to_owned()
            });
            Ok(Parsed {
                member: Member::User(email),
                warning,
            })
        }
        "serviceAccount" => {
            let email = email(value)?;
            let warning = (!is_service_account_email(&email)).then(|| {
                "is not a service account email (*.gserviceaccount.com), so it never matches"
                    .to_owned()
            });
            Ok(Parsed {
                member: Member::ServiceAccount(email),
                warning,
            })
        }
        "group" => ok(Member::Group(email(value)?)),
        "domain" => ok(Member::Domain(domain(value)?)),
        "deleted" => {
            parse_deleted(value)?;
            Ok(Parsed {
                member: Member::Deleted,
                warning: Some("is a deleted principal, which never matches".into()),
            })
        }
        "projectOwner" | "projectEditor" | "projectViewer" => Err(format!(
            "{kind}: members are not supported: an ID token says nothing about project roles"
        )),
        _ => Err(format!("unknown member type {kind:?}")),
    }
}

/// Parses a member of a policy file. The file is a policy IAM accepted
/// (a project's holds members for every role, from every pool), so a
/// member of a kind IAM knows that no ID token idgate verifies can name is
/// a warning that it never matches rather than an error that refuses the
/// whole policy. Typos and unknown kinds are still errors; `--member`
/// flags, written for idgate, use [`parse_member`].
pub(super) fn parse_file_member(raw: &str, pools: &[String]) -> Result<Parsed, String> {
    let error = match parse_member(raw, pools) {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    let never = |why: String| {
        Ok(Parsed {
            member: Member::Unmatchable,
            warning: Some(why),
        })
    };
    if let Some(ksa) = raw.strip_prefix("serviceAccount:")
        && let Some((project, rest)) = ksa.split_once(".svc.id.goog[")
        && let Some(name) = rest.strip_suffix(']')
        && !project.is_empty()
        && name
            .split_once('/')
            .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
    {
        return never(
            "is a Kubernetes service account (GKE Workload Identity), which has no ID token \
             of its own: it never matches"
                .into(),
        );
    }
    if let Some(rest) = raw.strip_prefix("principalSet://cloudresourcemanager.googleapis.com/")
        && let [kind, number, "type", "ServiceAccount"] = rest.split('/').collect::<Vec<_>>()[..]
        && matches!(kind, "projects" | "folders" | "organizations")
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
    {
        return never(
            "names service accounts by project, folder or organization number, which an ID \
             token does not carry: it never matches (name the service accounts instead)"
                .into(),
        );
    }
    let set = raw.strip_prefix("principalSet://");
    let pooled = set.or_else(|| raw.strip_prefix("principal://"));
    if let Some((pool, tail)) = pooled.and_then(pool_and_tail) {
        // Sets that ID tokens cannot show membership of (Google groups, GKE
        // namespaces and clusters), whatever the pool.
        let unshowable = set.is_some()
            && ["group/", "namespace/", "kubernetes.cluster/"]
                .iter()
                .any(|kind| tail.len() > kind.len() && tail.starts_with(kind));
        if unshowable {
            return never(format!(
                "names a set of pool {pool:?} that ID tokens do not show membership of: \
                 it never matches"
            ));
        }
        // Well formed for its own pool, which is not configured. A typo in
        // it is still an error.
        if !pools.iter().any(|p| p == pool) && parse_member(raw, &[pool.to_owned()]).is_ok() {
            return never(format!(
                "is of pool {pool:?}, which no --issuer-pool names: it never matches"
            ));
        }
    }
    Err(error)
}

/// A workload or workforce identity pool's path at the start of `rest`
/// (`…/workloadIdentityPools/P`, `…/workforcePools/P`), and what follows it.
fn pool_and_tail(rest: &str) -> Option<(&str, &str)> {
    let at = ["/workloadIdentityPools/", "/workforcePools/"]
        .iter()
        .find_map(|m| rest.find(m).map(|i| i + m.len()))?;
    let end = at + rest[at..].find('/')?;
    let (pool, tail) = (&rest[..end], &rest[end + 1..]);
    (end > at && !tail.is_empty()).then_some((pool, tail))
}

/// Parses a member of a group in the groups file: users, service accounts
/// and other groups only, as in Google Groups.
pub(super) fn parse_group_member(raw: &str) -> Result<Parsed, String> {
    match raw.split_once(':') {
        Some(("user" | "serviceAccount" | "group", _)) => parse_member(raw, &[]),
        _ => Err("a group holds only user:, serviceAccount: and group: members".into()),
    }
}

/// Checks an email enough to catch slips (an empty one, a missing `@`,
/// stray spaces) without pretending to validate RFC 5321, and lowercases
/// it in ASCII only: IAM compares emails case-insensitively, but `K` (the
/// Kelvin sign) is not `k`.
pub(super) fn email(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty email".into());
    }
    let Some((local, host)) = value.split_once('@') else {
        return Err("not an email (no @)".into());
    };
    if local.is_empty() || host.is_empty() || host.contains('@') {
        return Err("not an email".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("email contains whitespace".into());
    }
    Ok(value.to_ascii_lowercase())
}

fn domain(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty domain".into());
    }
    if value.contains('@') {
        return Err("a domain: member names a domain, not an email".into());
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err("not a domain name".into());
    }
    Ok(value.to_ascii_lowercase())
}

/// `deleted:user:EMAIL?uid=N`, `deleted:serviceAccount:…`, `deleted:group:…`.
fn parse_deleted(value: &str) -> Result<(), String> {
    let (kind, rest) = value
        .split_once(':')
        .ok_or("expected deleted:user:, deleted:serviceAccount: or deleted:group:")?;
    if !matches!(kind, "user" | "serviceAccount" | "group") {
        return Err(format!("unknown deleted member type {kind:?}"));
    }
    let (addr, uid) = match rest.split_once("?uid=") {
        Some((addr, uid)) => (addr, Some(uid)),
        None => (rest, None),
    };
    email(addr)?;
    if uid == Some("") {
        return Err("empty uid".into());
    }
    Ok(())
}

/// `principal://POOL/subject/SUBJECT`.
fn parse_principal(rest: &str, pools: &[String]) -> Result<Member, String> {
    let (pool, subject) = rest
        .split_once("/subject/")
        .ok_or("expected principal://POOL/subject/SUBJECT")?;
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    Ok(Member::Principal {
        pool: known_pool(pool, pools)?,
        subject: subject.to_owned(),
    })
}

/// `principalSet://POOL/attribute.NAME/VALUE` or `principalSet://POOL/*`.
fn parse_principal_set(rest: &str, pools: &[String]) -> Result<Member, String> {
    if let Some(pool) = rest.strip_suffix("/*") {
        return Ok(Member::PrincipalSetAll {
            pool: known_pool(pool, pools)?,
        });
    }
    if let Some((pool, attr)) = rest.split_once("/attribute.") {
        // The value may hold slashes (`attribute.repository/org/repo`); the
        // name may not.
        let (name, value) = attr
            .split_once('/')
            .ok_or("expected principalSet://POOL/attribute.NAME/VALUE")?;
        if name.is_empty() {
            return Err("empty attribute name".into());
        }
        if value.is_empty() {
            return Err("empty attribute value".into());
        }
        return Ok(Member::PrincipalSetAttribute {
            pool: known_pool(pool, pools)?,
            attribute: name.to_owned(),
            value: value.to_owned(),
        });
    }
    if rest.contains("/group/") {
        return Err(
            "principalSet group members are not supported (ID tokens carry no groups); \
             use attribute.NAME/VALUE on a claim"
                .into(),
        );
    }
    Err("expected principalSet://POOL/attribute.NAME/VALUE or principalSet://POOL/*".into())
}

fn known_pool(pool: &str, pools: &[String]) -> Result<String, String> {
    if pool.is_empty() {
        return Err("empty pool".into());
    }
    if pools.iter().any(|p| p == pool) {
        return Ok(pool.to_owned());
    }
    if pools.is_empty() {
        Err(format!(
            "pool {pool:?} is not configured (no pools are configured)"
        ))
    } else {
        Err(format!(
            "pool {pool:?} is not configured (configured: {})",
            pools.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p";

    fn parse(raw: &str) -> Result<Member, String> {
        parse_member(raw, &[POOL.to_owned()]).map(|p| p.member)
    }

    #[test]
    fn kinds() {
        let table: &[(&str, Result<Member, &str>)] = &[
            (
                "user:Alice@Example.COM",
                Ok(Member::User("alice@example.com".into())),
            ),
            (
                "serviceAccount:ci@p.iam.gserviceaccount.com",
                Ok(Member::ServiceAccount(
                    "ci@p.iam.gserviceaccount.com".into(),
                )),
            ),
            ("group:Eng@x.com", Ok(Member::Group("eng@x.com".into()))),
            (
                "domain:Corp.Example.NET",
                Ok(Member::Domain("corp.example.net".into())),
            ),
            ("allUsers", Ok(Member::AllUsers)),
            ("allAuthenticatedUsers", Ok(Member::AllAuthenticatedUsers)),
            ("deleted:user:a@b.c?uid=123", Ok(Member::Deleted)),
            (
                "deleted:serviceAccount:a@p.iam.gserviceaccount.com?uid=1",
                Ok(Member::Deleted),
            ),
            ("deleted:group:g@b.c?uid=9", Ok(Member::Deleted)),
            (
                "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/repo:o/r:ref:refs/heads/main",
                Ok(Member::Principal {
                    pool: POOL.into(),
                    subject: "repo:o/r:ref:refs/heads/main".into(),
                }),
            ),
            (
                "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/attribute.repository/o/r",
                Ok(Member::PrincipalSetAttribute {
                    pool: POOL.into(),
                    attribute: "repository".into(),
                    value: "o/r".into(),
                }),
            ),
            (
                "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/*",
                Ok(Member::PrincipalSetAll { pool: POOL.into() }),
            ),
            ("user:", Err("empty email")),
            ("user:alice", Err("not an email (no @)")),
            ("user:a@b@c", Err("not an email")),
            ("user:a b@c.d", Err("email contains whitespace")),
            (" user:a@b.c", Err("has surrounding whitespace")),
            ("allusers", Err("unknown member (IAM spells it allUsers)")),
            ("domain:", Err("empty domain")),
            (
                "domain:a@b.c",
                Err("a domain: member names a domain, not an email"),
            ),
            ("deleted:user:a@b.c?uid=", Err("empty uid")),
            (
                "deleted:domain:b.c",
                Err("unknown deleted member type \"domain\""),
            ),
            (
                "projectOwner:my-project",
                Err(
                    "projectOwner: members are not supported: an ID token says nothing about project roles",
                ),
            ),
            ("garbage", Err("unknown member (expected")),
            ("robot:x", Err("unknown member type \"robot\"")),
            (
                "principal://other/pool/subject/x",
                Err("pool \"other/pool\" is not configured"),
            ),
            (
                "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/",
                Err("empty subject"),
            ),
            (
                "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/group/g",
                Err("principalSet group members are not supported"),
            ),
            (
                "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/attribute.x",
                Err("expected principalSet://POOL/attribute.NAME/VALUE"),
            ),
        ];
        for (raw, want) in table {
            let got = parse(raw);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{raw}"),
                (Err(w), Err(g)) => {
                    assert!(g.starts_with(w), "{raw}: {g:?} does not start with {w:?}")
                }
                _ => panic!("{raw}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn never_matching_members_warn() {
        let w = |raw| parse_member(raw, &[]).map(|p| p.warning.is_some());
        assert_eq!(w("user:ci@p.iam.gserviceaccount.com"), Ok(true));
        assert_eq!(w("serviceAccount:alice@example.com"), Ok(true));
        assert_eq!(w("deleted:user:a@b.c?uid=1"), Ok(true));
        assert_eq!(w("user:alice@example.com"), Ok(false));
    }

    #[test]
    fn unmatchable_members_of_a_file_warn_and_of_a_flag_fail() {
        let unmatchable = [
            "serviceAccount:my-project.svc.id.goog[ci/runner]",
            "principalSet://cloudresourcemanager.googleapis.com/projects/123/type/ServiceAccount",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/attribute.repository/o/r",
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/subject/x",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/*",
            "principalSet://iam.googleapis.com/locations/global/workforcePools/staff/group/eng",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p.svc.id.goog/namespace/ci",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p.svc.id.goog/kubernetes.cluster/https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/group/g",
        ];
        for raw in unmatchable {
            let parsed = parse_file_member(raw, &[POOL.to_owned()]).unwrap();
            assert_eq!(parsed.member, Member::Unmatchable, "{raw}");
            assert!(parsed.warning.unwrap().contains("never matches"), "{raw}");
            assert!(parse_member(raw, &[POOL.to_owned()]).is_err(), "{raw}");
        }
        // Still errors in a file: malformed, or of no kind IAM has.
        for raw in [
            "serviceAccount:my-project.svc.id.goog[runner]",
            "principalSet://cloudresourcemanager.googleapis.com/projects/abc/type/ServiceAccount",
            "principal://iam.googleapis.com/x/subject/",
            "principalSet://pool/attribute.x",
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/everyone",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/everyone",
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/subject/",
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/group/g",
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/gh/group/",
            "robot:x",
            "allusers",
        ] {
            assert!(parse_file_member(raw, &[POOL.to_owned()]).is_err(), "{raw}");
        }
        // A configured pool's members parse as themselves.
        let own = format!("principal://{POOL}/subject/x");
        assert!(matches!(
            parse_file_member(&own, &[POOL.to_owned()]).unwrap().member,
            Member::Principal { .. }
        ));
    }

    #[test]
    fn group_members_are_restricted() {
        assert!(parse_group_member("user:a@b.c").is_ok());
        assert!(parse_group_member("group:g@b.c").is_ok());
        assert!(parse_group_member("domain:b.c").is_err());
        assert!(parse_group_member("allUsers").is_err());
    }
}
