//! The token endpoint client: one client-credentials request (RFC 6749 §4.4)
//! per call, with the source's client authentication, a size-limited read of
//! the answer, and errors that say what to fix.
//!
//! One `reqwest::Client` (rustls with the platform verifier, so the system CA
//! store applies; `HTTPS_PROXY`/`NO_PROXY` honoured, but never for a
//! loopback destination) serves every source.
//! Secrets are read at fetch time from their [`SecretRef`], so rotated secret
//! files apply to the next fetch. Redirects are not followed: a token endpoint
//! that redirects would take the client secret elsewhere.

pub mod assertion;
pub mod discovery;
pub mod response;
pub mod scrub;
pub mod tls;

use crate::clock::Moment;
use crate::config::{AuthMethod, Credential, Endpoint, Provider, SourceConfig};
use crate::secret::{ExposeSecret, SecretEnv, SecretError};
use crate::sync::Locked;
use crate::token::{AccessToken, Token, SERVE_MARGIN};
use base64::Engine;
use response::{EndpointError, MAX_BODY};
use secrecy::SecretString;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Lifetime assumed when the IdP sends no `expires_in` and the token is not a JWT.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

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
    Endpoint(Box<EndpointError>, Option<Duration>),
    #[error("token endpoint {url} sent an unusable response: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("token endpoint {url} sent a token that cannot be served: {detail}")]
    Expired { url: String, detail: String },
    #[error("{0}")]
    Credential(String),
    #[error("cannot find the token endpoint of {issuer}: {detail}")]
    Discovery { issuer: String, detail: String },
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
            FetchError::Expired { .. } => "token_expired".into(),
            FetchError::Credential(_) => "credential_unusable".into(),
            FetchError::Discovery { .. } => "discovery_failed".into(),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            FetchError::Secret(SecretError::File { .. } | SecretError::NotText(_)) => Some("check that the secret file exists, is a regular text file of at most 64 KiB, and that the tokend user may read it".into()),
            FetchError::Secret(SecretError::Env(_)) => Some("set the variable in the daemon's environment (systemd: Environment= or EnvironmentFile=)".into()),
            FetchError::Secret(SecretError::Untrusted(p)) => p.hint.clone(),
            FetchError::Secret(_) => Some("put the client secret where the source's client_secret points".into()),
            FetchError::Timeout { .. } => Some("the identity provider is slow or unreachable; raise fetch_timeout or check the network path and proxy (HTTPS_PROXY)".into()),
            FetchError::Connect { detail, .. } if detail.contains("UnknownIssuer") => Some("the server's certificate is not signed by a CA this host trusts: for a private CA, set ca_file to its PEM certificate (or add it to the system's CA store)".into()),
            FetchError::Connect { .. } => Some("check token_url, DNS, the network path and proxy settings (HTTPS_PROXY/NO_PROXY); for TLS errors, the CA store and ca_file".into()),
            FetchError::Endpoint(e, _) => e.hint(),
            FetchError::BadResponse { .. } => Some("check that token_url is the OAuth token endpoint".into()),
            FetchError::Expired { .. } => Some("the identity provider issues tokens that are already expired or nearly so: check that this host's clock is right (timedatectl) and the token lifetime configured on the server".into()),
            FetchError::Credential(_) => Some("fix the certificate, key or assertion file the message names; tokend reads it again when the file changes".into()),
            FetchError::Discovery { .. } => Some("check issuer: its discovery document (/.well-known/openid-configuration) must be reachable from this host and name exactly this issuer; or set token_url instead".into()),
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
        match self {
            FetchError::Endpoint(e, _) => e.is_permanent(),
            // Fixed by editing a file, which a reload notices at once.
            FetchError::Credential(_) => true,
            _ => false,
        }
    }
}

