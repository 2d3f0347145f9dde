//! Policies as gcloud prints them: fixtures in JSON and YAML, merged files,
//! the groups file, configuration errors, and reloading.

// Inside `policy` so that `cargo test -p idgate policy` selects them.
mod policy {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use idgate::policy::{
        Decision, Loaded, Policy, PolicyError, PolicyErrors, PolicyHandle, PolicySources,
        RequestContext,
    };
    use idgate::{Identity, IssuerTag, ManualClock, Reason};
    use serde_json::{Value, json};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/policy")
            .join(name)
    }

    fn google(claims: Value) -> Identity {
        let tag = IssuerTag {
            name: "google".into(),
            google: true,
            pool: None,
        };
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

    fn verified(email: &str) -> Identity {
        google(json!({"sub": "100", "email": email, "email_verified": true}))
    }

    fn load(sources: &PolicySources) -> Loaded {
        match Policy::load(sources) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    fn load_err(sources: &PolicySources) -> PolicyErrors {
        match Policy::load(sources) {
            Ok(_) => panic!("loaded {sources:?}"),
            Err(e) => e,
        }
    }

    fn sources(files: &[&str], groups: &str) -> PolicySources {
        PolicySources {
            files: files.iter().map(|f| fixture(f)).collect(),
            groups_file: Some(fixture(groups)),
            ..PolicySources::default()
        }
    }

    /// The decision stripped of the file it came from, to compare formats.
    fn outcome(d: &Decision) -> String {
        match d {
            Decision::Allowed(g) => format!(
                "allowed {} {} {:?} bindings[{}]",
                g.role, g.member, g.condition, g.binding
            ),
            Decision::Denied(d) => format!("denied {} {:?}", d.reason, d.principal),
        }
    }

    #[test]
    fn json_and_yaml_fixtures_decide_alike() {
        let json = load(&sources(&["service.json", "project.json"], "groups.json"));
        let yaml = load(&sources(&["service.yaml", "project.yaml"], "groups.yaml"));

        let before_2030 = ManualClock::new(Duration::from_secs(1_893_455_999));
        let after_2030 = ManualClock::new(Duration::from_secs(1_893_456_000));
        let hd = |email: &str, hd: &str| {
            google(json!({"sub": "1", "email": email, "email_verified": true, "hd": hd}))
        };
        let who: Vec<(&str, Option<Identity>)> = vec![
            ("alice", Some(verified("alice@corp.example.net"))),
            (
                "workspace member",
                Some(hd("gina@corp.example.net", "corp.example.net")),
            ),
            (
                "evilcorp member",
                Some(hd("eve@evilcorp.example.net", "evilcorp.example.net")),
            ),
            (
                "consumer account on the domain",
                Some(verified("harry@corp.example.net")),
            ),
            ("group member", Some(verified("dana@corp.example.net"))),
            (
                "nested group member",
                Some(verified("erin@corp.example.net")),
            ),
            (
                "nested group bot",
                Some(verified("oncall-bot@my-project.iam.gserviceaccount.com")),
            ),
            (
                "frontend",
                Some(verified("frontend@my-project.iam.gserviceaccount.com")),
            ),
            ("contractor", Some(verified("contractor@gmail.com"))),
            (
                "uptime",
                Some(verified("uptime@my-project.iam.gserviceaccount.com")),
            ),
            (
                "viewer (no invoke)",
                Some(verified("viewer@corp.example.net")),
            ),
            ("deleted bob", Some(verified("bob@corp.example.net"))),
            ("project owner", Some(verified("owner@corp.example.net"))),
            (
                "project editor SA",
                Some(verified(
                    "123456789012-compute@developer.gserviceaccount.com",
                )),
            ),
            (
                "service agent (no invoke)",
                Some(verified(
                    "service-123456789012@serverless-robot-prod.iam.gserviceaccount.com",
                )),
            ),
            (
                "unverified alice",
                Some(google(
                    json!({"sub": "1", "email": "alice@corp.example.net"}),
                )),
            ),
            ("no token", None),
        ];
        let requests = [
            (
                "GET /",
                RequestContext::from_clock(&before_2030, "GET", "svc.example.com", "/"),
            ),
            (
                "GET /admin",
                RequestContext::from_clock(&before_2030, "GET", "svc.example.com", "/admin"),
            ),
            (
                "POST /",
                RequestContext::from_clock(&before_2030, "POST", "svc.example.com", "/"),
            ),
            (
                "GET / in 2030",
                RequestContext::from_clock(&after_2030, "GET", "svc.example.com", "/"),
            ),
        ];

        let mut table = Vec::new();
        for (name, id) in &who {
            for (req, ctx) in &requests {
                let j = json.policy.decide(id.as_ref(), ctx);
                let y = yaml.policy.decide(id.as_ref(), ctx);
                assert_eq!(outcome(&j), outcome(&y), "{name}, {req}");
                table.push(format!("{name}, {req}: {}", outcome(&j)));
            }
        }
        let has = |line: &str| {
            assert!(
                table.iter().any(|l| l == line),
                "no {line:?} in\n{}",
                table.join("\n")
            );
        };
        has("alice, GET /: allowed roles/run.invoker user:alice@corp.example.net None bindings[0]");
        has(
            "workspace member, GET /: allowed roles/run.invoker domain:corp.example.net None bindings[0]",
        );
        has("evilcorp member, GET /: denied not_allowed Some(\"user:eve@evilcorp.example.net\")");
        has(
            "consumer account on the domain, GET /: denied not_allowed Some(\"user:harry@corp.example.net\")",
        );
        has(
            "group member, GET /: allowed roles/run.invoker group:eng@corp.example.net None bindings[0]",
        );
        has(
            "nested group member, GET /: allowed roles/run.invoker group:eng@corp.example.net None bindings[0]",
        );
        has(
            "nested group bot, GET /: allowed roles/run.invoker group:eng@corp.example.net None bindings[0]",
        );
        has(
            "frontend, POST /: allowed roles/run.invoker serviceAccount:frontend@my-project.iam.gserviceaccount.com None bindings[0]",
        );
        has(
            "contractor, GET /: allowed roles/run.invoker user:contractor@gmail.com Some(\"contract-ends-2030\") bindings[1]",
        );
        has("contractor, GET / in 2030: denied not_allowed Some(\"user:contractor@gmail.com\")");
        has(
            "uptime, GET /: allowed roles/run.servicesInvoker serviceAccount:uptime@my-project.iam.gserviceaccount.com Some(\"read-only-outside-admin\") bindings[2]",
        );
        has(
            "uptime, GET /admin: denied not_allowed Some(\"serviceAccount:uptime@my-project.iam.gserviceaccount.com\")",
        );
        has(
            "uptime, POST /: denied not_allowed Some(\"serviceAccount:uptime@my-project.iam.gserviceaccount.com\")",
        );
        has("viewer (no invoke), GET /: denied not_allowed Some(\"user:viewer@corp.example.net\")");
        has("deleted bob, GET /: denied not_allowed Some(\"user:bob@corp.example.net\")");
        has(
            "project owner, GET /: allowed roles/owner user:owner@corp.example.net None bindings[2]",
        );
        has(
            "project editor SA, GET /: allowed roles/editor serviceAccount:123456789012-compute@developer.gserviceaccount.com None bindings[1]",
        );
        has(
            "service agent (no invoke), GET /: denied not_allowed Some(\"serviceAccount:service-123456789012@serverless-robot-prod.iam.gserviceaccount.com\")",
        );
        has("unverified alice, GET /: denied email_unverified Some(\"subject:1\")");
        has("no token, GET /: denied missing_token None");

        // The merged policy keeps the invoking bindings of both files.
        assert_eq!(json.policy.binding_count(), 3 + 2);
        assert_eq!(yaml.policy.binding_count(), 3 + 2);
        assert_eq!(json.policy.member_count(), 5 + 1 + 1 + 2 + 1);
        // The deleted member is worth a warning, and so is the condition
        // that excludes a path; nothing in other roles is.
        assert_eq!(
            json.warnings,
            yaml.warnings
                .iter()
                .map(|w| w.replace(".yaml", ".json"))
                .collect::<Vec<_>>()
        );
        assert!(
            json.warnings.iter().any(|w| w.contains("deleted:user:bob")),
            "{:?}",
            json.warnings
        );
        assert!(
            json.warnings
                .iter()
                .any(|w| w.contains("negates a test of request.path")),
            "{:?}",
            json.warnings
        );
        assert_eq!(json.warnings.len(), 2, "{:?}", json.warnings);

        // A grant names the file it came from.
        let Decision::Allowed(g) = json
            .policy
            .decide(Some(&verified("owner@corp.example.net")), &requests[0].1)
        else {
            panic!("owner denied")
        };
        assert!(g.source.ends_with("project.json"), "{}", g.source);
    }

    #[test]
    fn a_project_policy_with_members_no_token_can_name_loads_with_warnings() {
        // Real project policies give roles/editor to CI pools idgate has no
        // reason to know, GKE Kubernetes service accounts, and a project's
        // service accounts by number: none can match, none may refuse the
        // policy.
        let dir = tempdir();
        let text = r#"{"bindings":[{"role":"roles/editor","members":[
            "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/github/attribute.repository/o/r",
            "serviceAccount:my-project.svc.id.goog[ci/runner]",
            "principalSet://cloudresourcemanager.googleapis.com/projects/1/type/ServiceAccount",
            "user:owner@corp.example.net"]}],"version":1}"#;
        let path = write(&dir, "project.json", text);
        let l = load(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        });
        let never: Vec<&String> = l
            .warnings
            .iter()
            .filter(|w| w.contains("never matches"))
            .collect();
        assert_eq!(never.len(), 3, "{:?}", l.warnings);
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        let owner = verified("owner@corp.example.net");
        assert!(l.policy.decide(Some(&owner), &ctx).is_allowed());
        // Written as --member flags, for idgate, they are mistakes.
        let e = load_err(&PolicySources {
            members: vec!["serviceAccount:my-project.svc.id.goog[ci/runner]".into()],
            ..PolicySources::default()
        });
        assert!(e.to_string().contains("not an email"), "{e}");
    }

    #[test]
    fn a_file_called_member_is_a_file() {
        // Its bindings must not pass for --member flags' (any role).
        let text =
            br#"{"bindings":[{"role":"roles/viewer","members":["user:alice@corp.example.net"]}]}"#;
        let l = match Policy::load_document(&PolicySources::default(), "--member", text) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        let alice = verified("alice@corp.example.net");
        assert!(!l.policy.decide(Some(&alice), &ctx).is_allowed());
    }

    #[test]
    fn format_by_extension_or_content() {
        let dir = tempdir();
        let yaml_text = "bindings:\n- members:\n  - user:alice@corp.example.net\n  role: roles/run.invoker\netag: BwYQ8b9r5sE=\nversion: 1\n";
        let json_text = r#"{"bindings":[{"members":["user:alice@corp.example.net"],"role":"roles/run.invoker"}],"etag":"BwYQ8b9r5sE=","version":1}"#;
        let alice = verified("alice@corp.example.net");
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        for (name, text) in [
            ("policy", yaml_text),
            ("policy.out", json_text),
            ("p.yml", yaml_text),
            ("p.YAML", json_text),
        ] {
            let path = write(&dir, name, text);
            let l = load(&PolicySources {
                files: vec![path],
                ..PolicySources::default()
            });
            assert!(l.policy.decide(Some(&alice), &ctx).is_allowed(), "{name}");
        }
        // A byte-order mark, as some editors save, is not an error.
        let path = write(&dir, "bom.json", &format!("\u{feff}{json_text}"));
        let l = load(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        });
        assert!(l.policy.decide(Some(&alice), &ctx).is_allowed());
        // `.json` means JSON: YAML in it is an error, not a guess.
        let path = write(&dir, "policy.json", yaml_text);
        let e = load_err(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        });
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_with_its_place() {
        let path = fixture("invalid.json");
        let file = path.display().to_string();
        let e = load_err(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        });
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        let want = [
            format!(
                "{file}: bindings[0] (roles/run.invoker): member \"projectOwner:my-project\": projectOwner: members are not supported"
            ),
            format!("{file}: bindings[0] (roles/run.invoker): member \"user:\": empty email"),
            format!("{file}: bindings[0] (roles/run.invoker): member \"garbage\": unknown member"),
            format!(
                "{file}: bindings[1] (roles/run.invoker): condition \"this-service-only\": unknown name \"resource\""
            ),
            format!("{file}: bindings[2] (roles/run.invoker): roles: unknown field"),
        ];
        for w in &want {
            assert!(
                lines.iter().any(|l| l.starts_with(w.as_str())),
                "no {w:?} in\n{}",
                lines.join("\n")
            );
        }
        // projectOwner: under roles/storage.admin (bindings[3]) grants nothing
        // either way, so it is not an error.
        assert_eq!(lines.len(), want.len(), "{}", lines.join("\n"));
        // Display: one per line, in the same order.
        assert_eq!(e.to_string(), lines.join("\n"));
        // Each error carries its file, binding index and role as data.
        for err in &e {
            let at = err
                .binding()
                .unwrap_or_else(|| panic!("no binding in {err}"));
            assert_eq!(at.file, file);
            assert_eq!(at.role, "roles/run.invoker");
            assert!(at.index <= 2);
        }
        assert!(e.iter().any(|err| matches!(err, PolicyError::Member { member, at, .. } if member == "user:" && at.index == 0)));
    }

    #[test]
    fn problems_across_sources_are_reported_together() {
        let dir = tempdir();
        let broken = write(&dir, "broken.yaml", "bindings: [\n");
        let not_policy = write(&dir, "list.json", "[1, 2]");
        let e = load_err(&PolicySources {
        files: vec![broken, not_policy, dir.path().join("missing.json"), fixture("service.json")],
        members: vec!["user:ok@corp.example.net".into(), "allusers".into()],
        groups_file: Some(fixture("groups-cycle.yaml")),
        invoker_roles: Some(vec!["roles/run.invoker".into(), "run.invoker".into()]),
        pools: vec!["principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p".into()],
    });
        let text = e.to_string();
        for want in [
            "broken.yaml: not valid YAML",
            "list.json: expected an IAM policy (a mapping with `bindings`), found a list",
            "missing.json: cannot read",
            "--member[1]: member \"allusers\": unknown member (IAM spells it allUsers)",
            "groups-cycle.yaml: group cycle: eng@corp.example.net -> platform@corp.example.net -> eng@corp.example.net",
            "invoker roles: \"run.invoker\": not a role name",
            "pools: \"principal://",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        assert_eq!(e.len(), 7, "{text}");
    }

    #[test]
    fn group_cycles_are_refused() {
        let e = load_err(&PolicySources {
            members: vec!["group:eng@corp.example.net".into()],
            groups_file: Some(fixture("groups-cycle.yaml")),
            ..PolicySources::default()
        });
        assert!(
            matches!(
                e.0.as_slice(),
                [PolicyError::GroupCycle { cycle, .. }] if cycle.len() == 3
            ),
            "{e}"
        );
    }

    #[test]
    fn groups_that_match_no_one_are_warned_about() {
        let l = load(&PolicySources {
            members: vec![
                "group:unknown@corp.example.net".into(),
                "group:eng@corp.example.net".into(),
            ],
            groups_file: Some(fixture("groups.yaml")),
            ..PolicySources::default()
        });
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            l.warnings[0].contains("group:unknown@corp.example.net")
                && l.warnings[0].contains("not defined")
        );
        let l = load(&PolicySources {
            members: vec!["group:eng@corp.example.net".into()],
            ..PolicySources::default()
        });
        assert!(
            l.warnings.iter().any(|w| w.contains("no groups file")),
            "{:?}",
            l.warnings
        );
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        assert!(
            !l.policy
                .decide(Some(&verified("dana@corp.example.net")), &ctx)
                .is_allowed()
        );
    }

    #[test]
    fn invoker_roles_are_configurable() {
        let dir = tempdir();
        let path = write(
            &dir,
            "p.json",
            r#"{"bindings":[
        {"members":["user:a@corp.example.net"],"role":"projects/my-project/roles/gateInvoker"},
        {"members":["user:b@corp.example.net"],"role":"roles/run.invoker"},
        {"members":["user:c@corp.example.net"],"role":"roles/run.invoker_withcond_0a1b2c3d4e5f"}
    ],"version":1}"#,
        );
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        let default = load(&PolicySources {
            files: vec![path.clone()],
            ..PolicySources::default()
        });
        let custom = load(&PolicySources {
            files: vec![path],
            invoker_roles: Some(vec!["projects/my-project/roles/gateInvoker".into()]),
            ..PolicySources::default()
        });
        let allowed =
            |l: &Loaded, who: &str| l.policy.decide(Some(&verified(who)), &ctx).is_allowed();
        assert!(!allowed(&default, "a@corp.example.net"));
        assert!(allowed(&default, "b@corp.example.net"));
        assert!(allowed(&custom, "a@corp.example.net"));
        assert!(!allowed(&custom, "b@corp.example.net"));
        // A version 1 read renames a conditional binding's role: it grants
        // nothing, and the load says why.
        assert!(!allowed(&default, "c@corp.example.net"));
        assert!(
            default.warnings.iter().any(|w| w.contains("version 3")),
            "{:?}",
            default.warnings
        );

        // A `--member` flag grants invoke whatever roles are configured.
        let flagged = load(&PolicySources {
            members: vec!["user:d@corp.example.net".into()],
            invoker_roles: Some(vec!["projects/my-project/roles/gateInvoker".into()]),
            ..PolicySources::default()
        });
        assert!(allowed(&flagged, "d@corp.example.net"));

        let e = load_err(&PolicySources {
            invoker_roles: Some(vec![]),
            ..PolicySources::default()
        });
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn reload_refuses_an_invalid_policy_and_keeps_the_old_one() {
        let dir = tempdir();
        let path = write(
            &dir,
            "policy.yaml",
            "bindings:\n- members:\n  - user:alice@corp.example.net\n  role: roles/run.invoker\n",
        );
        let (handle, warnings) = match PolicyHandle::new(PolicySources {
            files: vec![path.clone()],
            ..PolicySources::default()
        }) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(handle.generation(), 1);
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        let alice = verified("alice@corp.example.net");
        let bob = verified("bob@corp.example.net");
        assert!(handle.current().decide(Some(&alice), &ctx).is_allowed());
        assert!(!handle.current().decide(Some(&bob), &ctx).is_allowed());

        // A valid change is swapped in; a request holding the old policy keeps it.
        let held = handle.snapshot();
        write(
            &dir,
            "policy.yaml",
            "bindings:\n- members:\n  - user:bob@corp.example.net\n  role: roles/run.invoker\n",
        );
        if let Err(e) = handle.reload() {
            panic!("{e}");
        }
        assert_eq!(handle.generation(), 2);
        assert!(handle.decide(Some(&bob), &ctx).is_allowed());
        assert!(!handle.decide(Some(&alice), &ctx).is_allowed());
        assert!(held.decide(Some(&alice), &ctx).is_allowed());

        // Invalid: refused, with the reason; the last good policy keeps deciding.
        write(
            &dir,
            "policy.yaml",
            "bindings:\n- members:\n  - user:alice@corp.example.net\n  - projectEditor:my-project\n  role: roles/run.invoker\n",
        );
        let e = match handle.reload() {
            Ok(_) => panic!("invalid policy accepted"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("projectEditor:my-project"), "{e}");
        assert_eq!(handle.generation(), 2);
        assert!(handle.decide(Some(&bob), &ctx).is_allowed());
        assert!(!handle.decide(Some(&alice), &ctx).is_allowed());

        // So does a file that vanished or was half written.
        write(
            &dir,
            "policy.yaml",
            "bindings:\n- members: [user:alice@corp",
        );
        assert!(handle.reload().is_err());
        if let Err(e) = std::fs::remove_file(&path) {
            panic!("{e}");
        }
        assert!(
            matches!(handle.reload(), Err(PolicyErrors(v)) if matches!(v.as_slice(), [PolicyError::Read { .. }]))
        );
        assert_eq!(handle.generation(), 2);
        assert!(handle.decide(Some(&bob), &ctx).is_allowed());
        assert_eq!(handle.sources().files, vec![path]);
    }

    #[test]
    fn readers_see_one_policy_or_the_other_during_reloads() {
        let dir = tempdir();
        let only = |who: &str| {
            format!(
                "bindings:\n- members:\n  - user:{who}@corp.example.net\n  role: roles/run.invoker\n"
            )
        };
        let path = write(&dir, "policy.yaml", &only("alice"));
        let handle = match PolicyHandle::new(PolicySources {
            files: vec![path],
            ..PolicySources::default()
        }) {
            Ok((h, _)) => h,
            Err(e) => panic!("{e}"),
        };
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        let alice = verified("alice@corp.example.net");
        let bob = verified("bob@corp.example.net");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let p = handle.current();
                        let a = p.decide(Some(&alice), &ctx).is_allowed();
                        let b = p.decide(Some(&bob), &ctx).is_allowed();
                        assert!(a != b, "a policy admitting alice={a} bob={b}");
                    }
                });
            }
            for i in 0..50 {
                write(
                    &dir,
                    "policy.yaml",
                    &only(if i % 2 == 0 { "bob" } else { "alice" }),
                );
                if let Err(e) = handle.reload() {
                    panic!("{e}");
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(handle.generation(), 51);
    }

    #[test]
    fn an_empty_policy_denies_everyone_and_says_so() {
        let dir = tempdir();
        // What gcloud prints for a policy with no bindings.
        let path = write(&dir, "empty.yaml", "etag: ACAB\n");
        let l = load(&PolicySources {
            files: vec![path],
            ..PolicySources::default()
        });
        assert_eq!(l.policy.binding_count(), 0);
        assert!(
            l.warnings
                .iter()
                .any(|w| w.contains("every request will be denied")),
            "{:?}",
            l.warnings
        );
        let ctx = RequestContext::from_clock(&ManualClock::starting_now(), "GET", "h", "/");
        assert_eq!(
            l.policy.decide(None, &ctx).reason(),
            Some(Reason::MissingToken)
        );
    }

    fn tempdir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        if let Err(e) = std::fs::write(&path, text) {
            panic!("{}: {e}", path.display());
        }
        path
    }
}
