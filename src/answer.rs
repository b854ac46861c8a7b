//! The token answer: the JSON a token is served as by `GET
//! /v1/tokens/NAME` (docs/api.md) and kept as by a `json` file sink
//! (docs/sinks.md). One shape, [`Answer`], rendered once per token and
//! cached on it ([`Token::rendered`]); every answer then copies those bytes
//! and adds the live `expires_in`.
//!
//! Below the sinks and the broker, above the token: a sink writes the same
//! bytes the socket serves, and a source renders them when its token
//! arrives (so the first caller does not pay for it).
//!
//! Invariant: the rendered bytes are zeroed when the token's last holder
//! drops them, as the token's own are; nothing here logs or formats them.

use crate::clock::Moment;
use crate::secret::ExposeSecret;
use crate::token::{zeroed, AccessToken, Token};
use bytes::Bytes;
use serde::Serialize;

/// The token answer, in its wire order (the order the API has always had:
/// `expires_in` last, so the cached part is everything before it).
#[derive(Serialize)]
struct Answer<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    source: &'a str,
}

const OPEN: &[u8] = b"{\"access_token\":\"";

fn render(source: &str, tok: &Token) -> Bytes {
    let answer = Answer {
        access_token: tok.access_token.expose_secret(),
        token_type: &tok.token_type,
        expires_at: tok.expires_at_text(),
        scope: tok.scope.as_deref(),
        source,
    };
    let mut out = Vec::with_capacity(answer.access_token.len() + 160);
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &answer);
    zeroed(out)
}

/// The answer without `expires_in`, rendered on first use and cached.
fn rendered<'t>(source: &str, tok: &'t Token) -> &'t Bytes {
    tok.rendered.get_or_init(|| render(source, tok))
}

/// `token` of `source` with its answer rendered, and the token's bytes
/// then held only inside it (one allocation, zeroed when dropped) when
/// JSON left them unescaped, as it does every token (visible ASCII without
/// `"` or `\`).
pub fn prepare(source: &str, token: Token) -> Token {
    let bytes = render(source, &token);
    let len = token.access_token.bytes().len();
    let inside = bytes.get(OPEN.len()..OPEN.len() + len);
    let access_token = if bytes.starts_with(OPEN)
        && inside == Some(token.access_token.bytes().as_ref())
        && bytes.get(OPEN.len() + len) == Some(&b'"')
    {
        AccessToken::within(&bytes, OPEN.len()..OPEN.len() + len)
    } else {
        token.access_token.clone()
    };
    let token = Token {
        access_token,
        rendered: Default::default(),
        ..token
    };
    let _ = token.rendered.set(bytes);
    token
}

/// The body `GET /v1/tokens/NAME` answers with at `now`, in two chunks:
/// the cached answer up to its closing brace (shared, not copied), and
/// `,"expires_in":N}`.
pub fn api_body(source: &str, tok: &Token, now: Moment) -> (Bytes, Bytes) {
    use std::io::Write;
    let whole = rendered(source, tok);
    let head = whole.slice(..whole.len().saturating_sub(1));
    let mut tail = Vec::with_capacity(40);
    let _ = write!(
        tail,
        ",\"expires_in\":{}}}",
        tok.remaining_at(now).as_secs()
    );
    (head, Bytes::from(tail))
}

/// What a `json` sink file holds: the API's answer without `expires_in`,
/// which would be stale by the time the file is read (`expires_at` stays).
/// Zeroed when dropped.
pub fn file_body(source: &str, tok: &Token) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(rendered(source, tok).to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    fn token(secret: &str) -> Token {
        let now = Moment::now();
        Token {
            access_token: AccessToken::new(secret.into()),
            rendered: Default::default(),
            token_type: "Bearer".into(),
            scope: Some("read".into()),
            issued: now,
            expires: now.later(Duration::from_secs(600)),
            refresh_in: None,
        }
    }

    fn api(source: &str, tok: &Token) -> Value {
        let (head, tail) = api_body(source, tok, Moment::now());
        serde_json::from_slice(&[head, tail].concat()).unwrap()
    }

    /// A `json` sink holds the API's body less `expires_in`, prepared or not.
    #[test]
    fn the_file_is_the_answer_without_expires_in() {
        let lazy: Value = serde_json::from_slice(&file_body("s", &token("t.o.k"))).unwrap();
        let prepared: Value =
            serde_json::from_slice(&file_body("s", &prepare("s", token("t.o.k")))).unwrap();
        assert_eq!(lazy, prepared);
        assert_eq!(lazy["access_token"], "t.o.k");
        assert_eq!(lazy["scope"], "read");
        assert!(lazy["expires_at"].is_string());
        assert!(lazy.get("expires_in").is_none(), "{lazy}");
        let served = api("s", &token("t.o.k"));
        assert_eq!(served["expires_in"], 599, "{served}");
        assert_eq!(served["source"], "s");
    }

    /// A prepared token keeps one copy of its bytes, inside the answer;
    /// one JSON would escape keeps its own (and is served escaped).
    #[test]
    fn a_prepared_token_lives_inside_its_answer() {
        let tok = prepare("s", token("abc.def"));
        let cached = tok.rendered.get().unwrap();
        let at = tok.access_token.bytes().as_ptr() as usize;
        let range = cached.as_ptr() as usize..cached.as_ptr() as usize + cached.len();
        assert!(range.contains(&at), "the token is a slice of its answer");
        assert_eq!(tok.access_token.expose_secret(), "abc.def");

        let odd = prepare("s", token("a\"b"));
        assert_eq!(odd.access_token.expose_secret(), "a\"b");
        assert_eq!(api("s", &odd)["access_token"], "a\"b");
    }
}
