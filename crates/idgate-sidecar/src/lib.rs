//! The `idgate` binary's library: command line, settings, and the `serve`
//! sidecar (proxy, forward-auth, admin listener), wired so tests can run the
//! whole thing in-process on port 0. `main.rs` only calls [`run`].
//!
//! - [`cli`], [`cmd`]: the clap command and one module per subcommand.
//! - [`config`]: flags > `IDGATE_*` > TOML file > defaults, every problem
//!   reported at once, into a plain [`config::Settings`].
//! - [`serve`]: binds, runs and drains; [`server`] is the accept loop.
//! - [`app`]: the request path (sanitize → gate → identity headers → proxy)
//!   and [`app::GateLayer`], the seam where the gate goes; [`gate`] builds
//!   the real one.
//! - [`proxy`], [`headers`], [`forward_auth`]: forwarding and header rules.
//! - [`admin`], [`metrics`], [`reload`], [`logging`], [`memory`]: operations.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod forward_auth;
pub mod gate;
pub mod headers;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod serve;
pub mod server;

/// The body type every service in the sidecar speaks: a boxed, streaming
/// body (never buffered).
pub type Body = axum::body::Body;

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