/// The upstream client: one `reqwest::Client` for the system's CA store,
/// and one more per distinct TLS setting (a `ca_file`, a certificate for
/// `tls_client_auth`), made when first needed and shared where equal.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    env: SecretEnv,
    /// Clients by a hash of their extra CA and identity.
    tls: Arc<Mutex<HashMap<u64, reqwest::Client>>>,
    /// Token endpoints found by discovery, by issuer; forgotten on reload
    /// and when the endpoint cannot be reached.
    discovered: Arc<Mutex<HashMap<Url, Url>>>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenClient")
    }
}

/// Most distinct TLS settings kept at once; beyond, the cache starts over.
const MAX_TLS_CLIENTS: usize = 64;

/// An HTTP client with `tls`: no redirects (a token endpoint that
/// redirects would take the secret elsewhere), a bounded connect, and the
/// proxies `env` names, never for loopback (see [`proxies`]).
fn with_tls(tls: rustls::ClientConfig, env: &SecretEnv) -> Result<reqwest::Client, String> {
    proxies(reqwest::Client::builder(), env)?
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| causes(&e).unwrap_or_else(|| "reqwest refused the TLS settings".into()))
}

/// Loopback destinations, which no proxy ever sees: plain http is allowed
/// only to them, and a proxy (another host, perhaps) would read the secret
/// in clear text.
const NEVER_PROXIED: &str = "localhost,127.0.0.0/8,::1";

/// The proxies of `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` (or their
/// lower-case forms), each with `NO_PROXY` plus every loopback address.
/// With none set, no proxy at all.
fn proxies(
    mut b: reqwest::ClientBuilder,
    env: &SecretEnv,
) -> Result<reqwest::ClientBuilder, String> {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| env.var(n))
            .filter(|v| !v.is_empty())
    };
    let no_proxy = match var(["NO_PROXY", "no_proxy"]) {
        Some(list) => format!("{list},{NEVER_PROXIED}"),
        None => NEVER_PROXIED.to_string(),
    };
    b = b.no_proxy();
    type Make = fn(&str) -> reqwest::Result<reqwest::Proxy>;
    let kinds: [([&str; 2], Make); 3] = [
        (["HTTPS_PROXY", "https_proxy"], |p| reqwest::Proxy::https(p)),
        (["HTTP_PROXY", "http_proxy"], |p| reqwest::Proxy::http(p)),
        (["ALL_PROXY", "all_proxy"], |p| reqwest::Proxy::all(p)),
    ];
    for (names, make) in kinds {
        if let Some(url) = var(names) {
            // The value may hold the proxy's password: never printed.
            let proxy = make(&url).map_err(|_| format!("{} is not a proxy URL", names[0]))?;
            b = b.proxy(proxy.no_proxy(reqwest::NoProxy::from_string(&no_proxy)));
        }
    }
    Ok(b)
}

/// How one fetch authenticates, with what it read for it.
enum ClientAuth {
    Basic(SecretString),
    Post(SecretString),
    /// A certificate's key, to sign an assertion with once the token
    /// endpoint (its audience) is known.
    Sign(SecretString),
    /// A signed or ready-made assertion.
    Assertion(SecretString),
    /// The certificate (and this key) in the TLS handshake.
    Tls(SecretString),
}

impl TokenClient {
    pub fn new(env: SecretEnv) -> Result<Self, String> {
        Ok(TokenClient {
            http: with_tls(tls::client_config(None, None)?, &env)?,
            env,
            tls: Arc::default(),
            discovered: Arc::default(),
        })
    }

    /// The HTTP client with the system's CA store, for `check --fetch`'s probe calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Forgets discovered endpoints, so each is read again (after a reload).
    pub fn forget_discovery(&self) {
        self.discovered.locked().clear();
    }

