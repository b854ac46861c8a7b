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
//! source backs off. Answers carry every field some SDK reads; errors are
//! App Service's ([`Problem::app_service`]).

use super::context::Ctx;
use super::guard::Denials;
use super::tokens;
use super::view::{self, printable, Problem, Resp};
use crate::broker::mi::{AppState, MiState};
use crate::broker::source::SourceHandle;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use std::sync::Arc;
use tokio::time::Instant;

/// The protocol version tokend speaks.
pub const API_VERSION: &str = "2019-08-01";
/// The endpoint's path.
pub const PATH: &str = "/msi/token";

fn invalid(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
    Problem::new(status, code, message, None)
}

/// What a token request asks for, on this door or the IMDS door.
pub(super) struct Ask {
    /// As the SDK wrote it (the answer repeats it).
    pub resource: String,
    pub client_id: Option<String>,
}

impl Ask {
    /// The resource without a trailing `/`, as sources are matched.
    pub fn wanted(&self) -> &str {
        self.resource.trim_end_matches('/')
    }

    /// Whether source `c` answers it.
    pub fn served_by(&self, c: &crate::config::SourceConfig) -> bool {
        crate::config::resource_of(c) == Some(self.wanted())
            && self.client_id.as_deref().is_none_or(|id| id == c.client_id)
    }

    /// What `sources` give, as a refusal of this request lists it: each
    /// one's resource (with its client_id when the SDK named one), or
    /// "nothing".
    pub fn can_get(&self, sources: &[Arc<SourceHandle>]) -> String {
        let can: Vec<String> = sources
            .iter()
            .map(|h| {
                let c = h.config();
                let r = crate::config::resource_of(&c).unwrap_or("?");
                match self.client_id {
                    Some(_) => format!("{r} (client_id {})", c.client_id),
                    None => r.to_string(),
                }
            })
            .collect();
        if can.is_empty() {
            "nothing".to_string()
        } else {
            can.join(", ")
        }
    }

    /// " with client_id C" when the SDK named one.
    pub fn with_client_id(&self) -> String {
        self.client_id
            .as_ref()
            .map(|c| format!(" with client_id {}", printable(c)))
            .unwrap_or_default()
    }
}

/// Answers one request on the managed-identity endpoint.
pub async fn handle(req: Request<hyper::body::Incoming>, ctx: &Ctx<'_>, denials: &Denials) -> Resp {
    match answer(&req, ctx, denials).await {
        Ok(r) => r,
        Err(p) => p.app_service(),
    }
}

async fn answer<B>(req: &Request<B>, ctx: &Ctx<'_>, denials: &Denials) -> Result<Resp, Problem> {
    // The Host first, before the header: a page that rebinds a name to
    // 127.0.0.1 learns nothing here, not even whether a header is right.
    super::guard::check_host(req.headers(), denials, "managed identity")
        .map_err(|r| invalid(r.status, "invalid_request", r.message))?;
    if req.uri().path() != PATH {
        return Err(invalid(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this is tokend's managed-identity endpoint; the only path is {PATH}"),
        ));
    }
    if req.method() != Method::GET {
        return Err(invalid(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "use GET",
        ));
    }
    let state = ctx.broker.managed_identity();
    let app = app_of(req, &state, denials)?;
    admit(app, ctx, denials)?;
    let ask = parse_query(req.uri().query().unwrap_or_default())?;
    let handle = source_for(app, &ask, ctx)?;
    let name = handle.name().to_string();
    let app_name = app.name.clone();
    let next = |source: &str| follow(ctx, &app_name, source, &ask);
    let waited = tokens::wait_for_token(handle, None, ctx, next).await;
    tokens::count(ctx, &name, waited.as_ref().map(|(h, _)| &**h));
    let (handle, tok) = waited?;
    let client_id = handle.config().client_id.clone();
    let now = crate::clock::Moment::now();
    Ok(view::app_service_token(
        &tok,
        &client_id,
        &ask.resource,
        now,
    ))
}

/// The app whose header the request presents.
fn app_of<'s, B>(
    req: &Request<B>,
    state: &'s MiState,
    denials: &Denials,
) -> Result<&'s AppState, Problem> {
    let presented = req
        .headers()
        .get("x-identity-header")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    state.app(presented).ok_or_else(|| {
        if let Some(unlogged) = denials.log_now(Instant::now()) {
            tracing::warn!(
                app = "no app",
                refused_since_last_line = unlogged,
                "managed-identity request refused: no app has this X-IDENTITY-HEADER"
            );
        }
        invalid(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "the X-IDENTITY-HEADER matches no managed-identity app: run the program with the IDENTITY_HEADER that `tokend mi-env APP` prints",
        )
    })
}

