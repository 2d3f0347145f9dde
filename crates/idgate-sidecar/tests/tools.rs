//! The local tools as a user runs them: `dev-issuer`, `token`, `check` and
//! `demo`, each the real binary in a temporary directory with a cleared
//! environment. Issuers are the testkit's, on loopback; nothing leaves the
//! machine.

mod tools_support;

use std::path::Path;

use idgate_testkit::{Issuer, IssuerOptions, TestKey};
use serde_json::{Value, json};
use tools_support::{Run, claims, header, http, idgate, now, spawn};

const ALICE: &str = "alice@example.com";
const AUD: &str = "https://svc.example";

/// `check` flags that trust `issuer` (emails included) and allow alice.
fn trust(issuer: &Issuer) -> Vec<String> {
    vec![
        "--issuer".into(),
        issuer.url(),
        "--jwks-url".into(),
        issuer.jwks_url(),
        "--issuer-trust-emails".into(),
        "--audience".into(),
        AUD.into(),
        "--member".into(),
        format!("user:{ALICE}"),
    ]
}

fn check(dir: &Path, issuer: &Issuer, token: &str, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec!["check".into(), "--token".into(), token.into()];
    args.extend(trust(issuer));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    idgate(dir, &args, &[], None)
}

fn issuer() -> Issuer {
    Issuer::start_blocking()
}

#[test]
fn dev_issuer_serves_discovery_jwks_and_mint_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn(
        dir.path(),
        &[
            "dev-issuer",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            "keys",
        ],
        &[],
    );
    let url = first.url_after("issuer");
    let client = http();

    let discovery: Value = client
        .get(format!("{url}/.well-known/openid-configuration"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(discovery["issuer"], url.as_str(), "{discovery}");
    assert_eq!(discovery["jwks_uri"], format!("{url}/jwks"), "{discovery}");

    let res = client.get(format!("{url}/jwks")).send().unwrap();
    let cache_control = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        cache_control
            .as_deref()
            .is_some_and(|c| c.contains("max-age")),
        "{cache_control:?}"
    );
    let jwks: Value = res.json().unwrap();
    let keys = jwks["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kid"], "key-1");

    let token = client
        .get(format!("{url}/token"))
        .query(&[("email", ALICE), ("audience", AUD), ("hd", "example.com")])
        .send()
        .unwrap()
        .text()
        .unwrap();
    let c = claims(&token);
    assert_eq!(c["iss"], url.as_str());
    assert_eq!(c["email"], ALICE);
    assert_eq!(c["aud"], AUD);
    assert_eq!(c["hd"], "example.com");
    assert!(dir.path().join("keys").join("key-1.pk8").exists());

    // SIGTERM ends it cleanly.
    assert_eq!(first.terminate(), Some(0), "{}", first.stderr());

    // Restarted on the same directory: the same key, so the old token
    // still verifies against the new JWKS.
    let second = spawn(
        dir.path(),
        &[
            "dev-issuer",
            "--listen",
            "127.0.0.1:0",
            "--keys-dir",
            "keys",
        ],
        &[],
    );
    let url2 = second.url_after("issuer");
    let jwks2: Value = client
        .get(format!("{url2}/jwks"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        jwks2["keys"][0]["n"], keys[0]["n"],
        "a new key after restart"
    );
    idgate(
        dir.path(),
        &[
            "check",
            "--token",
            &token,
            "--issuer",
            &url,
            "--jwks-url",
            &format!("{url2}/jwks"),
            "--issuer-trust-emails",
            "--audience",
            AUD,
            "--member",
            "domain:example.com",
        ],
        &[],
        None,
    )
    .expect_code(0)
    .expect_stdout("ALLOWED");
}

