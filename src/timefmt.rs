//! Conversions between tokio's monotonic clock and wall-clock RFC 3339 text.
//!
//! The broker keeps every deadline as a [`tokio::time::Instant`] so refresh
//! and backoff run on tokio's (pausable) clock; wall-clock times exist only at
//! the edge, when a status document is rendered.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The wall-clock time corresponding to a monotonic instant, as seen now.
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    if at >= now {
        wall_now + (at - now)
    } else {
        wall_now
            .checked_sub(now - at)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// RFC 3339 in UTC with whole seconds: `2026-11-29T10:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 text of a monotonic instant.
pub fn rfc3339_at(at: Instant) -> String {
    rfc3339(wall(at))
}

/// Whole seconds, rounded up, so a `Retry-After` never invites an early retry.
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

/// Seconds since the epoch of a civil date (proleptic Gregorian, UTC midnight).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2027, 5, 1) * 86_400, 1_809_129_600);
    }

    #[test]
    fn ceil() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
    }
}
