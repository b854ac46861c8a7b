//! A source's actor: the task that owns the schedule, the backoff and the
//! single upstream request in flight, and publishes every outcome in the
//! source's [`Snapshot`](super::source::Snapshot); and the supervisor that
//! restarts it should it ever panic. The handle side (what the server reads
//! and asks for) is in [`super::source`].
//!
//! Invariant: at most one upstream request per source is in flight (only
//! the actor starts one, and only when none is running).

use super::policy;
use super::source::{Desired, LastError, Shared, WANT_FORCE, WANT_NONE};
use super::Fetcher;
use crate::config::SourceConfig;
use crate::metrics::{epoch_seconds, Metrics, SourceLabel, SourceOutcome};
use crate::oauth::FetchError;
use crate::secret::ExposeSecret;
use crate::token::Token;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

pub(crate) type FetchFuture = Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>>;

/// What an actor needs besides the shared state.
#[derive(Clone)]
pub(crate) struct Deps {
    pub metrics: Arc<Metrics>,
    pub client: Arc<dyn Fetcher>,
    pub limit: Arc<Semaphore>,
    pub sinks: crate::sink::Sinks,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deps")
    }
}

/// Runs the source's actor and, should it ever panic, restarts it with its
/// cached token kept: the panic counts as a failed fetch (so restarts follow
/// the backoff and cannot spin), is logged at ERROR and counted in
/// `tokend_source_restarts_total`. Defence in depth: no source may turn
/// into a zombie that is listed but never serves again.
pub(super) async fn supervise(shared: Arc<Shared>, deps: Deps, mut first: Option<Instant>) {
    let label = SourceLabel {
        source: shared.name.clone(),
    };
    loop {
        let actor = Actor {
            config: shared.desired.borrow().config.clone(),
            epoch_seen: shared.desired.borrow().credential_epoch,
            desired: shared.desired.subscribe(),
            shared: shared.clone(),
            deps: deps.clone(),
            warned_consent: false,
        };
        match tokio::spawn(actor.run(first)).await {
            Err(e) if e.is_panic() && !shared.cancel.is_cancelled() => {
                deps.metrics.source_restarts.get_or_create(&label).inc();
                let now = Instant::now();
                let failures = shared
                    .snapshot
                    .borrow()
                    .consecutive_failures
                    .saturating_add(1);
                let delay = policy::backoff_delay(failures, false, None, rand::random::<f64>());
                let retry_at = crate::timefmt::later(now, delay);
                tracing::error!(
                    source = %shared.name,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
                    "the source's task panicked (a bug in tokend; please report it); restarted with its cached token"
                );
                shared.snapshot.send_modify(|s| {
                    s.fetching = false;
                    s.retry_at = Some(retry_at);
                    s.next_refresh_at = Some(retry_at);
                    s.consecutive_failures = failures;
                    s.last_error = Some(LastError {
                        error: "internal_error".into(),
                        message: "tokend's task for this source failed and was restarted".into(),
                        hint: Some(
                            "this is a bug in tokend: the log has the details; please report it"
                                .into(),
                        ),
                        at: SystemTime::now(),
                    });
                    s.fetches_done += 1;
                    s.last_fetch_ok = false;
                });
                first = Some(retry_at);
            }
            // Stopped, or the runtime is shutting down.
            _ => break,
        }
    }
}

struct Actor {
    config: Arc<SourceConfig>,
    /// The credential epoch the actor last fetched with (see [`Desired`]).
    epoch_seen: u64,
    desired: watch::Receiver<Desired>,
    shared: Arc<Shared>,
    deps: Deps,
    warned_consent: bool,
}

