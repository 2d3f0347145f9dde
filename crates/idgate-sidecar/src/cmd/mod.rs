//! One module per subcommand, plus what the local tools share.

pub mod check;
pub mod demo;
pub mod dev_issuer;
pub mod mint;
pub mod proxy;
pub mod serve;
pub mod token;
pub mod token_source;
pub mod when;

/// Exit code for bad settings or usage (as clap uses for usage errors).
pub const EXIT_USAGE: u8 = 2;

/// Text logs at `default_level` (or `RUST_LOG`), and the two-thread
/// runtime the long-running tools (`dev-issuer`, `proxy`, `demo`) share.
pub(crate) fn tool_runtime(
    env: &dyn crate::config::Env,
    default_level: &str,
) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    crate::logging::init(
        crate::config::LogFormat::Text,
        Some(env.var("RUST_LOG").as_deref().unwrap_or(default_level)),
    )?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
