//! Routes of the HTTP API (docs/api.md): path and query parsing, status codes,
//! and JSON error bodies `{"error", "message", "hint"?}`.

use super::body::Body;
use super::guard::Denials;
use super::ServerSettings;
use crate::acl::{self, Peer};
use crate::broker::source::SourceHandle;
use crate::broker::{self, Broker, RefreshError, Registry, ServeError};
use crate::clock::Moment;
use crate::config::valid_source_name;
use crate::timefmt::ceil_secs;
use crate::token::Token;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest POST body accepted.
pub const MAX_POST_BODY: usize = 1024;

type Resp = Response<Body>;

/// 408 with `Connection: close`: the request did not arrive in time.
fn request_timeout() -> Resp {
    let mut r = error(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive within request_timeout",
        None,
    );
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, hint: Option<String>) -> Resp {
    let mut body = json!({ "error": code, "message": message.into() });
    if let Some(h) = hint {
        body["hint"] = Value::String(h);
    }
    json_response(status, &body)
}

fn with_retry_after(mut r: Resp, after: Option<Duration>) -> Resp {
    if let Some(d) = after {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(ceil_secs(d).max(1)));
    }
    r
}

enum Route<'a> {
    Metrics,
    Health,
    Ready,
    Sources,
    Source(&'a str),
    Refresh(&'a str),
    Token(&'a str),
}

#[derive(Clone, Copy)]
enum Kind {
    Metrics,
    Health,
    Ready,
    Sources,
    Source,
    Refresh,
    Token,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];

/// The socket API's routes, which the router reads (first match wins;
/// `{name}` is the rest of the path up to the suffix). `docs/api.md`
/// documents each one; a test keeps the two in step.
const ROUTES: &[(&str, Kind, &[Method])] = &[
    ("/v1/tokens/{name}", Kind::Token, GET),
    ("/v1/sources/{name}/refresh", Kind::Refresh, POST),
    ("/v1/sources/{name}", Kind::Source, GET),
    ("/v1/sources", Kind::Sources, GET),
    ("/healthz", Kind::Health, GET),
    ("/readyz", Kind::Ready, GET),
    ("/metrics", Kind::Metrics, GET),
];

/// Every route as `METHOD /path`, for the documentation test.
pub fn routes() -> impl Iterator<Item = String> {
    ROUTES
        .iter()
        .flat_map(|(path, _, methods)| methods.iter().map(move |m| format!("{m} {path}")))
}

fn route(path: &str) -> Option<(Route<'_>, &'static [Method])> {
    ROUTES.iter().find_map(|&(template, kind, methods)| {
        let name = match template.split_once("{name}") {
            None => (path == template).then_some("")?,
            Some((prefix, suffix)) => path.strip_prefix(prefix)?.strip_suffix(suffix)?,
        };
        let route = match kind {
            Kind::Metrics => Route::Metrics,
            Kind::Health => Route::Health,
            Kind::Ready => Route::Ready,
            Kind::Sources => Route::Sources,
            Kind::Source => Route::Source(name),
            Kind::Refresh => Route::Refresh(name),
            Kind::Token => Route::Token(name),
        };
        Some((route, methods))
    })
}

/// Answers one request. Never panics on input; every outcome is a response.
/// Anything that waits (for a token, a forced refresh, a request body) ends
/// at `deadline`, the end of `request_timeout`: 504 for a fetch, else 408
/// and the connection is closed.
pub async fn handle(
    req: Request<Incoming>,
    broker: &Broker,
    peer: Option<&Peer>,
    settings: &ServerSettings,
    now: Moment,
    deadline: Instant,
) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    let Some((route, methods)) = route(path) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such path: {}", printable(path)),
            Some("the API is under /v1/ (tokens, sources), plus /healthz, /readyz and /metrics; see docs/api.md".into()),
        );
    };
    if !methods.contains(method) {
        return method_not_allowed(method, methods);
    }
    let query = parts.uri.query().unwrap_or_default();
    let resp = match route {
        Route::Health => health(),
        Route::Ready => ready(broker, peer, settings),
        Route::Sources => {
            // Only the sources this caller may read are listed.
            let list: Vec<Value> = broker
                .list()
                .iter()
                .filter(|h| acl::permits(h.config().allow.as_ref(), peer, settings.own_uid))
                .map(|h| broker.status_json(h))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({ "sources": list, "config": broker.config_json(privileged(peer, settings)) }),
            )
        }
        Route::Source(name) => match readable(broker, name, peer, settings) {
            Ok(h) => json_response(StatusCode::OK, &broker.status_json(&h)),
            Err(f) => f.render(),
        },
        Route::Refresh(name) => match readable(broker, name, peer, settings) {
            Ok(h) => {
                Box::pin(refresh(
                    &parts.headers,
                    body,
                    h,
                    broker,
                    peer,
                    settings,
                    deadline,
                ))
                .await
            }
            Err(f) => f.render(),
        },
        Route::Token(name) => {
            let r = token(name, query, broker, peer, settings, now, deadline).await;
            // Unknown names are not counted: callers must not mint label
            // values. A served token was counted on the fast path already.
            match request_outcome(r.status()) {
                Some("ok") => {}
                // A 404 for a source that exists is a denial hidden from
                // an unprivileged caller: counted as what it is.
                None if r.status() == StatusCode::NOT_FOUND && broker.get(name).is_some() => {
                    broker.metrics().count_request(name, "forbidden");
                }
                None => {}
                Some(outcome) => broker.metrics().count_request(name, outcome),
            }
            r
        }
        Route::Metrics => {
            // Like /readyz: per-source series only of sources this caller may read.
            if privileged(peer, settings) {
                metrics(broker.scrape(None))
            } else {
                metrics(broker.scrape(Some(&|name: &str| {
                    broker.get(name).is_some_and(|h| {
                        acl::permits(h.config_ref().allow.as_ref(), peer, settings.own_uid)
                    })
                })))
            }
        }
    };
    tracing::debug!(
        method = %method,
        path = %printable(path),
        status = resp.status().as_u16(),
        uid = peer.map(|p| p.uid),
        pid = peer.and_then(|p| p.pid),
        "request"
    );
    resp
}

