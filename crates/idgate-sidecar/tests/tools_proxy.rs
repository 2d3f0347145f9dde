//! `idgate proxy`: the real binary against loopback fakes of each token
//! source (the metadata server, Google's token endpoint for a
//! service-account key, gcloud, the dev issuer) and a real upstream that
//! echoes what it receives; and the refresh logic in-process on a manual
//! clock.

mod tools_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use idgate::{Clock, ManualClock};
use idgate_sidecar::cmd::token_source::{FetchToken, SourceError, TokenCache};
use idgate_testkit::{Issuer, TestKey};
use serde_json::{Value, json};
use tools_support::{
    Spawned, claims, echo_upstream, eventually, header, http, idgate, now, pkcs8_pem, serve_router,
    spawn,
};

const SA: &str = "invoker@my-project.iam.gserviceaccount.com";

/// The proxy's address, from its first stdout line.
fn proxy_url(proxy: &Spawned) -> String {
    proxy.line("the proxy's address", |l| {
        l.strip_prefix("idgate proxy: ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    })
}

/// GET through the proxy; the upstream's echo.
fn through(proxy: &str, path: &str) -> Value {
    through_with(proxy, path, &[])
}

/// [`through`], the client sending `headers`.
fn through_with(proxy: &str, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = http().get(format!("{proxy}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text());
    res.json().unwrap()
}

/// The bearer token the upstream saw in `header`.
fn bearer(echo: &Value, header: &str) -> String {
    echo[header]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token in {header}: {echo}"))
        .to_owned()
}

/// `idgate proxy` on a free loopback port in front of `upstream`, tokens
/// from `source`, with `extra` flags.
fn proxy_to(
    dir: &std::path::Path,
    upstream: impl std::fmt::Display,
    source: &str,
    extra: &[&str],
) -> Spawned {
    let target = format!("http://{upstream}");
    let mut args = proxy_args(&target, source);
    args.extend(extra);
    spawn(dir, &args, &[])
}

/// `idgate proxy`'s arguments for `target` on a free loopback port.
fn proxy_args<'a>(target: &'a str, source: &'a str) -> Vec<&'a str> {
    vec![
        "proxy",
        "--target",
        target,
        "--listen",
        "127.0.0.1:0",
        "--token-source",
        source,
    ]
}

/// A fake metadata server: what it saw and how it answers.
#[derive(Default)]
struct Metadata {
    audiences: Mutex<Vec<String>>,
    without_flavor: AtomicUsize,
    failing: AtomicBool,
    ttl: Mutex<Option<u64>>,
    minted: AtomicUsize,
}

struct MetadataState {
    fake: Arc<Metadata>,
    issuer: Arc<Issuer>,
}

async fn identity(
    State(s): State<Arc<MetadataState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        s.fake.without_flavor.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header",
        )
            .into_response();
    }
    if s.fake.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metadata server broke").into_response();
    }
    let Some(aud) = q.get("audience") else {
        return (StatusCode::BAD_REQUEST, "no audience").into_response();
    };
    if q.get("format").map(String::as_str) != Some("full") {
        return (StatusCode::BAD_REQUEST, "format is not full").into_response();
    }
    s.fake.audiences.lock().unwrap().push(aud.clone());
    let n = s.fake.minted.fetch_add(1, Ordering::SeqCst) + 1;
    let mut c = s.issuer.claims(SA, aud);
    c["n"] = json!(n);
    if let Some(ttl) = *s.fake.ttl.lock().unwrap() {
        c["exp"] = json!(c["iat"].as_u64().unwrap() + ttl);
    }
    s.issuer.mint(&c).into_response()
}

fn metadata_server(fake: Arc<Metadata>, issuer: Arc<Issuer>) -> std::net::SocketAddr {
    serve_router(
        Router::new()
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/identity",
                get(identity),
            )
            .with_state(Arc::new(MetadataState { fake, issuer })),
    )
}

#[test]
fn metadata_source_adds_a_token_for_the_targets_origin() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Arc::new(Issuer::start_blocking());
    let fake = Arc::new(Metadata::default());
    let md = metadata_server(fake.clone(), issuer.clone());
    let upstream = echo_upstream();
    let target = format!("http://{upstream}/base");
    let proxy = spawn(
        dir.path(),
        &proxy_args(&target, "metadata"),
        &[("GCE_METADATA_HOST", &md.to_string())],
    );
    let url = proxy_url(&proxy);
    let echo = through(&url, "/some/path?q=1");
    let token = bearer(&echo, "authorization");
    let c = claims(&token);
    let origin = format!("http://{upstream}");
    assert_eq!(
        c["aud"],
        origin.as_str(),
        "the audience is the target's origin"
    );
    assert_eq!(c["email"], SA);
    assert_eq!(echo["path"], "/base/some/path?q=1");
    assert_eq!(echo["host"], upstream.to_string().as_str());
    assert_eq!(
        *fake.audiences.lock().unwrap(),
        std::slice::from_ref(&origin)
    );
    assert_eq!(fake.without_flavor.load(Ordering::SeqCst), 0);

    // A body goes through, and the client's own Authorization is replaced.
    let res = http()
        .post(format!("{url}/upload"))
        .header("authorization", "Basic c3B5OnNweQ==")
        .body("hello upstream")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().unwrap();
    assert_eq!(echo["body"], "hello upstream");
    assert_eq!(bearer(&echo, "authorization"), token, "one token, reused");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1);
    proxy
        .stdout_has(&format!("audience  {origin}"))
        .stdout_has(&format!("the metadata server ({md})"));
}

