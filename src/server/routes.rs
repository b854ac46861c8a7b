//! The socket API's routes (docs/api.md): path and query parsing, status
//! codes, and which source a caller may read. Answers take their shape
//! from [`super::view`]; tokens come through [`super::tokens`].

use super::body::Body;
use super::context::Ctx;
use super::guard::Denials;
use super::tokens::{self, stopping};
use super::view::{self, printable, Problem, Resp};
use crate::broker::source::SourceHandle;
use crate::broker::{RefreshError, Registry};
use crate::config::valid_source_name;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest POST body accepted.
pub const MAX_POST_BODY: usize = 1024;

#[derive(Clone, Copy)]
enum Route {
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
const ROUTES: &[(&str, Route, &[Method])] = &[
    ("/v1/tokens/{name}", Route::Token, GET),
    ("/v1/sources/{name}/refresh", Route::Refresh, POST),
    ("/v1/sources/{name}", Route::Source, GET),
    ("/v1/sources", Route::Sources, GET),
    ("/healthz", Route::Health, GET),
    ("/readyz", Route::Ready, GET),
    ("/metrics", Route::Metrics, GET),
];

/// Every route as `METHOD /path`, for the documentation test.
pub fn routes() -> impl Iterator<Item = String> {
    ROUTES
        .iter()
        .flat_map(|(path, _, methods)| methods.iter().map(move |m| format!("{m} {path}")))
}

/// The route of `path`, the name in it (empty if none) and its methods.
fn route(path: &str) -> Option<(Route, &str, &'static [Method])> {
    ROUTES.iter().find_map(|&(template, route, methods)| {
        let name = match template.split_once("{name}") {
            None => (path == template).then_some("")?,
            Some((prefix, suffix)) => path.strip_prefix(prefix)?.strip_suffix(suffix)?,
        };
        Some((route, name, methods))
    })
}

fn not_found(message: String, hint: &str) -> Resp {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        message,
        Some(hint.into()),
    )
    .socket()
}

/// Answers one request on the socket. Never panics on input; every outcome
/// is a response. Anything that waits (for a token, a forced refresh, a
/// request body) ends at the context's deadline: 504 for a fetch, else 408
/// and the connection is closed.
pub async fn handle(req: Request<Incoming>, ctx: &Ctx<'_>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    let resp = match route(path) {
        None => not_found(
            format!("no such path: {}", printable(path)),
            "the API is under /v1/ (tokens, sources), plus /healthz, /readyz and /metrics; see docs/api.md",
        ),
        Some((_, _, methods)) if !methods.contains(method) => method_not_allowed(method, methods),
        Some((route, name, _)) => match route {
            Route::Health => health(),
            Route::Ready => ready(ctx),
            Route::Sources => sources(ctx),
            Route::Source => match readable(ctx, name) {
                Ok(h) => view::json(StatusCode::OK, &source_view(ctx, &h)),
                Err(p) => p.socket(),
            },
            Route::Refresh => match readable(ctx, name) {
                Ok(h) => Box::pin(refresh(&parts.headers, body, h, ctx)).await,
                Err(p) => p.socket(),
            },
            Route::Token => token(name, parts.uri.query().unwrap_or_default(), ctx).await,
            Route::Metrics => metrics(ctx, ctx.caller.privileged()),
        },
    };
    let peer = ctx.caller.peer();
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
    let mut r = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here"),
        None,
    )
    .socket();
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
    view::json(StatusCode::OK, &view::Health { status: "ok" })
}

