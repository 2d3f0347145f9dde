//! Times in words for the local tools: `2026-11-28T13:00:00Z, in 42m`.

use std::time::{Duration, UNIX_EPOCH};

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339: u64 = 253_402_300_799;

/// A Unix time as RFC 3339 UTC to the second; absurd times as a number.
pub fn rfc3339(unix: u64) -> String {
    if unix > LAST_RFC3339 {
        return format!("unix time {unix}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `in 42m`, `3h 5m ago`, `now`.
pub fn relative(unix: u64, now: u64) -> String {
    match unix.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}", short(unix - now)),
        std::cmp::Ordering::Less => format!("{} ago", short(now - unix)),
        std::cmp::Ordering::Equal => "now".into(),
    }
}

/// `TIME, in 42m`.
pub fn at(unix: u64, now: u64) -> String {
    format!("{}, {}", rfc3339(unix), relative(unix, now))
}

/// A duration in at most two units: `12s`, `42m`, `1h 5m`, `3d 2h`.
pub fn short(secs: u64) -> String {
    const M: u64 = 60;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit} {small}{small_unit}")
        }
    };
    match secs {
        s if s < M => format!("{s}s"),
        s if s < H => two(s / M, "m", s % M, "s"),
        s if s < D => two(s / H, "h", (s % H) / M, "m"),
        s => two(s / D, "d", (s % D) / H, "h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), format!("unix time {}", u64::MAX));
        assert_eq!(short(5), "5s");
        assert_eq!(short(42 * 60), "42m");
        assert_eq!(short(90), "1m 30s");
        assert_eq!(short(3600 + 300 + 7), "1h 5m");
        assert_eq!(short(3 * 86400 + 7200), "3d 2h");
        assert_eq!(relative(100, 40), "in 1m");
        assert_eq!(relative(40, 100), "1m ago");
        assert_eq!(relative(1, 1), "now");
    }
}
