//! Properties over random input, beside the fuzz targets in `fuzz/`: no
//! change to a verified token's bytes turns it into another identity, and
//! nothing a client or a policy file can hold makes a parser panic.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use idgate::policy::{Policy, PolicySources, RequestContext};
use idgate::token::UnverifiedToken;
use idgate::{Clock, Identity, IssuerConfig, ManualClock, Reason, Rejection, Verifier};
use idgate_testkit::{Issuer, b64url, default_header, mint};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::{Value, json};

const AUD: &str = "https://svc.example.com";

/// One issuer and verifier for every property in this file, on a clock
/// frozen when it starts, so the token never expires mid-run. The
/// runtime is behind a lock: tests run on several threads, and a
/// current-thread runtime is driven by one at a time.
struct Setup {
    runtime: Mutex<tokio::runtime::Runtime>,
    verifier: Verifier,
    clock: Arc<ManualClock>,
    token: String,
    identity: Identity,
    issuer: Issuer,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let issuer = Issuer::start_blocking();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Arc::new(ManualClock::starting_now());
        let verifier = Verifier::builder()
            .issuer(IssuerConfig::new("test", issuer.url(), issuer.jwks_url()))
            .audience(AUD)
            .clock(clock.clone())
            // Every mutation must go through the whole check, not hit the
            // cache (a mutated token hashes differently anyway).
            .token_cache_capacity(0)
            .build()
            .expect("verifier");
        let now = clock.unix_now().as_secs();
        let mut claims = issuer.claims("alice@example.com", AUD);
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + 3600);
        claims["groups"] = json!(["eng", "ops"]);
        let token = issuer.mint(&claims);
        let identity = runtime
            .block_on(verifier.verify(&token))
            .expect("the unmutated token verifies");
        Setup {
            runtime: Mutex::new(runtime),
            verifier,
            clock,
            token,
            identity,
            issuer,
        }
    })
}

impl Setup {
    fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        runtime.block_on(self.verifier.verify(token))
    }
}

/// One change to a token's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Replace { at: usize, byte: u8 },
    SwapSegments { a: usize, b: usize },
}

/// Bytes a token is made of, and some it must not hold.
fn token_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()
        ),
        1 => prop::sample::select(b".=+/ \t\0\"{}".to_vec()),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), token_byte()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        (any::<usize>(), token_byte()).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
        (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::SwapSegments { a, b }),
    ]
}

fn apply(token: &mut Vec<u8>, m: &Mutation) {
    let len = token.len();
    match *m {
        Mutation::Flip { at, bit } if len > 0 => token[at % len] ^= 1 << bit,
        Mutation::Insert { at, byte } => token.insert(at % (len + 1), byte),
        Mutation::Delete { at } if len > 0 => {
            token.remove(at % len);
        }
        Mutation::Replace { at, byte } if len > 0 => token[at % len] = byte,
        Mutation::SwapSegments { a, b } => {
            let mut segments: Vec<Vec<u8>> =
                token.split(|&c| c == b'.').map(<[u8]>::to_vec).collect();
            let n = segments.len();
            segments.swap(a % n, b % n);
            *token = segments.join(&b'.');
        }
        _ => {}
    }
}

/// The identity is the same one, in everything an app or a policy reads.
fn same_identity(got: &Identity, want: &Identity) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.principal(), want.principal());
    prop_assert_eq!(got.subject(), want.subject());
    prop_assert_eq!(got.audience(), want.audience());
    prop_assert_eq!(got.expires_at(), want.expires_at());
    prop_assert_eq!(got.claims(), want.claims());
    Ok(())
}

