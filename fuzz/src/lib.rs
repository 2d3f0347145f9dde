//! What the fuzz targets share: a fixed moment, the request a condition
//! sees, a few identities to decide for, the token harness (a local
//! issuer and two verifiers on a frozen clock), and the settings harness
//! ([`config`]).
//!
//! Everything here is deterministic for a given input except the issuer's
//! key, which is generated once per process: inputs that need a valid
//! signature carry the parts to sign and the harness signs them (see
//! [`token_input`]).

pub mod config;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use idgate::policy::{Policy, PolicySources, RequestContext};
use idgate::token::UnverifiedToken;
use idgate::{Identity, IssuerConfig, IssuerTag, ManualClock, Rejection, Verifier};
use idgate_testkit::{Issuer, TestKey, b64url};
use serde_json::{Value, json};

/// The frozen "now" of every target, so seeds never expire.
pub const NOW: u64 = 1_750_000_000;
/// The audience the harness verifiers accept.
pub const AUD: &str = "https://svc.fuzz.example";
/// The `iss` of the harness's non-Google issuer.
pub const ISS: &str = "https://issuer.fuzz.example";
/// The workload identity pool of that issuer.
pub const POOL: &str = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/fuzz";
/// The verifiers' clock skew (the default).
pub const SKEW: u64 = 30;
/// The verifiers' longest token lifetime (the default).
pub const MAX_LIFETIME: u64 = 24 * 3600;

/// What every policy target loads besides its input: the pool of the
/// harness's non-Google issuer and the groups fixture of the policy tests
/// (so `principal://…` and `group:…` members can match).
pub fn sources() -> PolicySources {
    PolicySources {
        groups_file: Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crates/idgate/tests/fixtures/policy/groups.yaml"),
        ),
        pools: vec![POOL.to_owned()],
        ..PolicySources::default()
    }
}

/// Loads `bytes` as a policy document named `name` (its extension picks
/// the format) with [`sources`], and decides with it when it loads.
pub fn load_and_decide(name: &str, bytes: &[u8]) {
    match Policy::load_document(&sources(), name, bytes) {
        Ok(loaded) => decide_all(&loaded.policy),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error list with no error");
            let _ = errors.to_string();
        }
    }
}

/// The request every condition is evaluated against.
pub fn request() -> RequestContext<'static> {
    RequestContext {
        time: UNIX_EPOCH + Duration::from_secs(NOW),
        method: "GET",
        host: "svc.fuzz.example",
        path: "/api/v1/items",
    }
}

/// Identities of every kind a policy tells apart.
pub fn identities() -> Vec<Identity> {
    let google = IssuerTag {
        name: "google".into(),
        google: true,
        pool: None,
    };
    let pool = IssuerTag {
        name: "pool".into(),
        google: false,
        pool: Some(POOL.into()),
    };
    let ident = |tag: &IssuerTag, claims: Value| {
        let Value::Object(claims) = claims else {
            unreachable!("claims are an object literal")
        };
        Identity::from_verified_claims(tag, AUD.into(), claims, String::new())
    };
    vec![
        ident(
            &google,
            json!({"sub": "1", "email": "alice@corp.example.net", "email_verified": true, "hd": "corp.example.net"}),
        ),
        ident(
            &google,
            json!({"sub": "2", "email": "ci@proj.iam.gserviceaccount.com", "email_verified": true}),
        ),
        ident(
            &google,
            json!({"sub": "3", "email": "eve@example.com", "email_verified": false}),
        ),
        ident(
            &pool,
            json!({"sub": "repo:o/r:ref:refs/heads/main", "repository": "o/r", "groups": ["a", "b"]}),
        ),
    ]
}

/// Decide for nobody and for each of [`identities`], and print every
/// outcome (the printing is code too).
pub fn decide_all(policy: &Policy) {
    let ctx = request();
    let _ = policy.decide(None, &ctx).to_string();
    for identity in identities() {
        let _ = policy.decide(Some(&identity), &ctx).to_string();
    }
}

/// A local issuer, its signing key, and two verifiers trusting it (the
/// verified-token cache off and on), on a clock frozen at [`NOW`].
pub struct TokenHarness {
    runtime: tokio::runtime::Runtime,
    key: Arc<TestKey>,
    uncached: Verifier,
    cached: Verifier,
    policy: Policy,
    // Keeps the JWKS server up; declared last so it outlives the verifiers.
    _issuer: Issuer,
}

/// The process-wide harness, started on first use.
pub fn token_harness() -> &'static TokenHarness {
    static HARNESS: OnceLock<TokenHarness> = OnceLock::new();
    HARNESS.get_or_init(TokenHarness::start)
}

impl TokenHarness {
    fn start() -> TokenHarness {
        // Loopback only: the verifiers fetch keys from here once, and once
        // more for the first unknown kid (the frozen clock never lets the
        // refresh interval pass again).
        let issuer = Issuer::start_blocking();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let clock = Arc::new(ManualClock::new(Duration::from_secs(NOW)));
        let build = |cache: u64| {
            Verifier::builder()
                .issuer(IssuerConfig::new("custom", ISS, issuer.jwks_url()).with_pool(POOL))
                .issuer(IssuerConfig::google().with_jwks_url(issuer.jwks_url()))
                .audience(AUD)
                .clock(clock.clone())
                .token_cache_capacity(cache)
                .build()
                .expect("verifier configuration")
        };
        let uncached = build(0);
        let cached = build(1000);
        runtime.block_on(async {
            uncached.refresh_keys().await;
            cached.refresh_keys().await;
        });
        assert!(uncached.is_ready() && cached.is_ready(), "no keys loaded");
        let policy = Policy::load_document(
            &sources(),
            "harness.json",
            json!({"bindings": [
                {"role": "roles/run.invoker", "members": [
                    "user:alice@example.com",
                    "serviceAccount:ci@proj.iam.gserviceaccount.com",
                    "domain:corp.example.net",
                    format!("principal://{POOL}/subject/repo:o/r:ref:refs/heads/main"),
                    format!("principalSet://{POOL}/attribute.repository/o/r"),
                ]},
                {"role": "roles/run.invoker", "members": ["allAuthenticatedUsers"],
                 "condition": {"title": "reads", "expression": "request.method == \"GET\""}},
            ]})
            .to_string()
            .as_bytes(),
        )
        .expect("harness policy")
        .policy;
        TokenHarness {
            runtime,
            key: issuer.active_key(),
            uncached,
            cached,
            policy,
            _issuer: issuer,
        }
    }