async fn in_flight(f: &mut Option<FetchFuture>) -> Result<Token, FetchError> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, first: Option<Instant>) {
        let mut next: Option<Instant> = first;
        let mut fetch: Option<FetchFuture> = None;
        // The credential changed while a fetch with the old one was in flight.
        let mut refetch_pending = false;
        let cancel = self.shared.cancel.clone();
        let shared = self.shared.clone();
        loop {
            let wake = next;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                result = in_flight(&mut fetch) => {
                    fetch = None;
                    next = Some(self.finish(result));
                    if std::mem::take(&mut refetch_pending) {
                        fetch = Some(self.start());
                        next = None;
                    }
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let desired = self.desired.borrow_and_update().clone();
                    let refetch = desired.credential_epoch != self.epoch_seen;
                    self.epoch_seen = desired.credential_epoch;
                    self.config = desired.config;
                    let idle = !self.shared.snapshot.borrow().requested;
                    let start_now = refetch || (self.config.eager && idle);
                    if fetch.is_some() {
                        refetch_pending |= refetch;
                    } else if start_now {
                        fetch = Some(self.start());
                        next = None;
                    }
                }
                () = shared.wake.notified() => {
                    let force = match self.shared.wanted.swap(WANT_NONE, Ordering::SeqCst) {
                        WANT_NONE => continue,
                        level => level == WANT_FORCE,
                    };
                    let backing_off = self.shared.snapshot.borrow().backing_off(Instant::now()).is_some();
                    if fetch.is_some() {
                        // joined: the fetch in flight answers this request too
                    } else if force || !backing_off {
                        fetch = Some(self.start());
                        next = None;
                    } else {
                        // Wake the asker so it sees the backoff and answers 503.
                        self.shared.snapshot.send_modify(|_| {});
                    }
                }
                () = crate::timefmt::sleep_until_opt(wake), if fetch.is_none() && wake.is_some() => {
                    fetch = Some(self.start());
                    next = None;
                }
            }
        }
        tracing::debug!(source = %self.config.name, "source stopped");
    }

    fn start(&self) -> FetchFuture {
        self.shared.snapshot.send_modify(|s| {
            s.fetching = true;
            s.requested = true;
            s.retry_at = None;
            s.next_refresh_at = None;
        });
        tracing::debug!(source = %self.config.name, "fetching token");
        let fetch = self.deps.client.fetch(self.config.clone());
        let limit = self.deps.limit.clone();
        let metrics = self.deps.metrics.clone();
        let label = SourceLabel {
            source: self.config.name.clone(),
        };
        Box::pin(async move {
            // The semaphore is never closed; if it were, fetching anyway is the safe fallback.
            let _permit = limit.acquire_owned().await.ok();
            let started = Instant::now();
            let result = fetch.await;
            metrics
                .fetch_duration
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }

    /// Publishes a fetch's outcome and returns when to fetch next.
    fn finish(&mut self, result: Result<Token, FetchError>) -> Instant {
        let now = Instant::now();
        let name = &self.config.name;
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.deps
            .metrics
            .fetches
            .get_or_create(&SourceOutcome {
                source: name.clone(),
                outcome,
            })
            .inc();
        if let Ok(t) = &result {
            self.deps
                .metrics
                .token_expiry
                .get_or_create(&SourceLabel {
                    source: name.clone(),
                })
                .set(epoch_seconds(crate::timefmt::wall(t.expires_at)));
        }
        match result {
            Ok(token) => {
                let delay = policy::refresh_delay(
                    token.lifetime(),
                    token.refresh_in,
                    self.config.refresh_ratio,
                    self.config.min_ttl,
                    rand::random_range(-policy::REFRESH_JITTER..=policy::REFRESH_JITTER),
                );
                let at = crate::timefmt::later(token.issued_at, delay);
                let warnings: Vec<String> = crate::jwt::claims(token.access_token.expose_secret())
                    .and_then(|c| crate::jwt::consent_warning(&c))
                    .into_iter()
                    .collect();
                if let Some(w) = warnings.first() {
                    if !self.warned_consent {
                        tracing::warn!(source = %name, "{w}");
                        self.warned_consent = true;
                    }
                }
                tracing::info!(
                    source = %name,
                    lifetime = %humantime::format_duration(crate::timefmt::whole_secs(token.lifetime())),
                    next_refresh_in = %humantime::format_duration(Duration::from_secs(at.saturating_duration_since(now).as_secs())),
                    "token fetched"
                );
                // What every answer needs is rendered once, now.
                let token = Arc::new(crate::token::prepare(&self.config.name, token));
                self.shared.current.store(Some(token.clone()));
                self.deps
                    .sinks
                    .token(name, self.shared.generation, token.clone());
                self.shared.snapshot.send_modify(|s| {
                    s.token = Some(token);
                    s.fetching = false;
                    s.retry_at = None;
                    s.next_refresh_at = Some(at);
                    s.refreshed_at = Some(SystemTime::now());
                    s.consecutive_failures = 0;
                    s.last_error = None;
                    s.fetches_done += 1;
                    s.last_fetch_ok = true;
                    s.warnings = warnings;
                });
                at
            }
            Err(e) => {
                let failures = self
                    .shared
                    .snapshot
                    .borrow()
                    .consecutive_failures
                    .saturating_add(1);
                let delay = policy::backoff_delay(
                    failures,
                    e.is_permanent(),
                    e.retry_after(),
                    rand::random::<f64>(),
                );
                let at = crate::timefmt::later(now, delay);
                let serving = self.shared.snapshot.borrow().is_servable(now);
                tracing::warn!(
                    source = %name,
                    error = %e,
                    hint = e.hint().unwrap_or_default(),
                    failures,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
                    still_serving_cached_token = serving,
                    "token fetch failed"
                );
                let last = LastError::from(&e);
                self.shared.snapshot.send_modify(|s| {
                    s.fetching = false;
                    s.retry_at = Some(at);
                    s.next_refresh_at = Some(at);
                    s.consecutive_failures = failures;
                    s.last_error = Some(last);
                    s.fetches_done += 1;
                    s.last_fetch_ok = false;
                });
                at
            }
        }
    }
}
