//! The real binary's life: settings refused before anything is bound,
//! startup while the key endpoint is down, and SIGTERM draining a request
//! in flight and WebSocket tunnels.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use idgate_e2e::*;
use idgate_testkit::{Failure, Issuer};
use serde_json::Value;

async fn get(url: &str, token: &str) -> (u16, http::HeaderMap, String) {
    let res = client()
        .get(url)
        .header("authorization", bearer(token))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.expect("the body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let mut sidecar = Serve::proxy(&up.url(), &kit)
        .args([
            "--member",
            "user:alice@example.com",
            "--shutdown-grace",
            "60s",
        ])
        .start()
        .await;
    let addr = sidecar.addr();
    let alice = google_token(&kit, "alice@example.com");

    let in_flight = tokio::spawn({
        let (url, alice) = (sidecar.url("/slow"), alice.clone());
        async move { get(&url, &alice).await }
    });
    tokio::time::timeout(Duration::from_secs(20), up.slow_arrived())
        .await
        .expect("the slow request to reach the upstream");

    sidecar.signal("TERM");
    sidecar
        .wait_for_log(
            "shutting down: no longer accepting, draining in-flight requests",
            Duration::from_secs(20),
        )
        .await;
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("a new connection after SIGTERM failed otherwise than refused: {e}"),
        Ok(_) => panic!("a new connection after SIGTERM was accepted"),
    }
    assert_eq!(
        sidecar.readyz().await,
        503,
        "/readyz says not ready while draining"
    );
    assert!(
        !in_flight.is_finished(),
        "the request in flight is still waiting on the upstream"
    );

    up.release_slow();
    let (status, _, body) = in_flight.await.expect("the request task");
    assert_eq!(status, 200, "the request in flight completes: {body}");
    assert_eq!(body, "slow answer\n");

    let exit = sidecar.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    sidecar
        .wait_for_log("stopped", Duration::from_secs(5))
        .await;
    let drained = sidecar
        .json_logs()
        .into_iter()
        .find(|v| v["message"] == "drained" && v["server"] == "gate");
    assert!(
        drained.is_some(),
        "the gate drained within the grace period"
    );
    assert!(port_is_free(addr));
}

/// SIGTERM with WebSocket tunnels open: they go on through the grace period
/// (a tunnel is no request in flight, so the server's own drain finishes at
/// once), the process exits as soon as the last one closes, and one still
/// open when the grace ends is closed, both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_websocket_tunnels_finish_within_the_grace_then_closes_them() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let alice = google_token(&kit, "alice@example.com");
    let echo = |text: &str| Message::Text(text.into());
    // The first tunnel shows it is served after SIGTERM, with a grace no
    // loaded machine runs out; the second only that the grace ends it.
    for (grace, closes_itself) in [("60s", true), ("1s", false)] {
        let mut sidecar = Serve::proxy(&up.url(), &kit)
            .args([
                "--member",
                "user:alice@example.com",
                "--shutdown-grace",
                grace,
            ])
            .start()
            .await;
        let addr = sidecar.addr();
        let (mut ws, hello) = open_websocket(addr, &alice).await;
        assert_eq!(hello, echo("principal=user:alice@example.com"));

        sidecar.signal("TERM");
        sidecar
            .wait_for_log(
                "waiting for WebSocket tunnels to close",
                Duration::from_secs(20),
            )
            .await;
        if closes_itself {
            assert!(
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err(),
                "no new connection is accepted while the tunnels drain"
            );
            ws.send(echo("after SIGTERM")).await.expect("send");
            assert_eq!(next_message(&mut ws).await, echo("after SIGTERM"));
            assert!(
                sidecar.try_exit().is_none()
                    && sidecar.find_log("WebSocket tunnels closed").is_none(),
                "the process waits for the tunnel"
            );
            // The closing handshake, then the client's socket closes.
            ws.close(None).await.expect("close");
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(10), ws.next()).await
            {}
            drop(ws);
            let exit = sidecar.wait_exit(Duration::from_secs(30)).await;
            assert_eq!(exit.code(), Some(0), "exit status {exit}");
            sidecar
                .wait_for_log("WebSocket tunnels closed", Duration::from_secs(5))
                .await;
            sidecar
                .wait_for_log("stopped", Duration::from_secs(5))
                .await;
        } else {
            let exit = sidecar.wait_exit(Duration::from_secs(30)).await;
            assert_eq!(exit.code(), Some(0), "exit status {exit}");
            sidecar
                .wait_for_log(
                    "grace period over with WebSocket tunnels open; closing them",
                    Duration::from_secs(5),
                )
                .await;
            sidecar
                .wait_for_log("stopped with requests cut short", Duration::from_secs(5))
                .await;
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(None | Some(Err(_))) => {}
                Ok(Some(Ok(Message::Close(_)))) => {}
                Ok(Some(Ok(other))) => panic!("a message from a cut tunnel: {other:?}"),
                Err(_) => panic!("the cut tunnel's client side is still open after 10 s"),
            }
        }
        assert!(port_is_free(addr));
    }
}

