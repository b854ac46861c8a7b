//! Reading the claims of a JWT access token, without verifying it.
//!
//! tokend is not the token's audience and never trusts these claims for a
//! decision; they only feed diagnostics (`check --fetch`, the admin-consent
//! warning) and a fallback lifetime when the IdP omits `expires_in`.

use base64::Engine;
use serde_json::{Map, Value};

/// The payload of a compact JWS, if `token` looks like one.
pub fn claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// True for a token issued by Entra ID (v1 or v2 issuer).
pub fn is_entra(claims: &Map<String, Value>) -> bool {
    claims
        .get("iss")
        .and_then(Value::as_str)
        .is_some_and(|iss| {
            iss.starts_with("https://sts.windows.net/")
                || iss.contains("login.microsoftonline")
                || iss.contains("/v2.0")
        })
        && claims.contains_key("tid")
}

/// The admin-consent warning for an Entra app token without `roles`.
pub fn consent_warning(claims: &Map<String, Value>) -> Option<String> {
    (is_entra(claims) && !claims.contains_key("roles")).then(|| {
        "the Entra token has no `roles` claim: admin consent for the app's application permissions may not be granted (API permissions → Grant admin consent), or none are assigned".to_string()
    })
}

/// Renders a claim for a terminal: strings bare, arrays space-joined, at
/// most 500 characters, nothing that could move the cursor, set a title,
/// start a line or reorder text (the token's issuer, or whoever it trusts,
/// wrote it).
pub fn show(v: &Value) -> String {
    fn raw(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().map(raw).collect::<Vec<_>>().join(" "),
            other => other.to_string(),
        }
    }
    crate::text::clip(&raw(v), 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"RS256"}"#),
            e.encode(payload)
        )
    }

    #[test]
    fn decodes_payload() {
        let c = claims(&jwt(r#"{"aud":"api","exp":5}"#)).unwrap();
        assert_eq!(c["aud"], "api");
        assert!(claims("opaque-token").is_none());
        assert!(claims("a.b.c").is_none());
    }

    #[test]
    fn entra_without_roles_warns() {
        let no_roles = claims(&jwt(r#"{"iss":"https://sts.windows.net/t/","tid":"t"}"#)).unwrap();
        assert!(consent_warning(&no_roles).is_some());
        let roles = claims(&jwt(
            r#"{"iss":"https://sts.windows.net/t/","tid":"t","roles":["User.Read.All"]}"#,
        ))
        .unwrap();
        assert!(consent_warning(&roles).is_none());
        let other = claims(&jwt(r#"{"iss":"https://sso.example.com"}"#)).unwrap();
        assert!(consent_warning(&other).is_none());
    }
}