/// A fake of Google's OAuth token endpoint for the JWT-bearer grant: checks
/// the assertion as Google would (signature with the key's public half,
/// claims), then answers with an ID token from the testkit issuer.
struct TokenEndpoint {
    n: Vec<u8>,
    e: Vec<u8>,
    token_uri: Mutex<String>,
    issuer: Arc<Issuer>,
    problems: Mutex<Vec<String>>,
    exchanged: AtomicUsize,
}

async fn exchange(
    State(s): State<Arc<TokenEndpoint>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let refuse = |why: String| {
        s.problems.lock().unwrap().push(why.clone());
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let Some((input, sig)) = assertion.rsplit_once('.') else {
        return refuse("assertion is not a JWS".into());
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap_or_default();
    let public = RsaPublicKeyComponents {
        n: &s.n[..],
        e: &s.e[..],
    };
    if public
        .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
        .is_err()
    {
        return refuse("bad assertion signature".into());
    }
    let h = header(assertion);
    let c = claims(assertion);
    let token_uri = s.token_uri.lock().unwrap().clone();
    let checks = [
        (h["alg"] == "RS256", "alg"),
        (h["kid"] == "sa-key-id", "kid"),
        (c["iss"] == SA, "iss"),
        (c["sub"] == SA, "sub"),
        (c["aud"] == token_uri.as_str(), "aud"),
        (
            c["exp"].as_u64().zip(c["iat"].as_u64()).map(|(e, i)| e - i) == Some(3600),
            "exp",
        ),
        (c["target_audience"].is_string(), "target_audience"),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        return refuse(format!("assertion {what} is wrong: {h} {c}"));
    }
    s.exchanged.fetch_add(1, Ordering::SeqCst);
    let aud = c["target_audience"].as_str().unwrap_or_default();
    axum::Json(json!({"id_token": s.issuer.token(SA, aud)})).into_response()
}

#[test]
fn key_file_source_exchanges_a_signed_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Arc::new(Issuer::start_blocking());
    let sa_key = TestKey::generate("sa-key-id");
    let endpoint = Arc::new(TokenEndpoint {
        n: sa_key.modulus().to_vec(),
        e: sa_key.exponent().to_vec(),
        token_uri: Mutex::new(String::new()),
        issuer: issuer.clone(),
        problems: Mutex::new(Vec::new()),
        exchanged: AtomicUsize::new(0),
    });
    let addr = serve_router(
        Router::new()
            .route("/token", post(exchange))
            .with_state(endpoint.clone()),
    );
    let token_uri = format!("http://{addr}/token");
    *endpoint.token_uri.lock().unwrap() = token_uri.clone();
    std::fs::write(
        dir.path().join("sa.json"),
        json!({
            "type": "service_account",
            "project_id": "my-project",
            "private_key_id": "sa-key-id",
            "private_key": pkcs8_pem(&sa_key.to_pkcs8_der()),
            "client_email": SA,
            "client_id": "1234567890",
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .unwrap();
    let upstream = echo_upstream();
    let proxy = proxy_to(dir.path(), upstream, "key:sa.json", &[]);
    let url = proxy_url(&proxy);
    let echo = through(&url, "/");
    assert!(
        endpoint.problems.lock().unwrap().is_empty(),
        "{:?}",
        endpoint.problems.lock().unwrap()
    );
    assert_eq!(endpoint.exchanged.load(Ordering::SeqCst), 1);
    let token = bearer(&echo, "authorization");
    let c = claims(&token);
    assert_eq!(c["aud"], format!("http://{upstream}").as_str());
    assert_eq!(c["email"], SA);

    // The token is one the sidecar would let in.
    idgate(
        dir.path(),
        &[
            "check",
            "--token",
            &token,
            "--issuer",
            &issuer.url(),
            "--jwks-url",
            &issuer.jwks_url(),
            "--issuer-trust-emails",
            "--audience",
            &format!("http://{upstream}"),
            "--member",
            &format!("serviceAccount:{SA}"),
        ],
        &[],
        None,
    )
    .expect_code(0);
}

#[test]
fn dev_source_with_an_explicit_audience_in_x_serverless_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start_blocking();
    let upstream = echo_upstream();
    let proxy = proxy_to(
        dir.path(),
        upstream,
        &format!("dev:{}", issuer.url()),
        &[
            "--email",
            "alice@example.com",
            "--audience",
            "https://svc-abc-uc.a.run.app",
            "--serverless-authorization",
        ],
    );
    let url = proxy_url(&proxy);
    let echo = through_with(&url, "/x", &[("authorization", "Basic YXBwOmtleQ==")]);
    assert_eq!(echo["authorization"], "Basic YXBwOmtleQ==", "{echo}");
    let c = claims(&bearer(&echo, "x-serverless-authorization"));
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["aud"], "https://svc-abc-uc.a.run.app");
    assert_eq!(c["iss"], issuer.url().as_str());
}

#[test]
fn a_clients_own_serverless_authorization_does_not_outrank_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start_blocking();
    let upstream = echo_upstream();
    let token = issuer.token(SA, &format!("http://{upstream}"));
    let proxy = proxy_to(dir.path(), upstream, &format!("token:{token}"), &[]);
    let url = proxy_url(&proxy);
    let echo = through_with(
        &url,
        "/x",
        &[("x-serverless-authorization", "Bearer client-own")],
    );
    assert_eq!(bearer(&echo, "authorization"), token);
    assert!(echo["x-serverless-authorization"].is_null(), "{echo}");
}

#[test]
fn gcloud_source_runs_gcloud_with_the_audience() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start_blocking();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let upstream = echo_upstream();
    let aud = format!("http://{upstream}");
    std::fs::write(bin.join("token"), issuer.token(SA, &aud)).unwrap();
    // A stand-in for gcloud that checks its arguments.
    let script = bin.join("gcloud");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         echo \"$@\" >> \"$(dirname \"$0\")/calls\"\n\
         [ \"$1 $2\" = \"auth print-identity-token\" ] || { echo \"unexpected: $*\" >&2; exit 3; }\n\
         cat \"$(dirname \"$0\")/token\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let proxy = spawn(dir.path(), &proxy_args(&aud, "gcloud"), &[("PATH", &path)]);
    let url = proxy_url(&proxy);
    let echo = through(&url, "/");
    assert_eq!(claims(&bearer(&echo, "authorization"))["aud"], aud.as_str());
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    assert_eq!(
        calls.trim(),
        format!("auth print-identity-token --audiences={aud}")
    );

    // Without gcloud on PATH: a clear error at startup.
    idgate(
        dir.path(),
        &proxy_args(&aud, "gcloud"),
        &[("PATH", "/nonexistent")],
        None,
    )
    .expect_code(1)
    .expect_stderr("gcloud is not on PATH");
}

