//! The real `idgate serve` binary as a reverse proxy, over loopback: every
//! decision class, identity headers in and forged ones out, the token as
//! the upstream receives it, streaming both ways without buffering,
//! WebSocket and gRPC (h2c).

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use idgate_e2e::*;
use idgate_testkit::{Issuer, TestKey, default_header, mint, stable_sub};
use serde_json::Value;

/// What a client might send to pass as someone else: headers that idgate
/// and other gates set and that apps trust.
const FORGED: &[(&str, &str)] = &[
    ("x-idgate-principal", "user:boss@example.com"),
    ("x-idgate-email", "boss@example.com"),
    ("x-idgate-sub", "1"),
    ("x-idgate-claims", "e30"),
    (
        "x-goog-authenticated-user-email",
        "accounts.google.com:boss@example.com",
    ),
    ("x-goog-iap-jwt-assertion", "e30.e30.e30"),
    ("x-forwarded-user", "boss"),
    ("x-forwarded-email", "boss@example.com"),
    ("x-auth-request-user", "boss"),
];

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

async fn get(url: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("read the body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("GET {url}: {status} with a body that is not JSON ({e}): {text}")
    });
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_no_forged(echo: &Value, context: &str) {
    for (name, _) in FORGED {
        let seen = header_values(echo, name);
        let ours = name.starts_with("x-idgate-");
        // On an allowed request idgate sets its own x-idgate-* headers;
        // none may carry the client's value.
        assert!(
            seen.iter().all(|v| !FORGED.contains(&(name, v.as_str()))) && (ours || seen.is_empty()),
            "{context}: the upstream saw {name}: {seen:?}"
        );
    }
}

