//! The tower layer and the axum extractor, through a real axum server on
//! loopback and a real issuer: what callers see for every kind of request.
//!
//! Needs the `axum` feature (the extractor):
//! `cargo test -p idgate --all-features --test layer`, or any workspace-wide
//! `cargo test --workspace`, where the sidecar turns the feature on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use idgate::auth::{Admission, AuthLayer, Gate, Refusal, StatusCodes};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{CredentialHeader, Identity, IssuerConfig, Reason, Verifier};
use idgate_testkit::{Failure, Issuer, TestKey, default_header, mint, now_unix};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

const AUD: &str = "https://svc.example.com";
const ALICE: &str = "alice@example.com";

/// Tokens as Google signs them: `iss` is Google's, so emails name `user:`
/// and `serviceAccount:` principals; the keys come from the test issuer.
const GOOGLE_ISS: &str = "https://accounts.google.com";

fn google_token(kit: &Issuer, email: &str, audience: &str) -> String {
    let mut claims = kit.claims(email, audience);
    claims["iss"] = json!(GOOGLE_ISS);
    kit.mint(&claims)
}

fn verifier(kit: &Issuer) -> Verifier {
    Verifier::builder()
        .issuer(IssuerConfig::google().with_jwks_url(kit.jwks_url()))
        .audience(AUD)
        .build()
        .unwrap()
}

fn members(members: &[&str]) -> PolicySources {
    PolicySources {
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..Default::default()
    }
}

fn gate(kit: &Issuer, sources: PolicySources, codes: StatusCodes) -> Arc<Gate> {
    let verifier = verifier(kit);
    let (policy, _warnings) = PolicyHandle::new(sources).unwrap();
    Arc::new(
        Gate::builder(Arc::new(verifier), Arc::new(policy))
            .public_path("/public")
            .status_codes(codes)
            .build()
            .unwrap(),
    )
}

async fn whoami(id: Identity) -> axum::Json<Value> {
    axum::Json(json!({
        "email": id.email(),
        "principal": id.principal().to_string(),
    }))
}

async fn maybe(id: Option<Identity>) -> axum::Json<Value> {
    axum::Json(json!({ "principal": id.map(|i| i.principal().to_string()) }))
}

/// Every route above `.layer` is behind the gate; `/unguarded` is added
/// after it, so it is not: the extractor must say so there. `/nested` is a
/// router nested after it, with the layer of its own.
fn app(layer: AuthLayer) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/maybe", get(maybe))
        .route("/public", get(maybe))
        .route("/public/hello", get(maybe))
        .route("/public/whoami", get(whoami))
        .route("/publicity", get(maybe))
        .layer(layer.clone())
        .route("/unguarded", get(whoami))
        .route("/unguarded/maybe", get(maybe))
        .nest(
            "/nested",
            Router::new().route("/maybe", get(maybe)).layer(layer),
        )
}

struct Fixture {
    kit: Issuer,
    base: String,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
    }

    /// A refusal: status, the JSON body naming the reason, and nothing of
    /// the token or the expected audience anywhere in the answer.
    #[track_caller]
    fn assert_refused(&self, status: u16, error: &str, reason: Reason, token: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.headers[http::header::CONTENT_TYPE],
            "application/json",
            "{self:?}"
        );
        assert_eq!(
            self.json(),
            json!({"error": error, "reason": reason.as_str()}),
            "{self:?}"
        );
        let headers = format!("{:?}", self.headers);
        for secret in [token, AUD] {
            if secret.len() > 8 {
                assert!(!self.body.contains(secret), "body leaks {secret:?}");
                assert!(!headers.contains(secret), "headers leak {secret:?}");
            }
        }
    }

    #[track_caller]
    fn assert_invalid_token(&self, reason: Reason, token: &str) {
        self.assert_refused(401, "unauthenticated", reason, token);
        assert_eq!(
            self.www_authenticate(),
            Some(r#"Bearer error="invalid_token""#),
            "{self:?}"
        );
    }
}