#[test]
fn dev_issuer_prints_how_to_use_it_and_warns_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = spawn(
        dir.path(),
        &["dev-issuer", "--listen", "127.0.0.1:0", "--keys-dir", "k"],
        &[],
    );
    let url = issuer.url_after("issuer");
    issuer.line("an idgate token example", |l| {
        l.contains(&format!("idgate token --issuer-url {url}"))
            .then_some(())
    });
    issuer.line("a curl example", |l| l.contains("curl -s").then_some(()));

    // Without --keys-dir (and without a home), keys go to the temp dir,
    // and the banner says where.
    let elsewhere = spawn(
        dir.path(),
        &["dev-issuer", "--listen", "0.0.0.0:0"],
        &[("TMPDIR", dir.path().to_str().unwrap())],
    );
    let keys_line = elsewhere.line("the keys line", |l| {
        l.trim_start().starts_with("keys").then(|| l.to_owned())
    });
    assert!(keys_line.contains("idgate-dev-issuer-keys"), "{keys_line}");
    elsewhere.wait_stderr("anyone who can reach it can mint tokens");
}

#[test]
fn token_asks_a_running_issuer_with_claims_hd_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let run = idgate(
        dir.path(),
        &[
            "token",
            "--issuer-url",
            &issuer.url(),
            "--email",
            ALICE,
            "--audience",
            AUD,
            "--hd",
            "example.com",
            "--claim",
            "role=admin",
            "--claim",
            "level=3",
            "--claim",
            "groups=[\"eng\",\"sre\"]",
            "--ttl",
            "10m",
        ],
        &[],
        None,
    );
    run.expect_code(0);
    let out = run.stdout();
    let token = out
        .strip_suffix('\n')
        .unwrap_or_else(|| run.fail("no newline"));
    if token.contains(char::is_whitespace) || token.split('.').count() != 3 {
        run.fail("stdout is not just a token and a newline");
    }
    let c = claims(token);
    assert_eq!(c["iss"], issuer.url().as_str());
    assert_eq!(c["email"], ALICE);
    assert_eq!(c["aud"], AUD);
    assert_eq!(c["hd"], "example.com");
    assert_eq!(c["role"], "admin");
    assert_eq!(c["level"], 3);
    assert_eq!(c["groups"], json!(["eng", "sre"]));
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    check(dir.path(), &issuer, token, &[])
        .expect_code(0)
        .expect_stdout("ALLOWED");
}

#[test]
fn token_mints_locally_from_a_keys_dir() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // The dev issuer and `token --keys-dir` share the directory.
    let issuer = Issuer::start_blocking_with(IssuerOptions {
        keys_dir: Some(keys.clone()),
        ..IssuerOptions::default()
    })
    .unwrap();
    let run = idgate(
        dir.path(),
        &[
            "token",
            "--keys-dir",
            "keys",
            "--issuer-url",
            &issuer.url(),
            "--email",
            ALICE,
            "--audience",
            AUD,
            "--unverified-email",
            "--claim",
            "nonce=\"42\"",
        ],
        &[],
        None,
    );
    run.expect_code(0);
    let token = run.stdout().trim().to_owned();
    assert_eq!(header(&token)["kid"], "key-1");
    let c = claims(&token);
    assert_eq!(c["iss"], issuer.url().as_str());
    assert_eq!(c["email_verified"], false);
    assert_eq!(c["nonce"], "42");
    // Verifies, but an unverified email names no user: member.
    check(dir.path(), &issuer, &token, &[])
        .expect_code(1)
        .expect_stdout("signature   pass")
        .expect_stdout("not verified")
        .expect_stdout("DENIED   email_unverified");

    // Without --issuer-url the iss is the default dev issuer's.
    let run = idgate(
        dir.path(),
        &[
            "token",
            "--keys-dir",
            "keys",
            "--email",
            ALICE,
            "--audience",
            AUD,
        ],
        &[],
        None,
    );
    run.expect_code(0);
    assert_eq!(claims(run.stdout().trim())["iss"], "http://127.0.0.1:8900");
}

