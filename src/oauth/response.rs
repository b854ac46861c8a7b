//! Parsing token endpoint answers: the success body of RFC 6749 §5.1 and the
//! error body of §5.2 with Entra's additions. Input is untrusted: every
//! failure is a value, never a panic.

use super::scrub::Scrubber;
use crate::entra;
use crate::text::clip;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Largest token endpoint response tokend reads.
pub const MAX_BODY: usize = 1024 * 1024;

/// A parsed successful token response. `access_token` is wrapped by the caller.
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_in: Option<Duration>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_in", &self.refresh_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawToken {
    access_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
    refresh_in: Option<Value>,
    scope: Option<Value>,
}

/// Seconds as a JSON number or a numeric string (Entra v1 sends strings).
/// Any finite, non-negative number is taken: a huge one is clamped here
/// (to ten times the 366-day cap the lifetime rules apply), never refused.
fn seconds(v: &Value) -> Option<Duration> {
    /// Far beyond any lifetime tokend believes, and well inside `Duration`.
    const CLAMP: f64 = 366.0 * 86_400.0 * 10.0;
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(CLAMP).floor()))
}

/// A `Retry-After` header (RFC 9110 §10.2.3): delay-seconds, or an HTTP
/// date, turned into a delay from `now` (zero for a date already past).
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a 2xx body. The error text never quotes the body.
pub fn parse_token(body: &[u8]) -> Result<TokenResponse, String> {
    let raw: RawToken = serde_json::from_slice(body).map_err(|e| {
        if looks_like_html(body) {
            "the body is HTML, not JSON: token_url probably points at a web page rather than the token endpoint".to_string()
        } else {
            format!("the body is not a JSON token response ({})", e.classify_name())
        }
    })?;
    let access_token = match raw.access_token {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err("`access_token` is not a non-empty string".to_string()),
        None => return Err("the response has no `access_token`".to_string()),
    };
    // Served as is in a header line, a raw answer, a file and a shell
    // variable: anything but visible ASCII could start a line of its own.
    if access_token.len() > MAX_TOKEN {
        return Err(format!(
            "`access_token` is {} bytes, more than the {} tokend serves",
            access_token.len(),
            MAX_TOKEN
        ));
    }
    if !crate::token::is_token_text(access_token.as_bytes()) {
        return Err("`access_token` holds a character other than visible ASCII (a space, a control character such as CR or LF, or a non-ASCII one); it is not served".to_string());
    }
    let token_type = match raw.token_type {
        Some(Value::String(s)) if !s.is_empty() => s,
        None => "Bearer".to_string(),
        Some(_) => return Err("`token_type` is not a string".to_string()),
    };
    if token_type.len() > 64 || !token_type.bytes().all(is_tchar) {
        return Err("`token_type` is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~, at most 64 of them); it is not served".to_string());
    }
    let expires_in = match &raw.expires_in {
        None | Some(Value::Null) => None,
        Some(v) => Some(seconds(v).ok_or("`expires_in` is not a number of seconds")?),
    };
    let refresh_in = raw.refresh_in.as_ref().and_then(seconds);
    let scope = match raw.scope {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
        refresh_in,
        scope,
    })
}

/// Largest access token served (docs/behaviour.md, "Limits").
pub const MAX_TOKEN: usize = 64 * 1024;

/// A `tchar` of RFC 9110 §5.6.2: what a `token_type` is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected JSON shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

fn looks_like_html(body: &[u8]) -> bool {
    let start: Vec<u8> = body
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(15)
        .map(u8::to_ascii_lowercase)
        .collect();
    start.starts_with(b"<!doctype html") || start.starts_with(b"<html")
}

/// An error answer from the token endpoint (RFC 6749 §5.2, plus Entra fields).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointError {
    pub status: u16,
    pub error: Option<String>,
    pub description: Option<String>,
    pub error_codes: Vec<u64>,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<Value>,
    error_description: Option<Value>,
    error_codes: Option<Value>,
    trace_id: Option<Value>,
    correlation_id: Option<Value>,
}

/// A string field with every secret cut out (see [`Scrubber`]), then
/// clipped: the scrub sees the whole field, so no part of a secret
/// survives the cut either.
fn text(v: Option<Value>, max: usize, scrub: &Scrubber) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(clip(&scrub.scrub(&s), max)),
        _ => None,
    }
}

/// Parses a non-2xx body; any body (HTML, empty, garbage) gives a usable error.
pub fn parse_error(status: u16, body: &[u8]) -> EndpointError {
    parse_error_scrubbed(status, body, &Scrubber::new(&[]))
}

