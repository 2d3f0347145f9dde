//! Policy hot reload: on a change to the policy or groups files, and on
//! SIGHUP.
//!
//! The files' *directories* are watched, not the files: editors save by
//! writing a new file and renaming it over the old one, and Kubernetes
//! updates a mounted ConfigMap by swapping a `..data` symlink, neither of
//! which a watch on the old file would see. Any change in a watched
//! directory starts a debounce (200 ms of quiet, and at most ten times that
//! in all, so that a directory that never goes quiet, a log file beside the
//! policy, cannot hold a reload off); then the watched files are read, and
//! the reload runs only if their bytes changed. SIGHUP (or
//! [`ReloadHandle::trigger`]) always reloads.
//!
//! The policy in force was loaded before the watch began (startup waits
//! for keys in between), so once watching, the reloader loads the files
//! once more: a change made in between would otherwise go unseen until the
//! next one.

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

/// However busy a watched directory, a reload waits at most this many
/// debounce periods after the first change.
const MAX_DEBOUNCES: u32 = 10;

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
    if !files.is_empty() {
        // Catch up with a change made between the first load and the watch.
        match run_reload(&reload).await {
            Ok(_) => debug!("policy files loaded again now that they are watched"),
            Err(problems) => refused(&metrics, "file change", &problems),
        }
    }
    while let Some(first) = rx.recv().await {
        let mut forced = matches!(first, Trigger::Forced);
        let deadline = tokio::time::Instant::now() + debounce * MAX_DEBOUNCES;
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(Trigger::Forced) => forced = true,
                    Some(Trigger::Changed) => {}
                    None => return,
                },
                () = tokio::time::sleep(debounce) => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let now = read(&files).await;
        if !forced && now == last {
            debug!("a watched directory changed but the policy files did not");
            continue;
        }
        last = now;
        let result = run_reload(&reload).await;
        let why = if forced { "signal" } else { "file change" };
        match result {
            Ok(warnings) => {
                metrics.record_reload(true);
                info!(reload.trigger = why, "policy reloaded");
                for w in warnings {
                    warn!(reload.trigger = why, "policy: {w}");
                }
            }
            Err(problems) => refused(&metrics, why, &problems),
        }
    }
}

/// A reload the policy refused: counted and logged; the old policy stays.
fn refused(metrics: &Metrics, why: &str, problems: &str) {
    metrics.record_reload(false);
    warn!(
        reload.trigger = why,
        error = %problems,
        "policy reload refused; the previous policy stays in force"
    );
}

async fn run_reload(reload: &ReloadFn) -> Result<Vec<String>, String> {
    let r = reload.clone();
    tokio::task::spawn_blocking(move || r())
        .await
        .unwrap_or_else(|e| Err(format!("reload panicked: {e}")))
}

async fn read(files: &Arc<Vec<PathBuf>>) -> Vec<Option<Vec<u8>>> {
    let f = files.clone();
    tokio::task::spawn_blocking(move || contents(&f))
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Watches `file` (its directory) with a reload that records what the
    /// file held each time it ran.
    fn watch(file: &Path, debounce_ms: u64) -> (ReloadHandle, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (path, s) = (file.to_owned(), seen.clone());
        let reload: ReloadFn = Arc::new(move || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            s.lock().unwrap().push(text);
            Ok(Vec::new())
        });
        let handle = spawn(
            vec![file.to_owned()],
            reload,
            Arc::new(Metrics::new()),
            Duration::from_millis(debounce_ms),
        )
        .unwrap();
        (handle, seen)
    }

    async fn until_seen(seen: &Mutex<Vec<String>>, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.lock().unwrap().iter().any(|t| t == text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no reload saw {text:?}: {:?}",
                seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The sidecar loads the policy, then waits for keys, then watches: a
    /// change in between is loaded once the watch is up, not left until the
    /// next change.
    #[tokio::test]
    async fn a_change_before_the_watch_began_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, "as loaded").unwrap();
        std::fs::write(&file, "changed before the watch").unwrap();
        let (_watching, seen) = watch(&file, 50);
        until_seen(&seen, "changed before the watch").await;
    }

    /// A directory that never goes quiet (a log beside the policy) does not
    /// hold a reload off.
    #[tokio::test]
    async fn a_busy_directory_does_not_hold_a_reload_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, "first").unwrap();
        let (_watching, seen) = watch(&file, 100);
        until_seen(&seen, "first").await;
        let stop = Arc::new(AtomicBool::new(false));
        let (log, s) = (dir.path().join("app.log"), stop.clone());
        let writer = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                std::fs::write(&log, n.to_string()).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        std::fs::write(&file, "second").unwrap();
        until_seen(&seen, "second").await;
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
    }
}