async fn start(allowed: &[&str], codes: StatusCodes) -> Fixture {
    start_with(Issuer::start().await, allowed, codes).await
}

async fn start_with(kit: Issuer, allowed: &[&str], codes: StatusCodes) -> Fixture {
    let sources = members(allowed);
    start_with_policy(kit, |_| sources, codes).await.0
}

/// The policy sources are made once the address is known, so conditions
/// can name the host.
async fn start_with_policy(
    kit: Issuer,
    sources: impl FnOnce(SocketAddr) -> PolicySources,
    codes: StatusCodes,
) -> (Fixture, Arc<Gate>) {
    // Bound before the server task starts: connections queue in the
    // backlog until it accepts, so no readiness wait is needed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = gate(&kit, sources(addr), codes);
    let app = app(AuthLayer::new(gate.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let fixture = Fixture {
        kit,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    (fixture, gate)
}

/// An IAM policy file as gcloud prints it, one `roles/run.invoker` binding
/// per (member, condition); an empty condition is none.
fn write_policy(path: &Path, bindings: &[(&str, &str)]) {
    let bindings: Vec<Value> = bindings
        .iter()
        .map(|(member, expression)| {
            let mut b = json!({"members": [member], "role": "roles/run.invoker"});
            if !expression.is_empty() {
                b["condition"] = json!({"title": "t", "expression": expression});
            }
            b
        })
        .collect();
    let text = json!({"bindings": bindings, "etag": "BwYQ8b9r5sE=", "version": 3});
    std::fs::write(path, text.to_string()).unwrap();
}

fn policy_file(path: &Path) -> PolicySources {
    PolicySources {
        files: vec![path.to_owned()],
        ..Default::default()
    }
}

impl Fixture {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get_with_token(&self, path: &str, token: &str) -> Answer {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }

    fn token(&self, email: &str) -> String {
        google_token(&self.kit, email, AUD)
    }

    fn claims(&self) -> Value {
        let mut claims = self.kit.claims(ALICE, AUD);
        claims["iss"] = json!(GOOGLE_ISS);
        claims
    }

    fn token_with(&self, f: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims();
        f(&mut claims);
        self.kit.mint(&claims)
    }
}

#[tokio::test]
async fn an_allowed_caller_reaches_the_handler_with_its_identity() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token(ALICE);
    for _ in 0..3 {
        let a = f.get_with_token("/whoami", &token).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(
            a.json(),
            json!({"email": ALICE, "principal": "user:alice@example.com"})
        );
    }
    let a = f.get_with_token("/maybe", &token).await;
    assert_eq!(a.json(), json!({"principal": "user:alice@example.com"}));
    // Case does not matter in the scheme, and spaces around the token do not.
    let a = f
        .get(
            "/whoami",
            &[("authorization", &format!("bEaReR   {token} "))],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    // Warm keys and the verified-token cache: one JWKS fetch in all.
    assert_eq!(f.kit.jwks_fetches(), 1);
}

#[tokio::test]
async fn a_request_without_a_token_is_asked_for_one() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    for path in ["/whoami", "/maybe", "/no-such-route"] {
        let a = f.get(path, &[]).await;
        a.assert_refused(401, "unauthenticated", Reason::MissingToken, "");
        // RFC 6750 §3.1: no error code when the request had no credential.
        assert_eq!(a.www_authenticate(), Some("Bearer"), "{path}");
        assert_eq!(a.headers[http::header::CACHE_CONTROL], "no-store");
    }
    // No token means no key fetch either.
    assert_eq!(f.kit.jwks_fetches(), 0);
}

#[tokio::test]
async fn every_invalid_token_gets_401_invalid_token_with_its_reason() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let now = now_unix();
    let impostor = TestKey::generate(f.kit.active_key().kid());
    let unknown_kid = TestKey::generate("never-published");
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "expired",
            f.token_with(|c| {
                c["iat"] = json!(now - 7200);
                c["exp"] = json!(now - 3600);
            }),
            Reason::Expired,
        ),
        (
            "minted for another service",
            google_token(&f.kit, ALICE, "https://other.example.com"),
            Reason::AudienceMismatch,
        ),
        (
            "signed by a key with the published kid",
            mint(&impostor, &default_header(&impostor), &f.claims()),
            Reason::BadSignature,
        ),
        (
            "signed by an unpublished key",
            mint(&unknown_kid, &default_header(&unknown_kid), &f.claims()),
            Reason::UnknownKey,
        ),
        (
            "from another issuer",
            f.token_with(|c| c["iss"] = json!("https://evil.example.com")),
            Reason::UnknownIssuer,
        ),
        (
            "not yet valid",
            f.token_with(|c| c["nbf"] = json!(now + 3600)),
            Reason::NotYetValid,
        ),
        (
            "living too long",
            f.token_with(|c| c["exp"] = json!(now + 48 * 3600)),
            Reason::LifetimeTooLong,
        ),
        ("not a JWT", "not-a-jwt".to_owned(), Reason::MalformedToken),
    ];
    for (what, token, reason) in &cases {
        let a = f.get_with_token("/whoami", token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {a:?}");
        a.assert_invalid_token(*reason, token);
    }
}

