//! # example-axum: an axum app behind idgate
//!
//! One `.layer(AuthLayer::new(gate))` puts every route behind the check a
//! private Cloud Run service gets: a Google ID token minted for this service,
//! from a caller the invoker policy allows. Handlers take the caller as an
//! [`Identity`] argument (or `Option<Identity>` where anyone may come).
//!
//! ## Run it
//!
//! ```sh
//! cargo run -p example-axum
//! ```
//!
//! No Google account needed: by default (`DEV=1`) a dev issuer starts in the
//! same process, plays Google's part (keys, tokens shaped like Google's) and
//! the app prints ready-to-paste `curl` commands with tokens:
//!
//! ```sh
//! curl -i http://127.0.0.1:8080/me -H "Authorization: Bearer $ALICE"   # 200, who you are
//! curl -i http://127.0.0.1:8080/me -H "Authorization: Bearer $MALLORY" # 403 not_allowed
//! curl -i http://127.0.0.1:8080/me                                     # 401 missing_token
//! curl -i http://127.0.0.1:8080/healthz                                # 200: a public path
//! ```
//!
//! It also prints how to mint a token for any email from the dev issuer.
//! To use the project's own tools instead, run `idgate dev-issuer` and
//! point the app at it:
//!
//! ```sh
//! cargo run -p idgate-sidecar -- dev-issuer &      # listens on 127.0.0.1:8900
//! ISSUER_URL=http://127.0.0.1:8900 cargo run -p example-axum
//! TOKEN=$(cargo run -q -p idgate-sidecar -- token --issuer-url http://127.0.0.1:8900 \
//!   --email alice@example.com --audience http://127.0.0.1:8080)
//! curl -i http://127.0.0.1:8080/me -H "Authorization: Bearer $TOKEN"
//! ```
//!
//! ## Settings (environment)
//!
//! | variable       | default                                  | meaning |
//! |----------------|------------------------------------------|---------|
//! | `LISTEN`       | `127.0.0.1:8080`; `0.0.0.0:$PORT` if `PORT` is set (Cloud Run) | address to serve on |
//! | `AUDIENCE`     | dev: `http://` + the bound address; Google: required | the `aud` tokens must carry (on Cloud Run, the service URL) |
//! | `MEMBERS`      | `user:alice@example.com`                 | IAM members who may call, comma-separated: `user:`, `serviceAccount:`, `domain:`, `allUsers`, … |
//! | `DEV`          | `1`                                      | `1`: trust a dev issuer; `0`: trust Google |
//! | `ISSUER_URL`   | none: start a dev issuer in-process      | with `DEV=1`, trust a running `idgate dev-issuer` instead (e.g. `http://127.0.0.1:8900`) |
//! | `STATUS_CODES` | `rfc6750`                                | `cloud-run`: 403 for a request with no token, as Cloud Run answers |
//! | `RUST_LOG`     | `info`                                   | decisions are logged: denials at INFO, admissions at DEBUG |
//!
//! ## With Google
//!
//! ```sh
//! DEV=0 AUDIENCE=https://my-service.example.com \
//!   MEMBERS=serviceAccount:caller@my-project.iam.gserviceaccount.com \
//!   cargo run -p example-axum
//! TOKEN=$(gcloud auth print-identity-token \
//!   --impersonate-service-account=caller@my-project.iam.gserviceaccount.com \
//!   --audiences=https://my-service.example.com --include-email)
//! curl -i http://127.0.0.1:8080/me -H "Authorization: Bearer $TOKEN"
//! ```
//!
//! (A plain `gcloud auth print-identity-token` as a user carries the gcloud
//! audience `32555940559.apps.googleusercontent.com`; it is refused unless
//! you set that as `AUDIENCE` on purpose.)

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::routing::get;
use axum::{Json, Router};
use idgate::auth::{AuthLayer, Gate, StatusCodes};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{Identity, IssuerConfig, Verifier};
use idgate_testkit::Issuer;
use serde_json::{Value, json};

/// Anyone may come; the handler just says whether it knows who.
async fn hello(caller: Option<Identity>) -> String {
    match caller {
        Some(id) => format!("hello, {}\n", id.principal()),
        None => "hello, anonymous caller (the policy lets allUsers in)\n".into(),
    }
}

/// Only a verified caller gets here.
async fn me(caller: Identity) -> Json<Value> {
    Json(json!({
        "principal": caller.principal().to_string(),
        "email": caller.principal_email(),
        "subject": caller.subject(),
        "issuer": caller.issuer(),
        "expires_at": caller.expires_at(),
    }))
}

/// Behind the layer too, but on a public path: no token needed.
async fn healthz() -> &'static str {
    "ok\n"
}

fn app(layer: AuthLayer) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/me", get(me))
        .route("/healthz", get(healthz))
        .layer(layer)
}

struct Settings {
    listen: SocketAddr,
    audience: Option<String>,
    members: Vec<String>,
    dev: bool,
    issuer_url: Option<String>,
    status_codes: StatusCodes,
}

