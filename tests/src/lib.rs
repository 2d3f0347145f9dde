//! The end-to-end harness: the real `idgate` binary, run as a child process
//! against a testkit issuer and real upstreams, everything on loopback.
//!
//! - [`idgate_bin`]: the binary, built on first use (or `$IDGATE_BIN`).
//! - [`Serve`] and [`Sidecar`]: `idgate serve` with both listeners on port
//!   0; the bound addresses are read from its JSON `serving` log line and
//!   readiness from polling `/readyz`. A [`Process`] is killed when dropped,
//!   and its command line, stdout and stderr are printed when the test
//!   fails.
//! - [`Upstream`]: an axum app that echoes what reached it (method, path,
//!   headers, body length, counted as it streams) and has routes for
//!   server-sent events, slow answers, downloads and a WebSocket echo.
//!   [`GrpcUpstream`]: the standard gRPC health service (tonic).
//! - Tokens shaped like Google's, signed by the testkit issuer
//!   ([`google_token`]), and IAM policy files ([`write_policy`]).
//!
//! Waiting is always for an event or a condition, with a deadline; a test
//! never sleeps for a fixed time hoping something has happened.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bin;
mod grpc;
mod process;
mod sidecar;
mod upstream;
mod ws;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use idgate_testkit::Issuer;
use serde_json::Value;

pub use bin::{idgate_bin, workspace_root};
pub use grpc::{GrpcUpstream, health_check};
pub use process::{Finished, Memory, Process, command_line, ensure_nofile, open_files_limits};
pub use sidecar::{AT_THE_CONNECTION_CAP, Serve, Sidecar};
pub use upstream::{SSE_EVENTS, Upstream, header_values};
pub use ws::{WebSocket, next_message, open_websocket};

/// The audience every test's sidecar accepts.
pub const AUD: &str = "https://svc-e2e.a.run.app";

/// Google's issuer: the sidecar's Google preset, its keys fetched from a
/// testkit issuer through `--jwks-url`.
pub const GOOGLE_ISS: &str = "https://accounts.google.com";

/// The claims of a Google ID token for `email`, minted for `aud` now.
pub fn google_claims(email: &str, aud: &str) -> Value {
    idgate_testkit::google_claims(GOOGLE_ISS, email, aud, idgate_testkit::now_unix())
}

/// A Google-shaped ID token for `email` and [`AUD`], signed by `kit`.
pub fn google_token(kit: &Issuer, email: &str) -> String {
    kit.mint(&google_claims(email, AUD))
}

/// `Bearer TOKEN`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// An HTTP client for talking to the sidecar: no proxy from the
/// environment, no automatic decompression, a generous overall timeout so a
/// hang fails the test instead of stalling the suite.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build the HTTP client")
}

/// A loopback port that was free a moment ago: bound, then released. Another
/// process could take it in between; the tests accept that small race where
/// the binary must be given a fixed port (to check it binds nothing).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// Whether `addr` can be bound now (nobody listens on it).
pub fn port_is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Writes an IAM policy granting `roles/run.invoker` to `members`, the way
/// editors and Kubernetes do: a temporary file renamed over the old one.
pub fn write_policy(path: &Path, members: &[&str]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, policy_json(members)).expect("write the policy");
    std::fs::rename(&tmp, path).expect("rename the policy into place");
}

/// Writes the policy in place: truncate, then write, as `echo > file` does.
/// A reader may see the empty file in between.
pub fn write_policy_in_place(path: &Path, members: &[&str]) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).expect("truncate the policy");
    f.write_all(policy_json(members).as_bytes())
        .expect("write the policy");
}

/// The JSON `gcloud run services get-iam-policy --format=json` prints.
pub fn policy_json(members: &[&str]) -> String {
    serde_json::json!({
        "bindings": [{"role": "roles/run.invoker", "members": members}],
        "etag": "BwYe2e2e2e0=",
        "version": 1,
    })
    .to_string()
}

/// Polls `check` until it gives `Some`, or panics after `timeout` naming
/// `what`. Between polls it waits a few milliseconds: this is for
/// conditions that nothing announces (a port closing, a reload taking
/// effect), with the deadline as the bound.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
