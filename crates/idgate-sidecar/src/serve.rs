//! Running `serve` in-process: bind both listeners, run until told to
//! stop, drain. The binary drives it with signals; tests with
//! [`Running::shutdown`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use crate::proxy::Tunnels;
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
        .with_context(|| format!("cannot listen on {} (--listen, or $PORT)", settings.listen))?;
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
    crate::memory::spawn_releaser();

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
    let crate::app::App {
        service: app,
        tunnels,
    } = build_app(settings, wiring.gate.as_ref(), wiring.metrics.clone());
    let admin = BoxCloneSyncService::new(crate::admin::router(
        readiness.clone(),
        wiring.metrics.clone(),
    ));
    let (stop, mut stopped) = watch::channel(false);
    let mut tunnels_stopped = stop.subscribe();
    let grace = settings.shutdown_grace;
    let max_connections = settings.max_connections.resolve(
        open_files_limit(),
        matches!(settings.mode, Mode::Proxy { .. }),
    );
    let limits = server::Limits {
        max_connections,
        ..server::Limits::DEFAULT
    };
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
            Duration::from_secs(1),
            server::Limits::DEFAULT,
        ));
        let requests = server::serve(
            "gate",
            listener,
            app,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            grace,
            limits,
        );
        // The moment the drain starts, for the tunnels' share of the grace.
        let since = async move {
            let _ = tunnels_stopped.wait_for(|s| *s).await;
            tokio::time::Instant::now()
        };
        let (drained, since) = tokio::join!(requests, since);
        // WebSocket tunnels have left their connections, so the server's
        // drain did not wait for them. Every connection has ended now, so no
        // handshake in flight can open another: they get what is left of
        // the same grace.
        let cut = drain_tunnels(&tunnels, grace.saturating_sub(since.elapsed())).await;
        let drained = match (drained, cut) {
            (drained, 0) => drained,
            (Drained::Clean, cut) => Drained::TimedOut(cut),
            (Drained::TimedOut(open), cut) => Drained::TimedOut(open + cut),
        };
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        drained
    });
    match &settings.mode {
        Mode::Proxy { upstream } => info!(
            listen = %addr,
            admin = %admin_addr,
            upstream = %format!("http://{}{}", upstream.authority, upstream.base_path),
            max_connections,
            "serving"
        ),
        Mode::ForwardAuth => info!(
            listen = %addr,
            admin = %admin_addr,
            max_connections,
            "serving forward-auth"
        ),
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

/// Waits up to `within` for the open WebSocket tunnels to close, cuts the
/// rest, and says so; returns how many were cut.
async fn drain_tunnels(tunnels: &Tunnels, within: Duration) -> usize {
    if tunnels.is_empty() {
        return 0;
    }
    info!(
        tunnels = tunnels.len(),
        "waiting for WebSocket tunnels to close"
    );
    let cut = tunnels.drain(within).await;
    if cut == 0 {
        info!("WebSocket tunnels closed");
    } else {
        warn!(
            tunnels = cut,
            "grace period over with WebSocket tunnels open; closing them"
        );
    }
    cut
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

/// SIGTERM and SIGINT, listened for from the moment this is built: install
/// it before the listeners are bound, or a signal that arrives early takes
/// the default action (exit without draining).
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl std::fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownSignal").finish_non_exhaustive()
    }
}

impl ShutdownSignal {
    /// Starts listening. Needs a tokio runtime.
    pub fn install() -> std::io::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Completes on the first SIGTERM or SIGINT, logging which.
    pub async fn recv(mut self) {
        #[cfg(unix)]
        {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            };
            info!(signal = name, "shutdown requested");
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            info!(signal = "ctrl-c", "shutdown requested");
        }
    }
}

/// SIGHUP, listened for from the moment this is built (its default action
/// is to exit, so install it before the listeners are bound).
pub struct HangupSignal {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl std::fmt::Debug for HangupSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HangupSignal").finish_non_exhaustive()
    }
}

impl HangupSignal {
    /// Starts listening. Needs a tokio runtime.
    pub fn install() -> std::io::Result<HangupSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(HangupSignal {
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(HangupSignal {})
    }

    /// Calls `on_hup` for every SIGHUP until the returned task is aborted.
    pub fn forward(self, on_hup: impl Fn() + Send + 'static) -> JoinHandle<()> {
        #[cfg(unix)]
        {
            let mut hup = self.hup;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!(signal = "SIGHUP", "policy reload requested");
                    on_hup();
                }
            })
        }
        #[cfg(not(unix))]
        {
            let _ = on_hup;
            tokio::spawn(std::future::pending::<()>())
        }
    }
}

/// The soft limit on open files, which `idgate serve` has raised to the
/// hard one by now; `u64::MAX` where there is none to read.
fn open_files_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}
