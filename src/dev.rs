//! A small client-credentials identity provider on loopback, for `tokend dev`
//! and as a test double for the integration tests.
//!
//! It speaks just enough RFC 6749 §4.4 to be realistic: it authenticates the
//! client by `client_secret_basic` (form-urlencoded then base64, §2.3.1) or
//! `client_secret_post`, answers §5.2 errors, and issues unsigned JWT-shaped
//! tokens (`alg: none`) so `check --fetch` has claims to show. Its knobs
//! (lifetime, forced failures, delay) and counters let tests drive it.

use crate::sync::Locked;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// A canned failure the IdP answers instead of a token.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub body: String,
    /// A `Retry-After` header, verbatim: seconds or an HTTP date.
    pub retry_after: Option<String>,
}

#[derive(Debug, Default)]
struct Knobs {
    clients: HashMap<String, String>,
    lifetime: Duration,
    refresh_in: Option<Duration>,
    failure: Option<Failure>,
    delay: Duration,
    /// Seconds added to this IdP's clock (a test's host that resumed).
    clock_offset: i64,
    secrets_seen: VecDeque<String>,
    scopes_seen: VecDeque<String>,
}

/// How many secrets and scopes the IdP remembers: `tokend dev` runs for
/// days, so these are the latest few, not every request ever.
pub const SEEN_KEPT: usize = 64;

fn remember(list: &mut VecDeque<String>, item: String) {
    if list.len() == SEEN_KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

#[derive(Debug, Default)]
struct State {
    knobs: Mutex<Knobs>,
    requests: AtomicU64,
    issued: AtomicU64,
}

/// A running IdP; stops when dropped.
#[derive(Debug)]
pub struct DevIdp {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DevIdp {
    /// Starts on `127.0.0.1` on a free port, issuing tokens for `lifetime`.
    pub async fn start(lifetime: Duration) -> std::io::Result<DevIdp> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), lifetime).await
    }

    /// Starts on a given address (port 0 for a free one).
    pub async fn start_on(addr: SocketAddr, lifetime: Duration) -> std::io::Result<DevIdp> {
        Self::serve(tokio::net::TcpListener::bind(addr).await?, lifetime)
    }

    /// Starts on `listener`, bound already (in another network namespace,
    /// say).
    pub fn serve(listener: tokio::net::TcpListener, lifetime: Duration) -> std::io::Result<DevIdp> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.lock().lifetime = lifetime;
        let stop = CancellationToken::new();
        let (st, cancel) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = cancel.cancelled() => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let st = st.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&st, addr, req).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        });
        Ok(DevIdp { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Registers a client.
    pub fn add_client(&self, id: &str, secret: &str) {
        self.state
            .lock()
            .clients
            .insert(id.to_string(), secret.to_string());
    }

    pub fn set_lifetime(&self, d: Duration) {
        self.state.lock().lifetime = d;
    }

    pub fn set_refresh_in(&self, d: Option<Duration>) {
        self.state.lock().refresh_in = d;
    }

    /// Answers every token request with `f` until cleared with `None`.
    pub fn fail_with(&self, f: Option<Failure>) {
        self.state.lock().failure = f;
    }

    /// Delays every answer by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().delay = d;
    }

    /// Moves this IdP's clock `secs` away from the host's (for tests that
    /// move a daemon's wall clock with libfaketime: the IdP's world moves
    /// with it, as after a suspend).
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.lock().clock_offset = secs;
    }

    /// Token requests received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// The latest [`SEEN_KEPT`] client secrets presented, in order (for rotation tests).
    pub fn secrets_seen(&self) -> Vec<String> {
        self.state.lock().secrets_seen.iter().cloned().collect()
    }

    /// The latest [`SEEN_KEPT`] `scope` parameters received, in order.
    pub fn scopes_seen(&self) -> Vec<String> {
        self.state.lock().scopes_seen.iter().cloned().collect()
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.knobs.locked()
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({ "error": error, "error_description": description }).to_string(),
    )
}

