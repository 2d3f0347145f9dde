//! # example-tonic: a gRPC service behind idgate
//!
//! The standard gRPC health service (`grpc.health.v1.Health`), served by
//! tonic with `Server::builder().layer(AuthLayer::new(gate))`: every call
//! needs a Google ID token minted for this service, from a caller the
//! invoker policy allows. Refusals are gRPC statuses whose message is the
//! reason code: `UNAUTHENTICATED missing_token`, `PERMISSION_DENIED
//! not_allowed`, `UNAVAILABLE keys_unavailable`, …
//!
//! ## Run it
//!
//! ```sh
//! cargo run -p example-tonic
//! ```
//!
//! No Google account needed: by default (`DEV=1`) a dev issuer starts in the
//! same process and plays Google's part. The service then calls itself with
//! a real gRPC client (an allowed caller, no token, a caller the policy does
//! not allow), prints the answers, and prints commands to try, with tokens:
//!
//! ```sh
//! # the client built into this example:
//! cargo run -p example-tonic -- check http://127.0.0.1:50051 "$ALICE"   # SERVING
//! cargo run -p example-tonic -- check http://127.0.0.1:50051             # Unauthenticated: missing_token
//! # or grpcurl, with the health proto shipped beside this example:
//! grpcurl -plaintext -import-path examples/tonic-service/proto -proto health.proto \
//!   -H "authorization: Bearer $ALICE" 127.0.0.1:50051 grpc.health.v1.Health/Check
//! ```
//!
//! ## Settings (environment)
//!
//! | variable   | default                                   | meaning |
//! |------------|-------------------------------------------|---------|
//! | `LISTEN`   | `127.0.0.1:50051`; `0.0.0.0:$PORT` if `PORT` is set (Cloud Run) | address to serve on |
//! | `AUDIENCE` | dev: `http://` + the bound address; Google: required | the `aud` tokens must carry (on Cloud Run, the service URL) |
//! | `MEMBERS`  | `user:alice@example.com`                  | IAM members who may call, comma-separated |
//! | `DEV`      | `1`                                       | `1`: trust a dev issuer; `0`: trust Google |
//! | `ISSUER_URL` | none: start a dev issuer in-process     | with `DEV=1`, trust a running `idgate dev-issuer` instead (e.g. `http://127.0.0.1:8900`); mint with `idgate token --issuer-url …` |
//! | `RUST_LOG` | `info`                                    | denials are logged at INFO with their reason |
//!
//! With Google (`DEV=0 AUDIENCE=… MEMBERS=serviceAccount:…`), get a token
//! with `gcloud auth print-identity-token
//! --impersonate-service-account=SA_EMAIL --audiences=$AUDIENCE
//! --include-email` and pass it to `check`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use idgate::auth::{AuthLayer, Gate};
use idgate::policy::{PolicyHandle, PolicySources};
use idgate::{IssuerConfig, Verifier};
use idgate_testkit::Issuer;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Settings {
    listen: SocketAddr,
    audience: Option<String>,
    members: Vec<String>,
    dev: bool,
    issuer_url: Option<String>,
}

impl Settings {
    fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let listen = match (var("LISTEN"), var("PORT")) {
            (Some(l), _) => l,
            (None, Some(port)) => format!("0.0.0.0:{port}"),
            (None, None) => "127.0.0.1:50051".into(),
        };
        let listen = listen
            .parse()
            .with_context(|| format!("LISTEN {listen:?} is not an address like 127.0.0.1:50051"))?;
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
        Ok(Settings {
            listen,
            audience,
            members,
            dev,
            issuer_url,
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => serve().await,
        Some("check") if (2..=3).contains(&args.len()) => {
            check(&args[1], args.get(2).map(String::as_str)).await
        }
        _ => Err(anyhow::anyhow!(
            "usage: example-tonic            serve (settings from the environment)\n       example-tonic check URL [TOKEN]   call Health/Check on URL"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("example-tonic: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One `Health/Check` call with the token (if any) in `authorization`, as
/// a client interceptor attaches it. Prints the answer; a refusal is an
/// error, so the exit code says which it was.
async fn check(url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let outcome = call(url, token).await?;
    println!("{outcome}");
    if outcome.starts_with("SERVING") {
        Ok(())
    } else {
        bail!("refused")
    }
}

async fn call(url: &str, token: Option<&str>) -> anyhow::Result<String> {
    let bearer: Option<MetadataValue<_>> = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token cannot go in a header")?;
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad URL {url:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let mut client = HealthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(v) = &bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    });
    Ok(
        match client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(resp) => resp.into_inner().status().as_str_name().to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        },
    )
}

async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let audience = settings.audience.clone().unwrap_or_else(|| url.clone());

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
    verifier.refresh_keys().await;
    if !verifier.is_ready() {
        eprintln!(
            "warning: no signing keys yet; calls get UNAVAILABLE keys_unavailable until they load"
        );
    }
    let _refreshers = verifier.spawn_key_refreshers();
    let gate = Gate::builder(verifier, Arc::new(policy)).build()?;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        Server::builder()
            .layer(AuthLayer::new(Arc::new(gate)))
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown_signal()),
    );

    println!("example-tonic on {url} (grpc.health.v1.Health)");
    println!("  audience: {audience}");
    println!("  members:  {}", settings.members.join(", "));
    match (&embedded, &dev_issuer_url) {
        (Some(kit), _) => show_dev(kit, &url, &audience).await?,
        (None, Some(issuer)) => println!(
            "  trusting the dev issuer at {issuer}; get a token with:\n    TOKEN=$(idgate token --issuer-url {issuer} --email alice@example.com --audience {audience})\n  then: cargo run -p example-tonic -- check {url} \"$TOKEN\""
        ),
        (None, None) => println!(
            "  trusting Google; get a token with:\n    gcloud auth print-identity-token --impersonate-service-account=SA_EMAIL --audiences={audience} --include-email\n  then: cargo run -p example-tonic -- check {url} \"$TOKEN\""
        ),
    }
    server.await?.context("server failed")
}

/// Calls the service as three callers with a real gRPC client, then says
/// how to do the same by hand.
async fn show_dev(kit: &Issuer, url: &str, audience: &str) -> anyhow::Result<()> {
    let alice = kit.token("alice@example.com", audience);
    let mallory = kit.token("mallory@example.com", audience);
    println!(
        "  dev issuer: {} (its keys; Google is not involved)",
        kit.url()
    );
    println!();
    println!("Calling Health/Check:");
    for (who, token) in [
        ("alice@example.com", Some(alice.as_str())),
        ("no token", None),
        ("mallory@example.com", Some(mallory.as_str())),
    ] {
        println!("  {who:<20} -> {}", call(url, token).await?);
    }
    println!();
    println!("Try it:");
    println!("  ALICE={alice}");
    println!("  cargo run -p example-tonic -- check {url} \"$ALICE\"");
    println!("  cargo run -p example-tonic -- check {url}");
    println!(
        "  grpcurl -plaintext -import-path examples/tonic-service/proto -proto health.proto -H \"authorization: Bearer $ALICE\" {} grpc.health.v1.Health/Check",
        url.trim_start_matches("http://")
    );
    println!("Mint a token for anyone (valid 1 h):");
    println!(
        "  TOKEN=$(curl -s -G {}/token --data-urlencode email=bob@example.com --data-urlencode audience={audience})",
        kit.url()
    );
    println!();
    Ok(())
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
            eprintln!("example-tonic: shutting down");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("example-tonic: shutting down");
}
