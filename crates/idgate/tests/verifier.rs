//! The verifier against a real issuer on loopback: every reason code from a
//! token crafted for it, and the key cache's promises.

use std::sync::Arc;
use std::time::Duration;

use idgate::{IssuerConfig, JwksSettings, ManualClock, Reason, Verifier};
use idgate_testkit::{
    Failure, Issuer, TestKey, b64url, default_header, mint, mint_hs256, mint_raw, mint_segments,
    mint_unsigned,
};
use serde_json::{Value, json};

const AUD: &str = "https://svc.example.com";

struct Setup {
    kit: Issuer,
    clock: Arc<ManualClock>,
    verifier: Arc<Verifier>,
}

fn builder(kit: &Issuer, clock: &Arc<ManualClock>) -> idgate::VerifierBuilder {
    Verifier::builder()
        .issuer(IssuerConfig::new("test", kit.url(), kit.jwks_url()))
        .audience(AUD)
        .clock(clock.clone())
}

async fn setup() -> Setup {
    setup_with(|b| b).await
}

async fn setup_with(f: impl FnOnce(idgate::VerifierBuilder) -> idgate::VerifierBuilder) -> Setup {
    let kit = Issuer::start().await;
    let clock = Arc::new(ManualClock::starting_now());
    let verifier = Arc::new(f(builder(&kit, &clock)).build().unwrap());
    Setup {
        kit,
        clock,
        verifier,
    }
}

impl Setup {
    fn now(&self) -> u64 {
        use idgate::Clock;
        self.clock.unix_now().as_secs()
    }
    fn claims(&self) -> Value {
        let mut c = self.kit.claims("alice@example.com", AUD);
        c["iat"] = json!(self.now());
        c["exp"] = json!(self.now() + 3600);
        c
    }
    fn with(&self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut c = self.claims();
        f(c.as_object_mut().unwrap());
        self.kit.mint(&c)
    }
    async fn reason(&self, token: &str) -> Reason {
        match self.verifier.verify(token).await {
            Ok(id) => panic!("expected a rejection, got {id:?}"),
            Err(r) => r.reason,
        }
    }
}

#[tokio::test]
async fn a_good_token_verifies_to_its_identity() {
    let s = setup().await;
    let id = s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    assert_eq!(id.email(), Some("alice@example.com"));
    assert!(id.email_verified());
    assert_eq!(id.audience(), AUD);
    assert_eq!(id.issuer(), s.kit.url());
    assert_eq!(id.issuer_name(), "test");
    assert!(s.verifier.is_ready());
}

/// A key URL over plain http is allowed (a dev issuer in a compose
/// network), but off loopback it is named in the verifier's warnings:
/// keys fetched over it can be forged in transit.
#[tokio::test]
async fn plain_http_key_urls_off_loopback_are_warned_about() {
    let build = |url: &str| {
        Verifier::builder()
            .issuer(IssuerConfig::new("dev", "https://dev.example", url))
            .audience(AUD)
            .build()
            .unwrap()
    };
    let warned = build("http://keys.example.com/jwks");
    assert_eq!(warned.warnings().len(), 1, "{:?}", warned.warnings());
    assert!(warned.warnings()[0].contains("http://keys.example.com/jwks"));
    for quiet in [
        "https://keys.example.com/jwks",
        "http://127.0.0.1:9/jwks",
        "http://localhost:9/jwks",
        "http://[::1]:9/jwks",
    ] {
        assert!(build(quiet).warnings().is_empty(), "{quiet}");
    }
    assert!(idgate::verifier::is_loopback_host("LOCALHOST"));
    assert!(!idgate::verifier::is_loopback_host("10.0.0.1"));
}

#[tokio::test]
async fn google_preset_accepts_both_issuer_spellings_and_only_rs256() {
    let kit = Issuer::start().await;
    let v = Verifier::builder()
        .issuer(IssuerConfig::google().with_jwks_url(kit.jwks_url()))
        .audience(AUD)
        .build()
        .unwrap();
    for iss in ["https://accounts.google.com", "accounts.google.com"] {
        let mut c = kit.claims("bob@example.com", AUD);
        c["iss"] = json!(iss);
        let id = v.verify(&kit.mint(&c)).await.unwrap();
        assert_eq!(id.principal().to_string(), "user:bob@example.com");
        assert!(id.is_google());
    }
    let mut c = kit.claims("bob@example.com", AUD);
    c["iss"] = json!("https://accounts.google.com/");
    assert_eq!(
        v.verify(&kit.mint(&c)).await.unwrap_err().reason,
        Reason::UnknownIssuer
    );
    let mut h = default_header(&kit.active_key());
    h["alg"] = json!("RS384");
    c["iss"] = json!("accounts.google.com");
    assert_eq!(
        v.verify(&mint(&kit.active_key(), &h, &c))
            .await
            .unwrap_err()
            .reason,
        Reason::UnsupportedAlgorithm
    );
}

#[tokio::test]
async fn alg_none_in_any_case_is_refused() {
    let s = setup().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "kid": s.kit.active_key().kid(), "typ": "JWT"});
        assert_eq!(
            s.reason(&mint_unsigned(&h, &s.claims())).await,
            Reason::UnsupportedAlgorithm,
            "{alg}"
        );
        // Even with a signature segment attached.
        let signed = mint(&s.kit.active_key(), &h, &s.claims());
        assert_eq!(
            s.reason(&signed).await,
            Reason::UnsupportedAlgorithm,
            "{alg} signed"
        );
    }
    let h = json!({"kid": s.kit.active_key().kid()});
    assert_eq!(
        s.reason(&mint(&s.kit.active_key(), &h, &s.claims())).await,
        Reason::MalformedToken
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let s = setup().await;
    let key = s.kit.active_key();
    let h = json!({"alg": "HS256", "kid": key.kid(), "typ": "JWT"});
    for secret in [key.public_key_pem().into_bytes(), key.public_key_der()] {
        let t = mint_hs256(&secret, &h, &s.claims());
        assert_eq!(s.reason(&t).await, Reason::UnsupportedAlgorithm);
    }
}

