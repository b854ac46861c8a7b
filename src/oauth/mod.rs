//! The token endpoint client: one client-credentials request (RFC 6749 §4.4)
//! per call, with the source's client authentication, a size-limited read of
//! the answer, and errors that say what to fix.
//!
//! One `reqwest::Client` (rustls with the platform verifier, so the system CA
//! store applies; `HTTPS_PROXY`/`NO_PROXY` honoured) serves every source.
//! Secrets are read at fetch time from their [`SecretRef`], so rotated secret
//! files apply to the next fetch. Redirects are not followed: a token endpoint
//! that redirects would take the client secret elsewhere.

pub mod entra;
pub mod response;

use crate::config::{AuthMethod, SourceConfig};
use crate::secret::{ExposeSecret, SecretEnv, SecretError};
use base64::Engine;
use response::{EndpointError, MAX_BODY};
use secrecy::SecretString;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Lifetime assumed when the IdP sends no `expires_in` and the token is not a JWT.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// An access token and what we know of its life. `Debug` hides the token.
pub struct Token {
    pub access_token: SecretString,
    pub token_type: String,
    /// What the IdP said it granted, if it said.
    pub scope: Option<String>,
    /// When the request that produced it was sent (a safe lower bound on issue time).
    pub issued_at: Instant,
    pub expires_at: Instant,
    /// The IdP's `refresh_in` hint.
    pub refresh_in: Option<Duration>,
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

/// How long before `expires_at` a token stops being served.
pub const SERVE_MARGIN: Duration = Duration::from_secs(5);

impl Token {
    pub fn lifetime(&self) -> Duration {
        self.expires_at.saturating_duration_since(self.issued_at)
    }

    /// A token is servable while `now < expires_at − 5 s`.
    pub fn servable_at(&self, now: Instant) -> bool {
        now + SERVE_MARGIN < self.expires_at
    }

    pub fn remaining_at(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// Why a fetch failed. Messages name the endpoint or the secret's location,
/// never a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("token endpoint {url} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("cannot reach token endpoint {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{}", .0.message())]
    Endpoint(EndpointError, Option<Duration>),
    #[error("token endpoint {url} sent an unusable response: {detail}")]
    BadResponse { url: String, detail: String },
}

impl FetchError {
    /// Short machine-readable code for status documents and metrics.
    pub fn code(&self) -> String {
        match self {
            FetchError::Secret(_) => "secret_unavailable".into(),
            FetchError::Timeout { .. } => "upstream_timeout".into(),
            FetchError::Connect { .. } => "connect_failed".into(),
            FetchError::Endpoint(e, _) => e.code(),
            FetchError::BadResponse { .. } => "bad_response".into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            FetchError::Secret(SecretError::File { .. }) => Some("check that the secret file exists and that the tokend user may read it".into()),
            FetchError::Secret(SecretError::Env(_)) => Some("set the variable in the daemon's environment (systemd: Environment= or EnvironmentFile=)".into()),
            FetchError::Secret(_) => Some("put the client secret where the source's client_secret points".into()),
            FetchError::Timeout { .. } => Some("the identity provider is slow or unreachable; raise fetch_timeout or check the network path and proxy (HTTPS_PROXY)".into()),
            FetchError::Connect { .. } => Some("check token_url, DNS, the network path and proxy settings (HTTPS_PROXY/NO_PROXY); for TLS errors, the CA store".into()),
            FetchError::Endpoint(e, _) => e.hint(),
            FetchError::BadResponse { .. } => Some("check that token_url is the OAuth token endpoint".into()),
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Endpoint(_, r) => *r,
            _ => None,
        }
    }

    /// Errors a quick retry will not fix; retried at the slow end of the backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(self, FetchError::Endpoint(e, _) if e.is_permanent())
    }
}

/// The shared upstream client.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    env: SecretEnv,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenClient")
    }
}