fn basic_credentials(req: &Request<hyper::body::Incoming>) -> Option<(String, String)> {
    let v = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

async fn answer(
    state: &State,
    addr: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/token" {
        return oauth_error(404, "not_found", "the token endpoint is /token");
    }
    if req.method() != hyper::Method::POST {
        return oauth_error(405, "invalid_request", "use POST");
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let basic = basic_credentials(&req);
    let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
        return oauth_error(400, "invalid_request", "body too large");
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let creds = basic.or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    });
    let scope = form.get("scope").cloned().unwrap_or_default();
    // Recorded on arrival, so a test can see a request while it is delayed.
    let (delay, failure, lifetime, refresh_in, offset) = {
        let mut k = state.lock();
        if let Some((_, secret)) = &creds {
            remember(&mut k.secrets_seen, secret.clone());
        }
        remember(&mut k.scopes_seen, scope.clone());
        (
            k.delay,
            k.failure.clone(),
            k.lifetime,
            k.refresh_in,
            k.clock_offset,
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = failure {
        let mut r = reply(f.status, f.body);
        if let Some(v) = f
            .retry_after
            .and_then(|s| hyper::header::HeaderValue::from_str(&s).ok())
        {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return r;
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    let Some((id, secret)) = creds else {
        return oauth_error(401, "invalid_client", "no client authentication");
    };
    let known = state.lock().clients.get(&id).is_some_and(|s| *s == secret);
    if !known {
        return oauth_error(401, "invalid_client", "client authentication failed");
    }
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_add_signed(offset);
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({
        "iss": format!("http://{addr}"),
        "sub": id,
        "azp": id,
        "aud": "api://tokend-dev",
        "scp": scope,
        "iat": now,
        "exp": now + lifetime.as_secs(),
        "jti": format!("{n}-{:016x}", rand::random::<u64>()),
    });
    let token = format!(
        "{}.{}.",
        e.encode(r#"{"alg":"none","typ":"JWT"}"#),
        e.encode(claims.to_string())
    );
    let mut body =
        json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime.as_secs() });
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    if let Some(r) = refresh_in {
        body["refresh_in"] = json!(r.as_secs());
    }
    reply(200, body.to_string())
}

/// Demo token lifetime in `tokend dev`: short, so refreshes show in the log.
pub const DEMO_LIFETIME: Duration = Duration::from_secs(30);
/// Socket of `tokend dev`.
pub const DEV_SOCKET: &str = "./tokend.sock";

/// What `tokend dev` runs: the IdP and a config that points at it.
#[derive(Debug)]
pub struct DevSetup {
    pub idp: DevIdp,
    pub config: crate::config::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot start the built-in identity provider: {0}")]
    Idp(#[from] std::io::Error),
    #[error("built-in config is invalid (a bug): {0}")]
    Config(#[from] crate::config::ConfigError),
}

impl DevSetup {
    /// Starts the IdP with a random demo secret and builds the demo config
    /// through the same loader as a real file.
    pub async fn start() -> Result<DevSetup, DevError> {
        let idp = DevIdp::start(DEMO_LIFETIME).await?;
        let secret = format!("{:032x}", rand::random::<u128>());
        idp.add_client("demo", &secret);
        let text = format!(
            r#"[server]
socket = "{DEV_SOCKET}"
socket_mode = "0600"

[sources.demo]
token_url = "{url}"
client_id = "demo"
client_secret = "{secret}"
scopes = ["demo.read"]
min_ttl = "5s"
"#,
            url = idp.token_url()
        );
        let config = crate::config::load_str(&text, std::path::Path::new("<tokend dev>"), None)?;
        Ok(DevSetup { idp, config })
    }

    /// The lines `tokend dev` prints: what runs and the commands to try.
    pub fn banner(&self) -> String {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| {
                let cwd = std::env::current_dir().ok()?;
                Some(
                    p.strip_prefix(&cwd)
                        .map(std::path::Path::to_path_buf)
                        .unwrap_or(p),
                )
            })
            .map_or_else(|| "tokend".to_string(), |p| p.display().to_string());
        format!(
            "tokend dev: built-in identity provider at {url}\n\
             demo source \"demo\": tokens live {life}s and are refreshed about every {refresh}s\n\
             socket: {DEV_SOCKET} (Ctrl-C stops; the socket file is removed)\n\n\
             Try:\n  \
             curl --unix-socket {DEV_SOCKET} http://localhost/v1/tokens/demo\n  \
             curl --unix-socket {DEV_SOCKET} http://localhost/v1/sources\n  \
             {exe} token demo --socket {DEV_SOCKET}\n  \
             {exe} status --socket {DEV_SOCKET}\n",
            url = self.idp.token_url(),
            life = DEMO_LIFETIME.as_secs(),
            refresh = DEMO_LIFETIME.as_secs() * 3 / 4,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_only_the_latest_requests() {
        let idp = DevIdp::start(Duration::from_secs(60)).await.unwrap();
        idp.add_client("c", "s");
        let http = reqwest::Client::new();
        for i in 0..SEEN_KEPT + 36 {
            let r = http
                .post(idp.token_url())
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "c"),
                    ("client_secret", "s"),
                    ("scope", &format!("s{i}")),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let scopes = idp.scopes_seen();
        assert_eq!(scopes.len(), SEEN_KEPT);
        assert_eq!(scopes.last().unwrap(), &format!("s{}", SEEN_KEPT + 35));
        assert_eq!(idp.secrets_seen().len(), SEEN_KEPT);
        assert_eq!(idp.issued(), (SEEN_KEPT + 36) as u64);
    }
}
