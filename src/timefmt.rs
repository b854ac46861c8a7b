//! Conversions between tokio's monotonic clock and wall-clock RFC 3339 text.
//!
//! The broker keeps every deadline as a [`tokio::time::Instant`] so refresh
//! and backoff run on tokio's (pausable) clock; wall-clock times exist only at
//! the edge, when a status document is rendered.
//!
//! Invariant: nothing here can panic or fail, whatever the input. Times come
//! from identity providers (a JWT `exp` in the year 10000, say), so every
//! addition is checked and the formatter clamps to what RFC 3339 can write
//! (years 0001–9999) instead of failing.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The wall-clock time corresponding to a monotonic instant, as seen now.
/// Clamped to [`SystemTime::UNIX_EPOCH`] below and [`far_future`] above.
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    if at >= now {
        wall_now
            .checked_add(at - now)
            .map_or_else(far_future, |t| t.min(far_future()))
    } else {
        wall_now
            .checked_sub(now - at)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// The latest time tokend writes, late in the year 9999 (the last second
/// the date library represents in every time zone).
pub fn far_future() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_207_200)
}

/// The instant `d` after `at`, or the furthest instant tokio can represent
/// in that direction: never a panic on overflow.
pub fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(at)
}

/// Sleeps until `at`, or for ever without one (a `select!` arm that is
/// off until there is a deadline).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// RFC 3339 in UTC with whole seconds: `2026-11-29T10:00:00Z`. Times beyond
/// what RFC 3339 can write are shown as its last or first second.
pub fn rfc3339(t: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(if t > SystemTime::UNIX_EPOCH {
        jiff::Timestamp::MAX
    } else {
        jiff::Timestamp::MIN
    });
    format!("{ts:.0}")
}

/// RFC 3339 text of a monotonic instant.
pub fn rfc3339_at(at: Instant) -> String {
    rfc3339(wall(at))
}

/// Parses RFC 3339 text (as [`rfc3339`] writes it).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
}

/// Whole seconds, rounded up, so a `Retry-After` never invites an early retry.
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// `d` rounded up to whole seconds, for display: an IdP's "40 s" token,
/// measured from when the request was sent, shows as 40 s, not 39.6 s.
pub fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs(ceil_secs(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn formats_whole_seconds_and_clamps_instead_of_failing() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_809_129_600_250);
        assert_eq!(rfc3339(t), "2027-05-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2027-05-01T00:00:00Z"),
            Some(t - Duration::from_millis(250))
        );
        // Year 10000 and beyond: the last second RFC 3339 can write, no panic.
        let y10k = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_900);
        assert!(rfc3339(y10k).starts_with("9999-12-"), "{}", rfc3339(y10k));
        let huge = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 60);
        assert!(rfc3339(huge).starts_with("9999-12-"));
        assert_eq!(rfc3339(far_future()), "9999-12-30T22:00:00Z");
        assert_eq!(rfc3339(y10k), rfc3339(far_future()));
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_of_far_instants_saturates() {
        let far = later(Instant::now(), Duration::MAX);
        assert!(far > Instant::now());
        assert!(wall(far) <= far_future());
        let _ = rfc3339_at(far);
    }
}
