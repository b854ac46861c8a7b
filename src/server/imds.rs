//! The IMDS door: Azure's instance-metadata token protocol, for the tools
//! that speak it rather than App Service's (the Go SDK and Terraform's
//! azurerm, kubelogin, MSAL's `ManagedIdentityClient`, `az login
//! --identity`, and any SDK pointed here with
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST`), on loopback or on
//! 169.254.169.254 where that address is local (docs/imds.md).
//!
//! `GET /metadata/identity/oauth2/token?api-version=V&resource=R
//! [&client_id=C]` with `Metadata: true`. IMDS has no secret to send, so
//! the caller is who the kernel says holds the connection's other end: the
//! token comes from the one source offered in `[imds] sources` whose single
//! scope is `R/.default`, whose `client_id` is `C` when given, and whose
//! `allow` admits the caller. Answers and errors are IMDS's: every field a
//! string, errors `{"error", "error_description"}`, and a request without
//! `Metadata: true` a 400 at once, since SDKs probe that way with
//! sub-second timeouts.

use super::context::Ctx;
use super::guard::Denials;
use super::mi::Ask;
use super::tokens;
use super::view::{self, printable, Problem, Resp};
use crate::broker::source::SourceHandle;
use hyper::{Method, Request, StatusCode};
use std::sync::Arc;
use tokio::time::Instant;

/// The token path (msal-node asks for it with a trailing `/`).
pub const PATH: &str = "/metadata/identity/oauth2/token";

fn invalid(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
    Problem::new(status, code, message, None)
}

/// Answers one request on the IMDS door.
pub async fn handle(req: Request<hyper::body::Incoming>, ctx: &Ctx<'_>, denials: &Denials) -> Resp {
    match answer(&req, ctx, denials).await {
        Ok(r) => r,
        Err(p) => p.imds(),
    }
}

async fn answer<B>(req: &Request<B>, ctx: &Ctx<'_>, denials: &Denials) -> Result<Resp, Problem> {
    // First, before anything is looked at: the probe the SDKs send.
    let metadata = req.headers().get("metadata").map(|v| v.as_bytes());
    if !metadata.is_some_and(|v| v.eq_ignore_ascii_case(b"true")) {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        ));
    }
    super::guard::check_host(req.headers(), denials, "imds")
        .map_err(|r| invalid(r.status, "invalid_request", r.message))?;
    let path = req.uri().path();
    if path != PATH && path.strip_suffix('/') != Some(PATH) {
        return Err(invalid(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this is tokend's IMDS door; the only path is {PATH}"),
        ));
    }
    if req.method() != Method::GET {
        return Err(invalid(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Only GET is supported",
        ));
    }
    known_caller(ctx, denials)?;
    let ask = parse_query(req.uri().query().unwrap_or_default())?;
    let handle = source_for(&ask, ctx, denials)?;
    let name = handle.name().to_string();
    let next = |source: &str| follow(ctx, source, &ask);
    let waited = tokens::wait_for_token(handle, None, ctx, next).await;
    tokens::count(ctx, &name, waited.as_ref().map(|(h, _)| &**h));
    let (handle, tok) = waited?;
    let client_id = handle.config().client_id.clone();
    Ok(view::imds_token(
        &tok,
        &client_id,
        &ask.resource,
        crate::clock::Moment::now(),
    ))
}

/// A caller the kernel did not name gets nothing here: the door has no
/// other way to know who asks.
fn known_caller(ctx: &Ctx<'_>, denials: &Denials) -> Result<(), Problem> {
    let Some(why) = ctx.caller.unknown() else {
        return Ok(());
    };
    if let Some(unlogged) = denials.log_now(Instant::now()) {
        tracing::warn!(reason = %why, refused_since_last_line = unlogged, "IMDS request refused: tokend cannot tell who is asking");
    }
    Err(invalid(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("tokend cannot tell who is asking, and the IMDS door serves only callers it knows: {why}"),
    ))
}

