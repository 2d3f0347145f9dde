//! The invoker policy's matching rules, member kind by member kind, with the
//! traps each kind hides.

// Inside `policy` so that `cargo test -p idgate policy` selects them.
mod policy {
    use std::time::Duration;

    use idgate::policy::{Decision, Policy, PolicySources, RequestContext};
    use idgate::{Identity, IssuerTag, ManualClock, Reason};
    use serde_json::{Value, json};

    const POOL: &str = "iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci";
    const OTHER_POOL: &str =
        "iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/other";

    fn identity(tag: IssuerTag, claims: Value) -> Identity {
        let Value::Object(claims) = claims else {
            panic!("claims must be an object")
        };
        Identity::from_verified_claims(
            &tag,
            "https://svc.example.com".into(),
            claims,
            String::new(),
        )
    }

    fn google(claims: Value) -> Identity {
        let tag = IssuerTag {
            name: "google".into(),
            google: true,
            pool: None,
        };
        identity(tag, claims)
    }

    fn pooled(pool: &str, claims: Value) -> Identity {
        let tag = IssuerTag {
            name: "ci".into(),
            google: false,
            pool: Some(pool.into()),
        };
        identity(tag, claims)
    }

    fn verified(email: &str) -> Identity {
        google(json!({"sub": "100", "email": email, "email_verified": true}))
    }

    fn policy(members: &[&str]) -> Policy {
        let sources = PolicySources {
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            pools: vec![POOL.into(), OTHER_POOL.into()],
            ..PolicySources::default()
        };
        match Policy::load(&sources) {
            Ok(l) => l.policy,
            Err(e) => panic!("{members:?}:\n{e}"),
        }
    }

    #[test]
    fn all_authenticated_users_with_pools_configured_is_explained_at_load() {
        let warnings = |pools: Vec<String>| {
            let sources = PolicySources {
                members: vec!["allAuthenticatedUsers".into()],
                pools,
                ..PolicySources::default()
            };
            match Policy::load(&sources) {
                Ok(l) => l.warnings,
                Err(e) => panic!("{e}"),
            }
        };
        let with_pool = warnings(vec![POOL.into()]);
        assert!(
            with_pool
                .iter()
                .any(|w| w.contains("Google identities only")),
            "{with_pool:?}"
        );
        assert!(warnings(Vec::new()).is_empty());
    }

