//! The `idgate` binary's library: command line, settings, and the `serve`
//! sidecar (proxy, forward-auth, admin listener), wired so tests can run the
//! whole thing in-process on port 0.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod headers;
pub mod metrics;
pub mod proxy;

/// The body type every service in the sidecar speaks: a boxed, streaming
/// body (never buffered).
pub type Body = axum::body::Body;
pub mod admin;
pub mod app;
pub mod forward_auth;
pub mod gate;
pub mod logging;
pub mod reload;
pub mod serve;
pub mod server;

/// Displays an error and its causes, `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
pub mod cli;
pub mod cmd;

/// The whole program: parse the command line, run the subcommand. `main`
/// prints an error with `{:#}` and exits 1.
pub fn run() -> anyhow::Result<std::process::ExitCode> {
    use clap::Parser as _;
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return Ok(std::process::ExitCode::from(
                u8::try_from(e.exit_code()).unwrap_or(cmd::EXIT_USAGE),
            ));
        }
    };
    cli.command.run(&config::ProcessEnv)
}