#[tokio::test]
async fn embedded_keys_and_key_urls_are_never_fetched_or_trusted() {
    let s = setup().await;
    let attacker = Issuer::start().await;
    let evil = attacker.publish(TestKey::generate("evil-1"));
    attacker.activate("evil-1");
    for (field, value) in [
        ("jku", json!(attacker.jwks_url())),
        ("x5u", json!(attacker.jwks_url())),
        ("jwk", evil.jwk()),
        ("x5c", json!(["MIIB"])),
    ] {
        // Signed by the attacker's key under its own kid: unknown here.
        let mut h = default_header(&evil);
        h[field] = value.clone();
        assert_eq!(
            s.reason(&mint(&evil, &h, &s.claims())).await,
            Reason::UnknownKey,
            "{field}"
        );
        // Signed by the attacker's key under the real kid: bad signature.
        h["kid"] = json!(s.kit.active_key().kid());
        assert_eq!(
            s.reason(&mint(&evil, &h, &s.claims())).await,
            Reason::BadSignature,
            "{field}"
        );
    }
    assert_eq!(attacker.jwks_fetches(), 0, "a header URL was fetched");
    assert_eq!(attacker.discovery_fetches(), 0);
}

#[tokio::test]
async fn a_kid_from_another_key_set_is_unknown() {
    let s = setup().await;
    let other = TestKey::generate("other-kid");
    let t = mint(&other, &default_header(&other), &s.claims());
    assert_eq!(s.reason(&t).await, Reason::UnknownKey);
    let h = json!({"alg":"RS256","kid":""});
    assert_eq!(
        s.reason(&mint(&other, &h, &s.claims())).await,
        Reason::MalformedToken
    );
}

#[tokio::test]
async fn audience_must_match_exactly() {
    let s = setup().await;
    let cases: Vec<(&str, Option<Value>)> = vec![
        ("missing", None),
        ("empty", Some(json!(""))),
        ("array", Some(json!([AUD]))),
        ("trailing slash", Some(json!(format!("{AUD}/")))),
        ("prefix", Some(json!(&AUD[..AUD.len() - 1]))),
        ("extension", Some(json!(format!("{AUD}.evil.com")))),
        ("substring", Some(json!("svc.example.com"))),
        ("case", Some(json!(AUD.to_uppercase()))),
        ("number", Some(json!(1))),
        ("gcloud", Some(json!(idgate::GCLOUD_AUDIENCE))),
    ];
    for (what, aud) in cases {
        let t = s.with(|c| match &aud {
            Some(a) => {
                c.insert("aud".into(), a.clone());
            }
            None => {
                c.remove("aud");
            }
        });
        let err = s.verifier.verify(&t).await.unwrap_err();
        assert_eq!(err.reason, Reason::AudienceMismatch, "{what}");
        assert!(
            !err.detail.contains(AUD),
            "detail leaks the expected audience: {}",
            err.detail
        );
    }
}

#[tokio::test]
async fn the_gcloud_audience_is_accepted_only_when_configured() {
    let s = setup_with(|b| b.audience(idgate::GCLOUD_AUDIENCE)).await;
    let t = s.with(|c| {
        c.insert("aud".into(), json!(idgate::GCLOUD_AUDIENCE));
    });
    assert_eq!(
        s.verifier.verify(&t).await.unwrap().audience(),
        idgate::GCLOUD_AUDIENCE
    );
}

#[tokio::test]
async fn required_claims() {
    let s = setup().await;
    for claim in ["iss", "exp", "iat", "sub"] {
        let t = s.with(|c| {
            c.remove(claim);
        });
        assert_eq!(
            s.reason(&t).await,
            Reason::MalformedToken,
            "missing {claim}"
        );
    }
    for (claim, v) in [
        ("exp", json!("9999999999")),
        ("iat", json!(null)),
        ("iss", json!(1)),
        ("nbf", json!([1])),
        // The caller's names become header values, which a control
        // character cannot be: refused, not sent on without its headers.
        ("sub", json!("1234\n5678")),
        ("sub", json!("1234\u{7f}")),
        (
            "email",
            json!("alice@example.com\r\nx-idgate-principal: boss"),
        ),
        ("email", json!("alice\u{0}@example.com")),
    ] {
        let t = s.with(|c| {
            c.insert(claim.into(), v.clone());
        });
        assert_eq!(s.reason(&t).await, Reason::MalformedToken, "{claim} = {v}");
    }
    // A tab is a header value's own.
    let t = s.with(|c| {
        c.insert("sub".into(), json!("1234\t5678"));
    });
    s.verifier.verify(&t).await.unwrap();
}

#[tokio::test]
async fn unknown_issuer_is_refused_before_any_fetch() {
    let s = setup().await;
    let t = s.with(|c| {
        c.insert("iss".into(), json!("https://evil.example.com"));
    });
    assert_eq!(s.reason(&t).await, Reason::UnknownIssuer);
    assert_eq!(s.kit.jwks_fetches(), 0);
}

