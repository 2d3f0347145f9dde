use std::collections::BTreeMap;
use std::io::Write as _;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    settings: SettingsArgs,
}

fn args(flags: &[&str]) -> SettingsArgs {
    let argv = std::iter::once("idgate").chain(flags.iter().copied());
    match TestCli::try_parse_from(argv) {
        Ok(cli) => cli.settings,
        Err(e) => panic!("flags {flags:?} do not parse: {e}"),
    }
}

fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

struct ConfigFile {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(toml.as_bytes())
        .unwrap();
    ConfigFile { dir, path }
}

fn load_ok(flags: &[&str], vars: &[(&str, &str)]) -> Loaded {
    match load(&args(flags), &env(vars)) {
        Ok(l) => l,
        Err(e) => panic!("expected valid settings, got:\n{e}"),
    }
}

fn load_err(flags: &[&str], vars: &[(&str, &str)]) -> String {
    match load(&args(flags), &env(vars)) {
        Ok(l) => panic!("expected errors, got {:#?}", l.settings),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &[&str] = &[
    "--audience",
    "https://svc",
    "--upstream",
    "http://127.0.0.1:8081",
    "--member",
    "allUsers",
];

#[test]
fn defaults() {
    let s = load_ok(MINIMAL, &[]).settings;
    assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(s.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(s.verifier.audiences, ["https://svc"]);
    assert_eq!(s.verifier.clock_skew, defaults::CLOCK_SKEW);
    assert_eq!(s.verifier.max_token_bytes, 16 * 1024);
    assert_eq!(s.verifier.jwks.min_ttl, Duration::from_secs(300));
    assert_eq!(
        s.verifier.jwks.stale_if_error,
        Duration::from_secs(12 * 3600)
    );
    assert_eq!(s.forward_token, ForwardToken::Stripped);
    assert_eq!(s.status_codes, StatusCodes::Rfc6750);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.shutdown_grace, Duration::from_secs(10));
    assert!(
        matches!(s.mode, Mode::Proxy { ref upstream } if upstream.authority == "127.0.0.1:8081")
    );
    assert!(s.verifier.google_jwks_url.is_none());
    assert!(s.verifier.issuers.is_empty());
}

#[test]
fn port_sets_the_default_listen_address() {
    let s = load_ok(MINIMAL, &[("PORT", "9999")]).settings;
    assert_eq!(s.listen, "0.0.0.0:9999".parse().unwrap());
    let f = config_file(r#"listen = "127.0.0.1:7000""#);
    let mut flags = MINIMAL.to_vec();
    flags.extend(["--config", f.path.to_str().unwrap()]);
    let s = load_ok(&flags, &[("PORT", "9999")]).settings;
    assert_eq!(
        s.listen,
        "127.0.0.1:7000".parse().unwrap(),
        "the file beats PORT"
    );
    let e = load_err(MINIMAL, &[("PORT", "http")]);
    assert!(e.contains("PORT: invalid value \"http\""), "{e}");
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let f = config_file(
        r#"
        audience = ["file-aud"]
        upstream = "http://file:1"
        clock_skew = "3s"
        jwks_min_ttl = "7m"
        forward_token = "none"
        "#,
    );
    let path = f.path.to_str().unwrap();

    let s = load_ok(&["--config", path], &[]).settings;
    assert_eq!(s.verifier.audiences, ["file-aud"]);
    assert_eq!(s.verifier.clock_skew, Duration::from_secs(3));
    assert_eq!(s.forward_token, ForwardToken::None);
    assert_eq!(
        s.verifier.jwks.max_ttl,
        defaults::JWKS_MAX_TTL,
        "unset anywhere: default"
    );

    let vars = [
        ("IDGATE_AUDIENCE", "env-a, env-b"),
        ("IDGATE_CLOCK_SKEW", "2s"),
        ("IDGATE_FORWARD_TOKEN", "full"),
    ];
    let s = load_ok(&["--config", path], &vars).settings;
    assert_eq!(
        s.verifier.audiences,
        ["env-a", "env-b"],
        "env list replaces the file's"
    );
    assert_eq!(s.verifier.clock_skew, Duration::from_secs(2));
    assert_eq!(s.forward_token, ForwardToken::Full);
    assert_eq!(
        s.verifier.jwks.min_ttl,
        Duration::from_secs(7 * 60),
        "only in the file"
    );

    let s = load_ok(
        &[
            "--config",
            path,
            "--clock-skew",
            "1s",
            "--audience",
            "flag-a",
        ],
        &vars,
    )
    .settings;
    assert_eq!(s.verifier.audiences, ["flag-a"]);
    assert_eq!(s.verifier.clock_skew, Duration::from_secs(1));
    assert_eq!(s.forward_token, ForwardToken::Full, "env still beats file");
}

#[test]
fn config_file_from_env_and_empty_env_is_unset() {
    let f = config_file("audience = \"a\"\nupstream = \"http://u:1\"\n");
    let s = load_ok(
        &[],
        &[
            ("IDGATE_CONFIG", f.path.to_str().unwrap()),
            ("IDGATE_UPSTREAM", ""),
        ],
    )
    .settings;
    assert_eq!(s.verifier.audiences, ["a"]);
    assert!(matches!(s.mode, Mode::Proxy { ref upstream } if upstream.authority == "u:1"));
}

#[test]
fn every_problem_is_reported_with_its_source() {
    let f = config_file(
        r#"
        jwks_min_ttl = "5 fortnights-ish"
        jwks_max_tll = "1h"
        colour = "blue"
        max_token_bytes = ["a"]
        "#,
    );
    let path = f.path.to_str().unwrap();
    let e = load_err(
        &[
            "--config",
            path,
            "--member",
            "users:a@b.com",
            "--policy",
            "/nonexistent/policy.json",
            "--listen",
            "nowhere",
            "--forward-token",
            "partial",
            "--strip-header",
            "authorization",
            "--public-path",
            "/a/../b",
        ],
        &[("IDGATE_CLOCK_SKEW", "5x"), ("IDGATE_JWKS_URL", "ftp://x")],
    );
    let file = f.path.display().to_string();
    for expected in [
        format!("{file}: unknown key `jwks_max_tll`"),
        format!("{file}: unknown key `colour`"),
        format!("{file}: jwks_min_ttl: invalid value \"5 fortnights-ish\""),
        format!("{file}: max_token_bytes: expected a single value"),
        "no audience".into(),
        "no upstream".into(),
        "--member: invalid value \"users:a@b.com\"".into(),
        "--policy: cannot read /nonexistent/policy.json".into(),
        "--listen: invalid value \"nowhere\"".into(),
        "--forward-token: invalid value \"partial\": expected one of: stripped, full, none".into(),
        "--strip-header: invalid value \"authorization\"".into(),
        "--public-path: invalid value \"/a/../b\"".into(),
        "IDGATE_CLOCK_SKEW: invalid value \"5x\"".into(),
        "IDGATE_JWKS_URL: invalid value \"ftp://x\"".into(),
    ] {
        assert!(e.contains(&expected), "missing {expected:?} in:\n{e}");
    }
    assert!(e.starts_with("14 configuration problems:"), "{e}");
}

#[test]
fn bad_toml_names_the_file() {
    let f = config_file("audience = [\n");
    let e = load_err(&["--config", f.path.to_str().unwrap()], &[]);
    assert!(
        e.contains(&format!("{}: invalid TOML", f.path.display())),
        "{e}"
    );
    let e = load_err(&["--config", "/nonexistent/idgate.toml"], &[]);
    assert!(
        e.contains("cannot read config file /nonexistent/idgate.toml"),
        "{e}"
    );
}

#[test]
fn relative_paths_in_the_file_are_from_its_directory() {
    let f = config_file(
        "audience = \"a\"\nupstream = \"http://u:1\"\npolicy = \"policy.json\"\ngroups = \"groups.yaml\"\n",
    );
    std::fs::write(f.dir.path().join("policy.json"), "{}").unwrap();
    std::fs::write(f.dir.path().join("groups.yaml"), "{}").unwrap();
    let s = load_ok(&["--config", f.path.to_str().unwrap()], &[]).settings;
    assert_eq!(s.policy.files, [f.dir.path().join("policy.json")]);
    assert_eq!(s.policy.groups_file, Some(f.dir.path().join("groups.yaml")));
    assert_eq!(s.policy.watched_files().len(), 2);

    // One groups file: a list is an error, not its last entry.
    let f = config_file(
        "audience = \"a\"\nupstream = \"http://u:1\"\nmember = [\"allUsers\"]\ngroups = [\"g1.yaml\", \"g2.yaml\"]\n",
    );
    let e = load_err(&["--config", f.path.to_str().unwrap()], &[]);
    assert!(e.contains("one groups file only, 2 given"), "{e}");
}

#[test]
fn forward_auth_needs_no_upstream_and_refuses_one() {
    let s = load_ok(&["--audience", "a", "--mode", "forward-auth"], &[]).settings;
    assert_eq!(s.mode, Mode::ForwardAuth);
    let e = load_err(
        &["--audience", "a", "--mode", "forward-auth"],
        &[("IDGATE_UPSTREAM", "http://u:1")],
    );
    assert!(
        e.contains("IDGATE_UPSTREAM: forward-auth mode has no upstream"),
        "{e}"
    );
    let e = load_err(&["--audience", "a", "--mode", "auth"], &[]);
    assert!(e.contains("--mode: invalid value \"auth\""), "{e}");
    assert!(
        !e.contains("no upstream"),
        "a bad mode says nothing of upstream: {e}"
    );
}

#[test]
fn issuers_and_jwks_urls() {
    let with = |extra: &[&str]| {
        let mut f = MINIMAL.to_vec();
        f.extend_from_slice(extra);
        f.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let flags = with(extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        load(&args(&flags), &env(&[]))
    };

    let s = run(&["--jwks-url", "http://127.0.0.1:1/jwks"]).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(
        s.settings.verifier.google_jwks_url.as_deref(),
        Some("http://127.0.0.1:1/jwks")
    );
    assert!(
        s.warnings.is_empty(),
        "loopback http is fine: {:?}",
        s.warnings
    );

    let s = run(&[
        "--issuer",
        "https://a.example",
        "--issuer",
        "https://b.example",
    ])
    .unwrap();
    assert_eq!(s.settings.verifier.issuers.len(), 2);
    assert!(
        s.settings
            .verifier
            .issuers
            .iter()
            .all(|i| i.keys == KeySource::Discovery)
    );
    assert_eq!(
        s.settings.verifier.issuers[0].issuer, "https://a.example",
        "not normalised"
    );

    let s = run(&[
        "--issuer",
        "https://a.example",
        "--jwks-url",
        "https://a.example/k",
        "--issuer",
        "http://issuer:8900",
        "--jwks-url",
        "http://issuer:8900/k",
    ])
    .unwrap();
    assert_eq!(
        s.settings.verifier.issuers[1].keys,
        KeySource::JwksUrl("http://issuer:8900/k".into())
    );
    assert!(
        s.warnings.iter().any(|w| w.contains("http://issuer:8900")),
        "{:?}",
        s.warnings
    );

    let e = run(&[
        "--issuer",
        "https://a",
        "--issuer",
        "https://b",
        "--jwks-url",
        "https://k",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("1 JWKS URLs for 2 issuers"), "{e}");
    let e = run(&["--jwks-url", "https://k1", "--jwks-url", "https://k2"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 JWKS URLs but no --issuer"), "{e}");
}

#[test]
fn conflicts() {
    let e = load_err(
        &[
            "--audience",
            "a",
            "--upstream",
            "http://u:1",
            "--listen",
            "127.0.0.1:9090",
            "--jwks-min-ttl",
            "2h",
            "--jwks-max-ttl",
            "1h",
            "--request-timeout",
            "0s",
        ],
        &[],
    );
    assert!(
        e.contains("default: 127.0.0.1:9090 overlaps --listen (127.0.0.1:9090)"),
        "{e}"
    );
    assert!(
        e.contains("--jwks-min-ttl: 2h is longer than the maximum TTL 1h"),
        "{e}"
    );
    assert!(
        e.contains("--request-timeout: must be greater than zero"),
        "{e}"
    );
    // What the verifier would refuse is reported with the rest.
    let mut flags = MINIMAL.to_vec();
    flags.extend([
        "--max-token-bytes",
        "10",
        "--issuer",
        "https://accounts.google.com",
        "--listen",
        "nope",
    ]);
    let e = load_err(&flags, &[]);
    assert!(e.contains("too small for any JWT"), "{e}");
    assert!(e.contains("is Google's issuer, trusted already"), "{e}");
    assert!(e.contains("--listen"), "{e}");
    // The wildcard takes the port on every address, loopback included.
    let mut flags = MINIMAL.to_vec();
    flags.extend(["--listen", "0.0.0.0:9090"]);
    let e = load_err(&flags, &[]);
    assert!(e.contains("overlaps --listen (0.0.0.0:9090)"), "{e}");
    let mut flags = MINIMAL.to_vec();
    flags.extend([
        "--listen",
        "127.0.0.1:9090",
        "--admin-listen",
        "127.0.0.2:9090",
    ]);
    load_ok(&flags, &[]);
}

#[test]
fn misspelt_variables_are_warned_about() {
    let l = load_ok(MINIMAL, &[("IDGATE_AUDIENCES", "x"), ("IDGATE_CONFIG", "")]);
    assert_eq!(
        l.warnings,
        ["IDGATE_AUDIENCES is set but is not an idgate setting"]
    );
}

/// Forward-auth reads the original request from headers `--strip-header`
/// runs before: stripping them would have the subrequest's own path judged.
#[test]
fn forward_auth_refuses_to_strip_the_headers_it_reads() {
    let e = load_err(
        &[
            "--mode",
            "forward-auth",
            "--audience",
            "a",
            "--member",
            "allUsers",
            "--strip-header",
            "x-forwarded-*",
            "--strip-header",
            "X-Original-URI",
        ],
        &[],
    );
    for expected in [
        "--strip-header: x-forwarded-* would remove x-forwarded-method",
        "--strip-header: x-original-uri would remove x-original-uri",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    // A proxy may strip them: it reads none of them.
    let mut flags = MINIMAL.to_vec();
    flags.extend(["--strip-header", "x-forwarded-*"]);
    load_ok(&flags, &[]);
}

#[test]
fn strip_headers_and_public_paths_parse() {
    let mut flags = MINIMAL.to_vec();
    flags.extend([
        "--strip-header",
        "X-User",
        "--strip-header",
        "x-my-*",
        "--public-path",
        "/healthz",
    ]);
    let s = load_ok(&flags, &[]).settings;
    assert_eq!(s.strip_headers.len(), 2);
    assert!(s.strip_headers[1].matches("x-my-thing"));
    // `_` and `-` are one: the strip compares names with `-`.
    let mut flags = MINIMAL.to_vec();
    flags.extend([
        "--strip-header",
        "X_Remote_User",
        "--strip-header",
        "x_my_*",
    ]);
    let dashed = load_ok(&flags, &[]).settings;
    let strip = crate::headers::IdentityStrip::new(dashed.strip_headers);
    for name in ["x-remote-user", "x_remote_user", "x-my-role", "x_my_role"] {
        assert!(strip.matches(name), "{name}");
    }
    assert!(!strip.matches("x-remote-users"));
    assert_eq!(s.public_paths, ["/healthz"]);
    let f = config_file(
        "audience = \"a\"\nupstream = \"http://u:1\"\nstrip_header = [\"x-a\", \"x-b\"]\nmax_token_bytes = 4096\n",
    );
    let s = load_ok(&["--config", f.path.to_str().unwrap()], &[]).settings;
    assert_eq!(s.strip_headers.len(), 2);
    assert_eq!(
        s.verifier.max_token_bytes, 4096,
        "TOML integers are accepted"
    );
}

#[test]
fn an_empty_policy_is_warned_about() {
    let l = load_ok(&["--audience", "a", "--upstream", "http://u:1"], &[]);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("every request outside --public-path will be refused")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn extra_issuers_trust_emails_only_when_told_and_take_pools() {
    let base = [MINIMAL, &["--issuer", "https://issuer.example"]].concat();
    let l = load_ok(&base, &[]);
    let i = &l.settings.verifier.issuers[0];
    assert!(
        !i.trust_emails,
        "an extra issuer's emails must not count by default"
    );
    assert_eq!(i.pool, None);

    let pool = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p";
    let pair = format!("https://issuer.example={pool}/");
    let with = [
        &base[..],
        &[
            "--issuer-trust-emails",
            "--issuer-pool",
            &pair,
            "--invoker-role",
            "roles/custom.invoker",
        ],
    ]
    .concat();
    let l = load_ok(&with, &[]);
    let i = &l.settings.verifier.issuers[0];
    assert!(i.trust_emails);
    assert_eq!(i.pool.as_deref(), Some(pool));
    assert_eq!(l.settings.policy.pools, [pool]);
    assert_eq!(
        l.settings.policy.invoker_roles.as_deref(),
        Some(&["roles/custom.invoker".to_owned()][..])
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("--issuer-trust-emails"))
    );

    let env_trust = load_ok(&base, &[("IDGATE_ISSUER_TRUST_EMAILS", "yes")]);
    assert!(env_trust.settings.verifier.issuers[0].trust_emails);

    let err = load_err(
        &[
            MINIMAL,
            &[
                "--issuer-trust-emails",
                "maybe",
                "--issuer-pool",
                "https://unknown.example=iam.googleapis.com/x",
                "--issuer-pool",
                "no-equals-sign",
                "--invoker-role",
                "run.invoker",
            ],
        ]
        .concat(),
        &[],
    );
    for needle in [
        "--issuer-trust-emails",
        "is not an --issuer",
        "expected ISSUER=POOL",
        "roles/NAME",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[test]
fn policy_problems_are_listed_with_every_other_problem() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"bindings":[{"role":"roles/run.invoker","members":["projectOwner:p","user:ok@example.com"]}]}"#,
    )
    .unwrap();
    let err = load_err(
        &[
            MINIMAL,
            &["--policy", policy.to_str().unwrap(), "--clock-skew", "soon"],
        ]
        .concat(),
        &[],
    );
    assert!(err.contains("--clock-skew"), "{err}");
    assert!(err.contains("projectOwner:p"), "{err}");
    assert!(err.contains("policy.json"), "{err}");
}

#[test]
fn google_can_be_left_out_only_when_another_issuer_is_trusted() {
    let l = load_ok(
        &[
            MINIMAL,
            &["--issuer", "https://i.example", "--google-issuer", "false"],
        ]
        .concat(),
        &[],
    );
    assert!(!l.settings.verifier.google);
    assert!(load_ok(MINIMAL, &[]).settings.verifier.google);
    let err = load_err(&[MINIMAL, &["--google-issuer=false"]].concat(), &[]);
    assert!(err.contains("--google-issuer"), "{err}");
}

#[test]
fn a_token_cache_of_zero_turns_it_off() {
    let l = load_ok(&[MINIMAL, &["--token-cache-capacity", "0"]].concat(), &[]);
    assert_eq!(l.settings.verifier.token_cache_capacity, 0);
}

#[test]
fn the_connection_cap_follows_the_open_files_limit_unless_set() {
    use super::ConnectionCap;
    let cap = |flags: &[&str], vars: &[(&str, &str)]| {
        load_ok(&[MINIMAL, flags].concat(), vars)
            .settings
            .max_connections
    };
    assert_eq!(cap(&[], &[]), ConnectionCap::FromOpenFiles);
    assert_eq!(cap(&["--max-connections", "0"], &[]), ConnectionCap::Off);
    let at = cap(&[], &[("IDGATE_MAX_CONNECTIONS", "500")]);
    assert_eq!(at, ConnectionCap::At(500.try_into().unwrap()));
    let toml = config_file("audience = \"a\"\nupstream = \"http://u:1\"\nmax_connections = 7\n");
    let from_file = load_ok(&["--config", toml.path.to_str().unwrap()], &[]);
    assert_eq!(
        from_file.settings.max_connections,
        ConnectionCap::At(7.try_into().unwrap())
    );
    let err = load_err(&[MINIMAL, &["--max-connections", "many"]].concat(), &[]);
    assert!(err.contains("--max-connections"), "{err}");

    // Proxying, each client connection may need an upstream one; a
    // reserve is kept either way.
    assert_eq!(ConnectionCap::FromOpenFiles.resolve(1024, true), Some(480));
    assert_eq!(ConnectionCap::FromOpenFiles.resolve(1024, false), Some(960));
    assert_eq!(ConnectionCap::FromOpenFiles.resolve(10, true), Some(1));
    let three = ConnectionCap::At(3.try_into().unwrap());
    assert_eq!(three.resolve(1024, true), Some(3));
    assert_eq!(ConnectionCap::Off.resolve(1024, true), None);
}

#[test]
fn text_loads_as_the_file_it_came_from() {
    let toml = "audience = \"a\"\nupstream = \"http://u:1\"\ncolour = 1\nclock_skew = 3\n";
    let f = config_file(toml);
    let from_file = load_err(&["--config", f.path.to_str().unwrap()], &[]);
    let from_text = match load_toml(&f.path, toml, &args(&[]), &env(&[])) {
        Ok(l) => panic!("expected errors, got {:#?}", l.settings),
        Err(e) => e.to_string(),
    };
    assert_eq!(from_text, from_file);
    assert!(from_text.contains("unknown key `colour`"), "{from_text}");
}

/// Found by the `config` fuzz target: members, invoker roles and pools that
/// only the policy module refuses were reported as `policy: --member[0]: …`
/// whatever their source, or as `policy: invoker roles: …` and `policy:
/// pools: …` with none.
#[test]
fn settings_the_policy_refuses_are_named_by_their_source() {
    let pools = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools";
    let f = config_file("invoker_role = [\"roles/run.invoker\", \"roles/run invoker\"]\n");
    let file = f.path.display().to_string();
    let pair = format!("https://i.example={pools}/a b");
    let member = format!("principalSet://{pools}/unknown/*");
    let e = load_err(
        &[
            "--config",
            f.path.to_str().unwrap(),
            "--audience",
            "a",
            "--upstream",
            "http://u:1",
            "--issuer",
            "https://i.example",
            "--issuer-pool",
            &pair,
        ],
        &[("IDGATE_MEMBER", &member)],
    );
    for expected in [
        format!("IDGATE_MEMBER: invalid value {member:?}: pool"),
        format!("{file}: invoker_role: invalid value \"roles/run invoker\": not a role name"),
        format!("--issuer-pool: invalid value \"{pools}/a b\": contains whitespace"),
    ] {
        assert!(e.contains(&expected), "missing {expected:?} in:\n{e}");
    }
    assert!(e.starts_with("3 configuration problems:"), "{e}");

    let flags = [MINIMAL, &["--member", &member]].concat();
    let e = load_err(&flags, &[]);
    assert!(
        e.contains(&format!("--member: invalid value {member:?}: pool")),
        "{e}"
    );
    // Refused here already: once, not again by the policy module.
    let e = load_err(&[MINIMAL, &["--invoker-role", "run.invoker"]].concat(), &[]);
    assert!(e.starts_with("1 configuration problem:"), "{e}");
}

/// Under a second, an issuer's `Cache-Control: no-cache` or a stream of
/// unknown `kid`s would have the key set fetched back to back.
#[test]
fn jwks_intervals_under_a_second_are_refused() {
    let flags = [
        MINIMAL,
        &["--jwks-min-ttl", "0s", "--jwks-refresh-interval", "500ms"],
    ]
    .concat();
    let e = load_err(&flags, &[]);
    for expected in [
        "--jwks-min-ttl: 0s is under 1s",
        "--jwks-refresh-interval: 500ms is under 1s",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    assert!(e.starts_with("2 configuration problems:"), "{e}");
    let flags = [
        MINIMAL,
        &["--jwks-min-ttl", "1s", "--jwks-refresh-interval", "1s"],
    ]
    .concat();
    load_ok(&flags, &[]);
}

/// An upstream that is idgate's own listener would have every request come
/// back through the gate until its headers grew too long.
#[test]
fn an_upstream_that_is_the_sidecar_itself_is_refused() {
    let with = |upstream: &str, listen: &str| {
        let flags = [
            "--audience",
            "https://svc",
            "--member",
            "allUsers",
            "--upstream",
            upstream,
            "--listen",
            listen,
        ];
        load(&args(&flags), &env(&[]))
    };
    for (upstream, listen) in [
        ("http://127.0.0.1:8080", "0.0.0.0:8080"),
        ("http://localhost:8080", "127.0.0.1:8080"),
        ("http://[::1]:8080", "[::]:8080"),
        ("http://10.1.2.3:8080", "10.1.2.3:8080"),
        ("http://127.0.0.1", "0.0.0.0:80"),
    ] {
        let e = with(upstream, listen).unwrap_err().to_string();
        assert!(
            e.contains("requests would loop"),
            "{upstream} {listen}: {e}"
        );
    }
    for (upstream, listen) in [
        ("http://127.0.0.1:8081", "0.0.0.0:8080"),
        ("http://127.0.0.2:8080", "127.0.0.1:8080"),
        ("http://app:8080", "0.0.0.0:8080"),
    ] {
        assert!(with(upstream, listen).is_ok(), "{upstream} {listen}");
    }
}
