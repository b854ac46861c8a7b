//! A token as tokend holds and serves it: its bytes (one copy, zeroed when
//! the last holder drops it), its life, and a place for what it is served
//! as ([`Token::rendered`], which [`crate::answer`] fills; nothing here
//! knows its shape).
//!
//! Invariants: a token is served only while more than [`SERVE_MARGIN`] of
//! it is left on both clocks, the monotonic one and the wall clock (see
//! [`crate::clock`]: after a suspend only the wall clock knows it died); no
//! type here has a `Debug` that shows the token.

use crate::clock::Moment;
use crate::secret::ExposeSecret;
use crate::timefmt::rfc3339;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// The bytes of an access token. Held once per token: a slice of one
/// allocation that is zeroed when its last holder drops it. `Debug` hides
/// it; [`ExposeSecret`] shows it where it is to be sent.
#[derive(Clone)]
pub struct AccessToken(bytes::Bytes);

/// Owns secret bytes and zeroes them when dropped.
struct Zeroed(Vec<u8>);

impl AsRef<[u8]> for Zeroed {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Zeroed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl AccessToken {
    pub fn new(token: String) -> AccessToken {
        AccessToken(zeroed(token.into_bytes()))
    }

    /// The token at `range` of `buf`, a buffer from [`zeroed`] that holds it
    /// among other things: one allocation for both, no second copy.
    pub fn within(buf: &bytes::Bytes, range: std::ops::Range<usize>) -> AccessToken {
        AccessToken(buf.slice(range))
    }

    /// The token's bytes, for writing it to a client.
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.0
    }
}

/// `buf` as shared bytes that are zeroed when the last holder drops them.
pub fn zeroed(buf: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from_owner(Zeroed(buf))
}

impl ExposeSecret<str> for AccessToken {
    fn expose_secret(&self) -> &str {
        // Built from a String (or a slice of one at a char boundary).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// An access token and what we know of its life. `Debug` hides the token.
pub struct Token {
    pub access_token: AccessToken,
    pub token_type: String,
    /// What the IdP said it granted, if it said.
    pub scope: Option<String>,
    /// When the request that produced it was sent (a safe lower bound on
    /// issue time), on both clocks.
    pub issued: Moment,
    /// When it dies, on both clocks: the wall-clock deadline is what
    /// `expires_at` shows, and what decides after a suspend.
    pub expires: Moment,
    /// The IdP's `refresh_in` hint.
    pub refresh_in: Option<Duration>,
    /// What this token is served as, rendered once by [`crate::answer`]
    /// and zeroed with the token.
    pub rendered: OnceLock<bytes::Bytes>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("lifetime", &self.lifetime())
            .finish()
    }
}

/// Whether `bytes` can be a token: not empty, and visible ASCII only
/// (`%x21-7E`), so served in a header line, a file or a shell variable it
/// can start no line and move no cursor.
pub fn is_token_text(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// How long before `expires_at` a token stops being served.
pub const SERVE_MARGIN: Duration = Duration::from_secs(5);

impl Token {
    pub fn lifetime(&self) -> Duration {
        self.issued.until(self.expires)
    }

    /// A token is servable while more than 5 s of it is left on both clocks.
    pub fn servable_at(&self, now: Moment) -> bool {
        now.until(self.expires) > SERVE_MARGIN
    }

    /// What is left of it by whichever clock says less.
    pub fn remaining_at(&self, now: Moment) -> Duration {
        now.until(self.expires)
    }

    /// How long from `now` it stays servable (zero once it is not).
    pub fn servable_for(&self, now: Moment) -> Duration {
        self.remaining_at(now).saturating_sub(SERVE_MARGIN)
    }

    /// The wall-clock time it expires at, as `expires_at` shows it.
    pub fn expires_at_text(&self) -> String {
        rfc3339(self.expires.wall)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let t = Token {
            access_token: AccessToken::new("eyJsecret".into()),
            rendered: OnceLock::new(),
            token_type: "Bearer".into(),
            scope: None,
            issued: Moment::now(),
            expires: Moment::now().later(Duration::from_secs(60)),
            refresh_in: None,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }

    /// After a suspend (the wall clock moved, the monotonic one did not), a
    /// token the wall clock says is dead is not served, and what is left
    /// of a live one is counted on the clock that says less.
    #[tokio::test(start_paused = true)]
    async fn a_token_dead_by_the_wall_clock_is_not_servable() {
        let now = Moment::now();
        let t = Token {
            access_token: AccessToken::new("t".into()),
            rendered: OnceLock::new(),
            token_type: "Bearer".into(),
            scope: None,
            issued: now,
            expires: now.later(Duration::from_secs(120)),
            refresh_in: None,
        };
        assert!(t.servable_at(now));
        let wall = |secs| Moment {
            mono: now.mono,
            wall: now.wall + Duration::from_secs(secs),
        };
        assert!(!t.servable_at(wall(300)), "dead 180 s by the wall clock");
        assert!(!t.servable_at(wall(115)), "within the 5 s margin");
        assert_eq!(t.remaining_at(wall(100)), Duration::from_secs(20));
        assert_eq!(t.servable_for(wall(100)), Duration::from_secs(15));
        // Stepped back: the monotonic deadline still holds.
        let back = Moment {
            mono: now.mono + Duration::from_secs(116),
            wall: now.wall - Duration::from_secs(3600),
        };
        assert!(!t.servable_at(back));
    }
}