    /// The HTTP client for `src`: its `ca_file` trusted on top of the
    /// system's store, and `identity` (a certificate's PEM and its key's)
    /// presented in the handshake.
    fn http_for(
        &self,
        src: &SourceConfig,
        identity: Option<&SecretString>,
    ) -> Result<reqwest::Client, FetchError> {
        let cert = match (&src.credential, identity) {
            (Credential::Certificate(c), Some(_)) => Some(c),
            _ => None,
        };
        if src.ca_file.is_none() && cert.is_none() {
            return Ok(self.http.clone());
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        src.ca_file.as_ref().map(|c| &c.pem).hash(&mut h);
        cert.map(|c| &c.cert.pem).hash(&mut h);
        identity.map(|k| k.expose_secret()).hash(&mut h);
        let key = h.finish();
        let mut cache = self.tls.locked();
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let tls = tls::client_config(src.ca_file.as_ref(), cert.zip(identity)).map_err(|e| {
            FetchError::Credential(format!("cannot set up TLS for {}: {e}", src.name))
        })?;
        let client = with_tls(tls, &self.env).map_err(|e| {
            FetchError::Credential(format!(
                "cannot set up the HTTP client for {}: {e}",
                src.name
            ))
        })?;
        if cache.len() >= MAX_TLS_CLIENTS {
            cache.clear();
        }
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// The token endpoint of `src`: its `token_url`, or what discovery
    /// finds for its `issuer` (cached).
    pub async fn token_endpoint(&self, src: &SourceConfig) -> Result<Url, FetchError> {
        let http = self.http_for(src, None)?;
        self.endpoint_with(src, &http).await
    }

    async fn endpoint_with(
        &self,
        src: &SourceConfig,
        http: &reqwest::Client,
    ) -> Result<Url, FetchError> {
        let issuer = match &src.endpoint {
            Endpoint::Url(u) => return Ok(u.clone()),
            Endpoint::Issuer(i) => i,
        };
        let known = self.discovered.locked().get(issuer).cloned();
        if let Some(u) = known {
            return Ok(u);
        }
        let found = discovery::token_endpoint(http, issuer, src.fetch_timeout)
            .await
            .map_err(|detail| FetchError::Discovery {
                issuer: crate::text::url(issuer),
                detail,
            })?;
        self.discovered
            .locked()
            .insert(issuer.clone(), found.clone());
        Ok(found)
    }

    /// Reads what `src`'s credential needs for one fetch.
    async fn client_auth(&self, src: &SourceConfig) -> Result<ClientAuth, FetchError> {
        Ok(match (&src.credential, src.auth_method) {
            (Credential::Secret(r), AuthMethod::ClientSecretPost) => {
                ClientAuth::Post(r.resolve(&self.env).await?)
            }
            (Credential::Secret(r), _) => ClientAuth::Basic(r.resolve(&self.env).await?),
            (Credential::Certificate(c), AuthMethod::TlsClientAuth) => {
                ClientAuth::Tls(c.key.resolve(&self.env).await?)
            }
            (Credential::Certificate(c), _) => ClientAuth::Sign(c.key.resolve(&self.env).await?),
            (Credential::Assertion(r), _) => {
                let a = r.resolve(&self.env).await?;
                assertion::check_federated(&a, &r.describe(), std::time::SystemTime::now())
                    .map_err(FetchError::Credential)?;
                ClientAuth::Assertion(a)
            }
        })
    }

    /// Requests one token for `src`.
    pub async fn fetch(&self, src: &SourceConfig) -> Result<Token, FetchError> {
        let auth = self.client_auth(src).await?;
        let identity = match &auth {
            ClientAuth::Tls(k) => Some(k),
            _ => None,
        };
        let http = self.http_for(src, identity)?;
        let endpoint = self.endpoint_with(src, &http).await?;
        let auth = sign_with_key(src, auth, &endpoint)?;
        // As errors print it: no credentials, no query.
        let url = crate::text::url(&endpoint);
        let scope = src.scope_param();
        let (req, scrub) = token_request(&http, src, endpoint, &auth, scope.as_deref());
        let issued = Moment::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                if matches!(src.endpoint, Endpoint::Issuer(_)) && e.is_connect() {
                    // The endpoint moved, perhaps: look it up again next time.
                    self.forget_discovery();
                }
                return Err(transport_error(&url, src.fetch_timeout, &e));
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| response::retry_after(v, std::time::SystemTime::now()));
        let body = read_limited(resp).await.map_err(|detail| match detail {
            ReadError::Transport(e) => transport_error(&url, src.fetch_timeout, &e),
            ReadError::TooLarge => FetchError::BadResponse {
                url: url.clone(),
                detail: format!("the body is larger than {} KiB", MAX_BODY / 1024),
            },
        })?;
        if !(200..300).contains(&status) {
            // An IdP that echoes what it was sent must not put the secret
            // into status or the log.
            let e = response::parse_error_scrubbed(status, &body, &scrub);
            return Err(FetchError::Endpoint(Box::new(e), retry_after));
        }
        let mut parsed =
            response::parse_token(&body).map_err(|detail| FetchError::BadResponse {
                url: url.clone(),
                detail: format!("HTTP {status}: {detail}"),
            })?;
        // The granted scope is shown in status answers: an echo there too.
        parsed.scope = parsed.scope.map(|s| scrub.scrub(&s));
        token_from_response(parsed, scope, issued, Moment::now())
            .map_err(|detail| FetchError::Expired { url, detail })
    }
}

/// A certificate's key signs its assertion, now that the token endpoint
/// (its audience) is known; any other way to authenticate is kept.
fn sign_with_key(
    src: &SourceConfig,
    auth: ClientAuth,
    endpoint: &Url,
) -> Result<ClientAuth, FetchError> {
    let (Credential::Certificate(c), ClientAuth::Sign(key)) = (&src.credential, &auth) else {
        return Ok(auth);
    };
    let signed = assertion::sign(
        c,
        key,
        &src.client_id,
        endpoint.as_str(),
        src.provider == Provider::Azure,
        std::time::SystemTime::now(),
    )
    .map_err(FetchError::Credential)?;
    Ok(ClientAuth::Assertion(signed))
}

/// The client-credentials request for `src` (RFC 6749 §4.4.2), with the
/// client authenticated by `auth`; and a scrubber for what the server
/// might echo back of the secret sent, in any encoding (the Basic
/// credential, the form, HTML, base64 …).
fn token_request(
    http: &reqwest::Client,
    src: &SourceConfig,
    endpoint: Url,
    auth: &ClientAuth,
    scope: Option<&str>,
) -> (reqwest::RequestBuilder, scrub::Scrubber) {
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    for (k, v) in &src.params {
        form.push((k, v));
    }
    let mut req = http
        .post(endpoint)
        .timeout(src.fetch_timeout)
        .header(reqwest::header::ACCEPT, "application/json");
    let secret = match auth {
        ClientAuth::Basic(secret) => {
            let header = basic_auth(&src.client_id, secret);
            req = req.header(reqwest::header::AUTHORIZATION, header);
            Some(secret)
        }
        ClientAuth::Post(secret) => {
            form.push(("client_id", &src.client_id));
            form.push(("client_secret", secret.expose_secret()));
            Some(secret)
        }
        ClientAuth::Assertion(a) => {
            form.push(("client_id", &src.client_id));
            form.push(("client_assertion_type", assertion::ASSERTION_TYPE));
            form.push(("client_assertion", a.expose_secret()));
            Some(a)
        }
        // (A key is always signed into an assertion first.)
        ClientAuth::Tls(_) | ClientAuth::Sign(_) => {
            form.push(("client_id", &src.client_id));
            None
        }
    };
    let scrub = scrub::Scrubber::new(&secret.iter().map(|s| s.expose_secret()).collect::<Vec<_>>());
    let req = req
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(reqwest::Body::from(form_body(&form)));
    (req, scrub)
}

/// Longest token lifetime tokend believes; anything longer is cut to this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// Turns a parsed token response into a [`Token`] by the lifetime rules:
/// `expires_in`, else the JWT's `exp` minus now (the shorter of the two when
/// both are given), else [`DEFAULT_LIFETIME`], capped at [`MAX_LIFETIME`]. A token that could never be served (an `exp`
/// already past, or less than [`SERVE_MARGIN`] left when it arrives) is an
/// error whose text gives the numbers.
///
/// `issued` is when the request was sent (the lifetime counts from there,
/// on both clocks: a safe lower bound), `received` when the answer arrived
/// (its wall clock is what the JWT's `exp` is compared with). No input can
/// make this panic: every time is checked or clamped.
pub fn token_from_response(
    parsed: response::TokenResponse,
    requested_scope: Option<String>,
    issued: Moment,
    received: Moment,
) -> Result<Token, String> {
    let now_secs = received
        .wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let exp = jwt_exp(&parsed.access_token);
    if let Some(exp) = exp.filter(|e| *e <= now_secs) {
        return Err(format!(
            "the token's exp ({exp}) is already past (this host's clock reads {now}): check the clocks of this host and of the identity provider",
            now = now_secs.floor()
        ));
    }
    let exp_left = exp.and_then(|e| {
        Duration::try_from_secs_f64((e - now_secs).min(MAX_LIFETIME.as_secs_f64())).ok()
    });
    // Both given: the shorter, so a JWT is never served past its own exp.
    let lifetime = match (parsed.expires_in, exp_left) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(DEFAULT_LIFETIME),
    }
    .min(MAX_LIFETIME);
    let expires = issued.later(lifetime);
    let left = received.until(expires);
    if left <= SERVE_MARGIN {
        return Err(format!(
            "the token lives {}s, {}s of it left on arrival: too short to serve (tokend serves a token until {}s before it expires)",
            lifetime.as_secs(),
            left.as_secs(),
            SERVE_MARGIN.as_secs()
        ));
    }
    Ok(Token {
        scope: parsed.scope.or(requested_scope),
        token_type: parsed.token_type,
        issued,
        expires,
        refresh_in: parsed.refresh_in,
        access_token: AccessToken::new(parsed.access_token),
        rendered: Default::default(),
    })
}