#[test]
fn token_usage_and_unreachable_issuer() {
    let dir = tempfile::tempdir().unwrap();
    idgate(dir.path(), &["token", "--email", ALICE], &[], None)
        .expect_code(2)
        .expect_stderr("--audience");
    idgate(
        dir.path(),
        &[
            "token",
            "--email",
            ALICE,
            "--audience",
            AUD,
            "--claim",
            "novalue",
        ],
        &[],
        None,
    )
    .expect_code(2)
    .expect_stderr("KEY=VALUE");
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", nobody.local_addr().unwrap());
    drop(nobody);
    let run = idgate(
        dir.path(),
        &[
            "token",
            "--issuer-url",
            &url,
            "--email",
            ALICE,
            "--audience",
            AUD,
        ],
        &[],
        None,
    );
    run.expect_code(1)
        .expect_stderr("is `idgate dev-issuer` running?");
    if !run.stdout().is_empty() {
        run.fail("nothing belongs on stdout");
    }
}

#[test]
fn check_allows_and_names_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let token = issuer.token(ALICE, AUD);
    let run = check(dir.path(), &issuer, &token, &[]);
    run.expect_code(0)
        .expect_stdout("credential  pass")
        .expect_stdout("header      pass  alg RS256, kid \"key-1\", typ JWT")
        .expect_stdout(&format!("issuer      pass  iss \"{}\"", issuer.url()))
        .expect_stdout("key         pass  kid \"key-1\" is in the key set")
        .expect_stdout("signature   pass")
        .expect_stdout("exp         pass  exp ")
        .expect_stdout(", in ")
        .expect_stdout("audience    pass")
        .expect_stdout("principal   pass  user:alice@example.com")
        .expect_stdout("ALLOWED  roles/run.invoker for user:alice@example.com (--member[0])");
    // Never the token, nor its signature.
    let signature = token.rsplit('.').next().unwrap();
    run.expect_no_stdout(signature).expect_no_stdout(&token);
    if run.stderr().contains(signature) {
        run.fail("the signature is on stderr");
    }

    // A policy file: the binding is named with its file and index.
    std::fs::write(
        dir.path().join("policy.json"),
        r#"{"bindings":[
            {"role":"roles/viewer","members":["user:alice@example.com"]},
            {"role":"roles/run.invoker","members":["user:alice@example.com"],
             "condition":{"title":"GET only","expression":"request.method == 'GET'"}}
        ]}"#,
    )
    .unwrap();
    let args = [
        "check",
        "--token",
        &token,
        "--issuer",
        &issuer.url(),
        "--jwks-url",
        &issuer.jwks_url(),
        "--issuer-trust-emails",
        "--audience",
        AUD,
        "--policy",
        "policy.json",
    ];
    idgate(dir.path(), &args, &[], None)
        .expect_code(0)
        .expect_stdout("roles/run.invoker for user:alice@example.com (policy.json: bindings[1]) if \"GET only\"");
    let with_method = |m: &'static str| [&args[..], &["--method", m]].concat();
    idgate(dir.path(), &with_method("POST"), &[], None)
        .expect_code(1)
        .expect_stdout("policy      FAIL")
        .expect_stdout("GET only")
        .expect_stdout("DENIED   not_allowed");
    // A method serve would refuse before the gate is not judged.
    idgate(dir.path(), &with_method("get"), &[], None)
        .expect_code(2)
        .expect_stderr("invalid_method")
        .expect_stderr("give \"GET\"");
    idgate(dir.path(), &with_method("G T"), &[], None)
        .expect_code(2)
        .expect_stderr("invalid_method");
}

