//! `idgate serve`: the sidecar.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tracing::{info, warn};

use crate::config::{self, Env, SettingsArgs};
use crate::metrics::Metrics;
use crate::serve::{Wiring, shutdown_signal, start};
use crate::server::Drained;
use crate::{gate, logging};

/// `idgate serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Check the settings (and read the policy files), print a summary and
    /// exit: 0 when valid, 2 otherwise. Binds nothing.
    #[arg(long)]
    pub check_config: bool,

    /// The settings.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Runs `serve`.
pub fn run(args: ServeArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    let loaded = match config::load(&args.settings, env) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("idgate: {errors}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    let settings = loaded.settings;

    if args.check_config {
        if let Err(e) = gate::check(&settings) {
            eprintln!(
                "idgate: 1 configuration problem:\n  {}",
                crate::ErrorChain(&e)
            );
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        print!("{}", settings.summary());
        println!("configuration OK");
        return Ok(ExitCode::SUCCESS);
    }

    logging::init(settings.log_format, env.var("RUST_LOG").as_deref())?;
    for w in &loaded.warnings {
        warn!("{w}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let parts = gate::build(&settings, &metrics)
            .await
            .context("cannot build the auth gate")?;
        for w in &parts.warnings {
            warn!("{w}");
        }
        let running = start(
            &settings,
            Wiring {
                gate: parts.layer,
                ready: parts.ready,
                reload: parts.reload,
                metrics,
            },
        )
        .await?;
        let hup = running
            .reload_trigger()
            .map(|t| crate::serve::on_sighup(move || t.fire()));
        let drained = running.run_until(shutdown_signal()).await;
        if let Some(h) = hup {
            h.abort();
        }
        match drained {
            Drained::Clean => info!("stopped"),
            Drained::TimedOut(n) => warn!(connections = n, "stopped with requests cut short"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