/// `/metrics`: every series for `all`, else (like `/readyz`) per-source
/// series only of the sources this caller may read.
fn metrics(ctx: &Ctx<'_>, all: bool) -> Resp {
    let text = if all {
        ctx.broker.scrape(None)
    } else {
        ctx.broker
            .scrape(Some(&|name: &str| ctx.may_read_named(name)))
    };
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
pub fn handle_metrics_door<B>(req: &Request<B>, ctx: &Ctx<'_>, denials: &Denials) -> Resp {
    if let Err(refusal) = super::guard::check_host(req.headers(), denials, "metrics") {
        return Problem::new(refusal.status, "misdirected_request", refusal.message, None).socket();
    }
    let path = req.uri().path();
    let found =
        route(path).filter(|(r, _, _)| matches!(r, Route::Metrics | Route::Health | Route::Ready));
    let Some((route, _, methods)) = found else {
        return not_found(
            format!("no such path here: {}", printable(path)),
            "this listener serves only /metrics, /healthz and /readyz; tokens and sources are on the Unix socket (see docs/api.md)",
        );
    };
    if !methods.contains(req.method()) {
        return method_not_allowed(req.method(), methods);
    }
    match route {
        Route::Metrics => metrics(ctx, true),
        Route::Health => health(),
        _ => ready(ctx),
    }
}

/// The source called `name`, if it exists and the caller may read it. A
/// caller other than root and the daemon's user (who may read every
/// source) gets the same 404 for a source it may not read as for one that
/// does not exist, so a name it may not read is as hidden as in
/// `/v1/sources`; the denial is logged at WARN. Names outside the pattern
/// are never looked up.
fn readable(ctx: &Ctx<'_>, name: &str) -> Result<Arc<SourceHandle>, Problem> {
    readable_in(&ctx.broker.registry(), name, ctx).cloned()
}

/// [`readable`] borrowing from the registry (the hot path).
fn readable_in<'r>(
    registry: &'r Registry,
    name: &str,
    ctx: &Ctx<'_>,
) -> Result<&'r Arc<SourceHandle>, Problem> {
    let found = if valid_source_name(name) {
        registry.get(name)
    } else {
        None
    };
    let Some(h) = found else {
        return Err(unknown_source(name, ctx.caller.privileged()));
    };
    if ctx.caller.may_read(&h.config_ref()) {
        return Ok(h);
    }
    // At most a line a minute per uid and source, with the count since:
    // a caller's flood of denials cannot flood the log.
    let peer = ctx.caller.peer();
    let uid = peer.map_or(u32::MAX, |p| p.uid);
    if let Some(unlogged) = ctx.settings.denials.log_now(uid, name, Instant::now()) {
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
    // neither, and is told what a missing source tells it (and counted as
    // what it is).
    Err(unknown_source(name, false).counted_as(Some("forbidden")))
}

/// The 404 for a source that does not exist or, for an unprivileged
/// caller, may not be read: the same words for both.
fn unknown_source(name: &str, precise: bool) -> Problem {
    let name = printable(name);
    let (message, hint) = if precise {
        (
            format!("no source named {name:?}"),
            "GET /v1/sources lists the configured sources",
        )
    } else {
        (
            format!("no source named {name:?}, or this caller may not read it"),
            "GET /v1/sources lists the sources this caller may read; if it should read this one, ask the administrator to add its user or one of its groups to the source's allow list",
        )
    };
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown_source",
        message,
        Some(hint.into()),
    )
    .counted_as(None)
}

/// One source's status, as the view shows it.
fn source_view(ctx: &Ctx<'_>, handle: &SourceHandle) -> view::Source {
    ctx.broker.status(handle).into()
}

/// `/v1/sources`: only the sources this caller may read are listed.
fn sources(ctx: &Ctx<'_>) -> Resp {
    let sources = ctx
        .broker
        .list()
        .iter()
        .filter(|h| ctx.caller.may_read(&h.config_ref()))
        .map(|h| source_view(ctx, h))
        .collect();
    let config = view::ConfigStatus::new(ctx.broker.reload_status(), ctx.caller.privileged());
    view::json(StatusCode::OK, &view::Sources { config, sources })
}

/// `/readyz`: readiness counts every source; the names listed are only
/// those this caller may read.
fn ready(ctx: &Ctx<'_>) -> Resp {
    let not_ready = ctx.broker.not_ready();
    // Sources ready but no client able to reach the socket is not ready;
    // nor is a door that cannot listen, which its clients cannot use.
    let socket_error = ctx.settings.socket_health.problem();
    let door_errors = ctx.settings.door_health.problems();
    let ready = not_ready.is_empty() && socket_error.is_none() && door_errors.is_empty();
    let body = view::Ready {
        config_error: view::Ready::config_error(
            ctx.broker.reload_status(),
            ctx.caller.privileged(),
        ),
        door_errors,
        not_ready: not_ready
            .into_iter()
            .filter(|name| ctx.may_read_named(name))
            .collect(),
        ready,
        socket_error,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    view::json(status, &body)
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

async fn token(name: &str, query: &str, ctx: &Ctx<'_>) -> Resp {
    let answer = match parse_token_query(query) {
        Ok(q) => token_for(name, q, ctx).await,
        Err(m) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            m,
            None,
        )),
    };
    match answer {
        Ok(r) => r,
        Err(p) => {
            tokens::count(ctx, name, Err(&p));
            p.socket()
        }
    }
}

