//! `idgate serve`: the sidecar.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tracing::{info, warn};

use crate::config::{self, Env, SettingsArgs};
use crate::metrics::Metrics;
use crate::serve::{HangupSignal, ShutdownSignal, Wiring, start};
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
        let policy_warnings = match gate::check(&settings) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("idgate: {}", describe(&e));
                return Ok(ExitCode::from(super::EXIT_USAGE));
            }
        };
        for w in loaded.warnings.iter().chain(&policy_warnings) {
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

    raise_open_files_limit();
    let runtime = runtime().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Before anything can be slow or bound: a SIGTERM during startup
        // must still end in an orderly exit.
        let signal = ShutdownSignal::install().context("cannot listen for SIGTERM")?;
        let hangup = HangupSignal::install().context("cannot listen for SIGHUP")?;
        let metrics = Arc::new(Metrics::new());
        let parts = match gate::build(&settings, &metrics).await {
            Ok(p) => p,
            Err(e) => {
                // Settings problems found only by the library: same exit as
                // the others, before any port is bound.
                eprintln!("idgate: {}", describe(&e));
                return Ok(ExitCode::from(super::EXIT_USAGE));
            }
        };
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
        // Without a policy to reload, SIGHUP is still caught (and ignored).
        let hup = match running.reload_trigger() {
            Some(t) => hangup.forward(move || t.fire()),
            None => hangup.forward(|| {}),
        };
        let drained = running.run_until(signal.recv()).await;
        hup.abort();
        match drained {
            Drained::Clean => info!("stopped"),
            Drained::TimedOut(n) => warn!(connections = n, "stopped with requests cut short"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A gate error as a list of problems, like configuration errors.
fn describe(e: &gate::GateError) -> String {
    let lines: Vec<String> = match e {
        // A policy problem may span lines (a file's own list); one line each.
        gate::GateError::Policy(errors) => errors
            .iter()
            .flat_map(|p| {
                p.to_string()
                    .lines()
                    .map(|l| format!("policy: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect(),
        gate::GateError::Verifier(errors) => {
            errors.0.iter().map(|p| format!("verifier: {p}")).collect()
        }
        gate::GateError::Gate(errors) => errors.0.iter().map(|p| format!("gate: {p}")).collect(),
    };
    let n = lines.len();
    format!(
        "{n} configuration problem{}:\n  {}",
        if n == 1 { "" } else { "s" },
        lines.join("\n  ")
    )
}

/// Raises the soft limit on open files to the hard one. Every connection,
/// client or upstream, is a descriptor, and container runtimes often start
/// processes at 1,024: a few hundred stalled clients would otherwise leave
/// none for upstream connections, key fetches or the admin probes.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files_limit = limit, "open files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// One worker thread per CPU this process may use (affinity and cgroup
/// quota count). With one CPU, as a sidecar often has, a single-threaded
/// runtime does the same work without the cross-thread bookkeeping of a
/// work-stealing one (BENCHMARKS.md: throughput on one core).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    tracing::info!(worker_threads = cpus, "async runtime");
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}