/// A rejection a token's own bytes can earn. `keys_unavailable` would mean
/// the test lost its issuer, and the policy reasons are not the verifier's.
fn token_reason(r: &Rejection) -> Result<(), TestCaseError> {
    prop_assert!(
        !matches!(
            r.reason,
            Reason::KeysUnavailable
                | Reason::NotAllowed
                | Reason::MissingToken
                | Reason::EmailUnverified
        ),
        "{}",
        r
    );
    prop_assert!(!r.reason.as_str().is_empty());
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures are reported with their minimal input; nothing is
        // written next to the sources.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Flipping, inserting, deleting or replacing bytes, or swapping
    /// segments, never yields a different identity: the token is rejected
    /// with a reason, or (when the change undid itself) verifies to the
    /// very same identity. Through the header as well as directly.
    #[test]
    fn mutated_tokens_are_rejected_or_unchanged(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let s = setup();
        let mut bytes = s.token.clone().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match s.verify(&text) {
            Ok(identity) => same_identity(&identity, &s.identity)?,
            Err(r) => token_reason(&r)?,
        }
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(&bytes);
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value);
            match idgate::credential::extract(&headers, s.verifier.max_token_bytes()) {
                Ok(Some(c)) => match s.verify(c.token) {
                    Ok(identity) => same_identity(&identity, &s.identity)?,
                    Err(r) => token_reason(&r)?,
                },
                Ok(None) => prop_assert!(false, "a credential header went unseen"),
                Err(r) => token_reason(&r)?,
            }
        }
    }

    /// Whatever is re-signed by another key under the right kid is a bad
    /// signature, never an identity.
    #[test]
    fn another_keys_signature_is_never_accepted(sub in "[a-z0-9]{1,12}") {
        let s = setup();
        let other = other_key();
        let now = s.clock.unix_now().as_secs();
        let mut header = default_header(other);
        header["kid"] = json!(s.issuer.active_key().kid());
        let claims = json!({
            "iss": s.issuer.url(), "aud": AUD, "sub": sub,
            "iat": now, "exp": now + 60,
        });
        let r = s.verify(&mint(other, &header, &claims));
        prop_assert_eq!(r.map_err(|r| r.reason).err(), Some(Reason::BadSignature));
    }
}

fn other_key() -> &'static idgate_testkit::TestKey {
    static KEY: OnceLock<idgate_testkit::TestKey> = OnceLock::new();
    KEY.get_or_init(|| idgate_testkit::TestKey::generate("other"))
}

/// Strings shaped like what each parser reads, and anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.=+/ -]{0,300}",
        // Three segments of base64url JSON-ish text.
        (json_text(), json_text(), "[A-Za-z0-9_-]{0,40}").prop_map(|(h, c, s)| format!(
            "{}.{}.{}",
            b64url(h.as_bytes()),
            b64url(c.as_bytes()),
            s
        )),
        json_text(),
    ]
}

/// Text that is often JSON, sometimes nearly.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-zA-Z0-9:@./_ -]{0,20}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    (value, any::<u8>()).prop_map(|(v, cut)| {
        let text = v.to_string();
        // Now and then, cut it short.
        if cut < 32 && !text.is_empty() {
            let mut end = usize::from(cut) % text.len();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        } else {
            text
        }
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "alg",
            "kid",
            "crit",
            "iss",
            "aud",
            "sub",
            "exp",
            "iat",
            "nbf",
            "email",
            "email_verified",
            "hd",
            "keys",
            "kty",
            "n",
            "e",
            "crv",
            "x",
            "y",
            "use",
            "bindings",
            "role",
            "members",
            "condition",
            "expression",
            "title",
            "version",
            "etag",
        ])
        .prop_map(str::to_owned),
        "[a-z]{1,8}",
    ]
}