/// The JWT `exp` claim in seconds since the epoch, if the token is a JWT
/// with a finite numeric `exp`.
fn jwt_exp(token: &str) -> Option<f64> {
    crate::jwt::claims(token)?
        .get("exp")?
        .as_f64()
        .filter(|e| e.is_finite())
}

/// The form, urlencoded into one buffer that is wiped when the request
/// is done with it (it may hold the secret or an assertion). Sized for the
/// worst case first, so no growing leaves a copy behind.
fn form_body(form: &[(&str, &str)]) -> bytes::Bytes {
    let worst: usize = form.iter().map(|(k, v)| 3 * (k.len() + v.len()) + 2).sum();
    let mut out = url::form_urlencoded::Serializer::new(String::with_capacity(worst));
    for (k, v) in form {
        out.append_pair(k, v);
    }
    crate::token::zeroed(out.finish().into_bytes())
}

/// `Authorization: Basic` per RFC 6749 §2.3.1: id and secret are
/// form-urlencoded *before* base64, so `:` or `%` in a secret survive.
pub fn basic_auth(client_id: &str, secret: &SecretString) -> reqwest::header::HeaderValue {
    let enc = |s: &str| {
        zeroize::Zeroizing::new(
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>(),
        )
    };
    // Every intermediate buffer holds the secret in some encoding: wiped.
    let pair = zeroize::Zeroizing::new(format!(
        "{}:{}",
        *enc(client_id),
        *enc(secret.expose_secret())
    ));
    let value = zeroize::Zeroizing::new(format!(
        "Basic {}",
        *zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()))
    ));
    let mut h = reqwest::header::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Basic"));
    h.set_sensitive(true);
    h
}