/// [`parse_error`] for an answer to a request that sent the secrets
/// `scrub` looks for: an endpoint that echoes its request cannot put any
/// of them into a field, in whole or in part, in any encoding.
pub fn parse_error_scrubbed(status: u16, body: &[u8], scrub: &Scrubber) -> EndpointError {
    let mut e = EndpointError {
        status,
        ..EndpointError::default()
    };
    if let Ok(raw) = serde_json::from_slice::<RawError>(body) {
        e.error = text(raw.error, 100, scrub);
        // Entra's description spans lines: "AADSTS…: message\r\nTrace ID: …"; keep the first.
        e.description = text(raw.error_description, crate::text::MAX_FIELD, scrub)
            .map(|d| d.split("  ").next().unwrap_or_default().trim().to_string())
            .filter(|d| !d.is_empty());
        e.error_codes = match raw.error_codes {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).take(8).collect(),
            _ => Vec::new(),
        };
        e.trace_id = text(raw.trace_id, 64, scrub);
        e.correlation_id = text(raw.correlation_id, 64, scrub);
    }
    if e.error_codes.is_empty() {
        if let Some(code) = e.description.as_deref().and_then(entra::aadsts_in) {
            e.error_codes.push(code);
        }
    }
    e
}

impl EndpointError {
    /// Short machine code: the OAuth `error`, else `http_<status>`.
    pub fn code(&self) -> String {
        self.error
            .clone()
            .unwrap_or_else(|| format!("http_{}", self.status))
    }