/// A policy document with random members and conditions in a valid shape.
fn policy_text() -> impl Strategy<Value = String> {
    let member = prop_oneof![
        prop::sample::select(vec![
            "user:",
            "serviceAccount:",
            "group:",
            "domain:",
            "deleted:user:",
            "principal://",
            "principalSet://",
            "allUsers",
            "allAuthenticatedUsers",
        ])
        .prop_flat_map(|p| "[a-zA-Z0-9@./*:?=_ -]{0,30}".prop_map(move |s| format!("{p}{s}"))),
        any::<String>(),
    ];
    let condition = prop_oneof![
        Just(None),
        prop_oneof![
            "request\\.(time|path|host|method) ?(==|<|>|!=|in) ?[a-z\"()0-9 .]{0,20}",
            any::<String>(),
        ]
        .prop_map(Some),
    ];
    let binding = (
        prop::sample::select(vec!["roles/run.invoker", "roles/owner", "roles/viewer"]),
        prop::collection::vec(member, 0..4),
        condition,
    )
        .prop_map(|(role, members, condition)| {
            let mut b = json!({"role": role, "members": members});
            if let Some(expression) = condition {
                b["condition"] = json!({"title": "t", "expression": expression});
            }
            b
        });
    prop::collection::vec(binding, 0..4)
        .prop_map(|bindings| json!({"version": 3, "bindings": bindings}).to_string())
}

fn request() -> RequestContext<'static> {
    RequestContext {
        time: std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        method: "GET",
        host: "svc.example.com",
        path: "/",
    }
}

/// Loads `bytes` as a policy document and, when it loads, decides with it.
fn load_policy(name: &str, bytes: &[u8]) {
    match Policy::load_document(&PolicySources::default(), name, bytes) {
        Ok(loaded) => {
            let s = setup();
            let _ = loaded.policy.decide(None, &request()).to_string();
            let _ = loaded
                .policy
                .decide(Some(&s.identity), &request())
                .to_string();
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            let _ = e.to_string();
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Nothing a client sends makes extraction, parsing or verification
    /// panic; whatever fails, fails with a reason.
    #[test]
    fn credentials_never_panic(raw in text(), serverless in any::<bool>()) {
        let s = setup();
        let _ = UnverifiedToken::parse(&raw);
        if let Err(r) = s.verify(&raw) {
            token_reason(&r)?;
        }
        let name = if serverless { "x-serverless-authorization" } else { "authorization" };
        for value in [raw.clone(), format!("Bearer {raw}")] {
            let Ok(value) = HeaderValue::from_str(&value) else { continue };
            let mut headers = HeaderMap::new();
            headers.insert(name, value);
            if let Ok(Some(c)) = idgate::credential::extract(&headers, s.verifier.max_token_bytes()) {
                prop_assert!(!c.token.is_empty());
                if let Err(r) = s.verify(c.token) {
                    token_reason(&r)?;
                }
            }
        }
    }

    /// Nothing in a policy file makes loading (JSON, YAML or sniffed),
    /// condition compilation or a decision panic.
    #[test]
    fn policy_documents_never_panic(raw in text(), shaped in policy_text()) {
        for name in ["p.json", "p.yaml", "p"] {
            load_policy(name, raw.as_bytes());
        }
        load_policy("p.json", shaped.as_bytes());
        load_policy("p.yaml", shaped.as_bytes());
    }

    /// Nothing in a JWKS response makes parsing panic, and what parses has
    /// at least one key, each with a kid.
    #[test]
    fn key_sets_never_panic(raw in text(), keys in prop::collection::vec(json_text(), 0..4)) {
        let doc = format!("{{\"keys\":[{}]}}", keys.join(","));
        for body in [raw.as_bytes(), doc.as_bytes()] {
            if let Ok(keys) = idgate::jwks::parse_jwks(body) {
                prop_assert!(!keys.is_empty());
                prop_assert!(keys.keys().all(|k| !k.is_empty()));
            }
        }
    }
}

/// The fuzz target's finding, end to end: a fractional `exp` verifies, and
/// the identity's expiry is that time truncated, not 0.
#[test]
fn fractional_times_survive_verification() {
    let s = setup();
    let now = s.clock.unix_now().as_secs();
    let mut claims = s.issuer.claims("bob@example.com", AUD);
    claims["iat"] = json!(now as f64 + 0.5);
    claims["exp"] = json!(now as f64 + 600.75);
    let identity = match s.verify(&s.issuer.mint(&claims)) {
        Ok(i) => i,
        Err(r) => panic!("{r}"),
    };
    assert_eq!(identity.issued_at(), now);
    assert_eq!(identity.expires_at(), now + 600);
}
