//! `idgate demo`: the whole thing on loopback in one command, with nothing
//! to configure and nothing reached outside the machine.
//!
//! It starts a dev issuer (port 0), an echo upstream (port 0) and the
//! sidecar in-process through the same [`gate::build`] and [`serve::start`]
//! that `idgate serve` uses. The dev issuer plays Google: it signs as
//! `https://accounts.google.com`, and the sidecar's Google preset takes its
//! keys from the dev issuer's JWKS (`--jwks-url`), so nothing reaches Google.
//! The audience is the sidecar's own URL, as on Cloud Run, and
//! `user:alice@example.com` is allowed. Then it sends requests that show
//! the answers that matter, and prints curl commands to try more.
//!
//! [`serve::start`]: crate::serve::start

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use idgate_testkit::{Issuer, IssuerOptions};
use serde_json::{Value, json};

use crate::config::{self, Env, SettingsArgs};
use crate::gate;
use crate::metrics::Metrics;
use crate::serve::{Running, ShutdownSignal, Wiring, start};

/// `idgate demo` flags.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run the requests, print the answers and exit: 0 when every answer
    /// was the expected one, else 1.
    #[arg(long)]
    pub once: bool,
}

/// The caller the demo allows.
pub const ALICE: &str = "alice@example.com";
/// A caller with a valid token the policy does not name.
pub const MALLORY: &str = "mallory@example.com";
/// The `iss` the dev issuer signs with: Google's.
const GOOGLE_ISS: &str = "https://accounts.google.com";

/// The audience of a service that is not this one.
pub const OTHER_AUDIENCE: &str = "https://other-service.example";

/// One request of the scenario and what it should get.
struct Case {
    label: &'static str,
    email: Option<&'static str>,
    /// `None`: this service.
    audience: Option<&'static str>,
    status: u16,
    reason: Option<&'static str>,
    why: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        label: "alice, this service",
        email: Some(ALICE),
        audience: None,
        status: 200,
        reason: None,
        why: "alice is allowed",
    },
    Case {
        label: "alice, other service",
        email: Some(ALICE),
        audience: Some(OTHER_AUDIENCE),
        status: 401,
        reason: Some("audience_mismatch"),
        why: "token minted for another service",
    },
    Case {
        label: "mallory, this service",
        email: Some(MALLORY),
        audience: None,
        status: 403,
        reason: Some("not_allowed"),
        why: "valid token, but mallory is not allowed",
    },
    Case {
        label: "no token",
        email: None,
        audience: None,
        status: 401,
        reason: Some("missing_token"),
        why: "no bearer token",
    },
];

/// What one request got.
struct Answer {
    status: u16,
    reason: Option<String>,
    echo: Option<Value>,
}