fn transport_error(url: &str, timeout: Duration, e: &reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout {
            url: url.to_string(),
            timeout,
        };
    }
    FetchError::Connect {
        url: url.to_string(),
        detail: transport_detail(e),
    }
}

/// What went wrong below HTTP, in words: TLS, DNS, connect.
fn transport_detail(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    causes(e).unwrap_or_else(|| crate::text::clip(&e.to_string(), 500))
}

/// The causes below a reqwest error, joined: they explain TLS, DNS and
/// connect failures, where reqwest's Display only repeats the URL (or says
/// "builder error") and hyper's "client error (Connect)" layer adds nothing.
fn causes(e: &reqwest::Error) -> Option<String> {
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
    (!detail.is_empty()).then(|| crate::text::clip(&detail, 500))
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
    use tokio::time::Instant;

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

    fn jwt_with_exp(exp: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"RS256"}"#),
            e.encode(format!(r#"{{"exp":{exp}}}"#))
        )
    }

    /// The token's lifetime as [`token_from_response`] computes it for
    /// `body`, received at once, at wall time 2026-11-29T00:00:00Z.
    fn lifetime_of(body: &str) -> Result<Duration, String> {
        let t = Moment {
            mono: Instant::now(),
            wall: std::time::UNIX_EPOCH + Duration::from_secs(1_796_083_200),
        };
        let parsed = response::parse_token(body.as_bytes())?;
        token_from_response(parsed, None, t, t).map(|tok| tok.lifetime())
    }

    #[test]
    fn lifetime_rules() {
        let h = Duration::from_secs(3600);
        // expires_in, else exp − now, else one hour.
        assert_eq!(
            lifetime_of(r#"{"access_token":"t","expires_in":600}"#),
            Ok(Duration::from_secs(600))
        );
        let in_ten_minutes = jwt_with_exp("1796083800");
        assert_eq!(
            lifetime_of(&format!(r#"{{"access_token":"{in_ten_minutes}"}}"#)),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(lifetime_of(r#"{"access_token":"opaque"}"#), Ok(h));
        // Both: the shorter, so a JWT is never served past its exp.
        assert_eq!(
            lifetime_of(&format!(
                r#"{{"access_token":"{in_ten_minutes}","expires_in":"300"}}"#
            )),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            lifetime_of(&format!(
                r#"{{"access_token":"{in_ten_minutes}","expires_in":3600}}"#
            )),
            Ok(Duration::from_secs(600))
        );
    }

    #[test]
    fn absurd_lifetimes_are_capped_at_366_days() {
        for exp in [
            "18446744073709551000",
            "253402300900",
            "1e300",
            "1796083800.5e9",
        ] {
            let body = format!(r#"{{"access_token":"{}"}}"#, jwt_with_exp(exp));
            assert_eq!(lifetime_of(&body), Ok(MAX_LIFETIME), "exp {exp}");
        }
        // A huge expires_in is capped as the docs say, never refused.
        for expires_in in ["9999999999", "1e12", "\"1e12\"", "1e300"] {
            assert_eq!(
                lifetime_of(&format!(
                    r#"{{"access_token":"t","expires_in":{expires_in}}}"#
                )),
                Ok(MAX_LIFETIME),
                "expires_in {expires_in}"
            );
        }
    }

    #[test]
    fn tokens_that_could_never_be_served_are_errors_with_the_numbers() {
        for exp in ["1000", "-5", "1796083200", "0"] {
            let body = format!(
                r#"{{"access_token":"{}","expires_in":3600}}"#,
                jwt_with_exp(exp)
            );
            let e = lifetime_of(&body).unwrap_err();
            assert!(
                e.contains(&format!("exp ({})", exp.parse::<f64>().unwrap()))
                    && e.contains("already past"),
                "{e}"
            );
        }
        for short in ["0", "5", "\"3\""] {
            let e = lifetime_of(&format!(r#"{{"access_token":"t","expires_in":{short}}}"#))
                .unwrap_err();
            assert!(e.contains("too short to serve"), "{e}");
        }
        assert_eq!(
            lifetime_of(r#"{"access_token":"t","expires_in":6}"#),
            Ok(Duration::from_secs(6))
        );
    }

    #[test]
    fn a_token_that_arrives_too_late_is_an_error() {
        let parsed = response::parse_token(br#"{"access_token":"t","expires_in":30}"#).unwrap();
        let sent = Moment::now();
        let e = token_from_response(parsed, None, sent, sent.later(Duration::from_secs(26)))
            .unwrap_err();
        assert!(e.contains("4s of it left"), "{e}");
    }
}