#[tokio::test]
async fn a_cached_token_spelled_otherwise_is_malformed_not_a_hit() {
    // A cache hit skips the alphabet check (the token passed it when it
    // verified). A token that differs from a cached one by characters
    // outside the alphabet is no hit: it gets the whole extraction.
    let (f, gate) = start_with_policy(
        Issuer::start().await,
        |_| members(&["user:alice@example.com"]),
        StatusCodes::Rfc6750,
    )
    .await;
    let good = f.token(ALICE);
    // Verified, then hits in both kinds of hot slot (a key slot on the
    // second sighting, a token slot on the third).
    for _ in 0..4 {
        let a = f.get_with_token("/whoami", &good).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    assert!(gate.verifier().stats().token_cache_hot_hits >= 1);
    let (header, rest) = good.split_once('.').unwrap();
    let respelled = [
        format!("{good}="),
        format!("{good}=="),
        format!("{header}=.{rest}"),
        format!("+{good}"),
        format!("{good}%2E"),
        format!("{good}\tx"),
    ];
    for token in &respelled {
        let a = f.get_with_token("/whoami", token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}: {a:?}");
        a.assert_invalid_token(Reason::MalformedToken, token);
    }
    // The cached token itself is still a hit.
    let hits = gate.verifier().stats().token_cache_hot_hits;
    let a = f.get_with_token("/whoami", &good).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(gate.verifier().stats().token_cache_hot_hits, hits + 1);
}

#[tokio::test]
async fn a_valid_caller_the_policy_does_not_allow_gets_403() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token("bob@example.com");
    // The first time verified, then from the verified-token cache (the
    // layer decides those without waiting): refused alike.
    for _ in 0..3 {
        let a = f.get_with_token("/whoami", &token).await;
        a.assert_refused(403, "forbidden", Reason::NotAllowed, &token);
        assert_eq!(a.www_authenticate(), None);
    }

    let token = f.token_with(|c| c["email_verified"] = json!(false));
    let a = f.get_with_token("/whoami", &token).await;
    a.assert_refused(403, "forbidden", Reason::EmailUnverified, &token);
    // The string "true" is not the boolean.
    let token = f.token_with(|c| c["email_verified"] = json!("true"));
    let a = f.get_with_token("/whoami", &token).await;
    a.assert_refused(403, "forbidden", Reason::EmailUnverified, &token);
}