async fn token_for(name: &str, q: TokenQuery, ctx: &Ctx<'_>) -> Result<Resp, Problem> {
    // The hot path: a cached token, no lock, no wait, no timer, and no
    // reference count shared with other threads (the registry, the source
    // and the token are borrowed; the scope ends before any `.await`).
    let handle = {
        let registry = ctx.broker.registry();
        let handle = readable_in(&registry, name, ctx)?;
        let served = handle.with_token(q.min_ttl, ctx.now, |tok| {
            view::token(handle.name(), tok, q.raw, ctx.now)
        });
        if let Some(r) = served {
            tokens::count(ctx, name, Ok(handle));
            return Ok(r);
        }
        handle.clone()
    };
    let next = |name: &str| readable(ctx, name);
    // Boxed: only a request that waits pays for the waiting's state, not
    // every request's future (see server::connection).
    let (handle, tok) = Box::pin(tokens::wait_for_token(handle, q.min_ttl, ctx, next)).await?;
    tokens::count(ctx, name, Ok(&handle));
    Ok(view::token(
        handle.name(),
        &tok,
        q.raw,
        crate::clock::Moment::now(),
    ))
}

/// 408 with `Connection: close`: the request did not arrive in time.
fn request_timeout() -> Resp {
    let mut r = Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive within request_timeout",
        None,
    )
    .socket();
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads a POST body of at most [`MAX_POST_BODY`] bytes by the deadline.
async fn read_small_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
    ctx: &Ctx<'_>,
) -> Result<(), Resp> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("POST bodies are limited to {MAX_POST_BODY} bytes"),
            None,
        )
        .socket()
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_POST_BODY as u64) {
        return Err(too_large());
    }
    // Reading the body counts against request_timeout like everything else.
    match tokio::time::timeout_at(ctx.deadline, Limited::new(body, MAX_POST_BODY).collect()).await {
        Err(_) => Err(request_timeout()),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(_)) => Ok(()),
    }
}

async fn refresh(
    headers: &hyper::HeaderMap,
    body: Incoming,
    mut handle: Arc<SourceHandle>,
    ctx: &Ctx<'_>,
) -> Resp {
    if let Err(r) = read_small_body(headers, body, ctx).await {
        return r;
    }
    let name = handle.name().to_string();
    if let Err(wait) = handle.claim_forced_refresh() {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "refresh_rate_limited",
            format!("{name} was force-refreshed less than 10 s ago"),
            None,
        )
        .retry_after(Some(wait))
        .socket();
    }
    loop {
        let waited = tokio::select! {
            () = ctx.settings.closing.cancelled() => return tokens::shutting_down().socket(),
            r = tokio::time::timeout_at(ctx.deadline, handle.force_refresh()) => r,
        };
        match waited {
            Err(_) => {
                return Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "fetch_timeout",
                    format!(
                        "the refresh of {name} did not finish within {}",
                        humantime::format_duration(ctx.settings.request_timeout)
                    ),
                    None,
                )
                .socket()
            }
            Ok(Ok(_)) => return view::json(StatusCode::OK, &source_view(ctx, &handle)),
            // A reload replaced the source meanwhile: the new one's fetch answers.
            Ok(Err(RefreshError::Gone)) => match readable(ctx, handle.name()) {
                Ok(next) if Arc::ptr_eq(&next, &handle) => return stopping(handle.name()).socket(),
                Ok(next) => handle = next,
                Err(p) => return p.socket(),
            },
            Ok(Err(RefreshError::Failed(last))) => {
                let (message, hint) = last
                    .map(|e| (e.message, e.hint))
                    .unwrap_or_else(|| (format!("the refresh of {name} failed"), None));
                let body = view::RefreshFailed {
                    error: "refresh_failed",
                    hint,
                    message,
                    source: source_view(ctx, &handle),
                };
                return view::json(StatusCode::BAD_GATEWAY, &body);
            }
        }
    }
}
