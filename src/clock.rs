//! The two clocks a token's life is measured on, and the watch for a wall
//! clock that jumps ahead of the monotonic one.
//!
//! tokio's clock (CLOCK_MONOTONIC) drives every timer and lets the tests
//! pause time, but it stops while the host is suspended or its VM paused:
//! after a resume, a token that died an hour ago still looks fresh to it.
//! The wall clock keeps counting (or is stepped forward by NTP once the
//! host is back), so a deadline a caller relies on is kept on both: a
//! [`Moment`] is one point read on each.
//!
//! [`watch_jumps`] reads both clocks every [`CHECK_EVERY`] and reports
//! when the wall clock has moved more than [`JUMP`] ahead of the
//! monotonic one (docs/decisions.md, "Two clocks", says why a periodic
//! check rather than a timerfd). A wall clock stepped back is only logged:
//! every deadline also holds on the monotonic clock, so nothing dies early.
//!
//! Invariant: nothing here can panic, whatever either clock reads.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One point in time, read on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// tokio's clock: what timers run on.
    pub mono: Instant,
    /// The wall clock: what a JWT's `exp` and every reader's idea of
    /// "expired" are measured on.
    pub wall: SystemTime,
}

impl Moment {
    /// Both clocks, now.
    pub fn now() -> Moment {
        Moment {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `d` later on both clocks (saturating, never a panic).
    pub fn later(self, d: Duration) -> Moment {
        Moment {
            mono: crate::timefmt::later(self.mono, d),
            wall: self
                .wall
                .checked_add(d)
                .map_or_else(crate::timefmt::far_future, |t| {
                    t.min(crate::timefmt::far_future())
                }),
        }
    }

    /// How long from `self` until `deadline`, by whichever clock says less
    /// (zero once either says it has passed).
    pub fn until(self, deadline: Moment) -> Duration {
        let mono = deadline.mono.saturating_duration_since(self.mono);
        let wall = deadline
            .wall
            .duration_since(self.wall)
            .unwrap_or(Duration::ZERO);
        mono.min(wall)
    }

    /// Whether `deadline` has passed by either clock.
    pub fn reached(self, deadline: Moment) -> bool {
        self.mono >= deadline.mono || self.wall >= deadline.wall
    }

    /// The tokio instant at which `deadline` falls, as both clocks read
    /// now: the earlier of the two, for a timer.
    pub fn timer_for(self, deadline: Moment) -> Instant {
        crate::timefmt::later(self.mono, self.until(deadline))
    }
}

/// How often the clocks are compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How far the wall clock must move beyond the monotonic clock between two
/// checks to count as a jump (NTP's slewing moves it by milliseconds).
pub const JUMP: Duration = Duration::from_secs(2);

/// What one comparison of the clocks found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// Both moved alike.
    Steady,
    /// The wall clock moved this much more than the monotonic one: a
    /// suspend, a paused VM, or a clock stepped forward.
    Ahead(Duration),
    /// The wall clock was stepped back this much.
    Behind(Duration),
}

/// The difference between the two clocks, kept between checks.
#[derive(Debug, Clone, Copy)]
pub struct DriftCheck {
    last: Moment,
}

impl DriftCheck {
    pub fn new(at: Moment) -> DriftCheck {
        DriftCheck { last: at }
    }

    /// Compares how far each clock moved since the last check.
    pub fn check(&mut self, now: Moment) -> Drift {
        let mono = now.mono.saturating_duration_since(self.last.mono);
        let drift = match now.wall.duration_since(self.last.wall) {
            Ok(wall) if wall > mono + JUMP => Drift::Ahead(wall - mono),
            Ok(_) => Drift::Steady,
            Err(back) => {
                let back = back.duration() + mono;
                if back > JUMP {
                    Drift::Behind(back)
                } else {
                    Drift::Steady
                }
            }
        };
        self.last = now;
        drift
    }
}

/// Compares the clocks every [`CHECK_EVERY`] until `stop`, calling
/// `ahead` with the size of each forward jump. A step back is logged.
pub async fn watch_jumps(stop: CancellationToken, ahead: impl Fn(Duration)) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drift = DriftCheck::new(Moment::now());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match drift.check(Moment::now()) {
            Drift::Steady => {}
            Drift::Ahead(by) => ahead(by),
            Drift::Behind(by) => tracing::info!(
                by = %humantime::format_duration(crate::timefmt::whole_secs(by)),
                "the wall clock was stepped back; every token keeps its deadline, nothing is fetched"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_reached_when_either_clock_reaches_it() {
        let now = Moment::now();
        let deadline = now.later(S(120));
        assert_eq!(now.until(deadline), S(120));
        assert!(!now.reached(deadline));
        // A suspend: the wall clock moved 180 s, the monotonic one did not.
        let resumed = Moment {
            mono: now.mono,
            wall: now.wall + S(180),
        };
        assert_eq!(resumed.until(deadline), Duration::ZERO);
        assert!(resumed.reached(deadline));
        // A wall clock stepped back an hour: the monotonic deadline holds.
        let stepped_back = Moment {
            mono: now.mono + S(30),
            wall: now.wall - S(3600),
        };
        assert_eq!(stepped_back.until(deadline), S(90));
        assert_eq!(stepped_back.timer_for(deadline), now.mono + S(120));
        // Half way, then a 50 s jump: the timer moves 50 s earlier.
        let jumped = Moment {
            mono: now.mono + S(60),
            wall: now.wall + S(110),
        };
        assert_eq!(jumped.timer_for(deadline), now.mono + S(70));
    }

    #[tokio::test(start_paused = true)]
    async fn far_deadlines_saturate() {
        let far = Moment::now().later(Duration::MAX);
        assert!(far.wall <= crate::timefmt::far_future());
        assert!(Moment::now().until(far) > S(86_400 * 365));
    }

    #[tokio::test(start_paused = true)]
    async fn the_drift_check_tells_a_jump_ahead_from_a_step_back() {
        let t0 = Moment::now();
        let mut d = DriftCheck::new(t0);
        let at = |mono: u64, wall: i64| Moment {
            mono: t0.mono + S(mono),
            wall: if wall >= 0 {
                t0.wall + S(wall.unsigned_abs())
            } else {
                t0.wall - S(wall.unsigned_abs())
            },
        };
        assert_eq!(d.check(at(2, 2)), Drift::Steady);
        // NTP slewing: a few hundred milliseconds either way.
        assert_eq!(
            d.check(Moment {
                mono: t0.mono + S(4),
                wall: t0.wall + Duration::from_millis(4_300),
            }),
            Drift::Steady
        );
        // A resume after two hours asleep.
        assert_eq!(
            d.check(at(6, 7_206)),
            Drift::Ahead(Duration::from_millis(7_199_700))
        );
        // Then an hour back.
        assert_eq!(d.check(at(8, 3_606)), Drift::Behind(S(3_602)));
        assert_eq!(d.check(at(10, 3_608)), Drift::Steady);
    }
}