#[tokio::test]
async fn times_with_and_without_skew() {
    let s = setup().await;
    let now = s.now();
    let ok = |c: &mut serde_json::Map<String, Value>, k: &str, v: u64| {
        c.insert(k.into(), json!(v));
    };
    // Expired inside the 30 s skew is still good; outside it is not.
    let t = s.with(|c| {
        ok(c, "iat", now - 3600);
        ok(c, "exp", now - 29);
    });
    assert!(s.verifier.verify(&t).await.is_ok());
    let t = s.with(|c| {
        ok(c, "iat", now - 3600);
        ok(c, "exp", now - 30);
    });
    assert_eq!(s.reason(&t).await, Reason::Expired);
    let t = s.with(|c| {
        ok(c, "iat", now - 6000);
        ok(c, "exp", now - 3000);
    });
    assert_eq!(s.reason(&t).await, Reason::Expired);
    // nbf
    let t = s.with(|c| ok(c, "nbf", now + 30));
    assert!(s.verifier.verify(&t).await.is_ok());
    let t = s.with(|c| ok(c, "nbf", now + 31));
    assert_eq!(s.reason(&t).await, Reason::NotYetValid);
    // iat
    let t = s.with(|c| {
        ok(c, "iat", now + 30);
        ok(c, "exp", now + 3600);
    });
    assert!(s.verifier.verify(&t).await.is_ok());
    let t = s.with(|c| {
        ok(c, "iat", now + 31);
        ok(c, "exp", now + 3600);
    });
    assert_eq!(s.reason(&t).await, Reason::IssuedInFuture);
    // lifetime
    let t = s.with(|c| ok(c, "exp", now + 25 * 3600));
    assert_eq!(s.reason(&t).await, Reason::LifetimeTooLong);
    let t = s.with(|c| ok(c, "exp", now + 24 * 3600));
    assert!(s.verifier.verify(&t).await.is_ok());
}

#[tokio::test]
async fn crit_with_an_unknown_extension_is_refused() {
    let s = setup().await;
    let key = s.kit.active_key();
    let mut h = default_header(&key);
    h["crit"] = json!(["http://example.com/ext", "b\u{1}"]);
    h["http://example.com/ext"] = json!(true);
    h["b\u{1}"] = json!(true);
    let refused = s
        .verifier
        .verify(&mint(&key, &h, &s.claims()))
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::UnsupportedAlgorithm);
    // The extensions quoted as JSON, as the header has them.
    assert!(
        refused
            .detail
            .ends_with(r#"implement: ["http://example.com/ext","b\u0001"]"#),
        "{}",
        refused.detail
    );
    h["crit"] = json!([]);
    assert_eq!(
        s.reason(&mint(&key, &h, &s.claims())).await,
        Reason::MalformedToken
    );
}

#[tokio::test]
async fn a_70_kib_validly_signed_token_is_too_large() {
    let s = setup().await;
    let t = s.with(|c| {
        c.insert("pad".into(), json!("x".repeat(70 * 1024)));
    });
    assert!(t.len() > 70 * 1024);
    assert_eq!(s.reason(&t).await, Reason::TokenTooLarge);
    assert_eq!(s.kit.jwks_fetches(), 0, "an oversized token caused I/O");
}

