//! The command line: one subcommand per module under [`crate::cmd`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::config::Env;

/// Cloud Run's invoker check for any service.
#[derive(Debug, Parser)]
#[command(name = "idgate", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. To add one: a module under `src/cmd/` with an
/// `Args` struct and a `run(args, env) -> anyhow::Result<ExitCode>`, and a
/// variant here.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify ID tokens in front of a service: a reverse proxy (or a
    /// forward-auth endpoint) with an admin listener.
    Serve(cmd::serve::ServeArgs),
    /// Run a local OIDC issuer that mints tokens as Google would: discovery,
    /// JWKS and a mint endpoint, on loopback.
    DevIssuer(cmd::dev_issuer::DevIssuerArgs),
    /// Print a dev ID token, like `gcloud auth print-identity-token`.
    Token(cmd::token::TokenArgs),
    /// Explain the decision about a token, step by step, with the settings
    /// `serve` would use. Exit 0 allowed, 1 denied, 2 usage.
    Check(cmd::check::CheckArgs),
    /// A local proxy that adds a fresh ID token to every request, like
    /// `gcloud run services proxy`.
    Proxy(cmd::proxy::ProxyArgs),
    /// A dev issuer, an echo upstream and the sidecar on loopback: see the
    /// allowed, wrong-audience and not-allowed answers in one command.
    Demo(cmd::demo::DemoArgs),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self, env: &dyn Env) -> anyhow::Result<ExitCode> {
        match self {
            Command::Serve(args) => cmd::serve::run(args, env),
            Command::DevIssuer(args) => cmd::dev_issuer::run(args, env),
            Command::Token(args) => cmd::token::run(args, env),
            Command::Check(args) => cmd::check::run(args, env),
            Command::Proxy(args) => cmd::proxy::run(args, env),
            Command::Demo(args) => cmd::demo::run(args, env),
        }
    }
}