#[test]
fn check_denies_with_the_reason_code() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let t = now();

    // Wrong audience: the configured one is printed (operator's tool).
    check(dir.path(), &issuer, &issuer.token(ALICE, "https://other.example"), &[])
        .expect_code(1)
        .expect_stdout("audience    FAIL  aud \"https://other.example\" is not one of the configured audiences (https://svc.example)")
        .expect_stdout("principal   skip")
        .expect_stdout("DENIED   audience_mismatch");

    // Expired.
    let mut c = issuer.claims(ALICE, AUD);
    c["iat"] = json!(t - 3 * 3600);
    c["exp"] = json!(t - 2 * 3600);
    check(dir.path(), &issuer, &issuer.mint(&c), &[])
        .expect_code(1)
        .expect_stdout("exp         FAIL  exp ")
        .expect_stdout("2h ago")
        .expect_stdout("audience    skip")
        .expect_stdout("DENIED   expired");

    // Not allowed.
    check(
        dir.path(),
        &issuer,
        &issuer.token("mallory@example.com", AUD),
        &[],
    )
    .expect_code(1)
    .expect_stdout("principal   pass  user:mallory@example.com")
    .expect_stdout("policy      FAIL")
    .expect_stdout("DENIED   not_allowed");

    // Bad signature: another key under the published kid.
    let impostor = TestKey::generate("key-1");
    let forged = idgate_testkit::mint(
        &impostor,
        &idgate_testkit::default_header(&impostor),
        &issuer.claims(ALICE, AUD),
    );
    check(dir.path(), &issuer, &forged, &[])
        .expect_code(1)
        .expect_stdout("key         pass")
        .expect_stdout("signature   FAIL")
        .expect_stdout("exp         skip")
        .expect_stdout("DENIED   bad_signature");

    // Unknown issuer, and ignored header members are noted.
    let stranger = Issuer::start_blocking();
    let mut h = idgate_testkit::default_header(&stranger.active_key());
    h["jku"] = json!("https://evil.example/jwks");
    let token = idgate_testkit::mint(&stranger.active_key(), &h, &stranger.claims(ALICE, AUD));
    check(dir.path(), &issuer, &token, &[])
        .expect_code(1)
        .expect_stdout("ignored, never fetched: jku")
        .expect_stdout("issuer      FAIL")
        .expect_stdout("is not a configured issuer")
        .expect_stdout("DENIED   unknown_issuer");

    // Google's iss, with Google not trusted: not described as configured.
    let mut claims = issuer.claims(ALICE, AUD);
    claims["iss"] = json!("https://accounts.google.com");
    let googley = issuer.mint(&claims);
    check(dir.path(), &issuer, &googley, &["--google-issuer", "false"])
        .expect_code(1)
        .expect_stdout("issuer      FAIL")
        .expect_no_stdout("Google (keys from")
        .expect_stdout(&format!("(configured: {})", issuer.url()))
        .expect_stdout("DENIED   unknown_issuer");

    // Not a token at all.
    let run = check(dir.path(), &issuer, "not-a-token", &[]);
    run.expect_code(1)
        .expect_stdout("credential  FAIL")
        .expect_stdout("DENIED   malformed_token");
    // Each step once, the policy's included.
    let policy_lines = run
        .stdout()
        .lines()
        .filter(|l| l.starts_with("policy "))
        .count();
    assert_eq!(policy_lines, 1, "{}", run.stdout());
}

#[test]
fn check_json_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let run = check(
        dir.path(),
        &issuer,
        &issuer.token(ALICE, AUD),
        &["--format", "json", "--path", "/api", "--method", "PUT"],
    );
    run.expect_code(0);
    let v = run.json();
    assert_eq!(v["decision"], "allowed", "{v}");
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["principal"], "user:alice@example.com");
    assert_eq!(v["binding"]["role"], "roles/run.invoker");
    assert_eq!(v["binding"]["member"], "user:alice@example.com");
    assert_eq!(v["binding"]["source"], "--member");
    assert_eq!(v["request"]["method"], "PUT");
    let steps = v["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
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
            "policy"
        ]
    );
    assert!(
        steps
            .iter()
            .all(|s| s["ok"] == true && s["detail"].is_string())
    );

    let run = check(
        dir.path(),
        &issuer,
        &issuer.token(ALICE, "https://other.example"),
        &["--format", "json"],
    );
    run.expect_code(1);
    let v = run.json();
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["reason"], "audience_mismatch");
    assert_eq!(v["binding"], Value::Null);
    let failed: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["audience"], "{v}");
}