fn method_not_allowed(method: &Method, methods: &[Method]) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here"),
        None,
    );
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}

fn health() -> Resp {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

fn metrics(text: String) -> Resp {
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

/// Answers a request on the metrics listener (`[server] metrics_listen`):
/// `/metrics` (every source: the listener is opt-in, for Prometheus),
/// `/healthz` and `/readyz` only, for an anonymous caller, so `/readyz`
/// names only sources open to all and never a reload error's text.
/// Everything else, tokens included, is a 404; a `Host` that is not an
/// address of this machine is a 421 (see [`super::guard`]).
pub fn handle_metrics_door<B>(
    req: &Request<B>,
    broker: &Broker,
    settings: &ServerSettings,
    denials: &Denials,
) -> Resp {
    if let Err(refusal) = super::guard::check_host(req.headers(), denials, "metrics") {
        return error(refusal.status, "misdirected_request", refusal.message, None);
    }
    let path = req.uri().path();
    let found = route(path).and_then(|(r, methods)| match r {
        Route::Metrics | Route::Health | Route::Ready => Some((r, methods)),
        _ => None,
    });
    let Some((route, methods)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such path here: {}", printable(path)),
            Some("this listener serves only /metrics, /healthz and /readyz; tokens and sources are on the Unix socket (see docs/api.md)".into()),
        );
    };
    if !methods.contains(req.method()) {
        return method_not_allowed(req.method(), methods);
    }
    match route {
        Route::Metrics => metrics(broker.scrape(None)),
        Route::Health => health(),
        _ => ready(broker, None, settings),
    }
}

/// The `outcome` label of `tokend_token_requests_total` for a token answer.
fn request_outcome(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        200 => "ok",
        400 => "bad_request",
        403 => "forbidden",
        422 => "min_ttl_unsatisfiable",
        503 => "unavailable",
        504 => "timeout",
        _ => return None,
    })
}

/// A path made safe for a log line or message.
pub fn printable(path: &str) -> String {
    crate::text::clip(path, 200)
}