#[test]
fn a_failing_source_stops_startup_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Arc::new(Issuer::start_blocking());
    let fake = Arc::new(Metadata::default());
    fake.failing.store(true, Ordering::SeqCst);
    let md = metadata_server(fake, issuer);
    let upstream = echo_upstream();
    let target = format!("http://{upstream}");
    let proxy = |source: &str, extra: &[(&str, &str)]| {
        idgate(dir.path(), &proxy_args(&target, source), extra, None)
    };
    let run = proxy("metadata", &[("GCE_METADATA_HOST", &md.to_string())]);
    run.expect_code(1)
        .expect_stderr("no token from the metadata server")
        .expect_stderr("answered 500")
        .expect_stderr("metadata server broke");
    if run.stdout().contains("idgate proxy:") {
        run.fail("it must not listen");
    }
    proxy("key:missing.json", &[])
        .expect_code(1)
        .expect_stderr("cannot read missing.json");
    proxy("dev:http://127.0.0.1:9", &[])
        .expect_code(2)
        .expect_stderr("needs --email");
    proxy("vault:secret", &[])
        .expect_code(2)
        .expect_stderr("expected dev:URL, metadata");
    let mut c = Issuer::start_blocking().claims(SA, &target);
    c["iat"] = json!(now() - 7200);
    c["exp"] = json!(now() - 3600);
    let expired = Issuer::start_blocking().mint(&c);
    proxy(&format!("token:{expired}"), &[])
        .expect_code(1)
        .expect_stderr("expired 1h ago");
}

