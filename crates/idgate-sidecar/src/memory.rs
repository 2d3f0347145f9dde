//! Handing memory back to the operating system once a burst of
//! connections is over.
//!
//! Each open connection holds buffers (hyper allocates about 16 KiB per
//! HTTP/1 connection up front, on each side of the proxy). When a burst of
//! 1,000 connections ends, the allocator keeps the freed memory for reuse
//! rather than returning it (glibc's malloc for the rest of the process's
//! life; jemalloc, without its background threads, until later allocations
//! let its decay run: an idle sidecar gave nothing back in 40 s), so the
//! sidecar's RSS stays at the burst's peak: the figure a memory limit or a
//! bill sees.
//!
//! Connections that close are counted here ([`closed`]: client connections
//! by the server, idle upstream connections by the pool). Once
//! [`AFTER_CLOSED`] have closed since the last release, the release hook
//! runs on a blocking thread, [`SETTLE`] later (a burst's connections close
//! together, and are released together), and never sooner than
//! [`MIN_GAP`] after the last release (a stream of short connections
//! trims at that pace at most). The hook is the binary's ([`set_release`]:
//! a purge of jemalloc's arenas on Linux); this library has no unsafe
//! code, and without a hook nothing runs. Steady traffic on long-lived
//! connections never triggers it.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

/// How many connections must have closed since the last release (about
/// 50 KiB each, client and upstream side together).
pub const AFTER_CLOSED: usize = 128;
/// How long after the count reaches [`AFTER_CLOSED`] the release runs.
pub const SETTLE: Duration = Duration::from_secs(1);
/// The least time between two releases.
pub const MIN_GAP: Duration = Duration::from_secs(5);

static RELEASE: OnceLock<fn()> = OnceLock::new();
static RELEASES: Releases = Releases::new();
static STARTED: AtomicBool = AtomicBool::new(false);

/// Sets the function that returns free heap memory to the operating
/// system. Once per process; later calls are ignored.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Counts `n` connections closed.
pub(crate) fn closed(n: usize) {
    RELEASES.closed(n);
}

/// Starts the task that runs the release hook after bursts: once per
/// process, and only when a hook is set. Needs a tokio runtime.
pub(crate) fn spawn_releaser() {
    let Some(&release) = RELEASE.get() else {
        return;
    };
    if STARTED.swap(true, Ordering::Relaxed) {
        return;
    }
    tokio::spawn(RELEASES.run(move || async move {
        let _ = tokio::task::spawn_blocking(release).await;
    }));
}

/// The count of connections closed since the last release, and the signal
/// that it has reached [`AFTER_CLOSED`].
struct Releases {
    closed: AtomicUsize,
    due: Notify,
}

impl Releases {
    const fn new() -> Releases {
        Releases {
            closed: AtomicUsize::new(0),
            due: Notify::const_new(),
        }
    }

    fn closed(&self, n: usize) {
        let before = self.closed.fetch_add(n, Ordering::Relaxed);
        // Only the close that crosses the threshold signals; the count is
        // reset below it when taken, so every release is signalled once.
        if before < AFTER_CLOSED && before + n >= AFTER_CLOSED {
            self.due.notify_one();
        }
    }

    /// Takes the count when it has reached [`AFTER_CLOSED`].
    fn take(&self) -> Option<usize> {
        self.closed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n >= AFTER_CLOSED).then_some(0)
            })
            .ok()
    }

    /// Runs `release` each time it is due, for ever.
    async fn run<F, R>(&self, mut release: F)
    where
        F: FnMut() -> R,
        R: Future<Output = ()>,
    {
        let mut last: Option<Instant> = None;
        loop {
            self.due.notified().await;
            let mut at = Instant::now() + SETTLE;
            if let Some(last) = last {
                at = at.max(last + MIN_GAP);
            }
            tokio::time::sleep_until(at).await;
            if let Some(n) = self.take() {
                release().await;
                last = Some(Instant::now());
                debug!(
                    connections_closed = n,
                    "returned freed memory to the operating system"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// A releaser on its own count, reporting when each release ran.
    fn releaser() -> (Arc<Releases>, mpsc::UnboundedReceiver<Instant>) {
        let releases = Arc::new(Releases::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let running = releases.clone();
        tokio::spawn(async move {
            running
                .run(move || {
                    let _ = tx.send(Instant::now());
                    std::future::ready(())
                })
                .await;
        });
        (releases, rx)
    }

    /// Whether a release runs within an hour (of paused time).
    async fn released_within_an_hour(rx: &mut mpsc::UnboundedReceiver<Instant>) -> Option<Instant> {
        tokio::time::timeout(Duration::from_secs(3600), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_runs_once_a_burst_has_closed_and_settled() {
        let (releases, mut rx) = releaser();
        releases.closed(AFTER_CLOSED - 1);
        assert_eq!(
            released_within_an_hour(&mut rx).await,
            None,
            "below the threshold"
        );

        let crossed = Instant::now();
        releases.closed(1);
        releases.closed(500);
        let at = released_within_an_hour(&mut rx).await.expect("a release");
        assert_eq!(at - crossed, SETTLE);
        assert_eq!(releases.closed.load(Ordering::Relaxed), 0, "counted afresh");
        assert_eq!(
            released_within_an_hour(&mut rx).await,
            None,
            "one release per burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn releases_are_at_least_the_gap_apart() {
        let (releases, mut rx) = releaser();
        releases.closed(AFTER_CLOSED);
        let first = released_within_an_hour(&mut rx).await.expect("a release");
        releases.closed(AFTER_CLOSED);
        let second = released_within_an_hour(&mut rx).await.expect("another");
        assert_eq!(second - first, MIN_GAP);

        // Long after, a burst is released as soon as it has settled.
        tokio::time::sleep(MIN_GAP * 3).await;
        let crossed = Instant::now();
        releases.closed(AFTER_CLOSED);
        let third = released_within_an_hour(&mut rx).await.expect("a third");
        assert_eq!(third - crossed, SETTLE);
    }
}
