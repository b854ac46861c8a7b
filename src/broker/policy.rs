//! The refresh policy as pure arithmetic: when to refresh a token, and how
//! long to back off after a failure. Randomness comes in as an argument so the
//! bounds are testable; the actor draws it.

use std::time::Duration;

/// ± this fraction of jitter on a refresh delay.
pub const REFRESH_JITTER: f64 = 0.05;
/// First backoff ceiling after a failure.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Largest backoff ceiling.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Shortest pause between two attempts, so full jitter never spins.
pub const BACKOFF_FLOOR: Duration = Duration::from_millis(100);
/// Longest `Retry-After` honoured; a larger one is treated as this: the
/// backoff ceiling, so one IdP's `Retry-After: 999999` cannot turn a bad
/// minute into an hour without tokens (docs/behaviour.md, "Recovery").
pub const RETRY_AFTER_CAP: Duration = BACKOFF_CAP;
/// A refresh starts this long (at most a tenth of the token's lifetime)
/// before its token stops being served, so the fetch has time to land.
pub const REFRESH_HEADROOM: Duration = Duration::from_secs(5);
/// No refresh is ever scheduled sooner than this after a fetch.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// Delay from a token's issue to its refresh.
///
/// `jitter` is drawn from `[-REFRESH_JITTER, REFRESH_JITTER]`. Without
/// `refresh_in`: `ratio × lifetime`, jittered, no later than
/// `lifetime − min_ttl` and no earlier than half the lifetime (so a token
/// shorter than `min_ttl` refreshes at half-life rather than in a loop). With
/// the IdP's `refresh_in`: that, jittered and capped at `lifetime − min_ttl`,
/// but the cap never pulls it before half-life either; a `refresh_in` under
/// a tenth of the lifetime (0 included) is raised to that tenth, so no IdP
/// can drive a fetch loop.
///
/// Whatever the above gives is then capped at [`REFRESH_HEADROOM`] (or a
/// tenth of the lifetime, if less) before the token stops being served,
/// `lifetime − 5 s − 5 s` for tokens of a minute or more, but never below
/// 1 s: the refresh starts early enough that a fetch of a few seconds lands
/// before the old token stops being servable. (A `min_ttl` longer than half
/// the lifetime keeps the half-life floor above, so it cannot cause a loop.)
///
/// ```
/// use std::time::Duration;
/// use tokend::broker::policy::refresh_delay;
/// let hour = Duration::from_secs(3600);
/// // A one-hour token, refreshed at 75 % with no jitter: after 45 minutes.
/// assert_eq!(refresh_delay(hour, None, 0.75, Duration::from_secs(120), 0.0), Duration::from_secs(2700));
/// ```
pub fn refresh_delay(
    lifetime: Duration,
    refresh_in: Option<Duration>,
    ratio: f64,
    min_ttl: Duration,
    jitter: f64,
) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(-REFRESH_JITTER, REFRESH_JITTER)
    } else {
        0.0
    };
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1.0)
    } else {
        0.75
    };
    let half = lifetime / 2;
    let latest = lifetime.saturating_sub(min_ttl);
    let delay = match refresh_in {
        Some(r) => {
            let base = r.max(lifetime / 10).mul_f64(1.0 + jitter);
            base.min(latest).max(base.min(half))
        }
        None => lifetime
            .mul_f64(ratio * (1.0 + jitter))
            .min(latest)
            .max(half),
    };
    let headroom = REFRESH_HEADROOM.min(lifetime / 10);
    let latest_start = lifetime.saturating_sub(crate::token::SERVE_MARGIN + headroom);
    delay.min(latest_start).max(MIN_REFRESH_DELAY)
}

/// The backoff ceiling after `failures` consecutive failures: 1 s doubling to 5 min.
pub fn backoff_ceiling(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_START * 2u32.pow(doublings)).min(BACKOFF_CAP)
}

