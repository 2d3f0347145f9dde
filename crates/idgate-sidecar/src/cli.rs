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
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self, env: &dyn Env) -> anyhow::Result<ExitCode> {
        match self {
            Command::Serve(args) => cmd::serve::run(args, env),
        }
    }
}
