//! The proxy in-process on port 0 against a real upstream on loopback. The
//! gate is left out (or faked) here: these tests are about forwarding.

mod common;

use std::sync::Arc;

use axum::body::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use idgate_sidecar::Body;
use idgate_sidecar::server::Drained;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[tokio::test]
async fn forwards_and_sets_x_forwarded_headers() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/headers?a=1&b=2", sidecar.addr());
    let (status, _, body) = send(
        &client(),
        get_req(
            &url,
            &[("host", "svc.example"), ("x-forwarded-for", "203.0.113.7")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let echo = echoed(&body);
    assert_eq!(echo["uri"], "/headers?a=1&b=2");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        header_values(&echo, "host"),
        ["svc.example"],
        "Host is kept"
    );
    assert_eq!(
        header_values(&echo, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(header_values(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(header_values(&echo, "x-forwarded-host"), ["svc.example"]);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let up = upstream().await;
    let s = settings(Some(&format!("{}/base/", up.url())), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let (status, _, body) = send(
        &client(),
        get_req(&format!("http://{}/headers?q", sidecar.addr()), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed(&body)["uri"], "/base/headers?q");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.strip_header = vec!["x-user".into(), "x-my-*".into()];
    });
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let forged = [
        ("x-idgate-principal", "user:boss@example.com"),
        ("x-idgate-email", "boss@example.com"),
        ("x-idgate-sub", "1"),
        ("x-idgate-claims", "e30"),
        (
            "x-goog-authenticated-user-email",
            "accounts.google.com:boss@example.com",
        ),
        ("x-goog-authenticated-user-id", "1"),
        ("x-goog-iap-jwt-assertion", "a.b.c"),
        ("x-forwarded-user", "boss"),
        ("x-forwarded-email", "boss@example.com"),
        ("x-auth-request-email", "boss@example.com"),
        ("x-user", "boss"),
        ("x-my-role", "admin"),
        // Read as X-Idgate-Email by CGI-style servers.
        ("x_idgate_email", "boss@example.com"),
        ("x_serverless_authorization", "Bearer a.b.c"),
        ("x-innocent", "kept"),
    ];
    let url = format!("http://{}/headers", sidecar.addr());
    let (_, _, body) = send(&client(), get_req(&url, &forged)).await;
    let echo = echoed(&body);
    for (name, _) in &forged[..forged.len() - 1] {
        assert!(
            header_values(&echo, name).is_empty(),
            "{name} reached the upstream: {echo}"
        );
    }
    assert_eq!(header_values(&echo, "x-innocent"), ["kept"]);
    sidecar.shutdown().await;
}

/// A stand-in gate that admits everyone as the caller named in
/// `x-test-user`: enough to see what the sidecar does with an identity.
fn fake_gate() -> Arc<dyn idgate_sidecar::app::GateLayer> {
    fn admit(mut req: http::Request<Body>) -> http::Request<Body> {
        if let Some(email) = req
            .headers()
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        {
            let tag = idgate::IssuerTag {
                name: "google".into(),
                google: true,
                pool: None,
            };
            let claims = serde_json::json!({"sub": "1234", "email": email, "email_verified": true});
            let serde_json::Value::Object(map) = claims else {
                unreachable!()
            };
            let id = idgate::Identity::from_verified_claims(
                &tag,
                "https://svc.example".into(),
                map,
                "eyJzdWIiOiIxMjM0In0".into(),
            );
            req.extensions_mut().insert(id);
        }
        req
    }
    Arc::new(tower::util::MapRequestLayer::new(
        admit as fn(http::Request<Body>) -> http::Request<Body>,
    ))
}

#[tokio::test]
async fn identity_headers_and_stripped_token_reach_the_upstream() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, fake_gate()).await;
    let url = format!("http://{}/headers", sidecar.addr());
    let (_, _, body) = send(
        &client(),
        get_req(
            &url,
            &[
                ("x-test-user", "alice@example.com"),
                ("authorization", "Bearer aGVhZA.cGF5bG9hZA.c2lnbmF0dXJl"),
                // Forged, and named in Connection to get ours dropped.
                ("x-idgate-principal", "user:boss@example.com"),
                ("connection", "x-idgate-principal, x-idgate-email"),
            ],
        ),
    )
    .await;
    let echo = echoed(&body);
    assert_eq!(
        header_values(&echo, "x-idgate-principal"),
        ["user:alice@example.com"]
    );
    assert_eq!(
        header_values(&echo, "x-idgate-email"),
        ["alice@example.com"]
    );
    assert_eq!(header_values(&echo, "x-idgate-sub"), ["1234"]);
    assert_eq!(
        header_values(&echo, "x-idgate-claims"),
        ["eyJzdWIiOiIxMjM0In0"]
    );
    assert_eq!(
        header_values(&echo, "authorization"),
        ["Bearer aGVhZA.cGF5bG9hZA.SIGNATURE_REMOVED_BY_IDGATE"]
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn forward_token_none_and_full() {
    let up = upstream().await;
    for (mode, expected) in [
        ("none", None),
        ("full", Some("Bearer aGVhZA.cGF5bG9hZA.c2lnbmF0dXJl")),
    ] {
        let s = settings(Some(&up.url()), |a| a.forward_token = Some(mode.into()));
        let (sidecar, _) = sidecar(&s, fake_gate()).await;
        let url = format!("http://{}/headers", sidecar.addr());
        let (_, _, body) = send(
            &client(),
            get_req(
                &url,
                &[
                    ("x-test-user", "alice@example.com"),
                    (
                        "x-serverless-authorization",
                        "Bearer aGVhZA.cGF5bG9hZA.c2lnbmF0dXJl",
                    ),
                    ("authorization", "Basic YXBwOm93bg=="),
                ],
            ),
        )
        .await;
        let echo = echoed(&body);
        assert_eq!(
            header_values(&echo, "x-serverless-authorization")
                .first()
                .map(String::as_str),
            expected,
            "--forward-token {mode}"
        );
        assert_eq!(
            header_values(&echo, "authorization"),
            ["Basic YXBwOm93bg=="],
            "the app's own Authorization stays (--forward-token {mode})"
        );
        sidecar.shutdown().await;
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/headers", sidecar.addr());
    let (_, _, body) = send(
        &client(),
        get_req(
            &url,
            &[
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic eDp5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
                ("x-kept", "1"),
            ],
        ),
    )
    .await;
    let echo = echoed(&body);
    for name in [
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
        "upgrade",
        "http2-settings",
    ] {
        assert!(
            header_values(&echo, name).is_empty(),
            "{name} was forwarded: {echo}"
        );
    }
    assert_eq!(header_values(&echo, "te"), ["trailers"]);
    assert_eq!(header_values(&echo, "x-kept"), ["1"]);

    let (_, direct, _) = send(&client(), get_req(&format!("{}/hop", up.url()), &[])).await;
    assert!(
        direct.contains_key("x-resp-hop"),
        "the upstream does send them: {direct:?}"
    );
    let (status, headers, _) = send(
        &client(),
        get_req(&format!("http://{}/hop", sidecar.addr()), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(name), "{name} came back: {headers:?}");
    }
    assert_eq!(headers["x-kept"], "1");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn response_bodies_stream() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    // HTTP/1.1, and HTTP/2, whose answers the proxy joins into larger
    // frames: only chunks already there, so none waits for the next.
    for (version, client) in [("HTTP/1.1", client()), ("HTTP/2", h2c_client())] {
        let res = within(
            "response headers",
            client.request(get_req(
                &format!("http://{}/stream-down", sidecar.addr()),
                &[],
            )),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{version}");
        let mut body = res.into_body();
        // The first chunk arrives while the upstream still holds the second.
        let first = within("the first chunk", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.into_data().unwrap(),
            Bytes::from_static(b"first;"),
            "{version}"
        );
        up.state.release_down.notify_one();
        let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
        assert_eq!(rest, Bytes::from_static(b"second"), "{version}");
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn h2_answers_in_many_chunks_arrive_whole_in_order_with_their_trailers() {
    // The upstream sends 1 KiB and 8 KiB chunks as fast as it can: the
    // proxy reads them ahead and joins those it finds ready.
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    for (n, size) in [(300, 1024), (128, 8192), (3, 20_000)] {
        let res = within(
            "response headers",
            h2c_client().request(get_req(
                &format!("http://{}/chunks/{n}/{size}", sidecar.addr()),
                &[],
            )),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let collected = within("the body", res.into_body().collect()).await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        assert_eq!(body.len(), n * size, "{n} chunks of {size}");
        for (i, chunk) in body.chunks(size).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == (i % 251) as u8),
                "chunk {i} of {n} ({size} bytes) is chunk {i}'s bytes"
            );
        }
        let trailers = trailers.expect("the trailers follow the data");
        assert_eq!(trailers["x-chunks"], n.to_string().as_str());
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn request_bodies_stream() {
    let up = upstream().await;
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    *up.state.up_frames.lock().unwrap() = Some(frames_tx);
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let req = http::Request::post(format!("http://{}/stream-up", sidecar.addr()))
        .body(body)
        .unwrap();
    let c = client();
    let response = tokio::spawn(async move { send(&c, req).await });

    tx.send(Ok(Bytes::from_static(b"part one;"))).await.unwrap();
    // The upstream sees the first part while the client has not finished.
    let got = within("the first part upstream", frames.recv())
        .await
        .unwrap();
    assert_eq!(got, Bytes::from_static(b"part one;"));
    tx.send(Ok(Bytes::from_static(b"part two"))).await.unwrap();
    drop(tx);
    let (status, _, body) = within("the response", response).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Bytes::from_static(b"17"));
    sidecar.shutdown().await;
}

/// A POST of `size` bytes, streamed in 16 KiB parts as fast as the proxy
/// takes them.
fn streamed_post(url: &str, size: usize) -> http::Request<Body> {
    let chunk = Bytes::from(vec![b'x'; 16 << 10]);
    let n = size.div_ceil(chunk.len());
    let parts =
        futures_util::stream::iter(std::iter::repeat_n(chunk, n).map(Ok::<_, std::io::Error>));
    http::Request::post(url)
        .body(Body::from_stream(parts))
        .unwrap()
}

/// Many servers answer before reading a body they do not want (a 413, a
/// 401) and close with the rest unsent: the proxy's next write fails, and
/// the answer waits in the socket. The client gets that answer, not a 502.
#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_body_is_passed_on() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, metrics) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/early", sidecar.addr());
    // Over HTTP/1.1, at most what idgate reads on of a body it no longer
    // wants (LINGER_BYTES): past that it closes the client's connection,
    // and hyper's client, which stops at its first write error, could miss
    // the answer. The end-to-end test sends 8 MiB from a raw client.
    let sizes = |h1: bool| {
        [1usize << 10, 64 << 10, 512 << 10, 4 << 20]
            .into_iter()
            .filter(move |&n| !h1 || n <= idgate_sidecar::server::LINGER_BYTES as usize / 2)
    };
    let tries = sizes(true)
        .map(|n| ("h1", client(), n))
        .chain(sizes(false).map(|n| ("h2c", h2c_client(), n)));
    for (name, c, size) in tries {
        let (status, _, body) = send(&c, streamed_post(&url, size)).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"early"[..]),
            "{name}, {size} bytes: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let text = assert_upstream_results(&metrics, "ok", 7);
    assert!(!text.contains("upstream_error"), "{text}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_502_at_once() {
    // It reads part of the head and closes, the body still coming: the
    // proxy's write fails and nothing is there to read.
    let (closing, server) = raw_upstream(|mut conn| async move {
        let mut some = [0u8; 16];
        let _ = conn.read(&mut some).await;
    })
    .await;
    let s = settings(Some(&format!("http://{closing}")), |a| {
        // Far past the test's deadline: a held write would show as a hang.
        a.request_timeout = Some("60s".into());
    });
    let (sidecar, metrics) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/upload", sidecar.addr());
    for size in [64 << 10, 4 << 20] {
        let (status, _, body) = send(&client(), streamed_post(&url, size)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{size} bytes");
        assert_eq!(
            echoed(&body),
            serde_json::json!({"error": "bad_gateway", "reason": "upstream_error"})
        );
    }
    assert_upstream_results(&metrics, "upstream_error", 2);
    sidecar.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn h2c_requests_go_upstream_as_h2c() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let (status, _, body) = send(
        &h2c_client(),
        get_req(
            &format!("http://{}/headers", sidecar.addr()),
            &[("te", "trailers"), ("content-type", "application/grpc")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let echo = echoed(&body);
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(header_values(&echo, "te"), ["trailers"]);
    assert_eq!(
        header_values(&echo, "x-forwarded-host"),
        [sidecar.addr().to_string()]
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn h2c_request_trailers_are_not_passed_on() {
    // A client's trailers could carry identity headers past every header
    // rule; gRPC sends none, so none go upstream.
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let with_trailers = |base: String| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "x-idgate-principal",
            "user:boss@example.com".parse().unwrap(),
        );
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"x"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]);
        http::Request::post(format!("{base}/trailers"))
            .body(idgate_sidecar::Body::new(http_body_util::StreamBody::new(
                frames,
            )))
            .unwrap()
    };
    let (status, _, body) = send(&h2c_client(), with_trailers(up.url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        Bytes::from_static(br#"["x-idgate-principal"]"#),
        "sent directly"
    );
    let (status, _, body) = send(
        &h2c_client(),
        with_trailers(format!("http://{}", sidecar.addr())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Bytes::from_static(b"[]"), "through the proxy");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = refused_addr().await;
    let s = settings(Some(&format!("http://{dead}")), |_| {});
    let (sidecar, metrics) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/x", sidecar.addr());
    let (status, headers, body) = send(&client(), get_req(&url, &[])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        echoed(&body),
        serde_json::json!({"error": "bad_gateway", "reason": "upstream_unreachable"})
    );

    // Media types compare case-insensitively, as the gate compares them.
    for content_type in ["application/grpc", "Application/gRPC+proto"] {
        let (status, headers, _) = send(
            &h2c_client(),
            get_req(&url, &[("content-type", content_type)]),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{content_type}: gRPC errors travel in grpc-status"
        );
        assert_eq!(headers["grpc-status"], "14", "{content_type}");
    }

    assert_upstream_results(&metrics, "upstream_unreachable", 3);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.request_timeout = Some("500ms".into());
    });
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/slow", sidecar.addr());
    let (status, _, body) = send(&client(), get_req(&url, &[])).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(echoed(&body), upstream_timeout());
    // Giving up also cancels the upstream request.
    within(
        "the upstream handler to be dropped",
        up.state.dropped.notified(),
    )
    .await;

    // With a request body, sent whole: still the upstream's timeout.
    let (tx, body) = channel_body();
    let req = http::Request::post(&url).body(body).unwrap();
    let c = client();
    let response = tokio::spawn(async move { send(&c, req).await });
    tx.send(Ok(Bytes::from_static(b"all of it"))).await.unwrap();
    drop(tx);
    let (status, _, body) = within("the answer", response).await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(echoed(&body), upstream_timeout());
    sidecar.shutdown().await;
}

fn upstream_timeout() -> serde_json::Value {
    serde_json::json!({"error": "gateway_timeout", "reason": "upstream_timeout"})
}

/// Fails unless the metrics count `n` upstream requests ended with `result`;
/// returns the metrics' text.
fn assert_upstream_results(
    metrics: &idgate_sidecar::metrics::Metrics,
    result: &str,
    n: usize,
) -> String {
    let text = metrics.encode();
    let line = format!("idgate_upstream_duration_seconds_count{{result=\"{result}\"}} {n}\n");
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    text
}

/// An upstream that misbehaves: a listener on loopback that hands each
/// connection it accepts to `each`, in a task of its own. Abort the
/// returned task to stop it.
async fn raw_upstream<F, Fut>(each: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(each(conn));
        }
    });
    (addr, task)
}

/// A request body fed from a channel: the test sends its parts, and the
/// body stalls while the sender is kept and sends nothing.
fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (tx, body)
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_not_the_upstreams_504() {
    let up = upstream().await;
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    *up.state.up_frames.lock().unwrap() = Some(frames_tx);
    let s = settings(Some(&up.url()), |a| {
        a.request_timeout = Some("1s".into());
    });
    let (sidecar, metrics) = sidecar(&s, no_gate()).await;
    let url = format!("http://{}/stream-up", sidecar.addr());

    // HTTP/1.1, then gRPC over h2c: the upstream reads the first part and
    // waits for the rest, which never comes.
    for (c, content_type) in [(client(), "text/plain"), (h2c_client(), "application/grpc")] {
        let (tx, body) = channel_body();
        let req = http::Request::post(&url)
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        let response = tokio::spawn(async move { send(&c, req).await });
        tx.send(Ok(Bytes::from_static(b"part one;"))).await.unwrap();
        let got = within("the first part upstream", frames.recv()).await;
        assert_eq!(got, Some(Bytes::from_static(b"part one;")));
        let (status, headers, body) = within("the answer", response).await.unwrap();
        if content_type == "application/grpc" {
            assert_eq!(status, StatusCode::OK, "gRPC errors travel in grpc-status");
            assert_eq!(headers["grpc-status"], "4");
            assert_eq!(headers["grpc-message"], "request_body_timeout");
        } else {
            assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
            assert_eq!(
                echoed(&body),
                serde_json::json!({"error": "request_timeout", "reason": "request_body_timeout"})
            );
        }
        drop(tx);
    }
    let text = assert_upstream_results(&metrics, "request_body_timeout", 2);
    assert!(!text.contains("upstream_timeout"), "{text}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_504() {
    // It accepts and never reads: the proxy stops taking the client's body
    // once the sockets between them are full, so it is the upstream that
    // holds the request up, though the body is unfinished.
    let (silent, held) = raw_upstream(|conn| async move {
        let _kept = conn;
        std::future::pending::<()>().await;
    })
    .await;
    let s = settings(Some(&format!("http://{silent}")), |a| {
        // Long enough for the sockets to fill on a busy machine first.
        a.request_timeout = Some("2s".into());
    });
    let (sidecar, metrics) = sidecar(&s, no_gate()).await;
    // 256 MiB offered, far more than loopback buffers hold, always ready.
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let endless =
        futures_util::stream::iter(std::iter::repeat_n(chunk, 256).map(Ok::<_, std::io::Error>));
    let req = http::Request::post(format!("http://{}/upload", sidecar.addr()))
        .body(Body::from_stream(endless))
        .unwrap();
    let res = within("the answer", client().request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = within("the body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(echoed(&body), upstream_timeout());
    assert_upstream_results(&metrics, "upstream_timeout", 1);
    sidecar.shutdown().await;
    held.abort();
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    within("the upstream to start", up.state.started.notified()).await;
    drop(conn);
    within(
        "the upstream request to be cancelled",
        up.state.dropped.notified(),
    )
    .await;
    sidecar.shutdown().await;
}

/// Reads an HTTP/1.1 response head from a raw connection.

#[tokio::test]
async fn only_websocket_upgrades_are_passed_on() {
    // An upstream that took `Upgrade: h2c` would get a tunnel of HTTP/2
    // requests the gate never sees: the proxy drops the upgrade, and the
    // upstream answers the request as a plain one.
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let (head, body) = raw_exchange(
        sidecar.addr(),
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let echo = echoed(&body);
    for name in ["upgrade", "http2-settings"] {
        assert!(
            header_values(&echo, name).is_empty(),
            "{name} was forwarded: {echo}"
        );
    }
}

/// Requests refused before the gate, each with 400 and its reason:
/// - two `Host` headers;
/// - a request target without a path (authority-form, `*`): the gate judges
///   the path the upstream gets, and `GET host:port` would be judged as the
///   path "" and reach the upstream as `/`;
/// - a method in lower case: a condition on `request.method` reads it as
///   written, frameworks that upper-case it as the standard one.
#[tokio::test]
async fn requests_the_gate_cannot_judge_as_the_upstream_reads_them_are_refused() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    for (request, reason) in [
        (
            &b"GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
            "repeated_host",
        ),
        (
            b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "invalid_uri",
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_uri"),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "invalid_uri",
        ),
        (
            b"delete /headers HTTP/1.1\r\nHost: x\r\n\r\n",
            "invalid_method",
        ),
    ] {
        let shown = String::from_utf8_lossy(request);
        let (head, body) = raw_exchange(sidecar.addr(), request).await;
        assert!(head.starts_with("http/1.1 400"), "{shown}: {head}");
        // idgate's answer, not the upstream's.
        assert_eq!(echoed(&body)["reason"], reason, "{shown}");
    }
    // Absolute-form has a path: judged and forwarded as that path.
    let (head, body) = raw_exchange(
        sidecar.addr(),
        b"GET http://x/headers?q HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(echoed(&body)["uri"], "/headers?q");
    // Without a path it is `/`, judged and forwarded as that (not as an
    // empty request target, which the upstream would refuse).
    for (request, uri) in [
        (&b"GET http://x HTTP/1.1\r\nHost: x\r\n\r\n"[..], "/"),
        (b"GET http://x?q HTTP/1.1\r\nHost: x\r\n\r\n", "/?q"),
    ] {
        let (head, body) = raw_exchange(sidecar.addr(), request).await;
        assert!(head.starts_with("http/1.1 200"), "{uri}: {head}");
        assert_eq!(echoed(&body)["uri"], uri);
    }
}

/// A request head over 64 KiB is refused (431) rather than buffered: each
/// slow client could otherwise hold hyper's default of about 400 KiB.
#[tokio::test]
async fn a_request_head_over_64_kib_is_refused() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let head = |kib: usize| {
        let filler = "a".repeat(1024);
        let mut r = String::from("GET /headers HTTP/1.1\r\nHost: x\r\n");
        for i in 0..kib {
            r.push_str(&format!("x-filler-{i}: {filler}\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    let (answer, _) = raw_exchange(sidecar.addr(), head(40).as_bytes()).await;
    assert!(answer.starts_with("http/1.1 200"), "40 KiB: {answer}");
    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    // The server may answer and close before the whole head is written.
    let _ = conn.write_all(head(80).as_bytes()).await;
    let answer = read_head(&mut conn).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 431"), "80 KiB: {answer}");
}

/// Sends `request` as written on a new connection; the answer's head (in
/// lower case) and its `Content-Length` body.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, Bytes) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    read_response(&mut conn).await
}

#[tokio::test]
async fn websocket_upgrade_echoes() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut conn).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    // A masked text frame, as a client must send.
    let payload = b"hello through idgate";
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    conn.write_all(&frame).await.unwrap();

    let mut header = [0u8; 2];
    within("the echo", conn.read_exact(&mut header))
        .await
        .unwrap();
    assert_eq!(header[0], 0x81, "a final text frame");
    assert_eq!(
        usize::from(header[1]),
        payload.len(),
        "unmasked, same length"
    );
    let mut echoed = vec![0u8; payload.len()];
    within("the echo payload", conn.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, payload);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let (addr, admin) = (sidecar.addr(), sidecar.admin_addr());

    let c = client();
    let in_flight =
        tokio::spawn(async move { send(&c, get_req(&format!("http://{addr}/hold"), &[])).await });
    within("the upstream to start", up.state.started.notified()).await;

    let shutdown = tokio::spawn(sidecar.shutdown());
    eventually("the listener to close", || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    let (status, _, _) = send(&client(), get_req(&format!("http://{admin}/readyz"), &[])).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while draining"
    );

    up.state.release_hold.notify_one();
    let (status, _, body) = within("the in-flight response", in_flight).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Bytes::from_static(b"done"));
    assert_eq!(within("shutdown", shutdown).await.unwrap(), Drained::Clean);
}

/// Connections idle in keep-alive when the shutdown starts are woken and
/// closed at once: the drain does not wait out the grace period for them.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        // Longer than `within` waits: a connection left open would show.
        a.shutdown_grace = Some("60s".into());
    });
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(sidecar.addr()).await.unwrap();
        conn.write_all(b"GET /headers HTTP/1.1\r\nHost: idle.test\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        idle.push(conn);
    }
    assert_eq!(within("shutdown", sidecar.shutdown()).await, Drained::Clean);
    for mut conn in idle {
        // What is left of the body, then the end of the stream.
        let mut rest = Vec::new();
        within("the connection to close", conn.read_to_end(&mut rest))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let up = upstream().await;
    let s = settings(Some(&up.url()), |a| {
        a.shutdown_grace = Some("200ms".into());
    });
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let addr = sidecar.addr();
    let c = client();
    let in_flight = tokio::spawn(async move {
        c.request(get_req(&format!("http://{addr}/hold"), &[]))
            .await
    });
    within("the upstream to start", up.state.started.notified()).await;
    let drained = within("shutdown", sidecar.shutdown()).await;
    assert_eq!(drained, Drained::TimedOut(1));
    let result = within("the cut-off request", in_flight).await.unwrap();
    assert!(result.is_err(), "the request was cut off: {result:?}");
}

/// An HTTP/2 proxy on port 0 in front of `up`, whose clients may leave a
/// response untaken for `stall`.
async fn h2_proxy(up: &Upstream, stall: std::time::Duration) -> std::net::SocketAddr {
    let proxy = idgate_sidecar::proxy::Proxy::new(
        idgate_sidecar::config::Upstream {
            authority: up.addr.to_string().parse().unwrap(),
            base_path: String::new(),
        },
        DEADLINE,
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(idgate_sidecar::server::serve(
        "test",
        listener,
        tower::util::BoxCloneSyncService::new(proxy),
        std::future::pending(),
        DEADLINE,
        idgate_sidecar::server::Limits {
            http2_idle: DEADLINE,
            write_stall: stall,
            max_connections: None,
        },
    ));
    addr
}

/// An h2 client whose streams start with no flow-control window; its
/// connection runs in the task returned, which opens the windows when
/// `open` is sent, and ends with the connection.
async fn shut_window_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let (open, opened) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = &mut connection => return,
            Ok(()) = opened => {}
        }
        connection.set_initial_window_size(1 << 20).unwrap();
        let _ = connection.await;
    });
    (client, open, task)
}

/// Sends `n` requests for `path` on `client`; their bodies, headers in.
async fn held_streams(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> Vec<h2::RecvStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        *client = within("a stream", client.clone().ready()).await.unwrap();
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        let (res, _) = client.send_request(req, true).unwrap();
        let res = within("response headers", res).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        held.push(res.into_body());
    }
    held
}

/// Waits until `n` of the upstream's `/endless` answers have been dropped
/// (their streams reset).
async fn upstream_streams_reset(up: &Upstream, n: usize) {
    let dropped = &up.state.endless_dropped;
    eventually("the upstream streams to be reset", || async {
        (dropped.load(std::sync::atomic::Ordering::SeqCst) == n).then_some(())
    })
    .await;
}

/// All h2c callers share one upstream connection. A client that leaves its
/// streams' windows shut takes nothing of their answers, and what the
/// upstream sent for them stays in that connection's window: with hyper's
/// defaults (2 MiB a stream, 5 MiB in all), three such streams stopped
/// every other HTTP/2 answer until the stall sweep cut them. Each upstream
/// stream now holds at most 256 KiB of a 32 MiB window: twenty such
/// streams leave the others served, with no sweep (the default 60 s limit).
#[tokio::test]
async fn h2_callers_that_take_nothing_do_not_stall_the_others() {
    let up = upstream().await;
    let addr = h2_proxy(&up, idgate_sidecar::server::WRITE_STALL_TIMEOUT).await;
    let (mut stalled, _open, _conn) = shut_window_client(addr).await;
    let _held = held_streams(&mut stalled, addr, "/endless", 20).await;
    let (status, _, body) = within(
        "another caller's answer",
        send(
            &h2c_client(),
            get_req(&format!("http://{addr}/bytes/1048576"), &[]),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 1_048_576);
    assert_eq!(
        up.state
            .endless_dropped
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a stream was cut before the limit"
    );
}

/// A stream whose client has taken nothing for the write-stall limit (2 s
/// here) is cut: its upstream stream is reset at once, and the client's
/// ends in a reset once it makes room (within the limit again, else it
/// would lose its connection: the next test).
#[tokio::test]
async fn an_h2_stream_whose_client_takes_nothing_is_cut() {
    let up = upstream().await;
    let addr = h2_proxy(&up, std::time::Duration::from_secs(2)).await;
    let (mut stalled, open, _conn) = shut_window_client(addr).await;
    let held = held_streams(&mut stalled, addr, "/endless", 3).await;
    upstream_streams_reset(&up, 3).await;

    // Each of the client's streams ends in a reset: never an answer that
    // ends as if whole. (Read side by side, so that no stream's unread
    // data holds the connection's window.)
    open.send(()).unwrap();
    let ends = held.into_iter().map(|mut body| async move {
        while let Some(frame) = body.data().await {
            match frame {
                Ok(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Err(e) => return Some(e),
            }
        }
        None
    });
    for end in within("the streams' ends", futures_util::future::join_all(ends)).await {
        let e = end.expect("a cut stream ended as if whole");
        assert!(e.is_reset(), "{e}");
    }
}

/// A client that never makes room on a stream it was cut from would hold
/// its connection for ever (it answers pings, and a stream is open): it
/// loses it a write-stall limit after the cut (2 s here), not at the cut.
#[tokio::test]
async fn an_h2_client_that_holds_a_cut_stream_loses_its_connection() {
    let up = upstream().await;
    let addr = h2_proxy(&up, std::time::Duration::from_secs(2)).await;
    let (mut stalled, _open, conn) = shut_window_client(addr).await;
    let _held = held_streams(&mut stalled, addr, "/endless", 1).await;
    upstream_streams_reset(&up, 1).await;
    assert!(!conn.is_finished(), "the connection was closed at the cut");
    within("the connection to be closed", conn).await.unwrap();
}

/// A raw client's POST of `size` bytes to `path`, sent as fast as the
/// connection takes it and followed on the same connection by `then`;
/// returns the read side, and the task writing, kept open (only the
/// server closes the connection).
async fn post_then(
    addr: std::net::SocketAddr,
    path: &str,
    size: usize,
    then: &'static [u8],
) -> (tokio::net::tcp::OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = conn.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {size}\r\n\r\n");
    let sending = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 << 10];
        let mut sent = wr.write_all(head.as_bytes()).await;
        let mut left = size;
        while left > 0 && sent.is_ok() {
            let n = left.min(chunk.len());
            sent = wr.write_all(&chunk[..n]).await;
            left -= n;
        }
        if sent.is_ok() {
            let _ = wr.write_all(then).await;
        }
        std::future::pending::<()>().await;
    });
    (rd, sending)
}

#[tokio::test]
async fn an_upstream_that_answers_early_then_stops_reading_does_not_hold_the_client() {
    // It answers on the head, keeps the connection, and reads nothing
    // more: the body stops between them once the sockets are full. The
    // exchange, with the answer gone out, is given up once it stands
    // still; the client's connection is not held until the pool's bound
    // on finishing an exchange (90 s).
    let (stuck, server) = raw_upstream(|mut conn| async move {
        read_head(&mut conn).await;
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig";
        conn.write_all(answer).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let s = settings(Some(&format!("http://{stuck}")), |a| {
        // Far past the test's deadline, as is the 90 s bound.
        a.request_timeout = Some("60s".into());
    });
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    // Far more than the sockets between them hold, then a second request.
    let (mut rd, sending) = post_then(
        sidecar.addr(),
        "/upload",
        64 << 20,
        b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut rd).await;
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert_eq!(body, "big");
    let rest = assert_closes(&mut rd).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    sending.abort();
    sidecar.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn an_upstream_that_answers_early_and_reads_on_gets_the_whole_body() {
    // It answers on the head, then reads the body in bursts of 8 MiB with
    // pauses between them: the exchange stands still during each pause,
    // but moves again, and is not given up.
    let size: usize = 64 << 20;
    let (counted_tx, mut counted) = mpsc::unbounded_channel();
    let (reading, server) = raw_upstream(move |mut conn| {
        let counted = counted_tx.clone();
        async move {
            read_head(&mut conn).await;
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let mut buf = vec![0u8; 64 << 10];
            let (mut read, mut burst) = (0, 0);
            while read < size {
                if burst >= 8 << 20 {
                    // Well under the 2 s an exchange may stand still, and
                    // 4 s in all, the exchange lasting most of it (the
                    // sockets between them hold a few MiB): it is standing
                    // still that counts, not the time since the answer.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    burst = 0;
                }
                match conn.read(&mut buf).await {
                    Ok(n @ 1..) => {
                        read += n;
                        burst += n;
                    }
                    _ => break,
                }
            }
            let _ = counted.send(read);
        }
    })
    .await;
    let s = settings(Some(&format!("http://{reading}")), |_| {});
    let (sidecar, _) = sidecar(&s, no_gate()).await;
    let (rd, sending) = post_then(sidecar.addr(), "/upload", size, b"").await;
    // Longer than the usual deadline: the pauses alone take 4 s.
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), counted.recv())
        .await
        .expect("the upstream to read the body within 30 s");
    assert_eq!(read, Some(size));
    drop(rd);
    sending.abort();
    sidecar.shutdown().await;
    server.abort();
}
