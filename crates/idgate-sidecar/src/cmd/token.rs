//! `idgate token`: print a dev ID token, as `gcloud auth print-identity-token`
//! prints a real one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Map, Value};

use super::mint::{self, DEV_ISSUER_URL, MintRequest};
use crate::config::Env;

/// `idgate token` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Only the token and a newline go to stdout, so it fits in $(…):
  curl -H \"Authorization: Bearer $(idgate token --email alice@example.com --audience http://127.0.0.1:8080)\" http://127.0.0.1:8080/

Without --issuer-url or --keys-dir the token comes from the dev issuer at http://127.0.0.1:8900.
With --keys-dir it is minted here, with the active key the dev issuer keeps in DIR; its
`iss` is then --issuer-url if given, else http://127.0.0.1:8900.")]
pub struct TokenArgs {
    /// The `email` claim; the caller is `user:EMAIL` (or `serviceAccount:EMAIL`
    /// for `*.gserviceaccount.com`).
    #[arg(long, value_name = "EMAIL")]
    pub email: String,

    /// The `aud` claim: the service's URL, as Cloud Run expects.
    #[arg(long, value_name = "AUD")]
    pub audience: String,

    /// The running dev issuer to ask (its URL, or its mint endpoint URL/token);
    /// with --keys-dir, the `iss` to put in the token instead [default:
    /// http://127.0.0.1:8900].
    #[arg(long, value_name = "URL")]
    pub issuer_url: Option<String>,

    /// Mint here with the active key in DIR (the dev issuer's --keys-dir;
    /// a key is created when there is none), without asking any issuer.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,

    /// The `hd` claim (a Google Workspace domain, for `domain:` members).
    #[arg(long, value_name = "DOMAIN")]
    pub hd: Option<String>,

    /// An extra claim, merged over the others; VALUE is JSON when it parses
    /// (`3`, `true`, `["a","b"]`), else a string. Repeatable.
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = mint::parse_claim)]
    pub claims: Vec<(String, Value)>,

    /// Lifetime (`exp` − `iat`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = mint::parse_ttl)]
    pub ttl: Duration,

    /// Set `email_verified: false` (such a token names no user: member).
    #[arg(long)]
    pub unverified_email: bool,
}

impl TokenArgs {
    fn request(&self) -> MintRequest {
        let claims: Map<String, Value> = self.claims.iter().cloned().collect();
        MintRequest {
            email: self.email.clone(),
            audience: self.audience.clone(),
            hd: self.hd.clone(),
            ttl: Some(self.ttl.as_secs()),
            email_verified: self.unverified_email.then_some(false),
            claims: (!claims.is_empty()).then_some(claims),
        }
    }
}

/// Runs `token`.
pub fn run(args: TokenArgs, _env: &dyn Env) -> anyhow::Result<ExitCode> {
    let request = args.request();
    let token = match &args.keys_dir {
        Some(dir) => {
            let iss = args.issuer_url.as_deref().unwrap_or(DEV_ISSUER_URL);
            mint::mint_local(dir, iss, &request)?
        }
        None => {
            let url = args.issuer_url.as_deref().unwrap_or(DEV_ISSUER_URL);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                // The dev issuer: never through `HTTP(S)_PROXY`.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()
                    .context("cannot build an HTTP client")?;
                mint::mint_remote(&client, url, &request)
                    .await
                    .with_context(|| {
                        format!(
                            "no token from the dev issuer at {url} (is `idgate dev-issuer` running? or mint here with --keys-dir)"
                        )
                    })
            })?
        }
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