fn assert_denied(r: &Reply, status: u16, reason: &str, context: &str) {
    assert_eq!(r.status, status, "{context}: {}", r.body);
    assert_eq!(r.body["reason"], reason, "{context}: {}", r.body);
    assert!(r.body["error"].is_string(), "{context}: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_class_through_the_proxy() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args([
            "--member",
            "user:alice@example.com",
            "--public-path",
            "/public",
        ])
        .start()
        .await;
    let url = sidecar.url("/app/items?x=1");

    // Allowed: the upstream sees who called, and nothing the client forged.
    let alice = google_token(&kit, "alice@example.com");
    let r = get(&url, Some(&alice), FORGED).await;
    assert_eq!(r.status, 200, "alice: {}", r.body);
    let echo = &r.body;
    assert_eq!(echo["path"], "/app/items");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(
        header_values(echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    assert_eq!(header_values(echo, "x-idgate-email"), ["alice@example.com"]);
    assert_eq!(
        header_values(echo, "x-idgate-sub"),
        [stable_sub("alice@example.com")]
    );
    let segments: Vec<&str> = alice.split('.').collect();
    assert_eq!(header_values(echo, "x-idgate-claims"), [segments[1]]);
    assert_no_forged(echo, "allowed request");
    // --forward-token stripped (the default): header and payload as sent,
    // the signature replaced as Cloud Run does.
    assert_eq!(
        header_values(echo, "authorization"),
        [format!(
            "Bearer {}.{}.SIGNATURE_REMOVED_BY_IDGATE",
            segments[0], segments[1]
        )]
    );

    // A public path: no token needed, and still no forged identity.
    let r = get(&sidecar.url("/public/logo.svg"), None, FORGED).await;
    assert_eq!(r.status, 200, "public path: {}", r.body);
    assert_no_forged(&r.body, "public path");
    for name in [
        "x-idgate-principal",
        "x-idgate-email",
        "x-idgate-sub",
        "x-idgate-claims",
    ] {
        assert!(
            header_values(&r.body, name).is_empty(),
            "public path without a token: the upstream saw {name}"
        );
    }

    let hits = up.hits();

    // Missing token: 401 with a bare Bearer challenge (RFC 6750 §3.1).
    let r = get(&url, None, FORGED).await;
    assert_denied(&r, 401, "missing_token", "no token");
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    // Invalid tokens: 401, invalid_token, the reason in the body.
    let now = idgate_testkit::now_unix();
    let mut expired = google_claims("alice@example.com", AUD);
    expired["iat"] = (now - 7200).into();
    expired["exp"] = (now - 3600).into();
    let other_aud = kit.mint(&google_claims(
        "alice@example.com",
        "https://other-svc.a.run.app",
    ));
    // Same kid, another key: the signature does not verify.
    let impostor = TestKey::generate(kit.active_key().kid());
    let forged_sig = mint(
        &impostor,
        &default_header(&impostor),
        &google_claims("alice@example.com", AUD),
    );
    for (token, reason) in [
        (kit.mint(&expired), "expired"),
        (other_aud, "audience_mismatch"),
        (forged_sig, "bad_signature"),
    ] {
        let r = get(&url, Some(&token), &[]).await;
        assert_denied(&r, 401, reason, reason);
        assert_eq!(
            r.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{reason}"
        );
        let body = r.body.to_string();
        assert!(
            !body.contains(&token) && !body.contains(AUD),
            "{reason}: the body names neither the token nor the audience: {body}"
        );
    }

    // Valid but not in the policy: 403.
    let bob = google_token(&kit, "bob@example.com");
    let r = get(&url, Some(&bob), FORGED).await;
    assert_denied(&r, 403, "not_allowed", "bob");

    assert_eq!(up.hits(), hits, "no denied request reached the upstream");

    let m = |reason: &str| format!("idgate_decisions_total{{reason=\"{reason}\"}}");
    for (reason, n) in [
        // Alice, and the public path (the gate let it through).
        ("allowed", 2.0),
        ("missing_token", 1.0),
        ("expired", 1.0),
        ("audience_mismatch", 1.0),
        ("bad_signature", 1.0),
        ("not_allowed", 1.0),
    ] {
        assert_eq!(sidecar.metric(&m(reason)).await, Some(n), "{reason}");
    }
    let logs = sidecar.stderr();
    assert!(
        !logs.contains(&alice) && !logs.contains(&bob),
        "no token in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_status_codes_and_full_or_no_forwarded_token() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let full = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .args(["--status-codes", "cloud-run", "--forward-token", "full"])
        .start()
        .await;
    let none = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .args(["--forward-token", "none"])
        .start()
        .await;
    let alice = google_token(&kit, "alice@example.com");

    // Cloud Run answers 403, not 401, to a request without a token.
    let r = get(&full.url("/"), None, &[]).await;
    assert_denied(&r, 403, "missing_token", "cloud-run codes, no token");
    let r = get(&full.url("/"), Some("not.a.jwt"), &[]).await;
    assert_eq!(r.status, 401, "cloud-run codes, bad token: {}", r.body);
    let r = get(&none.url("/"), None, &[]).await;
    assert_denied(&r, 401, "missing_token", "rfc6750 codes, no token");

    let r = get(&full.url("/"), Some(&alice), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header_values(&r.body, "authorization"),
        [bearer(&alice)],
        "--forward-token full: the token as sent"
    );
    let r = get(&none.url("/"), Some(&alice), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        header_values(&r.body, "authorization").is_empty(),
        "--forward-token none: no token upstream"
    );
    assert_eq!(
        header_values(&r.body, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
}

const MIB: u64 = 1024 * 1024;

/// 100 MiB up and 100 MiB down pass through while the sidecar's peak
/// resident memory grows by far less: nothing is buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_without_buffering() {
    const SIZE: u64 = 100 * MIB;
    const CHUNK: usize = 64 * 1024;
    const MAX_GROWTH: u64 = 32 * MIB;

    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .start()
        .await;
    let alice = google_token(&kit, "alice@example.com");
    let c = client();

    // Warm up: the connection pools, the token cache, the allocator.
    let r = get(&sidecar.url("/warm"), Some(&alice), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = sidecar.memory();

    let chunk = bytes::Bytes::from(vec![b'u'; CHUNK]);
    let chunks = (SIZE as usize) / CHUNK;
    let body = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let res = c
        .post(sidecar.url("/upload"))
        .header("authorization", bearer(&alice))
        .header("content-length", SIZE)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the echo");
    assert_eq!(echo["body_bytes"], SIZE, "the upstream got every byte");
    let after_upload = sidecar.memory();

    let res = c
        .get(sidecar.url(&format!("/download?bytes={SIZE}")))
        .header("authorization", bearer(&alice))
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);
    let mut received = 0u64;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("the download streams").len() as u64;
    }
    assert_eq!(received, SIZE, "every byte came back");
    let after_download = sidecar.memory();

    let grew = |m: idgate_e2e::Memory| m.peak.saturating_sub(before.peak);
    eprintln!(
        "sidecar memory: before {before:?}, after upload {after_upload:?}, after download {after_download:?}"
    );
    assert!(
        grew(after_upload) < MAX_GROWTH && grew(after_download) < MAX_GROWTH,
        "peak RSS grew by {} MiB (upload) and {} MiB (upload + download) for {} MiB bodies: \
         the proxy buffers (before {before:?}, after upload {after_upload:?}, after download {after_download:?})",
        grew(after_upload) / MIB,
        grew(after_download) / MIB,
        SIZE / MIB
    );
}

/// An upstream that refuses a body on its head alone (a body limit) and
/// closes: the client gets its 413, not a 502, on either runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_early_refusal_of_a_body_reaches_the_client() {
    const SIZE: usize = 8 * MIB as usize;
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let alice = google_token(&kit, "alice@example.com");
    for cpus in [None, Some("0")] {
        let mut serve = Serve::proxy(&up.url(), &kit).args(["--member", "user:alice@example.com"]);
        if let Some(cpus) = cpus {
            serve = serve.cpus(cpus);
        }
        let sidecar = serve.start().await;
        for attempt in 0..3 {
            let (head, body) =
                post_reading_as_it_sends(sidecar.addr(), "/too-large", &alice, SIZE).await;
            assert!(
                head.starts_with("HTTP/1.1 413") && body == "too large",
                "{cpus:?}, attempt {attempt}: {head}{body}\n{}",
                sidecar.report()
            );
        }
    }
}

/// POSTs `size` bytes on a raw connection, reading the answer while it
/// sends: idgate closes a connection whose body it stopped reading, and a
/// client that stops at its first write error, as hyper's does, can miss
/// an answer that arrived before the close. Returns the answer's head and
/// body (by `content-length`).
async fn post_reading_as_it_sends(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    size: usize,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = conn.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {token}\r\n\
         content-length: {size}\r\n\r\n"
    );
    let sending = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 64 << 10];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        // Kept open: only the server closes the connection.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(())
    });
    let mut got = Vec::new();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    return (head, body);
                }
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    return (
                        String::from_utf8_lossy(&got).into_owned(),
                        "<connection ended>".into(),
                    );
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    sending.abort();
    answer
}