/// The source called `name`, if it exists and `peer` may read it. A
/// caller other than root and the daemon's user (who may read every
/// source) gets the same 404 for a source it may not read as for one that
/// does not exist, so a name it may not read is as hidden as in
/// `/v1/sources`; the denial is logged at WARN. Names outside the pattern
/// are never looked up.
fn readable(
    broker: &Broker,
    name: &str,
    peer: Option<&Peer>,
    settings: &ServerSettings,
) -> Result<Arc<SourceHandle>, Failure> {
    readable_in(&broker.registry(), name, peer, settings).cloned()
}

/// [`readable`] borrowing from the registry (the hot path).
fn readable_in<'r>(
    registry: &'r Registry,
    name: &str,
    peer: Option<&Peer>,
    settings: &ServerSettings,
) -> Result<&'r Arc<SourceHandle>, Failure> {
    let found = if valid_source_name(name) {
        registry.get(name)
    } else {
        None
    };
    let precise = privileged(peer, settings);
    let Some(h) = found else {
        return Err(unknown_source(name, precise));
    };
    if acl::permits(h.config_ref().allow.as_ref(), peer, settings.own_uid) {
        return Ok(h);
    }
    // At most a line a minute per uid and source, with the count since:
    // a caller's flood of denials cannot flood the log.
    let uid = peer.map_or(u32::MAX, |p| p.uid);
    if let Some(unlogged) = settings.denials.log_now(uid, name, Instant::now()) {
        tracing::warn!(
            source = %name,
            uid = peer.map(|p| p.uid),
            gid = peer.map(|p| p.gid),
            pid = peer.and_then(|p| p.pid),
            denied_since_last_line = unlogged,
            "access denied"
        );
    }
    // Root and the daemon's user are never denied: the caller here is
    // neither, and is told what a missing source tells it.
    Err(unknown_source(name, false))
}

/// The 404 for a source that does not exist or, for an unprivileged
/// caller, may not be read: the same words for both.
fn unknown_source(name: &str, precise: bool) -> Failure {
    let name = printable(name);
    if precise {
        return Failure::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no source named {name:?}"),
            Some("GET /v1/sources lists the configured sources".into()),
        );
    }
    Failure::new(
        StatusCode::NOT_FOUND,
        "unknown_source",
        format!("no source named {name:?}, or this caller may not read it"),
        Some("GET /v1/sources lists the sources this caller may read; if it should read this one, ask the administrator to add its user or one of its groups to the source's allow list".into()),
    )
}

/// Root and the daemon's own uid see everything; other callers see only
/// what they may read.
fn privileged(peer: Option<&Peer>, settings: &ServerSettings) -> bool {
    peer.is_some_and(|p| p.uid == 0 || p.uid == settings.own_uid)
}

fn ready(broker: &Broker, peer: Option<&Peer>, settings: &ServerSettings) -> Resp {
    // Readiness counts every source; the names listed are only those this caller may read.
    let not_ready = broker.not_ready();
    let ok = not_ready.is_empty();
    let shown: Vec<String> = not_ready
        .into_iter()
        .filter(|name| {
            broker
                .get(name)
                .is_some_and(|h| acl::permits(h.config().allow.as_ref(), peer, settings.own_uid))
        })
        .collect();
    // Sources ready but no client able to reach the socket is not ready.
    let socket_error = settings.socket_health.problem();
    // A door that cannot listen is a door its clients cannot use.
    let door_errors = settings.door_health.problems();
    let ok = ok && socket_error.is_none() && door_errors.is_empty();
    let reload = broker.reload_status();
    let config_error = (!reload.ok).then(|| {
        if privileged(peer, settings) {
            reload.error.unwrap_or_default()
        } else {
            broker::RELOAD_ERROR_REDACTED.to_string()
        }
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({ "ready": ok, "not_ready": shown, "config_error": config_error, "socket_error": socket_error, "door_errors": door_errors }),
    )
}

struct TokenQuery {
    min_ttl: Option<Duration>,
    raw: bool,
}

fn parse_token_query(query: &str) -> Result<TokenQuery, String> {
    let mut q = TokenQuery {
        min_ttl: None,
        raw: false,
    };
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "min_ttl" => {
                q.min_ttl = Some(humantime::parse_duration(&v).map_err(|e| {
                    format!(
                        "min_ttl {:?} is not a duration ({e}); write it like 30s or 5m",
                        printable(&v)
                    )
                })?);
            }
            "format" => match v.as_ref() {
                "raw" => q.raw = true,
                "json" => q.raw = false,
                other => {
                    return Err(format!(
                        "format {:?} is unknown; use raw or json",
                        printable(other)
                    ))
                }
            },
            other => {
                return Err(format!(
                    "unknown query parameter {:?}; known: min_ttl, format",
                    printable(other)
                ))
            }
        }
    }
    Ok(q)
}