    /// The signature the harness's issuer makes over `signing_input`.
    pub fn sign(&self, signing_input: &str) -> String {
        b64url(&self.key.sign_rs256(signing_input.as_bytes()))
    }

    /// The whole path of a credential: extraction, strict parsing, and
    /// verification by both verifiers (twice by the caching one), which
    /// must agree; an accepted identity must honour every promise the
    /// verifier makes, and goes through the policy.
    pub fn check(&self, headers: &HeaderMap) {
        let credential = match idgate::credential::extract(headers, self.uncached.max_token_bytes())
        {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => return,
        };
        let _ = UnverifiedToken::parse(credential.token);
        let token = credential.token;
        let first = self.runtime.block_on(self.uncached.verify(token));
        let miss = self.runtime.block_on(self.cached.verify(token));
        let hit = self.runtime.block_on(self.cached.verify(token));
        same_outcome(&first, &miss);
        same_outcome(&first, &hit);
        let Ok(identity) = first else { return };
        assert_eq!(identity.audience(), AUD);
        assert!(
            identity.issuer() == ISS
                || idgate::verifier::GOOGLE_ISSUERS.contains(&identity.issuer()),
            "accepted iss {:?}",
            identity.issuer()
        );
        assert!(!identity.subject().is_empty(), "accepted an empty sub");
        // The identity's strings are the claims' (places in the payload).
        let claims = identity.claims();
        let claim = |k: &str| claims.get(k).and_then(Value::as_str);
        assert_eq!(Some(identity.subject()), claim("sub"));
        assert_eq!(Some(identity.issuer()), claim("iss"));
        assert_eq!(Some(identity.audience()), claim("aud"));
        assert_eq!(identity.email(), claim("email"));
        assert_eq!(identity.hosted_domain(), claim("hd"));
        assert!(
            NOW < identity.expires_at().saturating_add(SKEW),
            "accepted a token that expired at {}",
            identity.expires_at()
        );
        assert!(
            identity.issued_at() <= NOW + SKEW,
            "accepted a token issued at {}",
            identity.issued_at()
        );
        assert!(
            identity.issued_at() < identity.expires_at()
                && identity.expires_at() - identity.issued_at() <= MAX_LIFETIME,
            "accepted a lifetime of {}..{}",
            identity.issued_at(),
            identity.expires_at()
        );
        let _ = format!("{identity:?} {}", identity.principal());
        let _ = self.policy.decide(Some(&identity), &request()).to_string();
    }
}

fn same_outcome(a: &Result<Identity, Rejection>, b: &Result<Identity, Rejection>) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.principal(), b.principal());
            assert_eq!(a.subject(), b.subject());
            assert_eq!(a.audience(), b.audience());
            assert_eq!(a.expires_at(), b.expires_at());
            assert_eq!(a.claims(), b.claims());
        }
        (Err(a), Err(b)) => assert_eq!(a.reason, b.reason, "{a} / {b}"),
        _ => panic!("verifiers disagree: {a:?} / {b:?}"),
    }
}

/// How the `token` target reads its input: the first byte picks a mode.
///
/// * `0 mod 3`: the rest is the value of a credential header, as sent
///   (bit 3 of the mode byte picks `X-Serverless-Authorization` over
///   `Authorization`, bit 4 sends it twice).
/// * `1 mod 3`: the rest is `HEADER-JSON \0 CLAIMS-JSON`: the harness
///   encodes and signs them, so the fuzzer reaches every check after the
///   signature.
/// * `2 mod 3`: the rest is `HEADER-B64.CLAIMS-B64[.ignored]`: the harness
///   signs those segments as written (non-canonical base64 and all).
pub fn token_input(harness: &TokenHarness, data: &[u8]) -> Option<HeaderMap> {
    let (&mode, rest) = data.split_first()?;
    let value = match mode % 3 {
        0 => HeaderValue::from_bytes(rest).ok()?,
        1 => {
            let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let header = b64url(&rest[..split]);
            let claims = b64url(rest.get(split + 1..).unwrap_or_default());
            let input = format!("{header}.{claims}");
            let token = format!("{input}.{}", harness.sign(&input));
            HeaderValue::from_str(&format!("Bearer {token}")).ok()?
        }
        _ => {
            let text = std::str::from_utf8(rest).ok()?;
            let input = match text.match_indices('.').nth(1) {
                Some((i, _)) => &text[..i],
                None => text,
            };
            let token = format!("{input}.{}", harness.sign(input));
            HeaderValue::from_str(&format!("Bearer {token}")).ok()?
        }
    };
    let name = if mode & 8 != 0 {
        "x-serverless-authorization"
    } else {
        "authorization"
    };
    let mut headers = HeaderMap::new();
    if mode & 16 != 0 {
        headers.append(name, value.clone());
    }
    headers.append(name, value);
    Some(headers)
}