#[test]
fn tokens_are_refreshed_before_expiry_and_a_later_failure_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Arc::new(Issuer::start_blocking());
    let fake = Arc::new(Metadata::default());
    // 4 s tokens: refreshed after 2 s, handed out until 3.6 s.
    *fake.ttl.lock().unwrap() = Some(4);
    let md = metadata_server(fake.clone(), issuer);
    let upstream = echo_upstream();
    let target = format!("http://{upstream}");
    let proxy = spawn(
        dir.path(),
        &proxy_args(&target, "metadata"),
        &[("GCE_METADATA_HOST", &md.to_string())],
    );
    let url = proxy_url(&proxy);
    let first = bearer(&through(&url, "/"), "authorization");
    assert_eq!(claims(&first)["n"], 1);
    // A later request carries a new token, and none carries an expired one.
    let second = eventually("a refreshed token", || {
        let token = bearer(&through(&url, "/"), "authorization");
        let c = claims(&token);
        assert!(
            c["exp"].as_u64().unwrap() >= now(),
            "an expired token was sent: {c}"
        );
        (c["n"] != 1).then_some(token)
    });
    assert_ne!(first, second);

    // The source breaks: once the token runs out, requests get a 502 that
    // says why, and the log says so too.
    fake.failing.store(true, Ordering::SeqCst);
    let body: Value = eventually("a 502 from the proxy", || {
        let res = http().get(format!("{url}/")).send().unwrap();
        (res.status() == 502).then(|| res.json().unwrap())
    });
    assert_eq!(body["reason"], "token_source_failed", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("metadata server broke"),
        "{body}"
    );
    proxy.wait_stderr("token source failed");

    // And it recovers by itself.
    fake.failing.store(false, Ordering::SeqCst);
    eventually("a token again", || {
        let res = http().get(format!("{url}/")).send().unwrap();
        (res.status() == 200).then_some(())
    });
}

/// A source on a manual clock: 4 s tokens numbered by fetch, failing or
/// held back on demand.
struct Counted {
    clock: Arc<ManualClock>,
    key: TestKey,
    fetches: AtomicUsize,
    failing: AtomicBool,
    release: tokio::sync::watch::Receiver<bool>,
}

impl FetchToken for Counted {
    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
        async move {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = self.release.clone().wait_for(|r| *r).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(SourceError::NoToken {
                    from: "the test source".into(),
                    why: "told to fail".into(),
                });
            }
            let now = self.clock.unix_now().as_secs();
            let mut c = idgate_testkit::google_claims("https://iss.example", SA, audience, now);
            c["exp"] = json!(now + 4);
            c["n"] = json!(n);
            Ok(idgate_testkit::mint(
                &self.key,
                &idgate_testkit::default_header(&self.key),
                &c,
            ))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "the test source".into()
    }
}

fn counted(released: bool) -> (Arc<Counted>, tokio::sync::watch::Sender<bool>, TokenCache) {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(2_000_000_000)));
    let (tx, rx) = tokio::sync::watch::channel(released);
    let source = Arc::new(Counted {
        clock: clock.clone(),
        key: TestKey::generate("k"),
        fetches: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
        release: rx,
    });
    struct Shared(Arc<Counted>);
    impl FetchToken for Shared {
        fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
            self.0.fetch(audience)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }
    let cache = TokenCache::new(Box::new(Shared(source.clone())), "aud".into(), clock);
    (source, tx, cache)
}

fn n(token: &str) -> u64 {
    claims(token)["n"].as_u64().unwrap()
}