#[tokio::test]
async fn malformed_encodings() {
    let s = setup().await;
    let key = s.kit.active_key();
    let header = default_header(&key).to_string();
    let claims = s.claims().to_string();
    // Duplicate members, in the claims and in the header.
    let dup_claims = claims.replacen('{', r#"{"aud":"https://other.example.com","#, 1);
    assert_eq!(
        s.reason(&mint_raw(&key, &header, &dup_claims)).await,
        Reason::MalformedToken
    );
    let dup_header = header.replacen('{', r#"{"alg":"none","#, 1);
    assert_eq!(
        s.reason(&mint_raw(&key, &dup_header, &claims)).await,
        Reason::MalformedToken
    );
    // Padded and standard-alphabet base64.
    let h64 = b64url(header.as_bytes());
    let c64 = b64url(claims.as_bytes());
    let padded = format!("{c64}{}", "=".repeat((4 - c64.len() % 4) % 4));
    if padded != c64 {
        assert_eq!(
            s.reason(&mint_segments(&key, &h64, &padded)).await,
            Reason::MalformedToken
        );
    }
    let good = mint_segments(&key, &h64, &c64);
    assert!(s.verifier.verify(&good).await.is_ok());
    for bad in [
        good.replacen('.', "", 1),
        format!("{good}.x"),
        good.replace('-', "+").replace('_', "/"),
        mint_raw(&key, &header, "not json"),
        mint_raw(&key, &header, "[1,2]"),
    ] {
        if bad == good {
            continue;
        }
        assert_eq!(s.reason(&bad).await, Reason::MalformedToken, "{bad}");
    }
}

#[tokio::test]
async fn bad_signatures() {
    let s = setup().await;
    let t = s.kit.mint(&s.claims());
    let (rest, sig) = t.rsplit_once('.').unwrap();
    let mut bytes = sig.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{rest}.{}", String::from_utf8(bytes).unwrap());
    assert_eq!(s.reason(&flipped).await, Reason::BadSignature);
    // Claims swapped under a valid signature.
    let other = s.with(|c| {
        c.insert("email".into(), json!("mallory@example.com"));
    });
    let (h, _) = t.split_once('.').unwrap();
    let swapped = format!("{h}.{}.{sig}", other.split('.').nth(1).unwrap());
    assert_eq!(s.reason(&swapped).await, Reason::BadSignature);
    let (head, _) = t.rsplit_once('.').unwrap();
    assert_eq!(s.reason(&format!("{head}.")).await, Reason::MalformedToken);
    // The signature's bytes with some added, one taken off, or far more
    // than any key's (the key, not a buffer, judges the length).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = b64.decode(sig).unwrap();
    let longer = [good.as_slice(), &[0, 1, 2]].concat();
    for bytes in [longer, good[..good.len() - 1].to_vec(), vec![0x41; 4096]] {
        let forged = format!("{rest}.{}", b64.encode(&bytes));
        assert_eq!(
            s.reason(&forged).await,
            Reason::BadSignature,
            "{} bytes",
            bytes.len()
        );
    }
    assert!(s.verifier.verify(&t).await.is_ok());
}

#[tokio::test]
async fn keys_unavailable_when_none_were_ever_loaded() {
    let s = setup().await;
    s.kit.set_failure(Failure::Status(500));
    let t = s.kit.mint(&s.claims());
    assert_eq!(s.reason(&t).await, Reason::KeysUnavailable);
    assert!(!s.verifier.is_ready());
    // Recovery once the issuer answers and the backoff has passed.
    s.kit.set_failure(Failure::None);
    s.clock.advance(Duration::from_secs(5));
    assert!(s.verifier.verify(&t).await.is_ok());
    assert!(s.verifier.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_cache_fetches_once_for_200_concurrent_requests() {
    let s = setup().await;
    let t = Arc::new(s.kit.mint(&s.claims()));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let v = s.verifier.clone();
            let t = t.clone();
            tokio::spawn(async move { v.verify(&t).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(s.kit.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_storms_cost_one_fetch_per_refresh_interval() {
    let s = setup().await;
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    assert_eq!(s.kit.jwks_fetches(), 1);
    let claims = Arc::new(s.claims());
    let key = s.kit.active_key();
    let storm = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let v = s.verifier.clone();
                let key = key.clone();
                let claims = claims.clone();
                tokio::spawn(async move {
                    let h = json!({"alg":"RS256","kid": format!("random-{}", fastrand_kid())});
                    v.verify(&mint(&key, &h, &claims)).await.unwrap_err().reason
                })
            })
            .collect();
        async move {
            for t in tasks {
                assert_eq!(t.await.unwrap(), Reason::UnknownKey);
            }
        }
    };
    storm(1000).await;
    assert_eq!(
        s.kit.jwks_fetches(),
        2,
        "one forced refresh for the whole storm"
    );
    s.clock.advance(Duration::from_secs(29));
    storm(100).await;
    assert_eq!(
        s.kit.jwks_fetches(),
        2,
        "inside the refresh interval nothing is fetched"
    );
    s.clock.advance(Duration::from_secs(2));
    storm(100).await;
    assert_eq!(s.kit.jwks_fetches(), 3, "one more after the interval");
}

fn fastrand_kid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn a_rotated_key_is_accepted_on_first_use() {
    let s = setup().await;
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    s.kit.publish(TestKey::generate("key-2"));
    s.kit.activate("key-2");
    let t = s.kit.mint(&s.claims());
    assert!(
        t.starts_with(&b64url(default_header(&s.kit.active_key()).to_string().as_bytes())[..10])
    );
    s.verifier.verify(&t).await.unwrap();
    assert_eq!(s.kit.jwks_fetches(), 2);
}

/// Publishes `n` more keys (copies of the active key's material under
/// other kids): a set of more than a few keys is checked on a cache hit by
/// its `kid`, a smaller one by scanning it.
fn publish_spares(kit: &Issuer, n: usize) {
    let der = kit.active_key().to_pkcs8_der();
    for i in 0..n {
        kit.publish(TestKey::from_pkcs8_der(format!("spare-{i}"), &der).unwrap());
    }
}

#[tokio::test]
async fn a_dropped_key_stops_being_accepted_once_the_cache_refreshes() {
    for spares in [0, 9] {
        a_dropped_key_stops_being_accepted(spares).await;
    }
}

async fn a_dropped_key_stops_being_accepted(spares: usize) {
    let s = setup().await;
    publish_spares(&s.kit, spares);
    let old = s.kit.mint(&s.claims());
    s.verifier.verify(&old).await.unwrap();
    s.verifier.verify(&old).await.unwrap(); // now in the verified-token cache
    s.verifier.verify(&old).await.unwrap(); // and in a hot slot
    assert_eq!(s.verifier.stats().token_cache_hot_hits, 1);
    s.kit.publish(TestKey::generate("key-2"));
    s.kit.activate("key-2");
    s.kit.drop_key("key-1");
    // Before the refresh, the cached key still admits it.
    s.verifier.verify(&old).await.unwrap();
    s.verifier.refresh_keys().await;
    assert_eq!(s.reason(&old).await, Reason::UnknownKey);
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
}

#[tokio::test]
async fn a_kid_republished_with_another_key_stops_admitting_what_the_old_one_verified() {
    for spares in [0, 9] {
        a_kid_republished_with_another_key(spares).await;
    }
}

async fn a_kid_republished_with_another_key(spares: usize) {
    let s = setup().await;
    publish_spares(&s.kit, spares);
    let old = s.kit.mint(&s.claims());
    s.verifier.verify(&old).await.unwrap();
    s.verifier.verify(&old).await.unwrap(); // now in the verified-token cache
    s.verifier.verify(&old).await.unwrap(); // and in a hot slot
    // A refresh that finds the same key keeps what it verified.
    let misses = s.verifier.stats().token_cache_misses;
    s.verifier.refresh_keys().await;
    s.verifier.verify(&old).await.unwrap();
    assert_eq!(s.verifier.stats().token_cache_misses, misses);
    // The same kid with another key: the old key's tokens are checked
    // again, against the key now published, and fail.
    s.kit.publish(TestKey::generate("key-1"));
    s.kit.activate("key-1");
    s.verifier.refresh_keys().await;
    assert_eq!(s.reason(&old).await, Reason::BadSignature);
    assert_eq!(s.verifier.stats().token_cache_misses, misses + 1);
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
}

#[tokio::test]
async fn failing_or_hanging_endpoints_leave_cached_keys_serving() {
    let s = setup_with(|b| {
        let mut j = JwksSettings::default();
        j.fetch_timeout = Duration::from_millis(300);
        b.jwks(j)
    })
    .await;
    let t = s.kit.mint(&s.claims());
    s.verifier.verify(&t).await.unwrap();
    for failure in [
        Failure::Status(500),
        Failure::Hang,
        Failure::Garbage,
        Failure::EmptyKeys,
    ] {
        s.kit.set_failure(failure);
        s.clock.advance(Duration::from_secs(2 * 3600));
        let before = s.kit.jwks_fetches();
        s.verifier.refresh_keys().await;
        assert_eq!(s.kit.jwks_fetches(), before + 1);
        let fresh = s.kit.mint(&s.claims());
        s.verifier.verify(&fresh).await.unwrap();
        assert!(s.verifier.is_ready());
        let st = &s.verifier.stats().issuers[0];
        assert!(st.last_error.is_some());
        assert_eq!(st.keys, 1);
    }
    // Past stale-if-error (12 h after expiry), the keys stop serving.
    s.kit.set_failure(Failure::Status(503));
    s.clock.advance(Duration::from_secs(13 * 3600));
    assert_eq!(
        s.reason(&s.kit.mint(&s.claims())).await,
        Reason::KeysUnavailable
    );
    assert!(!s.verifier.is_ready());
    // Once the issuer heals (and the backoff has run out), the first
    // request waits for the fetch, as with a cold cache, and is served.
    s.kit.set_failure(Failure::None);
    s.clock.advance(Duration::from_secs(120));
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    assert!(s.verifier.is_ready());
}

#[tokio::test]
async fn a_64_mib_answer_is_cut_at_the_cap() {
    let s = setup().await;
    s.kit.set_failure(Failure::Oversized(64 << 20));
    assert_eq!(
        s.reason(&s.kit.mint(&s.claims())).await,
        Reason::KeysUnavailable
    );
    let st = &s.verifier.stats().issuers[0];
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("cap"),
        "{:?}",
        st.last_error
    );
}

#[tokio::test]
async fn max_age_is_honoured() {
    let s = setup().await;
    s.kit.set_cache_control(Some("public, max-age=600"));
    let t = s.kit.mint(&s.claims());
    s.verifier.verify(&t).await.unwrap();
    assert_eq!(s.kit.jwks_fetches(), 1);
    // Nothing is fetched before the refresh window (the last 15 % of 600 s).
    s.clock.advance(Duration::from_secs(500));
    let t2 = s.kit.mint(&s.claims());
    s.verifier.verify(&t2).await.unwrap();
    assert_eq!(s.kit.jwks_fetches(), 1);
    // Past max-age: exactly one fetch, in the background.
    s.clock.advance(Duration::from_secs(101));
    for _ in 0..10 {
        s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    }
    wait_for(|| s.kit.jwks_fetches() == 2).await;
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    assert_eq!(s.kit.jwks_fetches(), 2);
}

#[tokio::test]
async fn age_shortens_the_lifetime() {
    let s = setup().await;
    s.kit.set_cache_control(Some("public, max-age=1000"));
    s.kit.set_age(Some(600));
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    s.clock.advance(Duration::from_secs(401));
    s.verifier.verify(&s.kit.mint(&s.claims())).await.unwrap();
    wait_for(|| s.kit.jwks_fetches() == 2).await;
}

#[tokio::test]
async fn verified_token_cache() {
    let s = setup().await;
    let t = s.kit.mint(&s.claims());
    s.verifier.verify(&t).await.unwrap();
    s.verifier.verify(&t).await.unwrap();
    let st = s.verifier.stats();
    assert_eq!((st.token_cache_hits, st.token_cache_misses), (1, 1));
    // Seen again, the token has a hot slot: its key read back, no map searched.
    let id = s.verifier.verify(&t).await.unwrap();
    assert_eq!(id.email(), Some("alice@example.com"));
    let st = s.verifier.stats();
    assert_eq!((st.token_cache_hits, st.token_cache_hot_hits), (2, 1));
    // Another payload of the same length under the hot token's signature
    // lands in its token slot (chosen by the last bytes) and must not
    // borrow its verification: the bytes differ, and so does the key.
    let (head, rest) = t.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let forged_claims = s.with(|c| {
        c.insert("email".into(), json!("mallo@example.com"));
    });
    let forged_payload = forged_claims.split('.').nth(1).unwrap();
    let forged = format!("{head}.{forged_payload}.{signature}");
    assert_eq!(forged.len(), t.len());
    assert_eq!(s.reason(&forged).await, Reason::BadSignature);
    assert_eq!(s.verifier.stats().token_cache_hot_hits, 1);
    // A hit, hot or not, still checks expiry against the clock.
    s.clock.advance(Duration::from_secs(3600 + 30));
    assert_eq!(s.reason(&t).await, Reason::Expired);
    assert_eq!(s.reason(&t).await, Reason::Expired);

    let off = setup_with(|b| b.token_cache_capacity(0)).await;
    let t = off.kit.mint(&off.claims());
    for _ in 0..3 {
        off.verifier.verify(&t).await.unwrap();
    }
    let st = off.verifier.stats();
    assert_eq!((st.token_cache_hits, st.token_cache_misses), (0, 3));
}

#[tokio::test]
async fn a_thousand_callers_in_rotation_are_served_from_hot_slots() {
    let s = setup().await;
    let tokens: Vec<(String, String)> = (0..1000)
        .map(|i| {
            let email = format!("caller-{i}@example.com");
            let token = s.with(|c| {
                c.insert("email".into(), json!(email));
            });
            (email, token)
        })
        .collect();
    // First pass: every token verified; second: every one a hit in the map,
    // offered a slot; third: the hot slots answer.
    for pass in 0..3 {
        for (email, token) in &tokens {
            let id = s.verifier.verify(token).await.unwrap();
            assert_eq!(id.email(), Some(email.as_str()), "pass {pass}");
        }
    }
    let st = s.verifier.stats();
    assert_eq!((st.token_cache_misses, st.token_cache_hits), (1000, 2000));
    // With 4,096 key slots, about 890 end up holding one of the 1,000
    // tokens; the 256 slots chosen by a token's last bytes, which were all
    // there was before stop 42, can hold at most 256.
    assert!(
        st.token_cache_hot_hits >= 800,
        "{} hot hits",
        st.token_cache_hot_hits
    );
}

#[tokio::test]
async fn configuration_problems_are_all_listed() {
    let err = Verifier::builder()
        .issuer(
            IssuerConfig::new("a", "https://a", "ftp://nope")
                .with_algorithms([idgate::Algorithm::HS256]),
        )
        .issuer(IssuerConfig::new("a", "https://a", "https://a/jwks"))
        .issuer(
            IssuerConfig::new("ed", "https://ed", "https://ed/jwks")
                .with_algorithms([idgate::Algorithm::EdDSA]),
        )
        .clock_skew(Duration::from_secs(600))
        .jwks({
            let mut j = JwksSettings::default();
            j.min_ttl = Duration::ZERO;
            j.refresh_interval = Duration::from_millis(10);
            j.backoff_initial = Duration::ZERO;
            j
        })
        .build()
        .unwrap_err();
    let text = err.to_string();
    for needle in [
        "jwks min ttl 0ns is under 1 s",
        "jwks refresh interval 10ms is under 1 s",
        "jwks backoff 0ns must be positive",
        "audience",
        "clock skew",
        "used twice",
        "configured twice",
        "shared-secret",
        "EdDSA is not supported",
        "not an http",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server on loopback that answers `/r/N` with a redirect to `/r/N-1`,
/// and `/r/0` with one to `to`.
async fn redirector(to: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let n: u32 = path
                    .strip_prefix("/r/")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let location = if n == 0 { to } else { format!("/r/{}", n - 1) };
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// Key fetches follow at most five redirects (and, not testable on plain
/// http here, never one from https to http: `jwks::redirect_policy`).
#[tokio::test]
async fn key_fetches_follow_five_redirects_and_no_more() {
    for (start, loads) in [(4, true), (5, false)] {
        let kit = Issuer::start().await;
        // `/r/N` is N + 1 redirects away from the keys.
        let url = format!("http://{}/r/{start}", redirector(kit.jwks_url()).await);
        let clock = Arc::new(ManualClock::starting_now());
        let verifier = Verifier::builder()
            .issuer(IssuerConfig::new("test", kit.url(), &url))
            .audience(AUD)
            .clock(clock.clone())
            .build()
            .unwrap();
        let s = Setup {
            kit,
            clock,
            verifier: Arc::new(verifier),
        };
        let token = s.kit.mint(&s.claims());
        if loads {
            let result = s.verifier.verify(&token).await;
            assert!(result.is_ok(), "{} redirects: {result:?}", start + 1);
        } else {
            assert_eq!(
                s.reason(&token).await,
                Reason::KeysUnavailable,
                "{} redirects",
                start + 1
            );
        }
    }
}

/// A hit re-checks what the full check would refuse as time moves, both
/// ways: `exp` forward, and `iat`/`nbf` when the clock is stepped back
/// (an NTP correction, a restored VM) after the token was cached.
#[tokio::test]
async fn a_hit_refuses_a_token_the_stepped_back_clock_makes_too_new() {
    // One verifier per token, so that no two share a slot.
    for with_nbf in [false, true] {
        let s = setup().await;
        let now = s.now();
        let (token, refused) = if with_nbf {
            let token = s.with(|c| {
                c.insert("iat".into(), json!(now - 100));
                c.insert("nbf".into(), json!(now));
            });
            (token, Reason::NotYetValid)
        } else {
            (s.kit.mint(&s.claims()), Reason::IssuedInFuture)
        };
        // A miss, a hit in the map, then one in a key slot and one in a
        // token slot.
        for _ in 0..4 {
            s.verifier.verify(&token).await.unwrap();
        }
        assert_eq!(s.verifier.stats().token_cache_hot_hits, 2);
        // Back past the 30 s of skew: every level refuses, as the full
        // check does (the first lookup meets the token slot, the key slot
        // and the map in turn).
        s.clock.set_unix(Duration::from_secs(now - 31));
        for _ in 0..2 {
            assert_eq!(s.reason(&token).await, refused, "nbf: {with_nbf}");
        }
        // Within the skew, it is good again.
        s.clock.set_unix(Duration::from_secs(now - 30));
        s.verifier.verify(&token).await.unwrap();
    }
}

/// A miss may wait for keys (a fetch of the key set can take seconds): the
/// token's times are checked against the clock once the key is in hand,
/// not as it read when the request came in.
#[tokio::test]
async fn a_token_that_expires_while_its_keys_are_fetched_is_refused() {
    use std::future::Future;
    let s = setup().await;
    let t = s.with(|c| {
        c.insert("exp".into(), json!(s.now() + 10));
    });
    // No keys fetched yet: the first poll checks the cache, misses, and
    // waits for the fetch (its answer needs this runtime's issuer task).
    let mut verify = Box::pin(s.verifier.verify(&t));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(verify.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "answered without fetching keys");
    // 10 s to expiry and 30 s of skew: 41 s later it has expired.
    s.clock.advance(Duration::from_secs(41));
    assert_eq!(verify.await.unwrap_err().reason, Reason::Expired);
    assert_eq!(s.kit.jwks_fetches(), 1);
}

/// An issuer found by discovery: its routes (the document at least) served
/// on a port of their own by the router `app` makes from the issuer's URL,
/// and a verifier for it with `settings` on a manual clock. Returns the
/// URL, the verifier and the clock.
async fn discovered_issuer(
    settings: JwksSettings,
    app: impl FnOnce(String) -> axum::Router,
) -> (String, Verifier, Arc<ManualClock>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let iss = format!("http://{}", listener.local_addr().unwrap());
    let app = app(iss.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let clock = Arc::new(ManualClock::starting_now());
    let verifier = Verifier::builder()
        .issuer(IssuerConfig::new("discovered", &iss, "").with_discovery())
        .audience(AUD)
        .clock(clock.clone())
        .jwks(settings)
        .build()
        .unwrap();
    (iss, verifier, clock)
}

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// A discovery issuer whose document names the key set of the test issuer
/// it was last pointed at ([`Moving::point`]), or answers 503 while it
/// names none, with a verifier for it on a manual clock.
struct Moving {
    named: Arc<std::sync::Mutex<Option<String>>>,
    iss: String,
    verifier: Verifier,
    clock: Arc<ManualClock>,
    /// The least time between two key fetches an unknown kid may force.
    refresh: Duration,
}

impl Moving {
    /// Pointed at `first`, whose token it has verified once (so its key
    /// set's URL is known).
    async fn start(first: &Issuer, settings: JwksSettings) -> Moving {
        use axum::response::IntoResponse;

        let named = Arc::new(std::sync::Mutex::new(Some(first.jwks_url())));
        let document = named.clone();
        let refresh = settings.refresh_interval;
        let (iss, verifier, clock) = discovered_issuer(settings, move |iss: String| {
            let document = move || {
                let (named, iss) = (document.lock().unwrap().clone(), iss.clone());
                async move {
                    match named {
                        Some(uri) => {
                            axum::Json(json!({"issuer": iss, "jwks_uri": uri})).into_response()
                        }
                        None => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            };
            axum::Router::new().route(DISCOVERY_PATH, axum::routing::get(document))
        })
        .await;
        let moving = Moving {
            named,
            iss,
            verifier,
            clock,
            refresh,
        };
        moving.verify(first).await.unwrap();
        moving
    }

    /// The document names `kit`'s key set from now on, or fails for `None`.
    fn point(&self, kit: Option<&Issuer>) {
        *self.named.lock().unwrap() = kit.map(Issuer::jwks_url);
    }

    /// A token from `kit`'s active key, under this issuer.
    fn token(&self, kit: &Issuer) -> String {
        discovered_token(kit, &self.iss)
    }

    async fn verify(&self, kit: &Issuer) -> Result<idgate::Identity, idgate::Rejection> {
        self.verifier.verify(&self.token(kit)).await
    }

    /// [`Moving::verify`] past the least time between two key fetches an
    /// unknown kid may force.
    async fn verify_later(&self, kit: &Issuer) -> Result<idgate::Identity, idgate::Rejection> {
        self.clock.advance(self.refresh + Duration::from_secs(1));
        self.verify(kit).await
    }
}

/// A token from `kit`'s active key, under the discovered issuer `iss`.
fn discovered_token(kit: &Issuer, iss: &str) -> String {
    let mut c = kit.claims("alice@example.com", AUD);
    c["iss"] = json!(iss);
    kit.mint(&c)
}

/// A key set of its own, whose tokens name `kid`.
async fn key_host(kid: &str) -> Issuer {
    let kit = Issuer::start().await;
    kit.publish(TestKey::generate(kid));
    kit.activate(kid);
    kit
}

/// An issuer found by discovery is followed when it moves its keys: the
/// document is read again with each fetch of the key set (not only the
/// first), and while it cannot be read the last URL it gave still serves.
/// A move is followed within the fetch a request waits on, whether the old
/// URL still answers (with the keys it had) or not, and the old keys go.
#[tokio::test]
async fn a_discovered_issuer_that_moves_its_keys_is_followed() {
    // Three key sets, each with its own kid.
    let (old, mid, new) = (
        Issuer::start().await,
        key_host("moved-0").await,
        key_host("moved-1").await,
    );
    let issuer = Moving::start(&old, JwksSettings::default()).await;
    let old_token = issuer.token(&old);

    // The keys move; the old URL still answers, with the old keys. The
    // document, read beside it, names the new URL, fetched before the
    // request naming the moved key is answered. (Whether the old URL's
    // answer came before the document's is a race; either way it is not
    // used.)
    issuer.point(Some(&mid));
    issuer.verify_later(&mid).await.unwrap();
    assert_eq!(mid.jwks_fetches(), 1);
    assert!((1..=2).contains(&old.jwks_fetches()));
    // The old URL's keys are not kept beside the new ones. (Every test
    // issuer starts with a key named `key-1`: the new set's own `key-1`
    // does not verify the old one's signature.)
    assert_eq!(
        issuer.verifier.verify(&old_token).await.unwrap_err().reason,
        Reason::BadSignature
    );

    // They move again; the old URL now answers 404.
    issuer.point(Some(&new));
    mid.set_failure(Failure::Status(404));
    let moved = issuer.verify_later(&new).await.unwrap();
    assert_eq!(moved.email(), Some("alice@example.com"));
    assert_eq!(new.jwks_fetches(), 1);

    // Discovery down: the keys still come from the last URL it gave.
    issuer.point(None);
    new.publish(TestKey::generate("moved-2"));
    new.activate("moved-2");
    issuer.verify_later(&new).await.unwrap();
    assert_eq!(new.jwks_fetches(), 2);
}

/// A move is followed as soon as the document names the new URL: an old
/// key host that no longer answers does not hold the request until the
/// fetch from it times out. The fetch timeout here is two minutes; the
/// request must be answered well before.
#[tokio::test]
async fn a_move_does_not_wait_on_an_old_key_host_that_hangs() {
    let (old, new) = (Issuer::start().await, key_host("moved-0").await);
    let mut settings = JwksSettings::default();
    settings.fetch_timeout = Duration::from_secs(120);
    let issuer = Moving::start(&old, settings).await;

    old.set_failure(Failure::Hang);
    issuer.point(Some(&new));
    let verified = tokio::time::timeout(Duration::from_secs(30), issuer.verify_later(&new))
        .await
        .expect("the request waited on the old key host");
    assert_eq!(verified.unwrap().email(), Some("alice@example.com"));
    assert_eq!(new.jwks_fetches(), 1);
}

/// Keys that moved to a URL that then fails are not taken from the old URL
/// instead, even while it still answers: a key host the issuer left (a
/// bucket or a domain someone else may hold now) vouches for nothing. The
/// new URL is remembered, and serves once it answers.
#[tokio::test]
async fn keys_are_not_taken_from_the_url_they_moved_from() {
    let (old, new) = (Issuer::start().await, key_host("moved-0").await);
    let issuer = Moving::start(&old, JwksSettings::default()).await;

    // The document names the new URL, which fails; the old one publishes a
    // key it did not have.
    issuer.point(Some(&new));
    new.set_failure(Failure::Status(503));
    old.publish(TestKey::generate("left-behind"));
    old.activate("left-behind");
    let refused = issuer.verify_later(&old).await.unwrap_err();
    assert_eq!(refused.reason, Reason::UnknownKey);
    assert_eq!(new.jwks_fetches(), 1);

    // The new URL answers again and the document is down: the keys come
    // from the URL it last gave, the new one.
    new.set_failure(Failure::None);
    issuer.point(None);
    issuer.verify_later(&new).await.unwrap();
    assert_eq!(new.jwks_fetches(), 2);
    assert!(issuer.verify(&old).await.is_err());
}

/// With its key set's URL known, a discovery issuer's document is read
/// beside the fetch from that URL, not before or after it: a fetch a
/// request waits on (here for an unknown kid) takes one round trip, not
/// two. Once armed, the document and the key set below each wait for the
/// other to be asked before answering; read one after the other, the first
/// would wait out its deadline and say so.
#[tokio::test]
async fn a_discovered_issuer_reads_its_document_beside_the_key_fetch() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::response::IntoResponse;

    /// Notes that `mine` was asked, then waits (when armed) up to 10 s for
    /// `other`; a wait that runs out sets `late` (well inside the fetch
    /// timeout below, so the answer still counts).
    async fn meet(armed: &AtomicBool, mine: &AtomicBool, other: &AtomicBool, late: &AtomicBool) {
        mine.store(true, Ordering::SeqCst);
        if !armed.load(Ordering::SeqCst) {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !other.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() > deadline {
                late.store(true, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let kit = Arc::new(Issuer::start().await);
    // armed, the document asked, the key set asked, a wait that ran out.
    let flags: Arc<[AtomicBool; 4]> = Arc::new(Default::default());
    let mut settings = JwksSettings::default();
    settings.fetch_timeout = Duration::from_secs(60);
    let refresh = settings.refresh_interval;
    let (iss, verifier, clock) = discovered_issuer(settings, {
        let (kit, flags) = (kit.clone(), flags.clone());
        move |iss: String| {
            let keys_url = format!("{iss}/keys");
            let document = {
                let flags = flags.clone();
                move || {
                    let (flags, body) =
                        (flags.clone(), json!({"issuer": iss, "jwks_uri": keys_url}));
                    async move {
                        let [armed, doc, keys, late] = &*flags;
                        meet(armed, doc, keys, late).await;
                        axum::Json(body).into_response()
                    }
                }
            };
            let keys = move || {
                let (flags, body) = (flags.clone(), kit.jwks());
                async move {
                    let [armed, doc, keys, late] = &*flags;
                    meet(armed, keys, doc, late).await;
                    axum::Json(body).into_response()
                }
            };
            axum::Router::new()
                .route(DISCOVERY_PATH, axum::routing::get(document))
                .route("/keys", axum::routing::get(keys))
        }
    })
    .await;
    // The first fetch has no URL yet: the document, then the keys.
    verifier
        .verify(&discovered_token(&kit, &iss))
        .await
        .unwrap();

    // A new key: the token naming it forces a fetch.
    kit.publish(TestKey::generate("next-1"));
    kit.activate("next-1");
    let [armed, doc, keys, late] = &*flags;
    for asked in [doc, keys] {
        asked.store(false, Ordering::SeqCst);
    }
    armed.store(true, Ordering::SeqCst);
    // Past the least time between two fetches an unknown kid may force.
    clock.advance(refresh + Duration::from_secs(1));
    verifier
        .verify(&discovered_token(&kit, &iss))
        .await
        .unwrap();
    assert!(
        doc.load(Ordering::SeqCst) && keys.load(Ordering::SeqCst),
        "both were asked"
    );
    assert!(
        !late.load(Ordering::SeqCst),
        "the document and the key set were read one after the other"
    );
}
