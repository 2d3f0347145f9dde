//! The whole sidecar in-process with the real gate (verifier, policy,
//! `AuthLayer`) against a testkit issuer and a real upstream.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use http::StatusCode;
use idgate_sidecar::config::Settings;
use idgate_sidecar::gate;
use idgate_sidecar::metrics::Metrics;
use idgate_sidecar::serve::{Running, Wiring, start};
use idgate_testkit::{
    Issuer, IssuerOptions, TestKey, default_header, google_claims, mint, now_unix,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const AUD: &str = "https://svc.example";

fn write_policy(path: &Path, members: &[&str]) {
    let doc = serde_json::json!({
        "bindings": [{"role": "roles/run.invoker", "members": members}],
        "version": 1,
    });
    // Replace by rename, as editors and ConfigMaps do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A Google-shaped token (iss accounts.google.com) signed by `issuer`.
fn google_token(issuer: &Issuer, email: &str) -> String {
    issuer.mint(&google_claims(
        "https://accounts.google.com",
        email,
        AUD,
        now_unix(),
    ))
}

async fn start_with_gate(settings: &Settings) -> (Running, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let parts = gate::build(settings, &metrics).await.unwrap();
    let running = start(
        settings,
        Wiring {
            gate: parts.layer,
            ready: parts.ready,
            reload: parts.reload,
            metrics: metrics.clone(),
        },
    )
    .await
    .unwrap();
    (running, metrics)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn allows_denies_forwards_identity_and_counts() {
    let issuer = Issuer::start().await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    write_policy(&policy, &["user:alice@example.com"]);
    let s = settings(Some(&up.url()), |a| {
        a.member.clear();
        a.policy = vec![policy.clone()];
        a.jwks_url = vec![issuer.jwks_url()];
    });
    let (sidecar, metrics) = start_with_gate(&s).await;
    let url = format!("http://{}/headers", sidecar.addr());
    let c = client();

    let (status, headers, body) = send(&c, get_req(&url, &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(echoed(&body)["reason"], "missing_token");

    let alice = google_token(&issuer, "alice@example.com");
    let (status, _, body) = send(
        &c,
        get_req(
            &url,
            &[
                ("authorization", &bearer(&alice)),
                ("x-idgate-principal", "user:boss@example.com"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo = echoed(&body);
    let segments: Vec<&str> = alice.split('.').collect();
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    assert_eq!(
        header_values(&echo, "x-idgate-email"),
        ["alice@example.com"]
    );
    assert_eq!(header_values(&echo, "x-idgate-claims"), [segments[1]]);
    assert_eq!(header_values(&echo, "x-idgate-sub").len(), 1);
    assert_eq!(
        header_values(&echo, "authorization"),
        [format!(
            "Bearer {}.{}.SIGNATURE_REMOVED_BY_IDGATE",
            segments[0], segments[1]
        )]
    );

    let bob = google_token(&issuer, "bob@example.com");
    let (status, _, body) = send(
        &c,
        get_req(
            &url,
            &[
                ("authorization", &bearer(&bob)),
                ("x-idgate-principal", "user:alice@example.com"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(echoed(&body)["reason"], "not_allowed");

    let (status, _, _) = send(
        &c,
        get_req(&format!("http://{}/readyz", sidecar.admin_addr()), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "keys are loaded");
    let text = metrics.encode();
    for line in [
        "idgate_decisions_total{reason=\"allowed\"} 1",
        "idgate_decisions_total{reason=\"missing_token\"} 1",
        "idgate_decisions_total{reason=\"not_allowed\"} 1",
        "idgate_verification_duration_seconds_count 3",
        "idgate_upstream_duration_seconds_count{result=\"ok\"} 1",
        "idgate_token_cache_misses_total 2",
        "idgate_jwks_fetches_total{issuer=\"google\",result=\"error\"} 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains("idgate_jwks_key_set_age_seconds{issuer=\"google\"}"));
    // Alice again, twice: a hit in the cache's map, which gives her token
    // a hot slot, then a hit in that slot.
    for _ in 0..2 {
        let (status, _, _) = send(&c, get_req(&url, &[("authorization", &bearer(&alice))])).await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = metrics.encode();
    for line in [
        "idgate_token_cache_hits_total 2",
        "idgate_token_cache_hot_hits_total 1",
        "idgate_token_cache_misses_total 2",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let (status, _, body) = send(
        &c,
        get_req(&format!("http://{}/metrics", sidecar.admin_addr()), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("idgate_decisions_total"));

    // Edit the policy: bob is let in once the file changes.
    write_policy(&policy, &["user:alice@example.com", "user:bob@example.com"]);
    eventually("bob to be allowed after the reload", || {
        let c = c.clone();
        let req = get_req(&url, &[("authorization", &bearer(&bob))]);
        async move { (send(&c, req).await.0 == StatusCode::OK).then_some(()) }
    })
    .await;
    assert!(
        metrics
            .encode()
            .contains("idgate_policy_reloads_total{result=\"ok\"} 1")
    );

    // A broken policy is refused and the last good one stays.
    std::fs::write(
        dir.path().join("policy.tmp"),
        "{\"bindings\": [{\"role\": 1}]}",
    )
    .unwrap();
    std::fs::rename(dir.path().join("policy.tmp"), &policy).unwrap();
    eventually("the broken policy to be refused", || {
        let m = metrics.clone();
        async move {
            m.encode()
                .contains("idgate_policy_reloads_total{result=\"error\"} 1")
                .then_some(())
        }
    })
    .await;
    let (status, _, _) = send(&c, get_req(&url, &[("authorization", &bearer(&bob))])).await;
    assert_eq!(status, StatusCode::OK);

    // SIGHUP's path reloads even when nothing changed.
    write_policy(&policy, &["user:alice@example.com"]);
    eventually("bob to be refused again", || {
        let c = c.clone();
        let req = get_req(&url, &[("authorization", &bearer(&bob))]);
        async move { (send(&c, req).await.0 == StatusCode::FORBIDDEN).then_some(()) }
    })
    .await;
    sidecar.reload();
    eventually("a forced reload", || {
        let m = metrics.clone();
        async move {
            m.encode()
                .contains("idgate_policy_reloads_total{result=\"ok\"} 3")
                .then_some(())
        }
    })
    .await;
    sidecar.shutdown().await;
}

/// Under `--forward-token stripped`, a token the gate did not verify (a
/// public path, an `allUsers` binding) never reaches the upstream with its
/// signature replaced: that would make a forged token look like a verified
/// one to an app that reads the caller from it. A verified one still does.
#[tokio::test]
async fn only_a_verified_token_reaches_the_upstream_stripped() {
    let issuer = Issuer::start().await;
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.member = vec!["allUsers".into()];
        a.public_path = vec!["/base".into()];
        a.jwks_url = vec![issuer.jwks_url()];
    });
    let (sidecar, _) = start_with_gate(&s).await;
    let c = client();
    // Signed by nobody, claiming to be the boss.
    let forged = format!(
        "{}.{}.AAAA",
        idgate_testkit::b64url(br#"{"alg":"RS256","kid":"key-1"}"#),
        idgate_testkit::b64url(br#"{"email":"boss@example.com"}"#)
    );
    // A public path, then an allUsers one.
    for path in ["/base/headers", "/headers"] {
        let url = format!("http://{}{path}", sidecar.addr());
        let (status, _, body) =
            send(&c, get_req(&url, &[("authorization", &bearer(&forged))])).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let echo = echoed(&body);
        assert!(
            header_values(&echo, "authorization").is_empty(),
            "{path}: an unverified token reached the upstream: {echo}"
        );
        assert!(
            header_values(&echo, "x-idgate-principal").is_empty(),
            "{path}"
        );
    }
    // The app's own non-JWT credential on a public path is its business.
    let url = format!("http://{}/base/headers", sidecar.addr());
    let (_, _, body) = send(&c, get_req(&url, &[("authorization", "Bearer sk_live_1")])).await;
    assert_eq!(
        header_values(&echoed(&body), "authorization"),
        ["Bearer sk_live_1"]
    );
    // A verified token on an allUsers route goes on stripped.
    let alice = google_token(&issuer, "alice@example.com");
    let url = format!("http://{}/headers", sidecar.addr());
    let (_, _, body) = send(&c, get_req(&url, &[("authorization", &bearer(&alice))])).await;
    let echo = echoed(&body);
    let sent = header_values(&echo, "authorization");
    assert_eq!(sent.len(), 1, "{echo}");
    assert!(sent[0].ends_with(".SIGNATURE_REMOVED_BY_IDGATE"), "{echo}");
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    sidecar.shutdown().await;
}

/// The gate reads `X-Serverless-Authorization` first, and `Authorization`
/// then belongs to the app: it goes on untouched. Except a credential that
/// says idgate stripped it, which idgate did not: a client sends one beside
/// a dummy (public path, `allUsers`) or its own valid token, and an app
/// that reads the caller from the stripped token would take it as verified.
#[tokio::test]
async fn a_forged_stripped_token_beside_the_read_one_never_reaches_the_upstream() {
    let issuer = Issuer::start().await;
    let up = upstream().await;
    let c = client();
    let forged = format!(
        "Bearer {}.{}.SIGNATURE_REMOVED_BY_IDGATE",
        idgate_testkit::b64url(br#"{"alg":"RS256","kid":"key-1"}"#),
        idgate_testkit::b64url(br#"{"email":"boss@example.com"}"#)
    );
    let alice = bearer(&google_token(&issuer, "alice@example.com"));
    for mode in ["stripped", "none", "full"] {
        let s = settings(Some(&up.url()), |a| {
            a.member = vec!["user:alice@example.com".into()];
            a.public_path = vec!["/base".into()];
            a.jwks_url = vec![issuer.jwks_url()];
            a.forward_token = Some(mode.into());
        });
        let (sidecar, _) = start_with_gate(&s).await;
        // A dummy on a public path, then alice's own token on a private one.
        for (path, read) in [("/base/headers", "Bearer x"), ("/headers", &alice[..])] {
            let url = format!("http://{}{path}", sidecar.addr());
            let headers = [
                ("x-serverless-authorization", read),
                ("authorization", &forged[..]),
            ];
            let (status, _, body) = send(&c, get_req(&url, &headers)).await;
            assert_eq!(status, StatusCode::OK, "{mode} {path}");
            let echo = echoed(&body);
            assert!(
                header_values(&echo, "authorization").is_empty(),
                "{mode} {path}: a forged stripped token reached the upstream: {echo}"
            );
        }
        // The app's own credential beside alice's token is its business.
        let url = format!("http://{}/headers", sidecar.addr());
        let app_jwt = "Bearer aGVhZA.cGF5bG9hZA.c2lnbmF0dXJl";
        let headers = [
            ("x-serverless-authorization", &alice[..]),
            ("authorization", app_jwt),
        ];
        let (status, _, body) = send(&c, get_req(&url, &headers)).await;
        assert_eq!(status, StatusCode::OK, "{mode}");
        let echo = echoed(&body);
        assert_eq!(header_values(&echo, "authorization"), [app_jwt], "{mode}");
        let read = header_values(&echo, "x-serverless-authorization");
        match mode {
            "stripped" => assert!(
                read.len() == 1 && read[0].ends_with(".SIGNATURE_REMOVED_BY_IDGATE"),
                "{echo}"
            ),
            "none" => assert!(read.is_empty(), "{echo}"),
            _ => assert_eq!(read, [alice.as_str()], "{echo}"),
        }
        sidecar.shutdown().await;
    }
}

#[tokio::test]
async fn an_issuer_down_at_startup_delays_its_keys_not_the_sidecar() {
    // Nothing listens there yet: discovery fails. The sidecar starts
    // anyway, not ready, answering 503, and heals when the issuer is up.
    let addr = refused_addr().await;
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.member = vec!["user:alice@example.com".into()];
        a.issuer = vec![format!("http://{addr}")];
        a.issuer_trust_emails = Some("true".into());
        // Trust only the test issuer: no test reaches Google.
        a.google_issuer = Some("false".into());
    });
    let (sidecar, _) = start_with_gate(&s).await;
    let readyz = format!("http://{}/readyz", sidecar.admin_addr());
    let (status, _, _) = send(&client(), get_req(&readyz, &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A token for that issuer (any key: there are none to check it with).
    let key = TestKey::generate("early");
    let claims = google_claims(
        &format!("http://{addr}"),
        "alice@example.com",
        AUD,
        now_unix(),
    );
    let early = mint(&key, &default_header(&key), &claims);
    let url = format!("http://{}/headers", sidecar.addr());
    let req = |token: &str| get_req(&url, &[("authorization", &bearer(token))]);
    let (status, _, body) = send(&client(), req(&early)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(echoed(&body)["reason"], "keys_unavailable");

    let issuer = Issuer::start_with(IssuerOptions {
        listen: addr,
        ..IssuerOptions::default()
    })
    .await
    .unwrap();
    let token = issuer.token("alice@example.com", AUD);
    // The key cache retries with backoff (1 s, then 2 s, …).
    eventually("ready once the issuer is up", || async {
        let (status, _, _) = send(&client(), get_req(&readyz, &[])).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(issuer.discovery_fetches(), 1);
    let (status, _, body) = send(&client(), req(&token)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_extra_issuer_is_found_by_discovery_and_its_emails_count_only_when_trusted() {
    let issuer = Issuer::start().await;
    let up = upstream().await;
    let token = issuer.token("alice@example.com", AUD);
    let get = |addr: std::net::SocketAddr, token: &str| {
        let url = format!("http://{addr}/headers");
        let req = get_req(&url, &[("x-serverless-authorization", &bearer(token))]);
        async move { send(&client(), req).await }
    };

    // By default another issuer's email is not a Google account: alice's
    // user: member must not match a token that issuer signed.
    let s = settings(Some(&up.url()), |a| {
        a.member = vec!["user:alice@example.com".into()];
        a.issuer = vec![issuer.url()];
        // Trust only the test issuer: no test reaches Google.
        a.google_issuer = Some("false".into());
    });
    let (sidecar, _) = start_with_gate(&s).await;
    assert_eq!(issuer.discovery_fetches(), 1);
    let (status, _, body) = get(sidecar.addr(), &token).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(echoed(&body)["reason"], "not_allowed");
    sidecar.shutdown().await;

    // With a pool, its subjects are principal:// members.
    let pool = "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/dev";
    let sub = issuer.claims("alice@example.com", AUD)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = settings(Some(&up.url()), |a| {
        a.member = vec![format!("principal://{pool}/subject/{sub}")];
        a.issuer = vec![issuer.url()];
        // Trust only the test issuer: no test reaches Google.
        a.google_issuer = Some("false".into());
        a.issuer_pool = vec![format!("{}={pool}", issuer.url())];
    });
    let (sidecar, _) = start_with_gate(&s).await;
    let (status, _, body) = get(sidecar.addr(), &token).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo = echoed(&body);
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        [format!("principal://{pool}/subject/{sub}")]
    );
    // Its email names nobody: the upstream is not handed it as the caller's.
    assert!(
        header_values(&echo, "x-idgate-email").is_empty(),
        "an untrusted issuer's email reached the upstream: {echo}"
    );
    sidecar.shutdown().await;

    // Told it stands in for Google, its verified emails name user: members.
    let s = settings(Some(&up.url()), |a| {
        a.member = vec!["user:alice@example.com".into()];
        a.issuer = vec![issuer.url()];
        // Trust only the test issuer: no test reaches Google.
        a.google_issuer = Some("false".into());
        a.issuer_trust_emails = Some("true".into());
    });
    let (sidecar, _) = start_with_gate(&s).await;
    let (status, _, body) = get(sidecar.addr(), &token).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo = echoed(&body);
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    assert_eq!(
        header_values(&echo, "x-idgate-email"),
        ["alice@example.com"]
    );
    let stripped = header_values(&echo, "x-serverless-authorization");
    assert!(
        stripped[0].ends_with(".SIGNATURE_REMOVED_BY_IDGATE"),
        "{stripped:?}"
    );
    let other_aud = issuer.token("alice@example.com", "https://other.example");
    let (status, _, body) = get(sidecar.addr(), &other_aud).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(echoed(&body)["reason"], "audience_mismatch");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn forward_auth_judges_the_original_request() {
    let issuer = Issuer::start().await;
    let s = settings(None, |a| {
        a.mode = Some("forward-auth".into());
        a.member = vec!["user:alice@example.com".into()];
        a.jwks_url = vec![issuer.jwks_url()];
        a.public_path = vec!["/public".into()];
    });
    let (sidecar, _) = start_with_gate(&s).await;
    let auth = format!("http://{}/auth", sidecar.addr());
    let c = client();
    let alice = google_token(&issuer, "alice@example.com");

    let (status, headers, _) = send(
        &c,
        get_req(
            &auth,
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/private/items?x=1"),
                ("x-forwarded-host", "app.example.com"),
                ("authorization", &bearer(&alice)),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-idgate-principal"], "user:alice@example.com");
    assert_eq!(headers["x-idgate-email"], "alice@example.com");

    let (status, headers, _) = send(
        &c,
        get_req(
            &auth,
            &[
                ("x-original-uri", "/public/logo.png"),
                ("x-idgate-principal", "user:forged@example.com"),
            ],
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a public path of the original request"
    );
    assert!(!headers.contains_key("x-idgate-principal"));

    let (status, _, _) = send(&c, get_req(&auth, &[("x-original-uri", "/private")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A client's gRPC content type must not turn the refusal into gRPC's
    // trailers-only form (HTTP 200), which the front proxy reads as allowed.
    for token in [None, Some("a.b.c")] {
        let mut headers = vec![
            ("x-original-uri", "/private".to_owned()),
            ("content-type", "application/grpc".to_owned()),
        ];
        if let Some(t) = token {
            headers.push(("authorization", bearer(t)));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, _) = send(&c, get_req(&auth, &headers)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(!headers.contains_key("grpc-status"), "{token:?}");
    }

    let (status, _, body) = send(&c, get_req(&auth, &[("x-forwarded-uri", "private")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(echoed(&body)["reason"], "invalid_forwarded_uri");
    sidecar.shutdown().await;
}

/// A gated sidecar (the issuer kept alive beside it).
async fn gated_sidecar() -> (Running, Issuer) {
    let issuer = Issuer::start().await;
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.member = vec!["user:alice@example.com".into()];
        a.jwks_url = vec![issuer.jwks_url()];
    });
    let (sidecar, _) = start_with_gate(&s).await;
    (sidecar, issuer)
}

/// A raw connection to `sidecar` that has sent the head of a POST without
/// a token, announcing `len` bytes of body.
async fn post_without_token(sidecar: &Running, len: usize) -> TcpStream {
    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    let head = format!("POST /headers HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test]
async fn a_refused_requests_body_is_read_so_the_client_gets_the_refusal_and_keeps_its_connection() {
    // Without that read, the server closes the connection with the client
    // still sending: its kernel answers the bytes that keep coming with a
    // reset, which can destroy the 401 before the client reads it.
    let (sidecar, _issuer) = gated_sidecar().await;
    let body = vec![b'x'; 512 << 10];
    let (mut rd, mut wr) = post_without_token(&sidecar, body.len()).await.into_split();
    let sending = tokio::spawn(async move { wr.write_all(&body).await.map(|()| wr) });
    let (head, answer) = read_response(&mut rd).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_eq!(echoed(&answer)["reason"], "missing_token");
    let mut wr = within("the client's body sent", sending)
        .await
        .unwrap()
        .expect("the whole body is taken, not reset");

    // The same connection carries the next request.
    wr.write_all(b"GET /headers HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut rd).await;
    assert!(head.starts_with("http/1.1 401"), "the next answer: {head}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_refused_requests_body_is_read_only_so_far_and_so_long() {
    let (sidecar, _issuer) = gated_sidecar().await;

    // Past LINGER_BYTES the connection closes after the refusal, as it did
    // before there was any reading on.
    let len = 3 * idgate_sidecar::server::LINGER_BYTES as usize;
    let (mut rd, mut wr) = post_without_token(&sidecar, len).await.into_split();
    let sending = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < len && wr.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        // Kept open: the server, not the client's end, closes it.
        wr
    });
    let (head, _) = read_response(&mut rd).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_closes(&mut rd).await;
    drop(within("the client's writes end", sending).await.unwrap());

    // And a client that stops sending is not waited for past LINGER_TIME.
    let mut conn = post_without_token(&sidecar, 1 << 20).await;
    conn.write_all(&[b'x'; 1000]).await.unwrap();
    let (head, _) = read_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_closes(&mut conn).await;
    sidecar.shutdown().await;
}

/// curl and most HTTP libraries send `Expect: 100-continue` before a large
/// body and wait for the 100 to send it. A refused request gets its refusal
/// instead, so the client never uploads a body only to be refused, and no
/// 100 follows the refusal (the client would take it for the answer to its
/// next request). An allowed one gets the 100, then the upstream's answer.
#[tokio::test]
async fn expect_100_continue_is_granted_only_to_an_allowed_request() {
    let (sidecar, issuer) = gated_sidecar().await;

    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    conn.write_all(
        b"POST /stream-up HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 9\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, answer) = read_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_eq!(echoed(&answer)["reason"], "missing_token");
    // A client may send the body anyway; the next answer on the connection
    // is the next request's.
    conn.write_all(b"123456789GET /headers HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 401"), "the next answer: {head}");

    let token = google_token(&issuer, "alice@example.com");
    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    let head = format!(
        "POST /stream-up HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {token}\r\n\
         expect: 100-continue\r\ncontent-length: 9\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Nothing of the body is sent until the 100 comes.
    let interim = read_head(&mut conn).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.write_all(b"123456789").await.unwrap();
    let (head, answer) = read_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(&answer[..], b"9", "the upstream read the whole body");
    sidecar.shutdown().await;
}
