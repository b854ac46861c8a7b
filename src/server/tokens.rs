//! Getting a token for a request, the same at every door: waiting for one
//! until the request's deadline, following a source a reload replaced, and
//! counting the outcome (`tokend_token_requests_total`) in one place.

use super::context::Ctx;
use super::view::Problem;
use crate::broker::source::SourceHandle;
use crate::broker::ServeError;
use crate::token::Token;
use hyper::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// The daemon began to shut down while the request waited.
pub fn shutting_down() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "tokend is shutting down",
        Some("retry in a moment: a restarted tokend serves again within seconds".into()),
    )
    .retry_after(Some(Duration::from_secs(1)))
}

/// A source that is stopped but still listed: the daemon is shutting down.
pub fn stopping(name: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "token_unavailable",
        format!("source {name} is stopping"),
        None,
    )
}

/// Waits, until the request's deadline, for a token of `handle` that stays
/// valid for `min_ttl`. A source replaced by a reload (its identity
/// changed) is followed by name: `next` looks it up again under the door's
/// access rule, so a source that still exists is never answered "unknown".
pub async fn wait_for_token(
    mut handle: Arc<SourceHandle>,
    min_ttl: Option<Duration>,
    ctx: &Ctx<'_>,
    next: impl Fn(&str) -> Result<Arc<SourceHandle>, Problem>,
) -> Result<(Arc<SourceHandle>, Arc<Token>), Problem> {
    loop {
        let name = handle.name();
        let waited = tokio::select! {
            () = ctx.settings.closing.cancelled() => return Err(shutting_down()),
            r = tokio::time::timeout_at(ctx.deadline, handle.token(min_ttl)) => r,
        };
        let error = match waited {
            Ok(Ok(t)) => return Ok((handle, t)),
            Err(_) => timed_out(name, ctx.settings.request_timeout),
            Ok(Err(ServeError::Gone)) => {
                let again = next(name)?;
                if Arc::ptr_eq(&again, &handle) {
                    return Err(stopping(name));
                }
                handle = again;
                continue;
            }
            Ok(Err(e)) => unservable(name, e),
        };
        return Err(error);
    }
}

fn timed_out(name: &str, request_timeout: Duration) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "fetch_timeout",
        format!(
            "no token for {name} within {}",
            humantime::format_duration(request_timeout)
        ),
        Some("the identity provider is slow; tokend keeps trying, retry shortly".into()),
    )
}

fn unservable(name: &str, e: ServeError) -> Problem {
    match e {
        ServeError::Unavailable {
            retry_after,
            last_error,
        } => {
            let (message, hint) = match last_error {
                Some(e) => (format!("no valid token for {name}: {}", e.message), e.hint),
                None => (format!("no valid token for {name} yet"), None),
            };
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                message,
                hint,
            )
            .retry_after(retry_after)
        }
        ServeError::MinTtlUnsatisfiable { lifetime } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "min_ttl_unsatisfiable",
            format!(
                "the identity provider issues {name} tokens for {}, shorter than the requested min_ttl",
                humantime::format_duration(crate::timefmt::whole_secs(lifetime))
            ),
            Some("ask for a smaller min_ttl".into()),
        ),
        ServeError::Gone => stopping(name),
    }
}

/// Counts a token request's outcome: a served token on its source's own
/// counter (the hot path: no label look-up), a refusal by its outcome.
pub fn count(ctx: &Ctx<'_>, name: &str, outcome: Result<&SourceHandle, &Problem>) {
    match outcome {
        Ok(handle) => handle.count_served(),
        // Only names that exist: callers must not mint label values.
        Err(p) => {
            if let Some(label) = p.outcome.filter(|_| ctx.broker.get(name).is_some()) {
                ctx.broker.metrics().count_request(name, label);
            }
        }
    }
}
