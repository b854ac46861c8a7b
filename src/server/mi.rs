//! The managed-identity endpoint: Azure App Service's protocol (2019-08-01)
//! on loopback, so unmodified Azure SDK programs (`ManagedIdentityCredential`,
//! `DefaultAzureCredential`) get their tokens from tokend.
//!
//! A program runs with `IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token`
//! and `IDENTITY_HEADER=<its app's header>`, and asks
//! `GET /msi/token?api-version=2019-08-01&resource=R[&client_id=C]` with
//! `X-IDENTITY-HEADER`. The header, compared in constant time with every
//! app's, says which app is asking; the token comes from the one source of
//! that app whose single scope is `R/.default` (and whose `client_id` is
//! `C`, when given). Serving follows the same rules as the socket: one fetch
//! for many callers, never a token with 5 s or less left, 503 while the
//! source backs off. Answers carry every field some SDK reads.

use super::body::Body;
use super::guard::Denials;
use super::routes::{wait_for_token, Failure};
use super::ServerSettings;
use crate::broker::Broker;
use crate::secret::ExposeSecret;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;
use tokio::time::Instant;

/// The protocol version tokend speaks.
pub const API_VERSION: &str = "2019-08-01";
/// The endpoint's path.
pub const PATH: &str = "/msi/token";