    fn ctx() -> RequestContext<'static> {
        let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
        RequestContext::from_clock(&clock, "GET", "svc.example.com", "/")
    }

    /// What a row expects: allowed by this member, or denied for this reason.
    #[derive(Debug)]
    enum Want {
        Allow(String),
        Deny(Reason),
    }
    use Want::{Allow, Deny};

    fn allow(member: &str) -> Want {
        Allow(member.to_owned())
    }

    #[test]
    fn member_kinds_and_their_traps() {
        let sa = "ci@my-project.iam.gserviceaccount.com";
        let repo_sub = "repo:octo-org/app:ref:refs/heads/main";
        let principal = format!("principal://{POOL}/subject/{repo_sub}");
        let by_repo = format!("principalSet://{POOL}/attribute.repository/octo-org/app");
        let by_team = format!("principalSet://{POOL}/attribute.teams/sre");
        let whole_pool = format!("principalSet://{POOL}/*");
        let sa_member = format!("serviceAccount:{sa}");
        let sa_as_user = format!("user:{sa}");
        let deleted_sa = format!("deleted:serviceAccount:{sa}?uid=1");

        let rows: Vec<(&str, Vec<&str>, Option<Identity>, Want)> = vec![
            // user:
            (
                "user exact",
                vec!["user:alice@corp.example.net"],
                Some(verified("alice@corp.example.net")),
                allow("user:alice@corp.example.net"),
            ),
            (
                "user email case, both ways",
                vec!["user:Alice@Corp.Example.NET"],
                Some(verified("ALICE@corp.example.net")),
                allow("user:Alice@Corp.Example.NET"),
            ),
            (
                "no unicode folding (Kelvin sign is not k)",
                vec!["user:k@corp.example.net"],
                Some(verified("\u{212a}@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "no unicode folding (ß is not ss)",
                vec!["user:strasse@corp.example.net"],
                Some(verified("straße@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "no +tag stripping",
                vec!["user:alice@gmail.com"],
                Some(verified("alice+ci@gmail.com")),
                Deny(Reason::NotAllowed),
            ),
            (
                "no dot stripping",
                vec!["user:alice@gmail.com"],
                Some(verified("a.lice@gmail.com")),
                Deny(Reason::NotAllowed),
            ),
            (
                "other user",
                vec!["user:alice@corp.example.net"],
                Some(verified("mallory@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "email_verified false",
                vec!["user:alice@corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "alice@corp.example.net", "email_verified": false}),
                )),
                Deny(Reason::EmailUnverified),
            ),
            (
                "email_verified the string \"true\"",
                vec!["user:alice@corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "alice@corp.example.net", "email_verified": "true"}),
                )),
                Deny(Reason::EmailUnverified),
            ),
            (
                "email_verified absent",
                vec!["user:alice@corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "alice@corp.example.net"}),
                )),
                Deny(Reason::EmailUnverified),
            ),
            (
                "no email at all",
                vec!["user:alice@corp.example.net"],
                Some(google(json!({"sub": "1"}))),
                Deny(Reason::NotAllowed),
            ),
            (
                "a pool issuer's email is not a Google user",
                vec!["user:alice@corp.example.net"],
                Some(pooled(
                    POOL,
                    json!({"sub": "x", "email": "alice@corp.example.net", "email_verified": true}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "no token",
                vec!["user:alice@corp.example.net"],
                None,
                Deny(Reason::MissingToken),
            ),
            // serviceAccount: vs user:
            (
                "service account",
                vec![&sa_member],
                Some(verified(sa)),
                allow("serviceAccount:ci@my-project.iam.gserviceaccount.com"),
            ),
            (
                "service account case",
                vec!["serviceAccount:CI@my-project.iam.gserviceaccount.com"],
                Some(verified("ci@MY-PROJECT.iam.gserviceaccount.com")),
                allow("serviceAccount:CI@my-project.iam.gserviceaccount.com"),
            ),
            (
                "user: never matches a service account",
                vec![&sa_as_user],
                Some(verified(sa)),
                Deny(Reason::NotAllowed),
            ),
            (
                "serviceAccount: never matches a user",
                vec!["serviceAccount:alice@corp.example.net"],
                Some(verified("alice@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "a look-alike suffix is a user",
                vec!["serviceAccount:ci@gserviceaccount.com.evil.example"],
                Some(verified("ci@gserviceaccount.com.evil.example")),
                Deny(Reason::NotAllowed),
            ),
            // domain:
            (
                "domain by hd",
                vec!["domain:corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "bob@corp.example.net", "email_verified": true, "hd": "corp.example.net"}),
                )),
                allow("domain:corp.example.net"),
            ),
            (
                "domain case",
                vec!["domain:Corp.Example.net"],
                Some(google(
                    json!({"sub": "1", "email": "bob@corp.example.net", "email_verified": true, "hd": "CORP.example.NET"}),
                )),
                allow("domain:Corp.Example.net"),
            ),
            (
                "consumer account on a Workspace domain (no hd)",
                vec!["domain:corp.example.net"],
                Some(verified("bob@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "evilcorp is not corp",
                vec!["domain:corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "eve@evilcorp.example.net", "email_verified": true, "hd": "evilcorp.example.net"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "a subdomain is not the domain",
                vec!["domain:corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "eve@x.corp.example.net", "email_verified": true, "hd": "x.corp.example.net"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "the parent is not the domain",
                vec!["domain:corp.example.net"],
                Some(google(
                    json!({"sub": "1", "email": "eve@example.net", "email_verified": true, "hd": "example.net"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "hd from a non-Google issuer counts for nothing",
                vec!["domain:corp.example.net"],
                Some(pooled(POOL, json!({"sub": "x", "hd": "corp.example.net"}))),
                Deny(Reason::NotAllowed),
            ),
            // allUsers, allAuthenticatedUsers
            (
                "allUsers with no token at all",
                vec!["allUsers"],
                None,
                allow("allUsers"),
            ),
            (
                "allUsers with a token",
                vec!["allUsers"],
                Some(verified("alice@corp.example.net")),
                allow("allUsers"),
            ),
            (
                "allUsers with an unverified email",
                vec!["allUsers"],
                Some(google(json!({"sub": "1", "email": "x@y.z"}))),
                allow("allUsers"),
            ),
            (
                "allAuthenticatedUsers needs a token",
                vec!["allAuthenticatedUsers"],
                None,
                Deny(Reason::MissingToken),
            ),
            (
                "allAuthenticatedUsers: any verified token",
                vec!["allAuthenticatedUsers"],
                Some(google(
                    json!({"sub": "1", "email": "x@y.z", "email_verified": false}),
                )),
                allow("allAuthenticatedUsers"),
            ),
            (
                "allAuthenticatedUsers: not a pool identity (IAM: Google accounts only)",
                vec!["allAuthenticatedUsers"],
                Some(pooled(POOL, json!({"sub": "x"}))),
                Deny(Reason::NotAllowed),
            ),
            // deleted:
            (
                "deleted user",
                vec!["deleted:user:alice@corp.example.net?uid=123456789012345678901"],
                Some(verified("alice@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            (
                "deleted service account",
                vec![&deleted_sa],
                Some(verified(sa)),
                Deny(Reason::NotAllowed),
            ),
            (
                "deleted group",
                vec!["deleted:group:eng@corp.example.net?uid=2"],
                Some(verified("alice@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
            // principal://
            (
                "principal by subject",
                vec![&principal],
                Some(pooled(POOL, json!({"sub": repo_sub}))),
                allow(&principal),
            ),
            (
                "principal: subject is case-sensitive",
                vec![&principal],
                Some(pooled(
                    POOL,
                    json!({"sub": "repo:Octo-org/app:ref:refs/heads/main"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "principal: same subject, other pool",
                vec![&principal],
                Some(pooled(OTHER_POOL, json!({"sub": repo_sub}))),
                Deny(Reason::NotAllowed),
            ),
            (
                "principal: an issuer whose emails are trusted too, email unverified",
                vec![&principal],
                Some(identity(
                    IssuerTag {
                        name: "dev".into(),
                        google: true,
                        pool: Some(POOL.into()),
                    },
                    json!({"sub": repo_sub, "email": "a@b.c", "email_verified": false}),
                )),
                allow(&principal),
            ),
            (
                "principal: same subject, Google",
                vec![&principal],
                Some(google(json!({"sub": repo_sub}))),
                Deny(Reason::NotAllowed),
            ),
            // principalSet://…/attribute.NAME/VALUE
            (
                "attribute string",
                vec![&by_repo],
                Some(pooled(
                    POOL,
                    json!({"sub": "x", "repository": "octo-org/app"}),
                )),
                allow(&by_repo),
            ),
            (
                "attribute value is case-sensitive",
                vec![&by_repo],
                Some(pooled(
                    POOL,
                    json!({"sub": "x", "repository": "octo-org/App"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "attribute absent",
                vec![&by_repo],
                Some(pooled(POOL, json!({"sub": "x"}))),
                Deny(Reason::NotAllowed),
            ),
            (
                "attribute prefix is not a match",
                vec![&by_repo],
                Some(pooled(
                    POOL,
                    json!({"sub": "x", "repository": "octo-org/app-fork"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "attribute array containing it",
                vec![&by_team],
                Some(pooled(POOL, json!({"sub": "x", "teams": ["dev", "sre"]}))),
                allow(&by_team),
            ),
            (
                "attribute array without it",
                vec![&by_team],
                Some(pooled(
                    POOL,
                    json!({"sub": "x", "teams": ["dev", "sre-admins"]}),
                )),
                Deny(Reason::NotAllowed),
            ),
            (
                "attribute nested array does not count",
                vec![&by_team],
                Some(pooled(POOL, json!({"sub": "x", "teams": [["sre"]]}))),
                Deny(Reason::NotAllowed),
            ),
            (
                "attribute in another pool",
                vec![&by_repo],
                Some(pooled(
                    OTHER_POOL,
                    json!({"sub": "x", "repository": "octo-org/app"}),
                )),
                Deny(Reason::NotAllowed),
            ),
            // principalSet://…/*
            (
                "whole pool",
                vec![&whole_pool],
                Some(pooled(POOL, json!({"sub": "anything"}))),
                allow(&whole_pool),
            ),
            (
                "whole pool, other pool",
                vec![&whole_pool],
                Some(pooled(OTHER_POOL, json!({"sub": "anything"}))),
                Deny(Reason::NotAllowed),
            ),
            (
                "whole pool, Google",
                vec![&whole_pool],
                Some(verified("alice@corp.example.net")),
                Deny(Reason::NotAllowed),
            ),
        ];

        let mut failures = Vec::new();
        for (name, members, who, want) in &rows {
            let decision = policy(members).decide(who.as_ref(), &ctx());
            let ok = match (want, &decision) {
                (Allow(m), Decision::Allowed(g)) => *g.member == **m,
                (Deny(r), Decision::Denied(d)) => d.reason == *r,
                _ => false,
            };
            if !ok {
                failures.push(format!("{name}: want {want:?}, got {decision:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn denials_explain_themselves() {
        let p = policy(&["user:alice@corp.example.net"]);
        let Decision::Denied(d) = p.decide(Some(&verified("bob@corp.example.net")), &ctx()) else {
            panic!("bob allowed")
        };
        assert_eq!(d.principal.as_deref(), Some("user:bob@corp.example.net"));
        assert!(
            d.detail.contains("user:bob@corp.example.net"),
            "{}",
            d.detail
        );

        let unverified =
            google(json!({"sub": "7", "email": "alice@corp.example.net", "email_verified": false}));
        let Decision::Denied(d) = p.decide(Some(&unverified), &ctx()) else {
            panic!("unverified allowed")
        };
        assert_eq!(d.reason, Reason::EmailUnverified);
        assert_eq!(d.principal.as_deref(), Some("subject:7"));
        assert!(d.detail.contains("not verified"), "{}", d.detail);

        // A Google token minted without its email (a service account's,
        // without --include-email) says why no email member matched.
        let Decision::Denied(d) = p.decide(Some(&google(json!({"sub": "8"}))), &ctx()) else {
            panic!("no email allowed")
        };
        assert_eq!(d.principal.as_deref(), Some("subject:8"));
        assert!(d.detail.contains("--include-email"), "{}", d.detail);
        let pooled_no_email = pooled(POOL, json!({"sub": "x"}));
        let Decision::Denied(d) = p.decide(Some(&pooled_no_email), &ctx()) else {
            panic!("pool subject allowed")
        };
        assert!(!d.detail.contains("email"), "{}", d.detail);

        let Decision::Denied(d) = p.decide(None, &ctx()) else {
            panic!("no token allowed")
        };
        assert_eq!((d.reason, d.principal), (Reason::MissingToken, None));
    }

    #[test]
    fn grants_name_their_binding() {
        let p = policy(&["user:bob@corp.example.net", "user:alice@corp.example.net"]);
        let Decision::Allowed(g) = p.decide(Some(&verified("alice@corp.example.net")), &ctx())
        else {
            panic!("alice denied")
        };
        assert_eq!(&*g.role, "roles/run.invoker");
        assert_eq!(&*g.member, "user:alice@corp.example.net");
        assert_eq!(&*g.source, "--member");
        assert_eq!(g.binding, 1);
        assert_eq!(g.condition, None);
        assert_eq!(
            g.to_string(),
            "allowed by roles/run.invoker for user:alice@corp.example.net (--member[1])"
        );
        assert_eq!(p.binding_count(), 2);
        assert_eq!(p.member_count(), 2);
    }

    #[test]
    fn the_most_specific_member_explains_a_grant() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let path = dir.path().join("p.json");
        let text = json!({"bindings": [{"members": [
            "allUsers", "allAuthenticatedUsers", "domain:corp.example.net", "user:alice@corp.example.net",
        ], "role": "roles/run.invoker"}]});
        if let Err(e) = std::fs::write(&path, text.to_string()) {
            panic!("{e}");
        }
        let p = match Policy::load(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        }) {
            Ok(l) => l.policy,
            Err(e) => panic!("{e}"),
        };
        let member = |who: Option<&Identity>| match p.decide(who, &ctx()) {
            Decision::Allowed(g) => g.member.to_string(),
            Decision::Denied(d) => panic!("{d}"),
        };
        let alice = google(
            json!({"sub": "1", "email": "alice@corp.example.net", "email_verified": true, "hd": "corp.example.net"}),
        );
        let bob = google(
            json!({"sub": "2", "email": "bob@corp.example.net", "email_verified": true, "hd": "corp.example.net"}),
        );
        assert_eq!(member(Some(&alice)), "user:alice@corp.example.net");
        assert_eq!(member(Some(&bob)), "domain:corp.example.net");
        assert_eq!(
            member(Some(&verified("eve@gmail.com"))),
            "allAuthenticatedUsers"
        );
        assert_eq!(member(None), "allUsers");
    }

    #[test]
    fn from_members_refuses_what_it_does_not_understand() {
        let e = match Policy::from_members(&["user:ok@corp.example.net", "projectOwner:p", "user:"])
        {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with("--member[1]: member \"projectOwner:p\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("--member[2]: member \"user:\": empty email"),
            "{}",
            lines[1]
        );
        // principal members need their pool configured.
        assert!(Policy::from_members(&[&format!("principalSet://{POOL}/*")]).is_err());
    }

    mod conditions {
        use super::*;
        use idgate::Clock;
        use idgate::policy::Loaded;
        use std::io::Write;

        /// A policy file with one conditional binding per (member, expression).
        fn conditional(bindings: &[(&str, &str, &str)]) -> (tempfile::TempDir, Loaded) {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            };
            let bindings: Vec<Value> = bindings
                .iter()
                .map(|(member, title, expression)| {
                    // An empty expression stands for an unconditional binding.
                    if expression.is_empty() {
                        json!({"members": [member], "role": "roles/run.invoker"})
                    } else {
                        json!({
                            "condition": {"title": title, "expression": expression},
                            "members": [member],
                            "role": "roles/run.invoker",
                        })
                    }
                })
                .collect();
            let path = dir.path().join("policy.json");
            let text = json!({"bindings": bindings, "etag": "BwYQ8b9r5sE=", "version": 3});
            let written = std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(text.to_string().as_bytes()));
            if let Err(e) = written {
                panic!("{e}");
            }
            let sources = PolicySources {
                files: vec![path],
                ..PolicySources::default()
            };
            match Policy::load(&sources) {
                Ok(l) => (dir, l),
                Err(e) => panic!("{e}"),
            }
        }

        #[test]
        fn request_time_stops_matching_at_the_instant() {
            // 2030-01-01T00:00:00Z
            let end = 1_893_456_000;
            let (_dir, loaded) = conditional(&[(
                "user:contractor@gmail.com",
                "contract-ends-2030",
                r#"request.time < timestamp("2030-01-01T00:00:00Z")"#,
            )]);
            let p = loaded.policy;
            let who = verified("contractor@gmail.com");
            let clock = ManualClock::new(Duration::from_secs(end - 1));
            let at = |c: &dyn Clock| {
                p.decide(Some(&who), &RequestContext::from_clock(c, "GET", "h", "/"))
            };

            let Decision::Allowed(g) = at(&clock) else {
                panic!("denied a second before the end")
            };
            assert_eq!(g.condition.as_deref(), Some("contract-ends-2030"));

            clock.advance(Duration::from_millis(999));
            assert!(
                at(&clock).is_allowed(),
                "denied a millisecond before the end"
            );

            clock.advance(Duration::from_millis(1));
            let Decision::Denied(d) = at(&clock) else {
                panic!("allowed at the end")
            };
            assert_eq!(d.reason, Reason::NotAllowed);
            assert!(
                d.detail.contains("contract-ends-2030") && d.detail.contains("false"),
                "{}",
                d.detail
            );

            clock.advance(Duration::from_secs(86_400 * 365));
            assert!(!at(&clock).is_allowed());
        }

        #[test]
        fn path_and_method() {
            let (_dir, loaded) = conditional(&[
                (
                    "user:admin@corp.example.net",
                    "admin-pages",
                    r#"request.path.startsWith("/admin")"#,
                ),
                (
                    "user:reader@corp.example.net",
                    "reads-only",
                    r#"request.method == "GET""#,
                ),
                (
                    "user:reader@corp.example.net",
                    "this-host",
                    r#"request.host == "svc.example.com" && request.method == "POST""#,
                ),
            ]);
            let p = loaded.policy;
            let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
            let decide = |email: &str, method: &str, host: &str, path: &str| {
                p.decide(
                    Some(&verified(email)),
                    &RequestContext::from_clock(&clock, method, host, path),
                )
            };
            let table = [
                (
                    "admin@corp.example.net",
                    "POST",
                    "svc.example.com",
                    "/admin/users",
                    true,
                ),
                (
                    "admin@corp.example.net",
                    "GET",
                    "svc.example.com",
                    "/admin",
                    true,
                ),
                (
                    "admin@corp.example.net",
                    "GET",
                    "svc.example.com",
                    "/",
                    false,
                ),
                (
                    "admin@corp.example.net",
                    "GET",
                    "svc.example.com",
                    "/Admin",
                    false,
                ),
                (
                    "reader@corp.example.net",
                    "GET",
                    "svc.example.com",
                    "/admin",
                    true,
                ),
                (
                    "reader@corp.example.net",
                    "get",
                    "other.example.com",
                    "/",
                    false,
                ),
                (
                    "reader@corp.example.net",
                    "DELETE",
                    "svc.example.com",
                    "/",
                    false,
                ),
                (
                    "reader@corp.example.net",
                    "POST",
                    "svc.example.com",
                    "/",
                    true,
                ),
                (
                    "reader@corp.example.net",
                    "POST",
                    "other.example.com",
                    "/",
                    false,
                ),
            ];
            for (who, method, host, path, want) in table {
                let d = decide(who, method, host, path);
                assert_eq!(d.is_allowed(), want, "{who} {method} {host}{path}: {d}");
            }
            // Both of reader's bindings are explained when neither holds.
            let d = decide("reader@corp.example.net", "DELETE", "svc.example.com", "/");
            let text = d.to_string();
            assert!(
                text.contains("reads-only") && text.contains("this-host"),
                "{text}"
            );
        }

        #[test]
        fn an_unconditional_binding_explains_before_a_conditional_one() {
            let (_dir, loaded) = conditional(&[
                ("allUsers", "never", "false"),
                ("user:alice@corp.example.net", "always", "true"),
                ("user:alice@corp.example.net", "", ""),
            ]);
            let p = loaded.policy;
            assert!(!p.decide(None, &ctx()).is_allowed());
            let Decision::Allowed(g) = p.decide(Some(&verified("alice@corp.example.net")), &ctx())
            else {
                panic!("denied")
            };
            assert_eq!((g.binding, g.condition), (2, None));
        }

        #[test]
        fn evaluation_errors_do_not_match() {
            let (_dir, loaded) = conditional(&[
                ("allUsers", "bad regex", r#"request.path.matches("(")"#),
                ("allUsers", "divide", "1 / (size(request.path) - 1) == 1"),
            ]);
            let Decision::Denied(d) = loaded.policy.decide(None, &ctx()) else {
                panic!("allowed")
            };
            assert_eq!(d.reason, Reason::MissingToken);
            assert!(
                d.detail.contains("bad regex") && d.detail.contains("divide"),
                "{}",
                d.detail
            );
        }
    }
}