#[test]
fn check_reads_the_token_on_stdin_and_settings_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let token = issuer.token(ALICE, AUD);
    std::fs::write(
        dir.path().join("idgate.toml"),
        format!(
            "audience = \"{AUD}\"\nissuer = \"{}\"\njwks_url = \"{}\"\nissuer_trust_emails = true\nmember = \"user:{ALICE}\"\n",
            issuer.url(),
            issuer.jwks_url()
        ),
    )
    .unwrap();
    idgate(
        dir.path(),
        &["check", "--config", "idgate.toml"],
        &[],
        Some(&format!("{token}\n")),
    )
    .expect_code(0)
    .expect_stdout("ALLOWED");
    // `-` and a pasted header value work too; IDGATE_* variables count.
    idgate(
        dir.path(),
        &["check", "--token", "-"],
        &[
            ("IDGATE_CONFIG", "idgate.toml"),
            ("IDGATE_AUDIENCE", "https://another.example"),
        ],
        Some(&format!("Bearer {token}")),
    )
    .expect_code(1)
    .expect_stdout("DENIED   audience_mismatch");
}

#[test]
fn check_discovers_the_issuers_keys() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    idgate(
        dir.path(),
        &[
            "check",
            "--token",
            &issuer.token(ALICE, AUD),
            "--issuer",
            &issuer.url(),
            "--audience",
            AUD,
            "--issuer-trust-emails",
            "--member",
            "allAuthenticatedUsers",
        ],
        &[],
        None,
    )
    .expect_code(0)
    .expect_stdout(&format!("in the key set from {}", issuer.jwks_url()))
    .expect_stdout("principal   pass  user:alice@example.com")
    .expect_stdout("ALLOWED  roles/run.invoker for allAuthenticatedUsers");
}

#[test]
fn check_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // No audience anywhere.
    idgate(dir.path(), &["check", "--token", "a.b.c"], &[], None)
        .expect_code(2)
        .expect_stderr("no audience");
    // An unknown flag.
    idgate(dir.path(), &["check", "--tokne", "a.b.c"], &[], None).expect_code(2);
    // No token at all.
    idgate(
        dir.path(),
        &["check", "--audience", AUD, "--member", "allUsers"],
        &[],
        Some(""),
    )
    .expect_code(2)
    .expect_stderr("no token");
    // A bad member is a settings problem, listed like serve lists it.
    idgate(
        dir.path(),
        &[
            "check",
            "--token",
            "a.b.c",
            "--audience",
            AUD,
            "--member",
            "alice@example.com",
        ],
        &[],
        None,
    )
    .expect_code(2)
    .expect_stderr("--member: invalid value");
}

#[test]
fn check_follows_public_paths_and_all_users() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer();
    let expired = {
        let mut c = issuer.claims(ALICE, AUD);
        c["iat"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
        issuer.mint(&c)
    };
    check(
        dir.path(),
        &issuer,
        &expired,
        &["--public-path", "/healthz", "--path", "/healthz"],
    )
    .expect_code(0)
    .expect_stdout("exp         FAIL")
    .expect_stdout("is public");
    check(dir.path(), &issuer, &expired, &["--member", "allUsers"])
        .expect_code(0)
        .expect_stdout("ALLOWED  roles/run.invoker for allUsers");
}

#[test]
fn demo_once_gets_every_expected_answer() {
    let dir = tempfile::tempdir().unwrap();
    // A proxy in the environment must not matter: everything is on
    // loopback (nothing listens on port 9).
    let run = idgate(
        dir.path(),
        &["demo", "--once"],
        &[
            ("HTTP_PROXY", "http://127.0.0.1:9"),
            ("http_proxy", "http://127.0.0.1:9"),
        ],
        None,
    );
    run.expect_code(0)
        .expect_stdout("200  allowed")
        .expect_stdout("401  audience_mismatch")
        .expect_stdout("403  not_allowed")
        .expect_stdout("x-idgate-principal  user:alice@example.com");
    if run.stdout().contains("UNEXPECTED") {
        run.fail("an unexpected answer");
    }
}
