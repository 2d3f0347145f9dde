//! `idgate dev-issuer`: a local OIDC issuer that plays Google's part
//! (discovery, a JWKS with `Cache-Control`, and a mint endpoint), the
//! testkit's [`Issuer`] run as a command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use idgate_testkit::{Issuer, IssuerOptions};

use super::mint::{DEV_ISSUER_LISTEN, default_keys_dir};
use crate::config::Env;
use crate::serve::ShutdownSignal;

/// `idgate dev-issuer` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Anyone who can reach the mint endpoint can mint a token for any email and audience:
keep it on loopback (the default). Another address must be given with --listen, and
a warning is printed.")]
pub struct DevIssuerArgs {
    /// Where to listen (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = DEV_ISSUER_LISTEN)]
    pub listen: SocketAddr,

    /// Keep the signing keys here, so tokens stay valid across restarts
    /// [default: $XDG_CACHE_HOME/idgate/dev-issuer-keys or
    /// ~/.cache/idgate/dev-issuer-keys; without a home directory, the
    /// temp directory's idgate-dev-issuer-keys].
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,

    /// The issuer URL: the `iss` of its tokens and the base of its
    /// discovery and JWKS URLs [default: http://ADDR, the bound address].
    /// Its host is also a name the mint endpoint answers to, besides IP
    /// addresses and localhost (others get 403: DNS rebinding).
    #[arg(long, value_name = "URL")]
    pub issuer_url: Option<String>,
}

/// Runs `dev-issuer`.
pub fn run(args: DevIssuerArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.issuer_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        eprintln!("idgate: --issuer-url: {url:?} is not an http(s) URL");
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    let keys_dir = args
        .keys_dir
        .clone()
        .unwrap_or_else(|| default_keys_dir(env));
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, not loopback: anyone who can reach it can mint tokens \
             for any email and audience. Set --issuer-url to the URL others reach it by.",
            args.listen
        );
    }
    let runtime = super::tool_runtime(env, "warn")?;
    runtime.block_on(async move {
        let signal = ShutdownSignal::install().context("cannot listen for SIGTERM")?;
        let issuer = Issuer::start_with(IssuerOptions {
            listen: args.listen,
            keys_dir: Some(keys_dir.clone()),
            issuer_url: args.issuer_url.clone(),
        })
        .await
        .context("cannot start the dev issuer")?;
        print!("{}", banner(&issuer, &keys_dir));
        signal.recv().await;
        issuer.stop().await;
        eprintln!("dev issuer stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// What the dev issuer prints when it is up.
fn banner(issuer: &Issuer, keys_dir: &std::path::Path) -> String {
    let url = issuer.url();
    let aud = "http://127.0.0.1:8080";
    let keys: Vec<String> = issuer
        .published_keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect();
    format!(
        "idgate dev issuer, listening on {addr}
  issuer     {url}
  discovery  {discovery}
  jwks       {jwks}
  mint       {mint}?email=EMAIL&audience=AUD[&hd=D&ttl=SECS&email_verified=false]
  keys       {dir} ({kids}; signing with {active})

Get a token:
  idgate token --issuer-url {url} --email alice@example.com --audience {aud}
  curl -s '{mint}?email=alice@example.com&audience={aud}'
Trust it in idgate serve:
  idgate serve --issuer {url} --issuer-trust-emails --audience {aud} --member user:alice@example.com --upstream http://127.0.0.1:8081

Ctrl-C stops it.
",
        addr = issuer.addr(),
        discovery = issuer.discovery_url(),
        jwks = issuer.jwks_url(),
        mint = issuer.token_url(),
        dir = keys_dir.display(),
        kids = keys.join(", "),
        active = issuer.active_key().kid(),
    )
}
