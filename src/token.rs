//! A token as tokend holds and serves it: its bytes (one copy, zeroed when
//! the last holder drops it), its life, and the answer it is served as.
//!
//! The JSON body of `GET /v1/tokens/NAME` is the token's answer, not a
//! route's: a source renders it once per token ([`prepare`]) and the socket
//! API, the managed-identity door's raw bytes and the `json` file sinks read
//! it ([`json`]).
//!
//! Invariants: a token is served only while more than [`SERVE_MARGIN`] of
//! it is left on both clocks, the monotonic one and the wall clock (see
//! [`crate::clock`]: after a suspend only the wall clock knows it died); no
//! type here has a `Debug` that shows the token.

use crate::clock::Moment;
use crate::secret::ExposeSecret;
use crate::timefmt::rfc3339;
use serde_json::{json, Value};
use std::fmt;
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
    /// What the API answers with, rendered once for this token (empty until
    /// its source prepares it): the JSON body up to `"expires_in":`.
    pub json_head: bytes::Bytes,
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

/// The whole body `GET /v1/tokens/NAME` answers with `tok` now, as file
/// sinks of format "json" hold it. Zeroed when dropped.
pub fn json(source: &str, tok: &Token) -> zeroize::Zeroizing<Vec<u8>> {
    use std::io::Write;
    let expires_in = tok.remaining_at(Moment::now()).as_secs();
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(tok.json_head.len() + 24));
    if tok.json_head.is_empty() {
        let mut body = json!({
            "access_token": tok.access_token.expose_secret(),
            "token_type": tok.token_type,
            "expires_in": expires_in,
            "expires_at": tok.expires_at_text(),
            "source": source,
        });
        if let Some(s) = &tok.scope {
            body["scope"] = Value::String(s.clone());
        }
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &body);
    } else {
        out.extend_from_slice(&tok.json_head);
        let _ = write!(out, "{expires_in}}}");
    }
    out
}

/// What a `json` sink file holds: the API's body without `expires_in`,
/// which would be stale by the time the file is read (`expires_at` stays).
/// Zeroed when dropped.
pub fn file_json(source: &str, tok: &Token) -> zeroize::Zeroizing<Vec<u8>> {
    const TAIL: &[u8] = b",\"expires_in\":";
    if let Some(head) = tok.json_head.strip_suffix(TAIL) {
        // Prepared: the same body, closed before `expires_in`.
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(head.len() + 1));
        out.extend_from_slice(head);
        out.push(b'}');
        return out;
    }
    let mut body = json!({
        "access_token": tok.access_token.expose_secret(),
        "token_type": tok.token_type,
        "expires_at": tok.expires_at_text(),
        "source": source,
    });
    if let Some(s) = &tok.scope {
        body["scope"] = Value::String(s.clone());
    }
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(tok.access_token.bytes().len() + 160));
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &body);
    if let Value::Object(mut map) = body {
        // The copy of the token inside the JSON value is wiped too.
        if let Some(Value::String(t)) = map.get_mut("access_token") {
            zeroize::Zeroize::zeroize(t);
        }
    }
    out
}

/// Renders, once per token, what every `/v1/tokens` answer repeats: the
/// JSON body up to `"expires_in":`. The token itself then lives only in
/// that buffer (zeroed when dropped): the raw answer is a slice of it.
pub fn prepare(source: &str, token: Token) -> Token {
    let secret = token.access_token.expose_secret();
    let mut head = Vec::with_capacity(secret.len() + 160);
    head.extend_from_slice(b"{\"access_token\":");
    let start = head.len();
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut head, secret);
    let end = head.len();
    head.extend_from_slice(b",\"token_type\":");
    let _ = serde_json::to_writer(&mut head, &token.token_type);
    head.extend_from_slice(b",\"expires_at\":");
    let _ = serde_json::to_writer(&mut head, &token.expires_at_text());
    if let Some(scope) = &token.scope {
        head.extend_from_slice(b",\"scope\":");
        let _ = serde_json::to_writer(&mut head, scope);
    }
    head.extend_from_slice(b",\"source\":");
    let _ = serde_json::to_writer(&mut head, source);
    head.extend_from_slice(b",\"expires_in\":");
    // Unescaped (as tokens are): the token is the quoted part of the head.
    let plain = end - start == secret.len() + 2;
    let head = zeroed(head);
    let access_token = if plain {
        AccessToken::within(&head, start + 1..end - 1)
    } else {
        token.access_token.clone()
    };
    Token {
        access_token,
        json_head: head,
        ..token
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `json` sink holds the API's body less `expires_in`, prepared or not.
    #[test]
    fn the_file_json_is_the_answer_without_expires_in() {
        let now = Moment::now();
        let tok = Token {
            access_token: AccessToken::new("t.o.k".into()),
            json_head: bytes::Bytes::new(),
            token_type: "Bearer".into(),
            scope: Some("read".into()),
            issued: now,
            expires: now.later(Duration::from_secs(600)),
            refresh_in: None,
        };
        let plain: Value = serde_json::from_slice(&file_json("s", &tok)).unwrap();
        let prepared: Value = serde_json::from_slice(&file_json("s", &prepare("s", tok))).unwrap();
        assert_eq!(plain, prepared);
        assert_eq!(plain["access_token"], "t.o.k");
        assert_eq!(plain["scope"], "read");
        assert!(plain["expires_at"].is_string());
        assert!(plain.get("expires_in").is_none(), "{plain}");
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token {
            access_token: AccessToken::new("eyJsecret".into()),
            json_head: bytes::Bytes::new(),
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
            json_head: bytes::Bytes::new(),
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