/// The environment a program needs to use app `name` of `config`: the two
/// lines for a systemd `EnvironmentFile=`. The header is a secret.
pub fn env_lines(
    config: &crate::config::Config,
    name: &str,
    env: &crate::secret::SecretEnv,
) -> Result<String, String> {
    let Some(mi) = &config.managed_identity else {
        return Err(format!(
            "{} has no [managed_identity] section",
            crate::text::path(&config.path)
        ));
    };
    let Some(app) = mi.apps.get(name) else {
        let known: Vec<&str> = mi.apps.keys().map(String::as_str).collect();
        return Err(format!(
            "no managed-identity app named {name:?}; the apps are: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let header = app
        .header
        .resolve_now(env)
        .map_err(|e| format!("cannot read app {name}'s header: {e}"))?;
    Ok(format!(
        "IDENTITY_ENDPOINT=http://{}{PATH}\nIDENTITY_HEADER={}\n",
        mi.listen,
        header.expose_secret()
    ))
}

type Resp = Response<Body>;

/// An error the way App Service answers one, which every SDK parses.
fn error(status: StatusCode, error: &str, description: impl Into<String>) -> Resp {
    let description = description.into();
    let body = json!({
        "error": error,
        "error_description": description,
        "statusCode": status.as_u16(),
        "message": description,
    });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn failure(f: Failure) -> Resp {
    let mut message = f.message;
    if let Some(h) = f.hint {
        message = format!("{message} ({h})");
    }
    let mut r = error(f.status, f.code, message);
    if let Some(d) = f.retry_after {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            HeaderValue::from(crate::timefmt::ceil_secs(d).max(1)),
        );
    }
    r
}

/// Whether source `c` answers a request for `resource` (and `client_id`,
/// when the SDK names one).
fn serves(c: &crate::config::SourceConfig, resource: &str, client_id: Option<&str>) -> bool {
    crate::config::resource_of(c) == Some(resource) && client_id.is_none_or(|id| id == c.client_id)
}

/// Answers one request on the managed-identity endpoint.
pub async fn handle(
    req: Request<Incoming>,
    broker: &Broker,
    settings: &ServerSettings,
    denials: &Denials,
    deadline: Instant,
) -> Resp {
    // The Host first, before the header: a page that rebinds a name to
    // 127.0.0.1 learns nothing here, not even whether a header is right.
    if let Err(refusal) = super::guard::check_host(req.headers(), denials, "managed identity") {
        return error(refusal.status, "invalid_request", refusal.message);
    }
    if req.uri().path() != PATH {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this is tokend's managed-identity endpoint; the only path is {PATH}"),
        );
    }
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "use GET");
    }
    let state = broker.managed_identity();
    let presented = req
        .headers()
        .get("x-identity-header")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let Some(app) = state.app(presented) else {
        if let Some(unlogged) = denials.log_now(Instant::now()) {
            tracing::warn!(
                app = "no app",
                refused_since_last_line = unlogged,
                "managed-identity request refused: no app has this X-IDENTITY-HEADER"
            );
        }
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "the X-IDENTITY-HEADER matches no managed-identity app: run the program with the IDENTITY_HEADER that `tokend mi-env APP` prints",
        );
    };
    let query = req.uri().query().unwrap_or_default();
    let (mut version, mut resource, mut client_id) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "api-version" => version = Some(v.into_owned()),
            "resource" => resource = Some(v.into_owned()),
            "client_id" => client_id = Some(v.into_owned()),
            "object_id" | "principal_id" | "mi_res_id" => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("tokend tells identities apart by client_id, not {k}: set AZURE_CLIENT_ID (or the SDK's client_id) to the source's client_id"),
                )
            }
            _ => {}
        }
    }
    if version.as_deref() != Some(API_VERSION) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("api-version must be {API_VERSION} (the App Service protocol tokend speaks)"),
        );
    }
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request names no resource",
        );
    };
    let wanted = resource.trim_end_matches('/');
    let candidates: Vec<Arc<crate::broker::source::SourceHandle>> = app
        .sources
        .iter()
        .filter_map(|name| broker.get(name))
        .filter(|h| serves(&h.config(), wanted, client_id.as_deref()))
        .collect();
    let handle = match candidates.as_slice() {
        [one] => one.clone(),
        [] => {
            let can: Vec<String> = app
                .sources
                .iter()
                .filter_map(|n| broker.get(n))
                .map(|h| {
                    let c = h.config();
                    let r = crate::config::resource_of(&c).unwrap_or("?").to_string();
                    if client_id.is_some() {
                        format!("{r} (client_id {})", c.client_id)
                    } else {
                        r
                    }
                })
                .collect();
            tracing::warn!(app = %app.name, resource = %crate::server::routes::printable(wanted), "managed-identity request refused: no source of this app serves the resource");
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                format!(
                    "app {} has no source for resource {}{}; app {} can get: {}",
                    app.name,
                    crate::server::routes::printable(wanted),
                    client_id
                        .as_ref()
                        .map(|c| format!(" with client_id {}", crate::server::routes::printable(c)))
                        .unwrap_or_default(),
                    app.name,
                    if can.is_empty() {
                        "nothing".to_string()
                    } else {
                        can.join(", ")
                    }
                ),
            );
        }
        many => {
            let ids: Vec<String> = many.iter().map(|h| h.config().client_id.clone()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "app {} has {} sources for resource {wanted}: pass client_id (AZURE_CLIENT_ID) to choose one of {}",
                    app.name,
                    many.len(),
                    ids.join(", ")
                ),
            );
        }
    };
    let name = handle.name().to_string();
    let app_name = app.name.clone();
    let next = |source: &str| {
        // Followed through a reload only while the app may still use it
        // and it still serves what was asked for.
        let state = broker.managed_identity();
        let allowed = state
            .apps
            .iter()
            .any(|a| a.name == app_name && a.sources.iter().any(|s| s == source));
        match broker.get(source) {
            Some(h) if allowed && serves(&h.config(), wanted, client_id.as_deref()) => Ok(h),
            Some(_) if allowed => Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                format!(
                    "source {source} no longer serves resource {}{} (a reload changed it)",
                    crate::server::routes::printable(wanted),
                    client_id
                        .as_ref()
                        .map(|c| format!(" with client_id {}", crate::server::routes::printable(c)))
                        .unwrap_or_default(),
                ),
                None,
            )),
            _ => Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                format!("source {source} was removed"),
                None,
            )),
        }
    };
    let result = wait_for_token(handle, None, deadline, settings, next).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(f) if f.status == StatusCode::GATEWAY_TIMEOUT => "timeout",
        Err(_) => "unavailable",
    };
    broker.metrics().count_request(&name, outcome);
    let (handle, tok) = match result {
        Ok(t) => t,
        Err(f) => return failure(f),
    };
    let now = crate::clock::Moment::now();
    let expires_on = tok
        .expires
        .wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = json!({
        "access_token": tok.access_token.expose_secret(),
        "expires_on": expires_on.to_string(),
        "expires_in": tok.remaining_at(now).as_secs(),
        "resource": resource,
        "token_type": tok.token_type,
        "client_id": handle.config().client_id,
    });
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