/// Delay before the next attempt: full jitter below the ceiling (`unit` drawn
/// from `[0, 1)`), never sooner than the server's `Retry-After`. Permanent-
/// looking errors wait in the slow half of the largest ceiling.
pub fn backoff_delay(
    failures: u32,
    permanent: bool,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    let jittered = if permanent {
        BACKOFF_CAP.mul_f64(0.5 + unit / 2.0)
    } else {
        backoff_ceiling(failures).mul_f64(unit)
    };
    let delay = jittered.max(BACKOFF_FLOOR);
    match retry_after {
        Some(r) => delay.max(r.min(RETRY_AFTER_CAP)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ratio_schedule_with_jitter_bounds() {
        // 1 h token, ratio 0.75, min_ttl 2 m: 45 m ± 5 %.
        let lo = refresh_delay(S(3600), None, 0.75, S(120), -0.05);
        let mid = refresh_delay(S(3600), None, 0.75, S(120), 0.0);
        let hi = refresh_delay(S(3600), None, 0.75, S(120), 0.05);
        assert_eq!(mid, S(2700));
        assert_eq!(lo, S(2565));
        assert_eq!(hi, S(2835));
        // Jitter beyond the bound is clamped.
        assert_eq!(refresh_delay(S(3600), None, 0.75, S(120), 0.5), hi);
    }

    #[test]
    fn never_later_than_expiry_minus_min_ttl() {
        // 10 min token, ratio 0.95 → 9.5 m, but min_ttl 2 m caps at 8 m.
        assert_eq!(refresh_delay(S(600), None, 0.95, S(120), 0.05), S(480));
    }

    #[test]
    fn short_token_refreshes_at_half_life() {
        // 60 s token with min_ttl 2 m: latest would be 0; half-life wins.
        assert_eq!(refresh_delay(S(60), None, 0.75, S(120), 0.0), S(30));
    }

    #[test]
    fn refresh_in_takes_precedence() {
        // Entra: 24 h token, refresh_in 12 h.
        let d = refresh_delay(S(86_400), Some(S(43_200)), 0.75, S(120), 0.0);
        assert_eq!(d, S(43_200));
        let lo = refresh_delay(S(86_400), Some(S(43_200)), 0.75, S(120), -0.05);
        assert_eq!(lo, S(41_040));
        // refresh_in past expiry − min_ttl is capped there.
        assert_eq!(
            refresh_delay(S(3600), Some(S(3590)), 0.75, S(120), 0.0),
            S(3480)
        );
    }

    #[test]
    fn always_before_the_token_stops_being_served() {
        // min_ttl 0 and ratio 0.95 on a 60 s token: 57 s would be after the
        // token stopped being served (at 55 s): capped 5 s before that.
        assert_eq!(refresh_delay(S(60), None, 0.95, S(0), 0.05), S(50));
        assert_eq!(refresh_delay(S(60), Some(S(59)), 0.75, S(0), 0.0), S(50));
        // A long min_ttl still wins over the 5 s margin.
        assert_eq!(refresh_delay(S(600), None, 0.95, S(120), 0.0), S(480));
        // Tokens of a few seconds: never below 1 s.
        assert_eq!(refresh_delay(S(20), None, 0.95, S(0), 0.0), S(13));
        assert_eq!(refresh_delay(S(10), None, 0.75, S(0), 0.0), S(4));
        assert_eq!(refresh_delay(S(6), None, 0.75, S(0), 0.0), S(1));
        assert_eq!(refresh_delay(S(4), None, 0.75, S(0), 0.0), S(1));
    }

    #[test]
    fn a_tiny_refresh_in_does_not_loop() {
        // refresh_in 0 on a 1 h token: raised to a tenth of the lifetime.
        assert_eq!(
            refresh_delay(S(3600), Some(S(0)), 0.75, S(120), 0.0),
            S(360)
        );
        assert_eq!(
            refresh_delay(S(3600), Some(S(1)), 0.75, S(120), 0.0),
            S(360)
        );
    }

    #[test]
    fn never_zero() {
        assert_eq!(
            refresh_delay(Duration::ZERO, None, 0.75, S(120), 0.0),
            MIN_REFRESH_DELAY
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let ceilings: Vec<u64> = (1..=12).map(|f| backoff_ceiling(f).as_secs()).collect();
        assert_eq!(
            ceilings,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
        // Full jitter: anywhere in [floor, ceiling].
        assert_eq!(backoff_delay(4, false, None, 0.999_999).as_secs(), 7);
        assert_eq!(backoff_delay(4, false, None, 0.0), BACKOFF_FLOOR);
        assert!(backoff_delay(30, false, None, 1.0) <= BACKOFF_CAP);
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(backoff_delay(1, false, Some(S(30)), 0.5), S(30));
        // A huge Retry-After counts as the backoff ceiling, 5 min, not an hour.
        assert_eq!(backoff_delay(1, false, Some(S(999_999)), 0.5), S(300));
        assert_eq!(backoff_delay(9, false, Some(S(301)), 0.99), S(300));
    }

    #[test]
    fn permanent_errors_wait_at_the_slow_end() {
        assert!(backoff_delay(1, true, None, 0.0) >= S(150));
        assert!(backoff_delay(1, true, None, 1.0) <= S(300));
    }
}