fn parse_query(query: &str) -> Result<Ask, Problem> {
    let (mut version, mut resource, mut client_id) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "api-version" => version = Some(v.into_owned()),
            "resource" => resource = Some(v.into_owned()),
            "client_id" => client_id = Some(v.into_owned()),
            "object_id" | "principal_id" | "msi_res_id" | "mi_res_id" => {
                return Err(invalid(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("Identity not found: tokend tells identities apart by client_id, not {k}; set the tool's client id (AZURE_CLIENT_ID, ARM_CLIENT_ID) to the source's client_id"),
                ))
            }
            _ => {}
        }
    }
    if version.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required api-version parameter not specified (any version the SDKs send, such as 2018-02-01)",
        ));
    }
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required audience parameter not specified",
        ));
    };
    // Some tools send a scope where IMDS wants a resource.
    let resource = match resource.strip_suffix("/.default") {
        Some(r) => r.to_string(),
        None => resource,
    };
    Ok(Ask {
        resource,
        client_id,
    })
}

/// The offered sources this caller may read.
fn offered(ctx: &Ctx<'_>) -> Vec<Arc<SourceHandle>> {
    ctx.broker
        .managed_identity()
        .imds
        .iter()
        .filter_map(|n| ctx.broker.get(n))
        .filter(|h| ctx.caller.may_read(&h.config_ref()))
        .collect()
}

/// The one offered source that serves `ask` to this caller.
fn source_for(ask: &Ask, ctx: &Ctx<'_>, denials: &Denials) -> Result<Arc<SourceHandle>, Problem> {
    let sources = offered(ctx);
    let candidates: Vec<&Arc<SourceHandle>> = sources
        .iter()
        .filter(|h| ask.served_by(&h.config_ref()))
        .collect();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(no_source_for(ask, ctx, &sources, denials)),
        more => {
            let ids: Vec<String> = more.iter().map(|h| h.config().client_id.clone()).collect();
            Err(invalid(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "{} sources offered here serve resource {} to this caller: pass client_id (AZURE_CLIENT_ID, ARM_CLIENT_ID) to choose one of {}",
                    more.len(),
                    ask.wanted(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// No offered source serves `ask` to this caller: say what it can get,
/// which is all it learns (a source it may not read looks like none).
fn no_source_for(
    ask: &Ask,
    ctx: &Ctx<'_>,
    sources: &[Arc<SourceHandle>],
    denials: &Denials,
) -> Problem {
    let uid = ctx.caller.peer().map(|p| p.uid);
    if let Some(unlogged) = denials.log_now(Instant::now()) {
        tracing::warn!(
            uid,
            resource = %printable(ask.wanted()),
            refused_since_last_line = unlogged,
            "IMDS request refused: no offered source serves the resource to this caller"
        );
    }
    invalid(
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        format!(
            "no source offered on the IMDS door serves resource {}{} to uid {}; this caller can get: {} (offer a source in [imds] sources whose allow admits it, docs/imds.md)",
            printable(ask.wanted()),
            ask.with_client_id(),
            uid.map_or_else(|| "?".to_string(), |u| u.to_string()),
            ask.can_get(sources)
        ),
    )
}

/// A source a reload replaced while the request waited, followed only
/// while it is still offered, still serves what was asked for and still
/// admits the caller.
fn follow(ctx: &Ctx<'_>, source: &str, ask: &Ask) -> Result<Arc<SourceHandle>, Problem> {
    let offered = ctx
        .broker
        .managed_identity()
        .imds
        .iter()
        .any(|s| s == source);
    match ctx.broker.get(source) {
        Some(h)
            if offered
                && ctx.caller.may_read(&h.config_ref())
                && ask.served_by(&h.config_ref()) =>
        {
            Ok(h)
        }
        _ => Err(invalid(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            format!(
                "source {source} no longer serves resource {}{} here (a reload changed it)",
                printable(ask.wanted()),
                ask.with_client_id(),
            ),
        )),
    }
}