/// Whether the caller may present `app`'s header: anyone, if the app has
/// no `allow`; else the callers it admits, as the kernel names them.
fn admit(app: &AppState, ctx: &Ctx<'_>, denials: &Denials) -> Result<(), Problem> {
    let Some(allow) = &app.allow else {
        return Ok(());
    };
    if ctx.caller.admitted_by(Some(allow)) {
        return Ok(());
    }
    let (message, uid) = match (ctx.caller.peer(), ctx.caller.unknown()) {
        (Some(p), _) => (
            format!(
                "uid {} may not use app {}: add it to [managed_identity.apps.{}] allow (docs/managed-identity.md), or run the program as a user the app admits",
                p.uid, app.name, app.name
            ),
            Some(p.uid),
        ),
        (None, why) => (
            format!(
                "tokend cannot tell who is asking, and app {} admits only the callers in its allow: {}",
                app.name,
                why.map_or_else(String::new, ToString::to_string)
            ),
            None,
        ),
    };
    if let Some(unlogged) = denials.log_now(Instant::now()) {
        tracing::warn!(
            app = %app.name,
            uid,
            refused_since_last_line = unlogged,
            "managed-identity request refused: the app's allow does not admit the caller"
        );
    }
    Err(invalid(StatusCode::FORBIDDEN, "forbidden", message))
}

fn parse_query(query: &str) -> Result<Ask, Problem> {
    let (mut version, mut resource, mut client_id) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "api-version" => version = Some(v.into_owned()),
            "resource" => resource = Some(v.into_owned()),
            "client_id" => client_id = Some(v.into_owned()),
            "object_id" | "principal_id" | "mi_res_id" => {
                return Err(invalid(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("tokend tells identities apart by client_id, not {k}: set AZURE_CLIENT_ID (or the SDK's client_id) to the source's client_id"),
                ))
            }
            _ => {}
        }
    }
    if version.as_deref() != Some(API_VERSION) {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("api-version must be {API_VERSION} (the App Service protocol tokend speaks)"),
        ));
    }
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request names no resource",
        ));
    };
    Ok(Ask {
        resource,
        client_id,
    })
}

/// The one source of `app` that serves `ask`.
fn source_for(app: &AppState, ask: &Ask, ctx: &Ctx<'_>) -> Result<Arc<SourceHandle>, Problem> {
    let sources: Vec<Arc<SourceHandle>> = app
        .sources
        .iter()
        .filter_map(|n| ctx.broker.get(n))
        .collect();
    let mut candidates = sources.iter().filter(|h| ask.served_by(&h.config_ref()));
    match (candidates.next(), candidates.clone().count()) {
        (Some(one), 0) => Ok(one.clone()),
        (None, _) => Err(no_source_for(app, ask, &sources)),
        (Some(first), more) => {
            let ids: Vec<String> = std::iter::once(first)
                .chain(candidates)
                .map(|h| h.config().client_id.clone())
                .collect();
            Err(invalid(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "app {} has {} sources for resource {}: pass client_id (AZURE_CLIENT_ID) to choose one of {}",
                    app.name,
                    more + 1,
                    ask.wanted(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// No source of `app` serves `ask`: say what the app can get.
fn no_source_for(app: &AppState, ask: &Ask, sources: &[Arc<SourceHandle>]) -> Problem {
    tracing::warn!(app = %app.name, resource = %printable(ask.wanted()), "managed-identity request refused: no source of this app serves the resource");
    invalid(
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        format!(
            "app {} has no source for resource {}{}; app {} can get: {}",
            app.name,
            printable(ask.wanted()),
            ask.with_client_id(),
            app.name,
            ask.can_get(sources)
        ),
    )
}

/// A source a reload replaced while the request waited, followed only
/// while the app may still use it and it still serves what was asked for.
fn follow(ctx: &Ctx<'_>, app: &str, source: &str, ask: &Ask) -> Result<Arc<SourceHandle>, Problem> {
    let state = ctx.broker.managed_identity();
    let allowed = state
        .apps
        .iter()
        .any(|a| a.name == app && a.sources.iter().any(|s| s == source));
    match ctx.broker.get(source) {
        Some(h) if allowed && ask.served_by(&h.config_ref()) => Ok(h),
        Some(_) if allowed => Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            format!(
                "source {source} no longer serves resource {}{} (a reload changed it)",
                printable(ask.wanted()),
                ask.with_client_id(),
            ),
        )),
        _ => Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            format!("source {source} was removed"),
        )),
    }
}