    /// Human text: what the server said, with Entra's ids for a support ticket.
    pub fn message(&self) -> String {
        let mut m = format!("token endpoint answered HTTP {}", self.status);
        if let Some(e) = &self.error {
            m.push_str(&format!(" {e}"));
        }
        if let Some(d) = &self.description {
            m.push_str(&format!(": {d}"));
        }
        let ids: Vec<String> = [
            ("trace_id", &self.trace_id),
            ("correlation_id", &self.correlation_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect();
        if !ids.is_empty() {
            m.push_str(&format!(" ({})", ids.join(", ")));
        }
        m
    }

    /// What to fix, from the AADSTS codes first, then the status and OAuth error.
    pub fn hint(&self) -> Option<String> {
        if let Some(h) = self.error_codes.iter().find_map(|c| entra::aadsts_hint(*c)) {
            return Some(h.to_string());
        }
        if self.status == 429 {
            return Some("the identity provider is throttling requests; tokend backs off and honours Retry-After".to_string());
        }
        if let Some(h) = self.error.as_deref().and_then(entra::oauth_hint) {
            return Some(h.to_string());
        }
        match self.status {
            404 => Some(
                "the token endpoint was not found: check token_url (or tenant/authority)"
                    .to_string(),
            ),
            500..=599 => Some(
                "the identity provider has a server-side problem; tokend retries with backoff"
                    .to_string(),
            ),
            _ => None,
        }
    }

    /// Errors that a retry in a few seconds will not fix (but an admin might).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.error.as_deref(),
            Some("invalid_client" | "unauthorized_client" | "invalid_scope")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_as_number_or_string() {
        let a = parse_token(br#"{"access_token":"t","token_type":"Bearer","expires_in":3599}"#)
            .unwrap();
        assert_eq!(a.expires_in, Some(Duration::from_secs(3599)));
        let b = parse_token(br#"{"access_token":"t","token_type":"Bearer","expires_in":"3599","refresh_in":"1800"}"#).unwrap();
        assert_eq!(b.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(b.refresh_in, Some(Duration::from_secs(1800)));
        let c = parse_token(br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(c.expires_in, None);
        assert_eq!(c.token_type, "Bearer");
    }

    #[test]
    fn bad_bodies_are_errors_that_do_not_quote_the_body() {
        let html = parse_token(b"<!DOCTYPE html><html>secret-looking</html>").unwrap_err();
        assert!(html.contains("HTML"), "{html}");
        assert!(!html.contains("secret-looking"));
        assert!(parse_token(b"not json at all")
            .unwrap_err()
            .contains("not a JSON"));
        assert!(parse_token(b"[1,2]").is_err());
        assert!(parse_token(br#"{"access_token":42}"#).is_err());
        assert!(parse_token(br#"{"access_token":"t","expires_in":"soon"}"#)
            .unwrap_err()
            .contains("expires_in"));
        assert!(parse_token(br#"{"access_token":"t","expires_in":-5}"#).is_err());
        assert!(parse_token(b"").is_err());
    }

    #[test]
    fn a_token_or_type_that_could_start_a_line_is_refused_without_quoting_it() {
        for token in [
            r#""abc\r\nX-Injected: evil""#,
            r#""abc\nevil""#,
            r#""two words""#,
            r#""tab\there""#,
            r#""caf\u00e9""#,
            r#""nul\u0000""#,
        ] {
            let e = parse_token(format!(r#"{{"access_token":{token}}}"#).as_bytes()).unwrap_err();
            assert!(e.contains("visible ASCII"), "{token}: {e}");
            assert!(!e.contains("evil") && !e.contains("abc"), "{e}");
        }
        let long = "a".repeat(MAX_TOKEN + 1);
        let e = parse_token(format!(r#"{{"access_token":"{long}"}}"#).as_bytes()).unwrap_err();
        assert!(e.contains("more than the 65536"), "{e}");
        let ok = "a".repeat(MAX_TOKEN);
        assert!(parse_token(format!(r#"{{"access_token":"{ok}"}}"#).as_bytes()).is_ok());
        for tt in [r#""Bearer\r\nX: y""#, r#""Bear er""#, r#""""#] {
            let body = format!(r#"{{"access_token":"t","token_type":{tt}}}"#);
            assert!(parse_token(body.as_bytes()).is_err(), "{tt}");
        }
        for tt in ["Bearer", "DPoP", "N_A", "mac"] {
            let body = format!(r#"{{"access_token":"t~+/=.-_","token_type":"{tt}"}}"#);
            assert_eq!(parse_token(body.as_bytes()).unwrap().token_type, tt);
        }
    }

    /// An endpoint that echoes its request: the secret, its form encoding
    /// and the Basic credential are gone from every field, even where the
    /// clip would have cut them.
    #[test]
    fn every_encoding_of_what_was_sent_is_scrubbed_before_the_clip() {
        use base64::Engine;
        let secret = "s3cr3t+/=";
        let basic = base64::engine::general_purpose::STANDARD.encode("abc:s3cr3t%2B%2F%3D");
        let forms = [secret, "s3cr3t%2B%2F%3D", basic.as_str()];
        let long_prefix = "x".repeat(95);
        let body = serde_json::json!({
            "error": format!("{long_prefix}s3cr3t+/="),
            "error_description": format!("got Basic {basic} and client_secret=s3cr3t%2B%2F%3D"),
            "trace_id": "s3cr3t+/=",
        });
        let e = parse_error_scrubbed(401, body.to_string().as_bytes(), &Scrubber::new(&[secret]));
        let all = format!("{e:?} {}", e.message());
        for s in forms {
            assert!(!all.contains(s), "{s} in {all}");
        }
        assert!(!all.contains("s3cr"), "no part survives the clip: {all}");
        assert!(all.contains("[REDACTED]"), "{all}");
    }

    #[test]
    fn a_long_description_is_clipped_to_one_field() {
        let body =
            serde_json::json!({"error": "invalid_request", "error_description": "y".repeat(5000)});
        let e = parse_error(400, body.to_string().as_bytes());
        let d = e.description.unwrap();
        assert_eq!(d.chars().count(), crate::text::MAX_FIELD + 1, "{d}");
        assert!(d.ends_with('…'));
    }

    #[test]
    fn entra_error_body() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '1111'. Trace ID: abc Correlation ID: def Timestamp: 2026-11-29 10:00:00Z","error_codes":[7000215],"timestamp":"2026-11-29 10:00:00Z","trace_id":"abc-trace","correlation_id":"def-corr","error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;
        let e = parse_error(401, body);
        assert_eq!(e.code(), "invalid_client");
        assert_eq!(e.error_codes, vec![7_000_215]);
        assert!(e.hint().unwrap().contains("ID instead of its Value"));
        let m = e.message();
        assert!(
            m.contains("AADSTS7000215") && m.contains("abc-trace") && m.contains("def-corr"),
            "{m}"
        );
        assert!(e.is_permanent());
    }

    #[test]
    fn aadsts_code_only_in_description() {
        let e = parse_error(400, br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#);
        assert!(e.hint().unwrap().contains("tenant was not found"));
    }

    #[test]
    fn non_json_error_bodies() {
        let e = parse_error(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.code(), "http_502");
        assert!(e.hint().is_some());
        let t = parse_error(429, b"");
        assert!(t.hint().unwrap().contains("throttling"));
        assert!(!t.is_permanent());
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 29 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Sun, 29 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms HTTP still allows.
        assert_eq!(
            retry_after("Sunday, 29-Nov-26 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after("Sun, 29 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