impl Settings {
    fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let listen = match (var("LISTEN"), var("PORT")) {
            (Some(l), _) => l,
            (None, Some(port)) => format!("0.0.0.0:{port}"),
            (None, None) => "127.0.0.1:8080".into(),
        };
        let listen = listen
            .parse()
            .with_context(|| format!("LISTEN {listen:?} is not an address like 127.0.0.1:8080"))?;
        let dev = match var("DEV").as_deref() {
            None | Some("1" | "true") => true,
            Some("0" | "false") => false,
            Some(other) => bail!("DEV must be 1 or 0, not {other:?}"),
        };
        let issuer_url = var("ISSUER_URL").map(|u| u.trim_end_matches('/').to_owned());
        if !dev && issuer_url.is_some() {
            bail!("ISSUER_URL names a dev issuer to trust; it cannot go with DEV=0");
        }
        let audience = var("AUDIENCE");
        if !dev && audience.is_none() {
            bail!(
                "AUDIENCE is required with DEV=0: the aud your callers' tokens carry (on Cloud Run, the service URL)"
            );
        }
        let members = var("MEMBERS")
            .unwrap_or_else(|| "user:alice@example.com".into())
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        let status_codes = match var("STATUS_CODES").as_deref() {
            None | Some("rfc6750") => StatusCodes::Rfc6750,
            Some("cloud-run") => StatusCodes::CloudRun,
            Some(other) => bail!("STATUS_CODES must be rfc6750 or cloud-run, not {other:?}"),
        };
        Ok(Settings {
            listen,
            audience,
            members,
            dev,
            issuer_url,
            status_codes,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs to stderr, so stdout holds only the usage this prints.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("example-axum: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let audience = settings
        .audience
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));

    // In dev mode, a local issuer stands in for Google: it signs tokens
    // shaped like Google's (so emails name `user:` principals) and serves
    // its keys on loopback. Either one started here, or a running
    // `idgate dev-issuer` (ISSUER_URL).
    let embedded = if settings.dev && settings.issuer_url.is_none() {
        Some(
            Issuer::start_with(Default::default())
                .await
                .context("cannot start the dev issuer")?,
        )
    } else {
        None
    };
    let dev_issuer_url = match (&embedded, &settings.issuer_url) {
        (Some(kit), _) => Some(kit.url()),
        (None, url) => url.clone(),
    };
    let issuer = match &dev_issuer_url {
        Some(url) => IssuerConfig::google()
            .with_issuer(url)
            .with_jwks_url(format!("{url}/jwks")),
        None => IssuerConfig::google(),
    };
    let verifier = Arc::new(
        Verifier::builder()
            .issuer(issuer)
            .audience(&audience)
            .build()?,
    );
    let (policy, warnings) = PolicyHandle::new(PolicySources {
        members: settings.members.clone(),
        ..Default::default()
    })?;
    for w in warnings {
        eprintln!("policy warning: {w}");
    }
    for w in verifier.warnings() {
        eprintln!("verifier warning: {w}");
    }
    // Load keys before serving, then keep them fresh in the background, so
    // no request waits on the network.
    verifier.refresh_keys().await;
    if !verifier.is_ready() {
        eprintln!(
            "warning: no signing keys yet; requests get 503 keys_unavailable until they load"
        );
    }
    let _refreshers = verifier.spawn_key_refreshers();
    let gate = Gate::builder(verifier, Arc::new(policy))
        .public_path("/healthz")
        .status_codes(settings.status_codes)
        .build()?;

    let base = format!("http://{addr}");
    println!("example-axum on {base}");
    println!("  audience: {audience}");
    println!("  members:  {}", settings.members.join(", "));
    match (&embedded, &dev_issuer_url) {
        (Some(kit), _) => print_dev_usage(kit, &base, &audience),
        (None, Some(url)) => println!(
            "  trusting the dev issuer at {url}; get a token with:\n    TOKEN=$(idgate token --issuer-url {url} --email alice@example.com --audience {audience})\n    curl -i {base}/me -H \"Authorization: Bearer $TOKEN\""
        ),
        (None, None) => println!(
            "  trusting Google; get a token with:\n    gcloud auth print-identity-token --impersonate-service-account=SA_EMAIL --audiences={audience} --include-email"
        ),
    }

    axum::serve(listener, app(AuthLayer::new(Arc::new(gate))))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")
}

fn print_dev_usage(kit: &Issuer, base: &str, audience: &str) {
    let google_like = |email: &str| kit.token(email, audience);
    println!(
        "  dev issuer: {} (its keys; Google is not involved)",
        kit.url()
    );
    println!();
    println!("Try it:");
    println!("  ALICE={}", google_like("alice@example.com"));
    println!("  MALLORY={}", google_like("mallory@example.com"));
    println!("  curl -i {base}/me -H \"Authorization: Bearer $ALICE\"     # 200");
    println!("  curl -i {base}/me -H \"Authorization: Bearer $MALLORY\"   # 403 not_allowed");
    println!("  curl -i {base}/me                                        # 401 missing_token");
    println!(
        "  curl -i {base}/                                          # 401 (200 with MEMBERS=allUsers)"
    );
    println!("  curl -i {base}/healthz                                   # 200, public");
    println!("Mint a token for anyone (valid 1 h):");
    println!(
        "  TOKEN=$(curl -s -G {}/token --data-urlencode email=bob@example.com --data-urlencode audience={audience})",
        kit.url()
    );
    println!();
}

/// Ctrl-C, or SIGTERM as Cloud Run and Kubernetes send it.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("example-axum: shutting down");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("example-axum: shutting down");
}
