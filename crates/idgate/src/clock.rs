//! Time, behind a trait so that tests can move it by hand.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time.
///
/// Token claims are checked against [`Clock::unix_now`]; key-cache lifetimes
/// and rate limits use [`Clock::monotonic`] so a wall-clock jump neither
/// expires keys early nor keeps them forever.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time since the Unix epoch.
    fn unix_now(&self) -> Duration;
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn unix_now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: for tests of anything that depends
/// on time (expiry, key lifetimes, IAM conditions on `request.time`).
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(Duration, Duration)>,
}

impl ManualClock {
    /// A clock reading `unix_now` seconds since the epoch.
    pub fn new(unix_now: Duration) -> Self {
        ManualClock {
            state: Mutex::new((unix_now, Duration::ZERO)),
        }
    }

    /// A clock reading the current real time, frozen.
    pub fn starting_now() -> Self {
        Self::new(SystemClock::new().unix_now())
    }

    /// Move both the wall clock and the monotonic clock forward.
    pub fn advance(&self, by: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += by;
        s.1 += by;
    }

    /// Set the wall clock (the monotonic clock is untouched).
    pub fn set_unix(&self, to: Duration) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = to;
    }
}

impl Clock for ManualClock {
    fn unix_now(&self) -> Duration {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
    fn monotonic(&self) -> Duration {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Duration::from_secs(1000));
        assert_eq!(c.unix_now(), Duration::from_secs(1000));
        assert_eq!(c.monotonic(), Duration::ZERO);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.unix_now(), Duration::from_secs(1005));
        assert_eq!(c.monotonic(), Duration::from_secs(5));
    }
}