impl TokenClient {
    pub fn new(env: SecretEnv) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(TokenClient { http, env })
    }

    /// The HTTP client, for `check --fetch`'s probe calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Requests one token for `src`.
    pub async fn fetch(&self, src: &SourceConfig) -> Result<Token, FetchError> {
        let secret = src.client_secret.resolve(&self.env).await?;
        let url = src.token_url.as_str().to_string();
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let scope = src.scope_param();
        if let Some(s) = &scope {
            form.push(("scope", s));
        }
        for (k, v) in &src.params {
            form.push((k, v));
        }
        let mut req = self
            .http
            .post(src.token_url.clone())
            .timeout(src.fetch_timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        match src.auth_method {
            AuthMethod::ClientSecretBasic => {
                req = req.header(
                    reqwest::header::AUTHORIZATION,
                    basic_auth(&src.client_id, &secret),
                );
            }
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", &src.client_id));
                form.push(("client_secret", secret.expose_secret()));
            }
        }
        let req = req.form(&form);
        let issued_at = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&url, src.fetch_timeout, &e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(resp).await.map_err(|detail| match detail {
            ReadError::Transport(e) => transport_error(&url, src.fetch_timeout, &e),
            ReadError::TooLarge => FetchError::BadResponse {
                url: url.clone(),
                detail: format!("the body is larger than {} KiB", MAX_BODY / 1024),
            },
        })?;
        if !(200..300).contains(&status) {
            let mut e = response::parse_error(status, &body);
            // An IdP that echoes what it was sent must not put the secret in our logs.
            e.description = e.description.map(|d| scrub(&d, &secret));
            return Err(FetchError::Endpoint(e, retry_after));
        }
        let parsed = response::parse_token(&body).map_err(|detail| FetchError::BadResponse {
            url: url.clone(),
            detail: format!("HTTP {status}: {detail}"),
        })?;
        let lifetime = parsed
            .expires_in
            .or_else(|| jwt_lifetime(&parsed.access_token))
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Token {
            scope: parsed.scope.or(scope),
            token_type: parsed.token_type,
            issued_at,
            expires_at: issued_at + lifetime,
            refresh_in: parsed.refresh_in,
            access_token: SecretString::from(parsed.access_token),
        })
    }
}

/// `Authorization: Basic` per RFC 6749 §2.3.1: id and secret are
/// form-urlencoded *before* base64, so `:` or `%` in a secret survive.
pub fn basic_auth(client_id: &str, secret: &SecretString) -> reqwest::header::HeaderValue {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", enc(client_id), enc(secret.expose_secret()));
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut h = reqwest::header::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Basic"));
    h.set_sensitive(true);
    h
}

fn jwt_lifetime(token: &str) -> Option<Duration> {
    let exp = crate::jwt::claims(token)?.get("exp")?.as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    exp.checked_sub(now).map(Duration::from_secs)
}

fn scrub(text: &str, secret: &SecretString) -> String {
    let s = secret.expose_secret();
    if s.len() >= 4 && text.contains(s) {
        text.replace(s, "[REDACTED]")
    } else {
        text.to_string()
    }
}

fn transport_error(url: &str, timeout: Duration, e: &reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout {
            url: url.to_string(),
            timeout,
        };
    }
    // The causes below reqwest's own error explain TLS, DNS and connect
    // failures; reqwest's Display only repeats the URL, and hyper's
    // "client error (Connect)" layer adds nothing.
    let mut detail = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.starts_with("client error") && !detail.contains(&s) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&s);
        }
        cur = err.source();
    }
    if detail.is_empty() {
        detail = e.to_string();
    }
    FetchError::Connect {
        url: url.to_string(),
        detail: response::clip(&detail, 500),
    }
}

enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        let h = basic_auth("my client", &SecretString::from("a+b/c:d%e"));
        assert!(h.is_sensitive());
        let v = h
            .to_str()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_string();
        let decoded =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap())
                .unwrap();
        assert_eq!(decoded, "my+client:a%2Bb%2Fc%3Ad%25e");
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token {
            access_token: SecretString::from("eyJsecret"),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: Instant::now(),
            expires_at: Instant::now() + Duration::from_secs(60),
            refresh_in: None,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }

    #[test]
    fn scrub_removes_echoed_secret() {
        let s = SecretString::from("hunter22");
        assert_eq!(
            scrub("bad secret hunter22 given", &s),
            "bad secret [REDACTED] given"
        );
    }
}