#[tokio::test]
async fn no_keys_ever_loaded_is_503_not_a_client_error() {
    let kit = Issuer::start().await;
    kit.set_failure(Failure::Status(500));
    let f = start_with(kit, &["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token(ALICE);
    let a = f.get_with_token("/whoami", &token).await;
    a.assert_refused(503, "unavailable", Reason::KeysUnavailable, &token);
    assert_eq!(a.www_authenticate(), None);
    assert!(a.headers.contains_key(http::header::RETRY_AFTER), "{a:?}");
    assert!(f.kit.jwks_fetches() >= 1);
}

#[tokio::test]
async fn two_tokens_or_an_oversized_one_are_refused_before_verification() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token(ALICE);
    let bearer = format!("Bearer {token}");
    let a = f
        .get(
            "/whoami",
            &[("authorization", &bearer), ("authorization", &bearer)],
        )
        .await;
    a.assert_invalid_token(Reason::MultipleTokens, &token);

    let huge = format!("{}.{}.{}", "a".repeat(8 * 1024), "b".repeat(8 * 1024), "c");
    let a = f.get_with_token("/whoami", &huge).await;
    a.assert_invalid_token(Reason::TokenTooLarge, &huge);
    assert_eq!(f.kit.jwks_fetches(), 0);
}

#[tokio::test]
async fn cloud_run_codes_answer_403_to_a_missing_token_only() {
    let f = start(&["user:alice@example.com"], StatusCodes::CloudRun).await;
    let a = f.get("/whoami", &[]).await;
    a.assert_refused(403, "unauthenticated", Reason::MissingToken, "");
    assert_eq!(a.www_authenticate(), None);
    // Everything else is as RFC 6750 says.
    let token = google_token(&f.kit, ALICE, "https://other.example.com");
    f.get_with_token("/whoami", &token)
        .await
        .assert_invalid_token(Reason::AudienceMismatch, &token);
    let token = f.token("bob@example.com");
    f.get_with_token("/whoami", &token).await.assert_refused(
        403,
        "forbidden",
        Reason::NotAllowed,
        &token,
    );
    let a = f.get_with_token("/whoami", &f.token(ALICE)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
}

#[tokio::test]
async fn x_serverless_authorization_wins_over_authorization() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let good = format!("Bearer {}", f.token(ALICE));
    let a = f
        .get(
            "/whoami",
            &[
                ("x-serverless-authorization", &good),
                ("authorization", "Basic dXNlcjpwYXNz"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["principal"], "user:alice@example.com");

    let a = f
        .get(
            "/whoami",
            &[
                ("x-serverless-authorization", "Bearer garbage"),
                ("authorization", &good),
            ],
        )
        .await;
    a.assert_invalid_token(Reason::MalformedToken, &good);
}

#[tokio::test]
async fn public_paths_need_no_token_and_carry_no_identity() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token(ALICE);
    for path in ["/public", "/public/", "/public/hello"] {
        let a = f.get(path, &[]).await;
        // `/public/` has no route: the gate let it through to axum's 404.
        if path == "/public/" {
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
            continue;
        }
        assert_eq!(a.status, StatusCode::OK, "{path}: {a:?}");
        assert_eq!(a.json(), json!({"principal": null}), "{path}");
        // A token changes nothing there: public paths attach no identity.
        let a = f.get_with_token(path, &token).await;
        assert_eq!(a.json(), json!({"principal": null}), "{path}");
    }
    // A handler that insists on an identity refuses on a public path.
    f.get("/public/whoami", &[]).await.assert_refused(
        401,
        "unauthenticated",
        Reason::MissingToken,
        "",
    );
    // The prefix matches whole segments only.
    let a = f.get("/publicity", &[]).await;
    a.assert_refused(401, "unauthenticated", Reason::MissingToken, "");
    // A path that an upstream could read as another one is never public:
    // a servlet container reads `/public/..;/whoami` as `/whoami`.
    for path in ["/public/..;/whoami", "/public//whoami", "/public/%77hoami"] {
        let a = f.get(path, &[]).await;
        a.assert_refused(401, "unauthenticated", Reason::MissingToken, "");
    }
    // Public paths do not even look at a token.
    assert_eq!(f.kit.jwks_fetches(), 0);
}

/// A public prefix no request path could match is refused when the gate is
/// built, every one listed, rather than silently never matching.
#[tokio::test]
async fn public_prefixes_no_path_could_match_are_refused() {
    let kit = Issuer::start().await;
    let (policy, _) = PolicyHandle::new(members(&["user:alice@example.com"])).unwrap();
    let bad = ["healthz", "/a%2fb", "/a//b", "/a\\b", "/a/../b", "/a?x"];
    let mut builder = Gate::builder(Arc::new(verifier(&kit)), Arc::new(policy));
    for p in bad {
        builder = builder.public_path(p);
    }
    let err = builder.public_path("/fine").build().unwrap_err();
    assert_eq!(err.0.len(), bad.len(), "{err:?}");
    for p in bad {
        assert!(
            err.0.iter().any(|e| e.contains(&format!("{p:?}"))),
            "{p}: {err:?}"
        );
    }
}

#[tokio::test]
async fn all_users_lets_anyone_in_without_an_identity() {
    let f = start(&["allUsers"], StatusCodes::Rfc6750).await;
    let a = f.get("/maybe", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json(), json!({"principal": null}));
    // A bad token does not stop a request that needs none.
    let a = f.get_with_token("/maybe", "not-a-jwt").await;
    assert_eq!(a.json(), json!({"principal": null}));
    // A good one still tells the handler who is calling.
    let a = f.get_with_token("/maybe", &f.token(ALICE)).await;
    assert_eq!(a.json(), json!({"principal": "user:alice@example.com"}));
    // A handler that needs an identity still refuses an anonymous caller,
    // with the reason its token got.
    f.get("/whoami", &[])
        .await
        .assert_refused(401, "unauthenticated", Reason::MissingToken, "");
    f.get_with_token("/whoami", "not-a-jwt")
        .await
        .assert_invalid_token(Reason::MalformedToken, "not-a-jwt");
}

/// The extractor's refusal follows the gate's status codes: under Cloud
/// Run's, a caller without a token gets 403, as from the gate itself.
#[tokio::test]
async fn the_extractor_answers_with_the_gates_status_codes() {
    let f = start(&["allUsers"], StatusCodes::CloudRun).await;
    f.get("/whoami", &[])
        .await
        .assert_refused(403, "unauthenticated", Reason::MissingToken, "");
    f.get_with_token("/whoami", "not-a-jwt")
        .await
        .assert_invalid_token(Reason::MalformedToken, "not-a-jwt");
    let a = f.get_with_token("/whoami", &f.token(ALICE)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    // A gRPC caller gets a gRPC status: 7, as Cloud Run's 403 reads.
    let a = f
        .get("/whoami", &[("content-type", "application/grpc")])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.headers["grpc-status"], "7", "{a:?}");
    assert_eq!(a.headers["grpc-message"], "missing_token", "{a:?}");
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_500_that_names_the_layer() {
    let f = start(&["user:alice@example.com"], StatusCodes::Rfc6750).await;
    let token = f.token(ALICE);
    for path in ["/unguarded", "/unguarded/maybe"] {
        for a in [f.get(path, &[]).await, f.get_with_token(path, &token).await] {
            assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {a:?}");
            assert!(a.body.contains("AuthLayer"), "{path}: {:?}", a.body);
            assert!(!a.body.contains(&token));
        }
    }
}

/// Conditions see the request as the layer read it: method, host (with
/// its port, from `Host`) and path (without the query).
#[tokio::test]
async fn conditions_see_the_method_host_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    let (f, _gate) = start_with_policy(
        Issuer::start().await,
        |addr| {
            let host = format!(r#"request.host == "{addr}""#);
            write_policy(
                &file,
                &[
                    ("user:alice@example.com", &host),
                    (
                        "user:bob@example.com",
                        r#"request.path == "/maybe" && request.method == "GET""#,
                    ),
                    (
                        "user:carol@example.com",
                        r#"request.host == "elsewhere.example.com""#,
                    ),
                    (
                        "user:dave@example.com",
                        r#"request.path == "/nested/maybe""#,
                    ),
                    (
                        "user:erin@example.com",
                        r#"!request.path.startsWith("/nested/")"#,
                    ),
                ],
            );
            policy_file(&file)
        },
        StatusCodes::Rfc6750,
    )
    .await;
    let alice = f.token(ALICE);
    let a = f.get_with_token("/whoami?x=1", &alice).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let bob = f.token("bob@example.com");
    let a = f.get_with_token("/maybe?y=/whoami", &bob).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    f.get_with_token("/whoami", &bob).await.assert_refused(
        403,
        "forbidden",
        Reason::NotAllowed,
        &bob,
    );
    let carol = f.token("carol@example.com");
    f.get_with_token("/maybe", &carol).await.assert_refused(
        403,
        "forbidden",
        Reason::NotAllowed,
        &carol,
    );

    // Under a router nested at /nested, axum hands the layer the path
    // without the prefix; conditions still see the path the client asked
    // for, so a policy means the same wherever the layer sits.
    let dave = f.token("dave@example.com");
    let a = f.get_with_token("/nested/maybe", &dave).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    for (who, token) in [("bob", &bob), ("erin", &f.token("erin@example.com"))] {
        let a = f.get_with_token("/nested/maybe", token).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{who}: {a:?}");
    }
}

/// A reloaded policy applies to the very next request through the same
/// layer: nothing is rebuilt.
#[tokio::test]
async fn a_reloaded_policy_applies_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    write_policy(&file, &[("user:alice@example.com", "")]);
    let (f, gate) = start_with_policy(
        Issuer::start().await,
        |_| policy_file(&file),
        StatusCodes::Rfc6750,
    )
    .await;
    let alice = f.token(ALICE);
    let bob = f.token("bob@example.com");
    assert_eq!(f.get_with_token("/whoami", &alice).await.status, 200);
    assert_eq!(f.get_with_token("/whoami", &bob).await.status, 403);

    write_policy(&file, &[("user:bob@example.com", "")]);
    gate.policy().reload().unwrap();
    assert_eq!(f.get_with_token("/whoami", &alice).await.status, 403);
    assert_eq!(f.get_with_token("/whoami", &bob).await.status, 200);

    // An invalid policy is refused and the last good one stays.
    std::fs::write(&file, "{not json").unwrap();
    assert!(gate.policy().reload().is_err());
    assert_eq!(f.get_with_token("/whoami", &bob).await.status, 200);
}

/// A request that waits for keys (a fetch can take seconds) is judged by
/// the policy in force once they come: a member removed in the meantime is
/// refused, not let in by the policy read before the wait.
#[tokio::test]
async fn a_policy_reloaded_while_keys_are_fetched_judges_the_waiting_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    write_policy(&file, &[("user:alice@example.com", "")]);
    let kit = Issuer::start().await;
    // No keys fetched yet, and the first fetch streams for about a second.
    kit.set_failure(Failure::Slow {
        chunk: 32,
        every: std::time::Duration::from_millis(60),
    });
    let (f, gate) = start_with_policy(kit, |_| policy_file(&file), StatusCodes::Rfc6750).await;
    let alice = f.token(ALICE);
    let reload_during_the_fetch = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while f.kit.jwks_fetches() == 0 {
            assert!(std::time::Instant::now() < deadline, "no key fetch began");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        write_policy(&file, &[("user:bob@example.com", "")]);
        gate.policy().reload().unwrap();
    };
    let (answer, ()) = tokio::join!(f.get_with_token("/whoami", &alice), reload_during_the_fetch);
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(f.kit.jwks_fetches(), 1);
}

/// An `Identity` another layer put in the extensions never passes for one
/// the gate verified: on a public path (or an `allUsers` admission) the
/// handler sees no caller, and `Identity` is refused as without a token.
#[tokio::test]
async fn an_identity_from_another_layer_is_not_the_callers() {
    let kit = Issuer::start().await;
    let Value::Object(claims) = json!({
        "iss": "https://accounts.google.com", "sub": "1", "aud": AUD,
        "email": "boss@example.com", "email_verified": true, "iat": 1, "exp": 2,
    }) else {
        unreachable!()
    };
    let injected = idgate::Identity::from_verified_claims(
        &idgate::IssuerTag {
            name: "google".into(),
            google: true,
            pool: None,
        },
        AUD.into(),
        claims,
        String::new(),
    );
    let router = app(AuthLayer::new(gate(
        &kit,
        members(&["allUsers"]),
        StatusCodes::Rfc6750,
    )))
    .layer(tower::util::MapRequestLayer::new(
        move |mut req: Request<Body>| {
            req.extensions_mut().insert(injected.clone());
            req
        },
    ));
    for (path, status, body) in [
        ("/public/hello", StatusCode::OK, r#"{"principal":null}"#),
        ("/maybe", StatusCode::OK, r#"{"principal":null}"#),
        ("/public/whoami", StatusCode::UNAUTHORIZED, ""),
        ("/whoami", StatusCode::UNAUTHORIZED, ""),
    ] {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let got = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        if status == StatusCode::OK {
            assert_eq!(got, body.as_bytes(), "{path}");
        } else {
            assert!(!String::from_utf8_lossy(&got).contains("boss"), "{path}");
        }
    }
}

/// The refusal is in the response extensions for outer layers: checked
/// in-process, since extensions do not cross the wire.
#[tokio::test]
async fn the_refusal_rides_in_the_response_extensions() {
    let kit = Issuer::start().await;
    let router = app(AuthLayer::new(gate(
        &kit,
        members(&["user:alice@example.com"]),
        StatusCodes::Rfc6750,
    )));
    let call = |token: Option<String>| {
        let mut req = Request::get("/whoami");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        router.clone().oneshot(req.body(Body::empty()).unwrap())
    };

    let resp = call(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.extensions().get::<Reason>(),
        Some(&Reason::MissingToken)
    );
    let refusal = resp.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.rejection.reason, Reason::MissingToken);
    assert_eq!(refusal.principal, None);

    let resp = call(Some(google_token(&kit, "bob@example.com", AUD)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.extensions().get::<Reason>(), Some(&Reason::NotAllowed));
    let refusal = resp.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.principal.as_deref(), Some("user:bob@example.com"));

    let resp = call(Some(google_token(&kit, ALICE, AUD))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.extensions().get::<Reason>().is_none());
    assert!(resp.extensions().get::<Refusal>().is_none());
}

/// Any tower service, not just axum: the identity and the admission are in
/// the request extensions, and a decision hook sees every request.
#[tokio::test]
async fn a_bare_tower_service_gets_identity_and_admission_in_extensions() {
    let kit = Issuer::start().await;
    let verifier = verifier(&kit);
    let (policy, _) = PolicyHandle::new(PolicySources {
        members: vec!["user:alice@example.com".into()],
        ..Default::default()
    })
    .unwrap();
    let decisions = Arc::new(AtomicUsize::new(0));
    let counted = decisions.clone();
    let gate = Gate::builder(Arc::new(verifier), Arc::new(policy))
        .on_decision(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let svc = AuthLayer::new(Arc::new(gate)).layer(tower::service_fn(
        |req: Request<String>| async move {
            let id = req.extensions().get::<Identity>().cloned();
            let admission = req.extensions().get::<Admission>().cloned();
            let body = json!({
                "principal": id.map(|i| i.principal().to_string()),
                "header": admission.as_ref().and_then(|a| a.credential_header).map(CredentialHeader::name),
                "member": admission.and_then(|a| a.grant).map(|g| g.member.to_string()),
            });
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                body.to_string(),
            ))))
        },
    ));

    // The token verified, then again from the verified-token cache: the
    // same extensions either way.
    let token = google_token(&kit, ALICE, AUD);
    for _ in 0..2 {
        let req = Request::get("/anything")
            .header("x-serverless-authorization", format!("Bearer {token}"))
            .body(String::new())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({
                "principal": "user:alice@example.com",
                "header": "x-serverless-authorization",
                "member": "user:alice@example.com",
            })
        );
    }

    let req = Request::get("/anything").body(String::new()).unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.extensions().get::<Reason>(),
        Some(&Reason::MissingToken)
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        Bytes::from_static(br#"{"error":"unauthenticated","reason":"missing_token"}"#)
    );
    // One report per decision, whether made at once or after verifying.
    assert_eq!(decisions.load(Ordering::Relaxed), 3);
}
