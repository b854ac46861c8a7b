//! Every answer shape the doors send (docs/api.md, docs/managed-identity.md),
//! as types that serialize to it, and the one error of every door,
//! [`Problem`], with the body each door's clients parse. The broker hands
//! over plain data (a source's status, the reload status); this is the only
//! place it becomes JSON.
//!
//! Invariant: fields are declared in their wire order. For the status
//! shapes that is alphabetical (the order the API has always had); the
//! golden answers in `tests/golden/` hold every shape byte for byte.

use super::body::Body;
use crate::broker::{LastError, ReloadStatus, SourceStatus};
use crate::timefmt::{ceil_secs, rfc3339};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

pub type Resp = Response<Body>;

/// `value` as a JSON answer with `status`.
pub fn json(status: StatusCode, value: &impl Serialize) -> Resp {
    // Serializing these types to a Vec cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes::Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Outside text (a path, a name, a query value) made safe for a message
/// or a log line.
pub fn printable(text: &str) -> String {
    crate::text::clip(text, 200)
}

/// Why a request gets no answer it wanted, the same for every door; each
/// door renders it in its clients' shape ([`Problem::socket`],
/// [`Problem::app_service`]).
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    pub retry_after: Option<Duration>,
    /// The `outcome` of `tokend_token_requests_total` when this answers a
    /// token request; `None` is not counted (callers must not mint label
    /// values with names that do not exist).
    pub outcome: Option<&'static str>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Problem {
        let outcome = match status.as_u16() {
            400 => Some("bad_request"),
            403 => Some("forbidden"),
            422 => Some("min_ttl_unsatisfiable"),
            503 => Some("unavailable"),
            504 => Some("timeout"),
            _ => None,
        };
        Problem {
            status,
            code,
            message: message.into(),
            hint,
            retry_after: None,
            outcome,
        }
    }

    pub fn retry_after(self, after: Option<Duration>) -> Problem {
        Problem {
            retry_after: after,
            ..self
        }
    }

    pub fn counted_as(self, outcome: Option<&'static str>) -> Problem {
        Problem { outcome, ..self }
    }

    /// The socket API's error body, `{"error", "hint"?, "message"}`, with
    /// `Retry-After` when known.
    pub fn socket(self) -> Resp {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            hint: Option<&'a str>,
            message: &'a str,
        }
        let body = Body {
            error: self.code,
            hint: self.hint.as_deref(),
            message: &self.message,
        };
        with_retry_after(json(self.status, &body), self.retry_after)
    }

    /// IMDS's error body, `{"error", "error_description"}`; a hint joins
    /// the description.
    pub fn imds(self) -> Resp {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        let description = self.described();
        let body = Body {
            error: self.code,
            error_description: &description,
        };
        with_retry_after(json(self.status, &body), self.retry_after)
    }

    /// The message with the hint after it, for bodies with no hint field.
    fn described(&self) -> String {
        match &self.hint {
            Some(h) => format!("{} ({h})", self.message),
            None => self.message.clone(),
        }
    }

    /// App Service's error body, which every Azure SDK parses; a hint
    /// joins the message (the protocol has no field for it).
    pub fn app_service(self) -> Resp {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
            message: &'a str,
            #[serde(rename = "statusCode")]
            status_code: u16,
        }
        let description = self.described();
        let body = Body {
            error: self.code,
            error_description: &description,
            message: &description,
            status_code: self.status.as_u16(),
        };
        with_retry_after(json(self.status, &body), self.retry_after)
    }
}

fn with_retry_after(mut r: Resp, after: Option<Duration>) -> Resp {
    if let Some(d) = after {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(ceil_secs(d).max(1)));
    }
    r
}