async fn settle(what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < tools_support::DEADLINE,
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn refresh_runs_in_the_background_when_due_on_a_manual_clock() {
    let (source, _release, cache) = counted(true);
    let clock = source.clock.clone();
    let t1 = cache.token().await.unwrap();
    assert_eq!(n(&t1), 1);
    let timing = cache.timing().unwrap();
    let start = clock.unix_now();
    assert_eq!(timing.refresh_at, start + Duration::from_secs(2));
    assert_eq!(
        timing.usable_until,
        Some(start + Duration::from_millis(3_600))
    );

    // Before it is due: the same token, no fetch.
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.token().await.unwrap(), t1);
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);

    // Due: this request still gets the current token, and a refresh starts
    // behind it.
    clock.advance(Duration::from_millis(1_500));
    assert_eq!(cache.token().await.unwrap(), t1);
    settle("the background refresh", || {
        cache
            .timing()
            .is_some_and(|t| t.refresh_at > timing.refresh_at)
    })
    .await;
    let t2 = cache.token().await.unwrap();
    assert_eq!(n(&t2), 2);
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);

    // The source fails: the current token serves while it is usable ...
    source.failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_millis(2_200));
    assert_eq!(cache.token().await.unwrap(), t2);
    settle("the failed refresh", || {
        source.fetches.load(Ordering::SeqCst) == 3
    })
    .await;
    // ... and never after: past its usable time a request gets the error.
    clock.advance(Duration::from_secs(1));
    let err = cache.token().await.unwrap_err();
    assert!(err.to_string().contains("told to fail"), "{err}");

    // The source recovers: once the failure's backoff has passed, a fresh
    // token.
    source.failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(2));
    let t3 = cache.token().await.unwrap();
    assert!(n(&t3) > 2);
}

#[tokio::test]
async fn a_failing_source_is_not_asked_once_per_request() {
    let (source, _release, cache) = counted(true);
    let clock = source.clock.clone();
    source.failing.store(true, Ordering::SeqCst);
    assert!(cache.token().await.is_err());
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    // Within the backoff (1 s after the first failure) requests get the
    // last error, and the source is left alone.
    for _ in 0..20 {
        let err = cache.token().await.unwrap_err();
        assert!(err.to_string().contains("told to fail"), "{err}");
    }
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    // Past it, one request tries again (and fails: 2 s of backoff now).
    clock.advance(Duration::from_millis(1_100));
    assert!(cache.token().await.is_err());
    assert!(cache.token().await.is_err());
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    source.failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_millis(2_100));
    assert!(cache.token().await.is_ok());
    assert_eq!(source.fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn one_fetch_however_many_requests_wait() {
    let (source, release, cache) = counted(false);
    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let c = cache.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    settle("the fetch to start", || {
        source.fetches.load(Ordering::SeqCst) == 1
    })
    .await;
    release.send(true).unwrap();
    let mut tokens = Vec::new();
    for w in waiting {
        tokens.push(w.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_fixed_token_is_never_handed_out() {
    struct Fixed(String);
    impl FetchToken for Fixed {
        fn fetch<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
            let t = self.0.clone();
            async move { Ok(t) }.boxed()
        }
        fn describe(&self) -> String {
            "a fixed token".into()
        }
    }
    let key = TestKey::generate("k");
    let clock = Arc::new(ManualClock::new(Duration::from_secs(10_000)));
    let mut c = idgate_testkit::google_claims("https://iss.example", SA, "aud", 5_000);
    c["exp"] = json!(9_000);
    let token = idgate_testkit::mint(&key, &idgate_testkit::default_header(&key), &c);
    let cache = TokenCache::new(Box::new(Fixed(token)), "aud".into(), clock);
    let err = cache.token().await.unwrap_err();
    assert!(err.to_string().contains("expired 16m 40s ago"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_source_with_nothing_fresher_is_asked_again_with_backoff_not_in_a_loop() {
    struct Stale {
        token: String,
        fetches: Arc<AtomicUsize>,
    }
    impl FetchToken for Stale {
        fn fetch<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let t = self.token.clone();
            async move { Ok(t) }.boxed()
        }
        fn describe(&self) -> String {
            "a stale token".into()
        }
    }
    let key = TestKey::generate("k");
    let clock = Arc::new(ManualClock::new(Duration::from_secs(10_000)));
    // A minute's token with 10 s left: due for refresh, still usable.
    let mut c = idgate_testkit::google_claims("https://iss.example", SA, "aud", 9_950);
    c["exp"] = json!(10_010);
    let token = idgate_testkit::mint(&key, &idgate_testkit::default_header(&key), &c);
    let fetches = Arc::new(AtomicUsize::new(0));
    let cache = TokenCache::new(
        Box::new(Stale {
            token: token.clone(),
            fetches: fetches.clone(),
        }),
        "aud".into(),
        clock,
    );
    assert_eq!(*cache.token().await.unwrap(), *token);
    let refresher = cache.spawn_refresher();
    // A minute of (paused, auto-advancing) runtime time.
    tokio::time::sleep(Duration::from_secs(60)).await;
    refresher.abort();
    let n = fetches.load(Ordering::SeqCst);
    assert!((2..=10).contains(&n), "{n} fetches in a minute");
}