/// The first event reaches the client while the upstream is still holding
/// back the rest: it sends them only when the test, having seen event 1,
/// tells it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_as_they_are_sent() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .start()
        .await;
    let alice = google_token(&kit, "alice@example.com");
    let res = client()
        .get(sidecar.url("/sse"))
        .header("authorization", bearer(&alice))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let mut text = String::new();
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while !text.contains("data: event 1\n\n") {
            match stream.next().await {
                Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream"))),
                None => panic!("the stream ended before event 1: {text:?}"),
            }
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "event 1 did not arrive while the upstream held the stream open: the proxy buffers"
    );
    assert!(
        !up.sse_last_sent(),
        "event 1 arrived before the last event was sent"
    );
    up.sse_go_on();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream")));
    }
    for n in 1..=SSE_EVENTS {
        assert!(text.contains(&format!("data: event {n}\n\n")), "{text:?}");
    }
    assert!(up.sse_last_sent());
}

/// A WebSocket handshake made while a connection waits at the cap (so that
/// connections between requests are being closed) is still upgraded: its
/// request is in flight until the `101`, and is not told to close. The
/// tunnel works, and no longer counts toward the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_at_the_connection_cap_is_upgraded() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args([
            "--member",
            "user:alice@example.com",
            "--max-connections",
            "2",
        ])
        .start()
        .await;
    // A connection that has sent nothing holds one place, the WebSocket's
    // the other, and a third waits.
    let connect = || async {
        tokio::net::TcpStream::connect(sidecar.addr())
            .await
            .expect("connect")
    };
    let _silent = connect().await;
    let ws_conn = connect().await;
    let waiting = connect().await;
    sidecar
        .wait_for_log(AT_THE_CONNECTION_CAP, Duration::from_secs(10))
        .await;
    let mut req = format!("ws://{}/ws", sidecar.addr())
        .into_client_request()
        .expect("a request");
    req.headers_mut().insert(
        "authorization",
        bearer(&google_token(&kit, "alice@example.com"))
            .parse()
            .expect("a header value"),
    );
    let (mut ws, res) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, ws_conn),
    )
    .await
    .expect("a handshake in time")
    .expect("the WebSocket handshake at the cap");
    assert_eq!(res.status(), 101);
    assert_eq!(
        next_message(&mut ws).await,
        Message::Text("principal=user:alice@example.com".into())
    );
    // Upgraded, it no longer holds a place: the waiting connection got it,
    // and once that one goes, a plain request is served.
    drop(waiting);
    let after = get(
        &sidecar.url("/after"),
        Some(&google_token(&kit, "alice@example.com")),
        &[],
    )
    .await;
    assert_eq!(after.status, 200, "{}", after.body);
    let msg = Message::Text("still open".into());
    ws.send(msg.clone()).await.expect("send");
    assert_eq!(next_message(&mut ws).await, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .start()
        .await;
    let ws_url = format!("ws://{}/ws", sidecar.addr());
    let alice = google_token(&kit, "alice@example.com");

    let mut req = ws_url.as_str().into_client_request().expect("a request");
    req.headers_mut().insert(
        "authorization",
        bearer(&alice).parse().expect("a header value"),
    );
    req.headers_mut().insert(
        "x-idgate-principal",
        "user:boss@example.com".parse().unwrap(),
    );
    let (mut ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket handshake through idgate");
    assert_eq!(res.status(), 101);
    let hello = next_message(&mut ws).await;
    assert_eq!(
        hello,
        Message::Text("principal=user:alice@example.com".into())
    );
    for msg in [
        Message::Text("hello through idgate".into()),
        Message::Binary(vec![0u8, 1, 2, 255].into()),
        Message::Text("x".repeat(100_000).into()),
    ] {
        ws.send(msg.clone()).await.expect("send");
        let back = next_message(&mut ws).await;
        assert_eq!(back, msg);
    }
    ws.close(None).await.expect("close");

    // Without a token the handshake is refused before the upstream.
    let hits = up.hits();
    let err = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect_err("no token, no WebSocket");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected a 401 answer, got {other}"),
    }
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_allowed_and_denied() {
    let kit = Issuer::start().await;
    let up = GrpcUpstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .start()
        .await;
    let url = sidecar.url("");
    let alice = google_token(&kit, "alice@example.com");
    let bob = google_token(&kit, "bob@example.com");

    let status = health_check(&url, Some(&alice))
        .await
        .expect("alice is allowed");
    assert_eq!(status, tonic_health::ServingStatus::Serving);
    assert_eq!(up.principals(), ["user:alice@example.com"]);

    let err = health_check(&url, None).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "missing_token");
    let err = health_check(&url, Some("e30.e30.e30"))
        .await
        .expect_err("a bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = health_check(&url, Some(&bob))
        .await
        .expect_err("bob is not allowed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "not_allowed");
    assert_eq!(
        up.principals().len(),
        1,
        "denied calls never reached the service"
    );
}

/// With one CPU (a container limit, an affinity mask) `serve` runs a
/// single-threaded runtime: the same requests must work there, HTTP/1.1
/// with a streamed body and h2c alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cpu_serves_http1_streams_and_h2c() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let grpc = GrpcUpstream::start().await;
    let alice = google_token(&kit, "alice@example.com");
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .cpus("0")
        .start()
        .await;
    let runtime = sidecar
        .find_log("async runtime")
        .unwrap_or_else(|| panic!("no runtime log line\n{}", sidecar.report()));
    assert_eq!(runtime["worker_threads"], 1, "{runtime}");

    let r = get(&sidecar.url("/one-cpu"), Some(&alice), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header_values(&r.body, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    let r = get(&sidecar.url("/one-cpu"), None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);

    const SIZE: usize = 8 * MIB as usize;
    let res = client()
        .post(sidecar.url("/upload"))
        .header("authorization", bearer(&alice))
        .body(vec![b'u'; SIZE])
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.expect("the echo");
    assert_eq!(echo["body_bytes"], SIZE as u64);

    let grpc_sidecar = Serve::proxy(&grpc.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .cpus("0")
        .start()
        .await;
    let status = health_check(&grpc_sidecar.url(""), Some(&alice))
        .await
        .expect("alice is allowed over h2c");
    assert_eq!(status, tonic_health::ServingStatus::Serving);
}
