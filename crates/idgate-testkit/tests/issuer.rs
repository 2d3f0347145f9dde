//! The issuer over real loopback HTTP: discovery, JWKS, rotation, caching
//! headers, injected failures, keys directories and lifecycle.

mod common;

use std::time::{Duration, Instant};

use common::{claims_of, client, get_json, header_of, kids, verify};
use idgate_testkit::{Failure, Issuer, IssuerOptions, TestKey, google_claims, mint, now_unix};
use serde_json::Value;

#[tokio::test]
async fn minted_token_verifies_against_the_served_jwks() {
    let issuer = Issuer::start().await;
    let client = client();

    let discovery = get_json(&client, &issuer.discovery_url()).await;
    assert_eq!(discovery["issuer"], issuer.url().as_str());
    assert_eq!(discovery["jwks_uri"], issuer.jwks_url().as_str());
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );

    let jwks = get_json(&client, discovery["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(kids(&jwks), ["key-1"]);
    assert_eq!(jwks, issuer.jwks());

    let token = issuer.token("alice@example.com", "https://svc.example");
    verify(&token, &jwks).unwrap();
    assert_eq!(
        header_of(&token),
        serde_json::json!({"alg": "RS256", "kid": "key-1", "typ": "JWT"})
    );
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], issuer.url().as_str());
    assert_eq!(claims["aud"], "https://svc.example");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now_unix()) < 60);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);

    // A tampered payload no longer verifies.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["email"] = "mallory@example.com".into();
    parts[1] = idgate_testkit::b64url(forged.to_string().as_bytes());
    assert_eq!(verify(&parts.join("."), &jwks), Err("bad signature".into()));

    assert_eq!(issuer.discovery_fetches(), 1);
    assert_eq!(issuer.jwks_fetches(), 1);
    assert!(issuer.url().starts_with("http://127.0.0.1:"));
    assert_eq!(issuer.url(), format!("http://{}", issuer.addr()));
}

#[tokio::test]
async fn tokens_of_another_issuer_do_not_verify() {
    let a = Issuer::start().await;
    let b = Issuer::start().await;
    let jwks_b = get_json(&client(), &b.jwks_url()).await;
    // Same kid, different key.
    assert_eq!(
        verify(&a.token("x@example.com", "aud"), &jwks_b),
        Err("bad signature".into())
    );
}

#[tokio::test]
async fn rotation_shows_in_the_jwks() {
    let issuer = Issuer::start().await;
    let client = client();
    let old_token = issuer.token("a@example.com", "aud");

    let published = issuer.publish(TestKey::generate("key-2"));
    assert_eq!(published.kid(), "key-2");
    let jwks = get_json(&client, &issuer.jwks_url()).await;
    assert_eq!(kids(&jwks), ["key-1", "key-2"]);
    // Published, not yet signing.
    assert_eq!(issuer.active_key().kid(), "key-1");
    assert_eq!(
        header_of(&issuer.token("a@example.com", "aud"))["kid"],
        "key-1"
    );

    issuer.activate("key-2");
    let new_token = issuer.token("a@example.com", "aud");
    assert_eq!(header_of(&new_token)["kid"], "key-2");
    verify(&new_token, &jwks).unwrap();
    verify(&old_token, &jwks).unwrap();

    issuer.drop_key("key-1");
    let jwks = get_json(&client, &issuer.jwks_url()).await;
    assert_eq!(kids(&jwks), ["key-2"]);
    assert_eq!(
        verify(&old_token, &jwks),
        Err("kid key-1 not in jwks".into())
    );
    verify(&new_token, &jwks).unwrap();

    // Dropping the active key leaves it signing tokens nobody can verify.
    issuer.drop_key("key-2");
    assert_eq!(
        get_json(&client, &issuer.jwks_url()).await["keys"],
        Value::Array(vec![])
    );
    assert_eq!(
        header_of(&issuer.token("a@example.com", "aud"))["kid"],
        "key-2"
    );

    // Unknown kids cannot be activated; dropping one is a no-op.
    assert!(issuer.try_activate("key-1").is_err());
    issuer.drop_key("nope");
    assert_eq!(issuer.jwks_fetches(), 3);
}

#[tokio::test]
async fn republishing_a_kid_replaces_it() {
    let issuer = Issuer::start().await;
    let replacement = issuer.publish(TestKey::generate("key-1"));
    let jwks = issuer.jwks();
    assert_eq!(kids(&jwks), ["key-1"]);
    assert_eq!(jwks["keys"][0], replacement.jwk());
    assert!(issuer.key("key-1").is_some());
    assert_eq!(issuer.published_keys().len(), 1);
}