/// Marks an answer that carries a token: nobody on the way keeps it.
pub fn no_store(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /healthz`.
#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// What callers other than root and the daemon's uid see of a reload error:
/// its text names files and settings they must not learn.
pub const RELOAD_ERROR_REDACTED: &str = "the last reload failed; details in the log";

/// A reload error as `caller_privileged` may see it.
fn reload_error(error: Option<String>, privileged: bool) -> Option<String> {
    error.map(|e| {
        if privileged {
            e
        } else {
            RELOAD_ERROR_REDACTED.to_string()
        }
    })
}

/// `GET /readyz`.
#[derive(Serialize)]
pub struct Ready {
    pub config_error: Option<String>,
    pub door_errors: Vec<String>,
    pub not_ready: Vec<String>,
    pub ready: bool,
    pub socket_error: Option<String>,
}

impl Ready {
    /// The config error of `reload`, if it failed, as `privileged` may see it.
    pub fn config_error(reload: ReloadStatus, privileged: bool) -> Option<String> {
        reload_error(
            (!reload.ok).then(|| reload.error.unwrap_or_default()),
            privileged,
        )
    }
}

/// `GET /v1/sources`.
#[derive(Serialize)]
pub struct Sources {
    pub config: ConfigStatus,
    pub sources: Vec<Source>,
}

/// The `config` object of `/v1/sources`.
#[derive(Serialize)]
pub struct ConfigStatus {
    last_reload: LastReload,
    loaded_at: String,
    reloads: Reloads,
}

#[derive(Serialize)]
struct LastReload {
    at: String,
    error: Option<String>,
    ok: bool,
}

#[derive(Serialize)]
struct Reloads {
    error: u64,
    success: u64,
}

impl ConfigStatus {
    pub fn new(r: ReloadStatus, privileged: bool) -> ConfigStatus {
        ConfigStatus {
            last_reload: LastReload {
                at: rfc3339(r.at),
                error: reload_error(r.error, privileged),
                ok: r.ok,
            },
            loaded_at: rfc3339(r.loaded_at),
            reloads: Reloads {
                error: r.errors,
                success: r.successes,
            },
        }
    }
}

/// One source, as `/v1/sources/NAME` shows it: never a token or a secret.
#[derive(Serialize)]
pub struct Source {
    consecutive_failures: u32,
    credential_expires_at: Option<String>,
    expires_at: Option<String>,
    last_error: Option<Error>,
    managed_identity_apps: Vec<String>,
    name: String,
    next_refresh_at: Option<String>,
    refreshed_at: Option<String>,
    state: &'static str,
    warnings: Vec<String>,
}

/// A source's last fetch failure.
#[derive(Serialize)]
struct Error {
    at: String,
    error: String,
    hint: Option<String>,
    message: String,
}

impl From<&LastError> for Error {
    fn from(e: &LastError) -> Error {
        Error {
            at: rfc3339(e.at),
            error: e.error.clone(),
            hint: e.hint.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<SourceStatus> for Source {
    fn from(s: SourceStatus) -> Source {
        let snap = s.snapshot;
        Source {
            consecutive_failures: snap.consecutive_failures,
            credential_expires_at: s.credential_expires.map(rfc3339),
            expires_at: snap.token.as_ref().map(|t| t.expires_at_text()),
            last_error: snap.last_error.as_ref().map(Error::from),
            managed_identity_apps: s.managed_identity_apps,
            name: s.name,
            next_refresh_at: snap.next_refresh_at.map(|at| rfc3339(at.wall)),
            refreshed_at: snap.refreshed_at.map(rfc3339),
            state: s.state.name(),
            warnings: snap.warnings,
        }
    }
}

/// `POST /v1/sources/NAME/refresh` when the fetch failed: the error and
/// the source's status after it.
#[derive(Serialize)]
pub struct RefreshFailed {
    pub error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub message: String,
    pub source: Source,
}

/// The managed-identity door's token answer, with every field some SDK
/// reads (`expires_on` a string of epoch seconds, as App Service sends it).
#[derive(Serialize)]
struct AppServiceToken<'a> {
    access_token: &'a str,
    client_id: &'a str,
    expires_in: u64,
    expires_on: String,
    resource: &'a str,
    token_type: &'a str,
}

/// The managed-identity door's answer with `tok` of the source with
/// `client_id`, for `resource` as the SDK asked for it, at `now`. Its
/// bytes are zeroed when the answer is dropped.
pub fn app_service_token(
    tok: &crate::token::Token,
    client_id: &str,
    resource: &str,
    now: crate::clock::Moment,
) -> Resp {
    use crate::secret::ExposeSecret;
    let body = AppServiceToken {
        access_token: tok.access_token.expose_secret(),
        client_id,
        expires_in: tok.remaining_at(now).as_secs(),
        expires_on: tok
            .expires
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string(),
        resource,
        token_type: &tok.token_type,
    };
    zeroed_json(&body, body.access_token.len())
}

/// IMDS's token answer: every field a string, as the SDKs parse it.
#[derive(Serialize)]
struct ImdsToken<'a> {
    access_token: &'a str,
    client_id: &'a str,
    expires_in: String,
    expires_on: String,
    ext_expires_in: String,
    not_before: String,
    refresh_token: &'a str,
    resource: &'a str,
    token_type: &'a str,
}

/// The IMDS door's answer with `tok` of the source with `client_id`, for
/// `resource` as the tool asked for it, at `now`. Its bytes are zeroed when
/// the answer is dropped.
pub fn imds_token(
    tok: &crate::token::Token,
    client_id: &str,
    resource: &str,
    now: crate::clock::Moment,
) -> Resp {
    use crate::secret::ExposeSecret;
    let epoch = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string()
    };
    let expires_in = tok.remaining_at(now).as_secs().to_string();
    let token_type = if tok.token_type.eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        &tok.token_type
    };
    let body = ImdsToken {
        access_token: tok.access_token.expose_secret(),
        client_id,
        ext_expires_in: expires_in.clone(),
        expires_in,
        expires_on: epoch(tok.expires.wall),
        not_before: epoch(tok.issued.wall),
        refresh_token: "",
        resource,
        token_type,
    };
    zeroed_json(&body, body.access_token.len())
}

/// `body` as a JSON answer not to be stored, whose bytes (holding a token
/// of `token_len` bytes) are zeroed when it is dropped.
fn zeroed_json(body: &impl Serialize, token_len: usize) -> Resp {
    let mut bytes = Vec::with_capacity(token_len + 200);
    // Serializing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut bytes, body);
    let mut r = Response::new(Body::from(crate::token::zeroed(bytes)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    no_store(r)
}

/// `GET /v1/tokens/NAME` with `tok` of `source` at `now`: the bare token
/// (`?format=raw`), or its answer rendered once (see [`crate::answer`])
/// and the live `expires_in`.
pub fn token(
    source: &str,
    tok: &crate::token::Token,
    raw: bool,
    now: crate::clock::Moment,
) -> Resp {
    let (body, content_type) = if raw {
        (Body::from(tok.access_token.bytes().clone()), "text/plain")
    } else {
        let (head, tail) = crate::answer::api_body(source, tok, now);
        (Body::two(head, tail), "application/json")
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_store(r)
}