/// Why a request gets no token, the same for both doors; each renders it
/// in its own body shape.
#[derive(Debug)]
pub(super) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
            hint,
            retry_after: None,
        }
    }

    /// The API's error body, with `Retry-After` when known.
    fn render(self) -> Resp {
        let retry_after = self.retry_after;
        with_retry_after(
            error(self.status, self.code, self.message, self.hint),
            retry_after,
        )
    }

    /// The daemon began to shut down while the request waited.
    pub fn shutting_down() -> Failure {
        let mut f = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "tokend is shutting down",
            Some("retry in a moment: a restarted tokend serves again within seconds".into()),
        );
        f.retry_after = Some(Duration::from_secs(1));
        f
    }

    /// A source that is stopped but still listed: the daemon is shutting down.
    pub fn stopping(name: &str) -> Failure {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            format!("source {name} is stopping"),
            None,
        )
    }
}

/// Waits, until `deadline`, for a token of `handle` that stays valid for
/// `min_ttl`. A source replaced by a reload (its identity changed) is
/// followed by name: `next` looks it up again under the door's access rule,
/// so a source that still exists is never answered "unknown".
pub(super) async fn wait_for_token(
    mut handle: Arc<SourceHandle>,
    min_ttl: Option<Duration>,
    deadline: Instant,
    settings: &ServerSettings,
    next: impl Fn(&str) -> Result<Arc<SourceHandle>, Failure>,
) -> Result<(Arc<SourceHandle>, Arc<Token>), Failure> {
    loop {
        let name = handle.name();
        let waited = tokio::select! {
            () = settings.closing.cancelled() => return Err(Failure::shutting_down()),
            r = tokio::time::timeout_at(deadline, handle.token(min_ttl)) => r,
        };
        match waited {
            Err(_) => {
                return Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "fetch_timeout",
                    format!(
                        "no token for {name} within {}",
                        humantime::format_duration(settings.request_timeout)
                    ),
                    Some("the identity provider is slow; tokend keeps trying, retry shortly".into()),
                ))
            }
            Ok(Err(ServeError::Unavailable { retry_after, last_error })) => {
                let (message, hint) = match last_error {
                    Some(e) => (format!("no valid token for {name}: {}", e.message), e.hint),
                    None => (format!("no valid token for {name} yet"), None),
                };
                let mut f = Failure::new(StatusCode::SERVICE_UNAVAILABLE, "token_unavailable", message, hint);
                f.retry_after = retry_after;
                return Err(f);
            }
            Ok(Err(ServeError::MinTtlUnsatisfiable { lifetime })) => {
                return Err(Failure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "min_ttl_unsatisfiable",
                    format!("the identity provider issues {name} tokens for {}, shorter than the requested min_ttl", humantime::format_duration(crate::timefmt::whole_secs(lifetime))),
                    Some("ask for a smaller min_ttl".into()),
                ))
            }
            Ok(Err(ServeError::Gone)) => {
                let again = next(name)?;
                if Arc::ptr_eq(&again, &handle) {
                    return Err(Failure::stopping(name));
                }
                handle = again;
            }
            Ok(Ok(t)) => return Ok((handle, t)),
        }
    }
}

