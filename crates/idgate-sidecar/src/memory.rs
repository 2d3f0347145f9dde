//! Handing memory back to the operating system once a burst of
//! connections is over.
//!
//! Each open connection holds buffers (hyper allocates about 16 KiB per
//! HTTP/1 connection up front, on each side of the proxy). When a burst of
//! 1,000 connections ends, glibc's malloc keeps the freed memory for reuse
//! rather than returning it, so the sidecar's RSS stays at the burst's peak
//! for the rest of its life: the figure a memory limit or a bill sees.
//!
//! Connections that close are counted here ([`closed`]: client connections
//! by the server, idle upstream connections by the pool). Every
//! [`CHECK_EVERY`], once at least [`AFTER_CLOSED`] have closed since the
//! last time, the release hook runs on a blocking thread. The hook is the
//! binary's ([`set_release`]: `malloc_trim(0)` on glibc); this library has
//! no unsafe code, and without a hook nothing runs. Steady traffic on
//! long-lived connections never triggers it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tracing::debug;

/// How often the count of closed connections is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How many connections must have closed since the last release (about
/// 50 KiB each, client and upstream side together).
pub const AFTER_CLOSED: usize = 128;

static RELEASE: OnceLock<fn()> = OnceLock::new();
static CLOSED: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

/// Sets the function that returns free heap memory to the operating
/// system. Once per process; later calls are ignored.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Counts `n` connections closed.
pub(crate) fn closed(n: usize) {
    CLOSED.fetch_add(n, Ordering::Relaxed);
}

/// Takes the count of closed connections when it has reached `at_least`.
fn take_closed(counter: &AtomicUsize, at_least: usize) -> Option<usize> {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n >= at_least).then_some(0)
        })
        .ok()
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
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(n) = take_closed(&CLOSED, AFTER_CLOSED) {
                let _ = tokio::task::spawn_blocking(release).await;
                debug!(
                    connections_closed = n,
                    "returned freed memory to the operating system"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_taken_only_once_it_reaches_the_threshold() {
        let counter = AtomicUsize::new(0);
        counter.fetch_add(127, Ordering::Relaxed);
        assert_eq!(take_closed(&counter, 128), None);
        assert_eq!(counter.load(Ordering::Relaxed), 127, "left to grow");
        counter.fetch_add(5, Ordering::Relaxed);
        assert_eq!(take_closed(&counter, 128), Some(132));
        assert_eq!(counter.load(Ordering::Relaxed), 0, "counted afresh");
        assert_eq!(take_closed(&counter, 128), None);
    }
}