#[tokio::test]
#[should_panic(expected = "no published key has kid")]
async fn activating_an_unknown_kid_panics() {
    let issuer = Issuer::start().await;
    issuer.activate("missing");
}

#[tokio::test]
async fn cache_headers_follow_the_settings() {
    let issuer = Issuer::start().await;
    let client = client();
    let get = || client.get(issuer.jwks_url()).send();

    let response = get().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=3600");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().get("age").is_none());

    issuer.set_age(Some(120));
    issuer.set_cache_control(Some("public, max-age=600, must-revalidate"));
    let response = get().await.unwrap();
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=600, must-revalidate"
    );
    assert_eq!(response.headers()["age"], "120");

    issuer.set_age(None);
    issuer.set_cache_control(None);
    let response = get().await.unwrap();
    assert!(response.headers().get("cache-control").is_none());
    assert!(response.headers().get("age").is_none());

    // Not a header value: left out rather than failing the response.
    issuer.set_cache_control(Some("bad\nvalue"));
    let response = get().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("cache-control").is_none());
}

#[tokio::test]
async fn status_failure_answers_that_status_and_is_counted() {
    let issuer = Issuer::start().await;
    let client = client();
    for code in [500, 503, 404, 429] {
        issuer.set_failure(Failure::Status(code));
        let response = client.get(issuer.jwks_url()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert!(!response.text().await.unwrap().is_empty());
    }
    issuer.set_failure(Failure::Status(42));
    let response = client.get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert_eq!(issuer.jwks_fetches(), 5);

    issuer.set_failure(Failure::None);
    let jwks = get_json(&client, &issuer.jwks_url()).await;
    assert_eq!(kids(&jwks), ["key-1"]);
    assert_eq!(issuer.jwks_fetches(), 6);
    // Discovery is not affected by JWKS failures.
    issuer.set_failure(Failure::Status(500));
    get_json(&client, &issuer.discovery_url()).await;
    assert_eq!(issuer.discovery_fetches(), 1);
}

#[tokio::test]
async fn garbage_and_empty_keys() {
    let issuer = Issuer::start().await;
    let client = client();

    issuer.set_failure(Failure::Garbage);
    let response = client.get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    issuer.set_failure(Failure::EmptyKeys);
    let jwks = get_json(&client, &issuer.jwks_url()).await;
    assert_eq!(jwks, serde_json::json!({"keys": []}));
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn hang_holds_until_the_client_times_out() {
    let issuer = Issuer::start().await;
    issuer.set_failure(Failure::Hang);
    let started = Instant::now();
    let err = client()
        .get(issuer.jwks_url())
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn dropping_the_issuer_closes_hanging_connections() {
    let issuer = Issuer::start().await;
    issuer.set_failure(Failure::Hang);
    let url = issuer.jwks_url();
    let request = tokio::spawn(async move { client().get(url).send().await });
    // Wait for the request to be in the handler before stopping the issuer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while issuer.jwks_fetches() == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = Instant::now();
    drop(issuer);
    let result = request.await.unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(!result.unwrap_err().is_timeout());
    assert!(dropped.elapsed() < Duration::from_secs(10));
}

/// Reads the whole body chunk by chunk, returning its length and both ends.
async fn drain(mut response: reqwest::Response) -> (usize, Vec<u8>, Vec<u8>) {
    let mut len = 0;
    let mut head = Vec::new();
    let mut tail = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        len += chunk.len();
        if head.len() < 32 {
            head.extend_from_slice(&chunk[..chunk.len().min(32 - head.len())]);
        }
        tail.extend_from_slice(&chunk);
        let excess = tail.len().saturating_sub(32);
        tail.drain(..excess);
    }
    (len, head, tail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_streams_exactly_that_many_bytes() {
    let issuer = Issuer::start().await;
    let client = client();

    const BIG: usize = 64 * 1024 * 1024;
    issuer.set_failure(Failure::Oversized(BIG));
    let response = client.get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), None);
    let (len, head, tail) = drain(response).await;
    assert_eq!(len, BIG);
    assert!(head.starts_with(br#"{"keys":[],"padding":"xx"#), "{head:?}");
    assert!(tail.ends_with(br#"xx"}"#), "{tail:?}");

    for small in [0, 1, 10, 25, 26, 100_000] {
        issuer.set_failure(Failure::Oversized(small));
        let response = client.get(issuer.jwks_url()).send().await.unwrap();
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), small);
        if small >= 24 {
            serde_json::from_slice::<Value>(&body).unwrap();
        }
    }
}

#[tokio::test]
async fn slow_trickles_the_real_jwks() {
    let issuer = Issuer::start().await;
    let client = client();
    let expected = issuer.jwks();
    let body_len = expected.to_string().len();
    let chunk = body_len / 4 + 1; // four chunks
    issuer.set_failure(Failure::Slow {
        chunk,
        every: Duration::from_millis(100),
    });

    let started = Instant::now();
    let mut response = client.get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(piece) = response.chunk().await.unwrap() {
        assert!(piece.len() <= chunk);
        chunks += 1;
        body.extend_from_slice(&piece);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    // Four chunks sent; a reader may see one split across reads.
    assert!(chunks >= 4, "{chunks} chunks");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), expected);

    // A client with a short deadline gives up part way.
    let err = client
        .get(issuer.jwks_url())
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn keys_dir_restart_keeps_kid_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let opts = || IssuerOptions {
        keys_dir: Some(keys_dir.clone()),
        ..IssuerOptions::default()
    };

    let first = Issuer::start_with(opts()).await.unwrap();
    let kid = first.active_key().kid().to_owned();
    let der = first.active_key().to_pkcs8_der();
    let token = first.token("a@example.com", "aud");
    let addr = first.addr();
    first.stop().await;

    // Same port too, as a restarted dev issuer would.
    let second = Issuer::start_with(IssuerOptions {
        listen: addr,
        ..opts()
    })
    .await
    .unwrap();
    assert_eq!(second.url(), format!("http://{addr}"));
    assert_eq!(second.active_key().kid(), kid);
    assert_eq!(second.active_key().to_pkcs8_der(), der);
    let jwks = get_json(&client(), &second.jwks_url()).await;
    verify(&token, &jwks).unwrap();

    // A different directory means a different key.
    let other = Issuer::start_with(IssuerOptions {
        keys_dir: Some(dir.path().join("other")),
        ..IssuerOptions::default()
    })
    .await
    .unwrap();
    assert_ne!(other.active_key().to_pkcs8_der(), der);
}

#[tokio::test]
async fn bad_keys_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key-1.pk8"), b"not a key").unwrap();
    let err = Issuer::start_with(IssuerOptions {
        keys_dir: Some(dir.path().to_owned()),
        ..IssuerOptions::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, idgate_testkit::Error::InvalidKey { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn taken_port_is_an_error() {
    let issuer = Issuer::start().await;
    let err = Issuer::start_with(IssuerOptions {
        listen: issuer.addr(),
        ..IssuerOptions::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, idgate_testkit::Error::Bind { .. }), "{err:?}");
}

#[tokio::test]
async fn custom_issuer_url() {
    let issuer = Issuer::start_with(IssuerOptions {
        issuer_url: Some("https://issuer.test/".into()),
        ..IssuerOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(issuer.url(), "https://issuer.test");
    assert_eq!(issuer.jwks_url(), "https://issuer.test/jwks");
    assert_eq!(
        claims_of(&issuer.token("a@b.c", "aud"))["iss"],
        "https://issuer.test"
    );
    let discovery_url = format!("http://{}/.well-known/openid-configuration", issuer.addr());
    let discovery = get_json(&client(), &discovery_url).await;
    assert_eq!(discovery["issuer"], "https://issuer.test");
    assert_eq!(discovery["jwks_uri"], "https://issuer.test/jwks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    let issuer = Issuer::start().await;
    let client = client();
    let fetches: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let url = issuer.jwks_url();
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for fetch in fetches {
        assert_eq!(fetch.await.unwrap(), 200);
    }
    assert_eq!(issuer.jwks_fetches(), 8);
}

#[test]
fn start_blocking_serves_many_runtimes() {
    let issuer = Issuer::start_blocking();
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let jwks = runtime.block_on(get_json(&client(), &issuer.jwks_url()));
        verify(&issuer.token("a@example.com", "aud"), &jwks).unwrap();
    }
    assert_eq!(issuer.jwks_fetches(), 2);
    let addr = issuer.addr();
    issuer.shutdown();
    // The thread's runtime is gone; the port stops answering.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "port still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[tokio::test]
async fn free_functions_mint_what_they_are_told() {
    let key = TestKey::generate("k");
    let claims = google_claims("https://accounts.google.com", "a@b.c", "aud", 100);
    let header = serde_json::json!({"alg": "none", "kid": "k"});
    let token = mint(&key, &header, &claims);
    let jwks = serde_json::json!({ "keys": [key.jwk()] });
    verify(&token, &jwks).unwrap();
    assert_eq!(header_of(&token), header);
    assert_eq!(claims_of(&token), claims);
}