async fn token(
    name: &str,
    query: &str,
    broker: &Broker,
    peer: Option<&Peer>,
    settings: &ServerSettings,
    now: Moment,
    deadline: Instant,
) -> Resp {
    let q = match parse_token_query(query) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m, None),
    };
    // The hot path: a cached token, no lock, no wait, no timer, and no
    // reference count shared with other threads (the registry, the source
    // and the token are borrowed; the scope ends before any `.await`).
    let handle = {
        let registry = broker.registry();
        let handle = match readable_in(&registry, name, peer, settings) {
            Ok(h) => h,
            Err(f) => return f.render(),
        };
        if let Some(r) =
            handle.with_token(q.min_ttl, now, |tok| token_answer(handle, tok, q.raw, now))
        {
            handle.count_served();
            return r;
        }
        handle.clone()
    };
    let next = |name: &str| readable(broker, name, peer, settings);
    // Boxed: only a request that waits pays for the waiting's state, not
    // every request's future (see server::connection).
    match Box::pin(wait_for_token(handle, q.min_ttl, deadline, settings, next)).await {
        Ok((handle, tok)) => {
            handle.count_served();
            token_answer(&handle, &tok, q.raw, Moment::now())
        }
        Err(f) => f.render(),
    }
}

/// The answer with `tok`: the bare token, or its JSON rendered once (see
/// [`prepare`]) and the live `expires_in`.
fn token_answer(handle: &SourceHandle, tok: &Token, raw: bool, now: Moment) -> Resp {
    let mut r = if raw {
        let mut r = Response::new(Body::from(tok.access_token.bytes().clone()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    } else if tok.json_head.is_empty() {
        // Not prepared (a token made outside a source): render it all now.
        let body = Bytes::copy_from_slice(&crate::token::json(handle.name(), tok));
        let mut r = Response::new(Body::from(body));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    } else {
        use std::io::Write;
        let mut tail = [0u8; 24];
        let mut w = &mut tail[..];
        let _ = write!(w, "{}}}", tok.remaining_at(now).as_secs());
        let len = 24 - w.len();
        let mut r = Response::new(Body::two(
            tok.json_head.clone(),
            Bytes::copy_from_slice(&tail[..len]),
        ));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    // Every answer that carries a token says so.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn refresh(
    headers: &hyper::HeaderMap,
    body: Incoming,
    mut handle: Arc<SourceHandle>,
    broker: &Broker,
    peer: Option<&Peer>,
    settings: &ServerSettings,
    deadline: Instant,
) -> Resp {
    let name = handle.name().to_string();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("POST bodies are limited to {MAX_POST_BODY} bytes"),
            None,
        )
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_POST_BODY as u64) {
        return too_large();
    }
    // Reading the body counts against request_timeout like everything else.
    match tokio::time::timeout_at(deadline, Limited::new(body, MAX_POST_BODY).collect()).await {
        Err(_) => return request_timeout(),
        Ok(Err(_)) => return too_large(),
        Ok(Ok(_)) => {}
    }
    if let Err(wait) = handle.claim_forced_refresh() {
        return with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "refresh_rate_limited",
                format!("{name} was force-refreshed less than 10 s ago"),
                None,
            ),
            Some(wait),
        );
    }
    loop {
        let waited = tokio::select! {
            () = settings.closing.cancelled() => return Failure::shutting_down().render(),
            r = tokio::time::timeout_at(deadline, handle.force_refresh()) => r,
        };
        match waited {
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "fetch_timeout",
                    format!(
                        "the refresh of {name} did not finish within {}",
                        humantime::format_duration(settings.request_timeout)
                    ),
                    None,
                )
            }
            Ok(Ok(_)) => return json_response(StatusCode::OK, &broker.status_json(&handle)),
            // A reload replaced the source meanwhile: the new one's fetch answers.
            Ok(Err(RefreshError::Gone)) => match readable(broker, handle.name(), peer, settings) {
                Ok(next) if Arc::ptr_eq(&next, &handle) => {
                    return Failure::stopping(handle.name()).render()
                }
                Ok(next) => handle = next,
                Err(f) => return f.render(),
            },
            Ok(Err(RefreshError::Failed(last))) => {
                let (message, hint) = last
                    .map(|e| (e.message, e.hint))
                    .unwrap_or_else(|| (format!("the refresh of {name} failed"), None));
                let mut body = json!({ "error": "refresh_failed", "message": message, "source": broker.status_json(&handle) });
                if let Some(h) = hint {
                    body["hint"] = Value::String(h);
                }
                return json_response(StatusCode::BAD_GATEWAY, &body);
            }
        }
    }
}
