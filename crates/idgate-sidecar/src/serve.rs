//! Running `serve` in-process: bind both listeners, run until told to
//! stop, drain. The binary drives it with signals; tests with
//! [`Running::shutdown`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tracing::{info, warn};

use crate::admin::{Readiness, ReadyCheck};
use crate::app::{GateLayer, build_app};
use crate::config::{Mode, Settings};
use crate::metrics::Metrics;
use crate::reload::{self, ReloadFn, ReloadHandle};
use crate::server::{self, Drained};

/// Everything `serve` needs besides its settings. The gate is the seam: the
/// binary gets it from [`crate::gate::build`]; proxy tests may pass
/// `tower::layer::util::Identity`.
pub struct Wiring {
    /// Wraps the proxy (or the forward-auth answer).
    pub gate: Arc<dyn GateLayer>,
    /// Readiness for `/readyz`.
    pub ready: ReadyCheck,
    /// Policy reload, run on file changes and [`Running::reload`].
    pub reload: Option<ReloadFn>,
    /// Where everything is counted.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").finish_non_exhaustive()
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    readiness: Readiness,
    reloader: Option<ReloadHandle>,
    task: JoinHandle<Drained>,
}

/// Binds `settings.listen` and `settings.admin_listen` (either may use port
/// 0) and starts serving. Fails only on binding or watching.
pub async fn start(settings: &Settings, wiring: Wiring) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", settings.listen))?;
    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--admin-listen)",
                settings.admin_listen
            )
        })?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let reloader = match &wiring.reload {
        Some(f) => Some(
            reload::spawn(
                settings.policy.watched_files(),
                f.clone(),
                wiring.metrics.clone(),
                reload::DEBOUNCE,
            )
            .context("cannot watch the policy files")?,
        ),
        None => None,
    };

    let readiness = Readiness::new(wiring.ready.clone());
    let app = build_app(settings, wiring.gate.as_ref(), wiring.metrics.clone());
    let admin = BoxCloneSyncService::new(crate::admin::router(
        readiness.clone(),
        wiring.metrics.clone(),
    ));
    let (stop, mut stopped) = watch::channel(false);
    let grace = settings.shutdown_grace;
    let task = tokio::spawn(async move {
        let (admin_stop, mut admin_stopped) = watch::channel(false);
        // The admin listener outlives the drain, so probes see /readyz
        // answer 503 while in-flight requests finish.
        let admin_task = tokio::spawn(server::serve(
            "admin",
            admin_listener,
            admin,
            async move {
                let _ = admin_stopped.wait_for(|s| *s).await;
            },
            std::time::Duration::from_secs(1),
        ));
        let drained = server::serve(
            "gate",
            listener,
            app,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            grace,
        )
        .await;
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        drained
    });
    match &settings.mode {
        Mode::Proxy { upstream } => info!(
            listen = %addr,
            admin = %admin_addr,
            upstream = %format!("http://{}{}", upstream.authority, upstream.base_path),
            "serving"
        ),
        Mode::ForwardAuth => info!(listen = %addr, admin = %admin_addr, "serving forward-auth"),
    }
    Ok(Running {
        addr,
        admin_addr,
        stop,
        readiness,
        reloader,
        task,
    })
}

impl Running {
    /// The gate's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What SIGHUP fires; `None` without a policy to reload.
    pub fn reload_trigger(&self) -> Option<reload::ReloadTrigger> {
        self.reloader.as_ref().map(ReloadHandle::trigger_handle)
    }

    /// Reload the policy now, as SIGHUP does.
    pub fn reload(&self) {
        match &self.reloader {
            Some(r) => r.trigger(),
            None => warn!("reload requested but there is no policy to reload"),
        }
    }

    /// Stop accepting, drain within the grace period, and return how it went.
    pub async fn shutdown(self) -> Drained {
        self.readiness.start_draining();
        let _ = self.stop.send(true);
        let drained = self.task.await.unwrap_or(Drained::TimedOut(0));
        drop(self.reloader);
        drained
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Drained {
        signal.await;
        self.shutdown().await
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), logging which.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                info!(signal = name, "shutdown requested");
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                info!(signal = "SIGINT", "shutdown requested");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!(signal = "ctrl-c", "shutdown requested");
    }
}

/// Calls `on_hup` for every SIGHUP until the returned task is aborted.
pub fn on_sighup(on_hup: impl Fn() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                warn!("cannot listen for SIGHUP; reload on file change only");
                return;
            };
            while hup.recv().await.is_some() {
                info!(signal = "SIGHUP", "policy reload requested");
                on_hup();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = on_hup;
            std::future::pending::<()>().await;
        }
    })
}