/// Each kind of bad setting alone, then all at once: exit 2, every problem
/// named on stderr, nothing on stdout, and neither port bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_exit_2_naming_every_problem_and_bind_nothing() {
    const UNKNOWN_KEY: &str = "config.toml: unknown key `colour`";
    const NO_AUDIENCE: &str = "no audience";
    const BAD_MEMBER: &str = "--member: invalid value \"bob@example.com\"";
    const UNREADABLE_POLICY: &str = "--policy: cannot read policy-dir";
    const BAD_DURATION: &str = "--shutdown-grace: invalid value \"10 parsecs\"";

    struct Case {
        name: &'static str,
        config: &'static str,
        args: &'static [&'static str],
        problems: &'static [&'static str],
    }
    let good_config =
        "audience = \"https://svc-e2e.a.run.app\"\nupstream = \"http://127.0.0.1:9\"\n";
    let cases = [
        Case {
            name: "unknown TOML key",
            config: "colour = \"blue\"\n",
            args: &["--member", "allUsers"],
            problems: &[UNKNOWN_KEY],
        },
        Case {
            name: "no audience",
            config: "upstream = \"http://127.0.0.1:9\"\n",
            args: &["--member", "allUsers"],
            problems: &[NO_AUDIENCE],
        },
        Case {
            name: "bad member",
            config: "",
            args: &["--member", "bob@example.com"],
            problems: &[BAD_MEMBER],
        },
        Case {
            name: "unreadable policy file",
            config: "",
            args: &["--policy", "policy-dir"],
            problems: &[UNREADABLE_POLICY],
        },
        Case {
            name: "bad duration",
            config: "",
            args: &["--member", "allUsers", "--shutdown-grace", "10 parsecs"],
            problems: &[BAD_DURATION],
        },
        Case {
            name: "all of them at once",
            config: "upstream = \"http://127.0.0.1:9\"\ncolour = \"blue\"\n",
            args: &[
                "--member",
                "bob@example.com",
                "--policy",
                "policy-dir",
                "--shutdown-grace",
                "10 parsecs",
            ],
            problems: &[
                UNKNOWN_KEY,
                NO_AUDIENCE,
                BAD_MEMBER,
                UNREADABLE_POLICY,
                BAD_DURATION,
            ],
        },
    ];
    for case in cases {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let serve = Serve::bare()
            .args(["--config", "config.toml", "--log-format", "json"])
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(case.args.iter().copied());
        // Settings the case does not break come from the file, unless the
        // case is about them.
        let config = if case.config.starts_with("colour") {
            format!("{good_config}{}", case.config)
        } else if case.config.is_empty() {
            good_config.to_owned()
        } else {
            case.config.to_owned()
        };
        std::fs::write(serve.dir().join("config.toml"), config).expect("write config.toml");
        // A directory: it exists, and no one (root included) can read it
        // as a file.
        std::fs::create_dir(serve.dir().join("policy-dir")).expect("create policy-dir");
        let run = serve.run().await;
        run.expect_code(2);
        for problem in case.problems {
            run.expect_stderr(problem);
        }
        let n = case.problems.len();
        let count = if n == 1 {
            "1 configuration problem:".to_owned()
        } else {
            format!("{n} configuration problems:")
        };
        run.expect_stderr(&count);
        if !run.stdout.is_empty() {
            run.fail(&format!("{}: nothing belongs on stdout", case.name));
        }
        if run.stderr.contains("\"serving\"") {
            run.fail(&format!("{}: it started serving", case.name));
        }
        assert!(
            port_is_free(listen) && port_is_free(admin),
            "{}: a port is still bound after exit 2",
            case.name
        );
    }
}

/// The sidecar starts while the key endpoint answers 500: not ready, and
/// requests get 503 `keys_unavailable`; once the endpoint recovers, the
/// same process becomes ready and lets requests through.
///
/// Recovery waits for the next scheduled retry: the key cache backs off
/// 1 s, 2 s, 4 s… up to 60 s (±20% jitter) after consecutive failures.
/// Here the endpoint is down for about a second, so recovery takes a few
/// seconds; the worst case, had the outage lasted minutes, is about 72 s,
/// which the 90 s deadline covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_while_the_key_endpoint_is_down_recovers_without_a_restart() {
    let kit = Issuer::start().await;
    kit.set_failure(Failure::Status(500));
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "user:alice@example.com"])
        .start_unready()
        .await;
    let alice = google_token(&kit, "alice@example.com");
    let url = sidecar.url("/app");

    assert_ne!(sidecar.readyz().await, 200, "not ready without keys");
    let (status, headers, body) = get(&url, &alice).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["reason"], "keys_unavailable");
    assert!(headers.contains_key("retry-after"));
    assert!(kit.jwks_fetches() >= 1);
    assert_eq!(up.hits(), 0);
    assert!(
        sidecar
            .json_logs()
            .iter()
            .any(|v| v["message"] == "jwks fetch failed"),
        "the failed fetch is logged"
    );

    kit.set_failure(Failure::None);
    let recovering = Instant::now();
    sidecar.wait_ready(Duration::from_secs(90)).await;
    eprintln!(
        "ready {:?} after the key endpoint recovered",
        recovering.elapsed()
    );
    let (status, _, body) = get(&url, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.hits(), 1);
    assert!(
        sidecar
            .metric("idgate_jwks_fetches_total{issuer=\"google\",result=\"error\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

/// Started with a soft limit of 256 open files, `serve` raises it to the
/// hard limit: every client and upstream connection is a descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_open_files_limit_to_the_hard_one() {
    let kit = Issuer::start().await;
    let up = Upstream::start().await;
    let sidecar = Serve::proxy(&up.url(), &kit)
        .args(["--member", "allUsers"])
        .open_files_soft_limit(256)
        .start()
        .await;
    let (soft, hard) = sidecar.open_files_limits();
    assert_eq!(soft, hard, "soft is not hard");
    assert_ne!(soft, 256);
}
