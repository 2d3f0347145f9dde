//! Policy hot reload: on a change to the policy or groups files, and on
//! SIGHUP.
//!
//! The files' *directories* are watched, not the files: editors save by
//! writing a new file and renaming it over the old one, and Kubernetes
//! updates a mounted ConfigMap by swapping a `..data` symlink, neither of
//! which a watch on the old file would see. Any change in a watched
//! directory starts a debounce (200 ms of quiet); then the watched files are
//! read, and the reload runs only if their bytes changed. SIGHUP (or
//! [`ReloadHandle::trigger`]) always reloads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Re-reads the policy and swaps it in if valid: `Ok` with the new policy's
/// warnings, or `Err` with every problem (the old policy stays). Called on a
/// blocking thread. The real one is `idgate::policy::PolicyHandle::reload`.
pub type ReloadFn = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;

/// The default quiet period before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
enum Trigger {
    Changed,
    Forced,
}

/// A running reloader. Dropping it stops watching.
pub struct ReloadHandle {
    tx: mpsc::Sender<Trigger>,
    task: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle").finish_non_exhaustive()
    }
}

impl ReloadHandle {
    /// Reload now (after the debounce) whether or not the files changed:
    /// what SIGHUP does.
    pub fn trigger(&self) {
        self.trigger_handle().fire();
    }

    /// A cheap handle that can trigger reloads from elsewhere (a signal
    /// task).
    pub fn trigger_handle(&self) -> ReloadTrigger {
        ReloadTrigger(self.tx.clone())
    }
}

/// Triggers a forced reload; see [`ReloadHandle::trigger`].
#[derive(Debug, Clone)]
pub struct ReloadTrigger(mpsc::Sender<Trigger>);

impl ReloadTrigger {
    /// Reload after the debounce, whether or not the files changed.
    pub fn fire(&self) {
        // A full channel already holds a pending trigger.
        let _ = self.0.try_send(Trigger::Forced);
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `files`' directories. With no files, only
/// [`ReloadHandle::trigger`] reloads.
pub fn spawn(
    files: Vec<PathBuf>,
    reload: ReloadFn,
    metrics: Arc<Metrics>,
    debounce: Duration,
) -> notify::Result<ReloadHandle> {
    let (tx, rx) = mpsc::channel(16);
    let watcher = if files.is_empty() {
        None
    } else {
        let events = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                match res {
                    // Opening and reading (ours included) is not a change.
                    Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
                    // A full channel already holds a pending trigger.
                    Ok(_) => {
                        let _ = events.try_send(Trigger::Changed);
                    }
                    Err(e) => warn!(error = %e, "policy file watch error"),
                }
            })?;
        let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        debug!(dirs = ?dirs, "watching policy directories");
        Some(watcher)
    };
    let task = tokio::spawn(run(files, reload, metrics, debounce, rx));
    Ok(ReloadHandle {
        tx,
        task,
        _watcher: watcher,
    })
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The files' bytes (following symlinks); `None` for one that cannot be read.
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

async fn run(
    files: Vec<PathBuf>,
    reload: ReloadFn,
    metrics: Arc<Metrics>,
    debounce: Duration,
    mut rx: mpsc::Receiver<Trigger>,
) {
    let files = Arc::new(files);
    let mut last = read(&files).await;
    while let Some(first) = rx.recv().await {
        let mut forced = matches!(first, Trigger::Forced);
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(Trigger::Forced) => forced = true,
                    Some(Trigger::Changed) => {}
                    None => return,
                },
                () = tokio::time::sleep(debounce) => break,
            }
        }
        let now = read(&files).await;
        if !forced && now == last {
            debug!("a watched directory changed but the policy files did not");
            continue;
        }
        last = now;
        let r = reload.clone();
        let result = tokio::task::spawn_blocking(move || r())
            .await
            .unwrap_or_else(|e| Err(format!("reload panicked: {e}")));
        let why = if forced { "signal" } else { "file change" };
        match result {
            Ok(warnings) => {
                metrics.record_reload(true);
                info!(reload.trigger = why, "policy reloaded");
                for w in warnings {
                    warn!(reload.trigger = why, "policy: {w}");
                }
            }
            Err(problems) => {
                metrics.record_reload(false);
                warn!(
                    reload.trigger = why,
                    error = %problems,
                    "policy reload refused; the previous policy stays in force"
                );
            }
        }
    }
}

async fn read(files: &Arc<Vec<PathBuf>>) -> Vec<Option<Vec<u8>>> {
    let f = files.clone();
    tokio::task::spawn_blocking(move || contents(&f))
        .await
        .unwrap_or_default()
}