/// Runs `demo`.
pub fn run(args: DemoArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    // Quiet unless asked: the demo's own output is the point.
    let runtime = super::tool_runtime(env, "warn")?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let signal = ShutdownSignal::install().context("cannot listen for SIGTERM")?;
    let issuer = Issuer::start_with(IssuerOptions {
        issuer_url: Some(GOOGLE_ISS.into()),
        ..IssuerOptions::default()
    })
    .await
    .context("cannot start the dev issuer")?;
    let upstream = echo_upstream().await?;
    let (running, audience) = sidecar(&issuer, upstream).await?;
    let service = format!("http://{}", running.addr());

    // Everything is on loopback: never through `HTTP(S)_PROXY`.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let mut answers = Vec::new();
    for case in &CASES {
        let token = case
            .email
            .map(|email| issuer.token(email, case.audience.unwrap_or(audience.as_str())));
        answers.push(send(&client, &format!("{service}/hello"), token.as_deref()).await?);
    }

    print!(
        "{}",
        report(&issuer, upstream, &service, &audience, &answers)
    );
    let wrong: Vec<String> = CASES
        .iter()
        .zip(&answers)
        .filter(|(c, a)| a.status != c.status || a.reason.as_deref() != c.reason)
        .map(|(c, a)| {
            format!(
                "{}: expected {} {}, got {} {}",
                c.label,
                c.status,
                c.reason.unwrap_or("-"),
                a.status,
                a.reason.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if !wrong.is_empty() {
        eprintln!("\nidgate demo: {} answer(s) differed:", wrong.len());
        for w in &wrong {
            eprintln!("  {w}");
        }
    }
    if args.once {
        running.shutdown().await;
        return Ok(if wrong.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    print!("{}", try_it(&issuer, &service, &audience));
    signal.recv().await;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The sidecar, configured as `idgate serve` flags would, on a free port
/// whose URL is also the audience.
async fn sidecar(issuer: &Issuer, upstream: SocketAddr) -> anyhow::Result<(Running, String)> {
    let mut last = None;
    // The audience names the port, so the port is picked first; another
    // process could take it in between, hence a few tries.
    for _ in 0..5 {
        let port = free_port().await?;
        let audience = format!("http://127.0.0.1:{port}");
        let args = SettingsArgs {
            listen: Some(format!("127.0.0.1:{port}")),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some(format!("http://{upstream}")),
            audience: vec![audience.clone()],
            jwks_url: vec![format!("http://{}/jwks", issuer.addr())],
            member: vec![format!("user:{ALICE}")],
            log_format: Some("text".into()),
            ..SettingsArgs::default()
        };
        // An empty environment: the user's IDGATE_* variables do not
        // reach the demo.
        let env: BTreeMap<String, String> = BTreeMap::new();
        let settings = config::load(&args, &env)
            .map_err(|e| anyhow::anyhow!("the demo's own settings are invalid: {e}"))?
            .settings;
        let metrics = Arc::new(Metrics::new());
        let parts = gate::build(&settings, &metrics)
            .await
            .context("cannot build the auth gate")?;
        match start(
            &settings,
            Wiring {
                gate: parts.layer,
                ready: parts.ready,
                reload: parts.reload,
                metrics,
            },
        )
        .await
        {
            Ok(running) => return Ok((running, audience)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port")))
}

async fn free_port() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// An upstream that answers with what it received: method, path and the
/// identity headers.
async fn echo_upstream() -> anyhow::Result<SocketAddr> {
    async fn echo(req: Request) -> axum::Json<Value> {
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-idgate-"))
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        axum::Json(json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "headers": headers,
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the echo upstream")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(echo);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn send(client: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<Answer> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("the demo's request to {url} failed"))?;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Answer {
        status,
        reason,
        echo: (status == 200).then_some(body),
    })
}

fn report(
    issuer: &Issuer,
    upstream: SocketAddr,
    service: &str,
    audience: &str,
    answers: &[Answer],
) -> String {
    let mut out = format!(
        "idgate demo: a dev issuer, an echo upstream and the sidecar, all on loopback.

  issuer    http://{}   plays Google: signs as {GOOGLE_ISS}
  upstream  http://{upstream}   echoes what reaches it
  sidecar   {service}   audience {audience}, allows user:{ALICE}

",
        issuer.addr()
    );
    let width = CASES.iter().map(|c| c.label.len()).max().unwrap_or(0);
    for (case, answer) in CASES.iter().zip(answers) {
        let ok = answer.status == case.status && answer.reason.as_deref() == case.reason;
        out.push_str(&format!(
            "  GET /hello  {:<width$}  {}  {:<17}  {}{}\n",
            case.label,
            answer.status,
            answer.reason.as_deref().unwrap_or("allowed"),
            case.why,
            if ok { "" } else { "  (UNEXPECTED)" },
        ));
    }
    if let Some(echo) = answers.first().and_then(|a| a.echo.as_ref()) {
        out.push_str("\n  The upstream saw (first request):\n");
        if let Some(headers) = echo.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                let v = v.as_str().unwrap_or_default();
                let shown = if k == "x-idgate-claims" {
                    claim_names(v)
                } else {
                    v.to_owned()
                };
                out.push_str(&format!("    {k:<18}  {shown}\n"));
            }
        }
    }
    out
}

/// `x-idgate-claims` is the token's payload, base64url JSON: its claim
/// names are enough here.
fn claim_names(b64: &str) -> String {
    let names = URL_SAFE_NO_PAD
        .decode(b64)
        .ok()
        .and_then(|j| serde_json::from_slice::<serde_json::Map<String, Value>>(&j).ok())
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    format!("(base64url JSON: {names})")
}

fn try_it(issuer: &Issuer, service: &str, audience: &str) -> String {
    let mint = format!("http://{}/token", issuer.addr());
    let jwks = format!("http://{}/jwks", issuer.addr());
    format!(
        "
Try it (Ctrl-C stops the demo):
  curl -i {service}/hello -H \"Authorization: Bearer $(curl -s '{mint}?email={ALICE}&audience={audience}')\"
  curl -i {service}/hello -H \"Authorization: Bearer $(curl -s '{mint}?email={ALICE}&audience={OTHER_AUDIENCE}')\"
  curl -i {service}/hello -H \"Authorization: Bearer $(curl -s '{mint}?email={MALLORY}&audience={audience}')\"
See why (as idgate serve would decide):
  curl -s '{mint}?email={MALLORY}&audience={audience}' | idgate check --jwks-url {jwks} --audience {audience} --member user:{ALICE}
"
    )
}
