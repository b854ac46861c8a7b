//! A source's actor: the task that owns the schedule, the backoff and the
//! single upstream request in flight, and publishes every outcome in the
//! source's [`Snapshot`](super::shared::Snapshot); and the supervisor that
//! restarts it should it ever panic. The handle side (what the server reads
//! and asks for) is in [`super::source`].
//!
//! Its schedule is kept on both clocks ([`Moment`]): a timer runs on tokio's
//! clock, and when the wall clock jumps ahead of it (a resume from suspend)
//! the broker says so and a fetch whose time has come by the wall clock
//! starts at once. Its endpoint's other sources tell it when the endpoint
//! answers again, so a backoff does not outlast an outage by minutes.
//!
//! Invariant: at most one upstream request per source is in flight (only
//! the actor starts one, and only when none is running).

use super::endpoint;
use super::policy;
use super::shared::{Deps, Desired, LastError, Shared, Want};
use crate::clock::Moment;
use crate::config::SourceConfig;
use crate::metrics::{epoch_seconds, SourceLabel, SourceOutcome};
use crate::oauth::FetchError;
use crate::secret::ExposeSecret;
use crate::token::Token;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) type FetchFuture = Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>>;

/// When an endpoint answers again, its backing-off sources retry within
/// this much (each at a random point in it, so they do not arrive at once).
pub const RECOVERY_SPREAD: Duration = Duration::from_secs(2);

/// Runs the source's actor and, should it ever panic, restarts it with its
/// cached token kept: the panic counts as a failed fetch (so restarts follow
/// the backoff and cannot spin), is logged at ERROR and counted in
/// `tokend_source_restarts_total`. Defence in depth: no source may turn
/// into a zombie that is listed but never serves again.
pub(super) async fn supervise(shared: Arc<Shared>, deps: Deps, mut first: Option<Moment>) {
    let label = SourceLabel {
        source: shared.name.clone(),
    };
    // The identity (and so the endpoint) is fixed for the life of a source task.
    let endpoint = deps.endpoints.of(&shared.desired.borrow().config);
    loop {
        let actor = Actor {
            config: shared.desired.borrow().config.clone(),
            epoch_seen: shared.desired.borrow().credential_epoch,
            desired: shared.desired.subscribe(),
            shared: shared.clone(),
            deps: deps.clone(),
            endpoint: endpoint.clone(),
            warned_consent: false,
            last_permanent: false,
        };
        match tokio::spawn(actor.run(first)).await {
            Err(e) if e.is_panic() && !shared.cancel.is_cancelled() => {
                deps.metrics.source_restarts.get_or_create(&label).inc();
                let now = Moment::now();
                let failures = shared
                    .snapshot
                    .borrow()
                    .consecutive_failures
                    .saturating_add(1);
                let delay = policy::backoff_delay(failures, false, None, rand::random::<f64>());
                let retry_at = now.later(delay);
                tracing::error!(
                    source = %shared.name,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
                    "the source's task panicked (a bug in tokend; please report it); restarted with its cached token"
                );
                shared.snapshot.send_modify(|s| {
                    s.fetching = false;
                    s.retry_at = Some(retry_at.mono);
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
    endpoint: Arc<endpoint::Shared>,
    warned_consent: bool,
    /// The last fetch failed in a way only the source's own settings can
    /// fix (`invalid_client`, say): another source's success says nothing.
    last_permanent: bool,
}

async fn in_flight(f: &mut Option<FetchFuture>) -> Result<Token, FetchError> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// What the actor's loop holds between wake-ups.
struct Plan {
    /// When to fetch next, if no fetch is in flight.
    next: Option<Moment>,
    /// The one upstream request in flight.
    fetch: Option<FetchFuture>,
    /// The credential changed while a fetch with the old one was in flight.
    refetch: bool,
}

impl Actor {
    async fn run(mut self, first: Option<Moment>) {
        let mut plan = Plan {
            next: first,
            fetch: None,
            refetch: false,
        };
        let cancel = self.shared.cancel.clone();
        let shared = self.shared.clone();
        let mut clock_jumps = self.deps.clock_jumps.clone();
        clock_jumps.mark_unchanged();
        let mut recovered = self.endpoint.recovered.subscribe();
        loop {
            let wake = plan.next.map(|m| m.mono);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                result = in_flight(&mut plan.fetch) => self.fetched(&mut plan, result),
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.reconfigured(&mut plan);
                }
                () = shared.wake.notified() => self.asked(&mut plan),
                () = crate::timefmt::sleep_until_opt(wake), if plan.fetch.is_none() && wake.is_some() => {
                    self.fetch_now(&mut plan);
                }
                changed = clock_jumps.changed() => {
                    if changed.is_err() {
                        // The broker is gone; its sources follow.
                        break;
                    }
                    self.clock_jumped(&mut plan);
                }
                changed = recovered.changed() => {
                    if changed.is_ok() {
                        self.endpoint_recovered(&mut plan);
                    }
                }
            }
        }
        tracing::debug!(source = %self.config.name, "source stopped");
    }

    fn fetch_now(&self, plan: &mut Plan) {
        plan.fetch = Some(self.start());
        plan.next = None;
    }

    /// The fetch in flight ended: publish it, and fetch again at once if
    /// the credential changed meanwhile.
    fn fetched(&mut self, plan: &mut Plan, result: Result<Token, FetchError>) {
        plan.fetch = None;
        plan.next = Some(self.finish(result));
        if std::mem::take(&mut plan.refetch) {
            self.fetch_now(plan);
        }
    }

    /// A reload changed the source's settings or credential.
    fn reconfigured(&mut self, plan: &mut Plan) {
        let desired = self.desired.borrow_and_update().clone();
        let refetch = desired.credential_epoch != self.epoch_seen;
        self.epoch_seen = desired.credential_epoch;
        self.config = desired.config;
        let idle = !self.shared.snapshot.borrow().requested;
        if plan.fetch.is_some() {
            plan.refetch |= refetch;
        } else if refetch || (self.config.eager && idle) {
            self.fetch_now(plan);
        }
    }

    /// A caller asked for a token (or a forced refresh).
    fn asked(&mut self, plan: &mut Plan) {
        let force = match self.shared.wanted.take() {
            Want::Nothing => return,
            want => want == Want::Force,
        };
        let backing_off = self
            .shared
            .snapshot
            .borrow()
            .backing_off(Instant::now())
            .is_some();
        if plan.fetch.is_some() {
            // joined: the fetch in flight answers this request too
        } else if force || !backing_off {
            self.fetch_now(plan);
        } else {
            // Wake the asker so it sees the backoff and answers 503.
            self.shared.snapshot.send_modify(|_| {});
        }
    }

    /// The wall clock jumped (a resume): what is due by it starts now, the
    /// rest is timed on both clocks again.
    fn clock_jumped(&mut self, plan: &mut Plan) {
        let now = Moment::now();
        match plan.next {
            Some(at) if plan.fetch.is_none() && now.reached(at) => self.fetch_now(plan),
            Some(at) => {
                plan.next = Some(Moment {
                    mono: now.timer_for(at),
                    wall: at.wall,
                })
            }
            None => {}
        }
    }

    /// The endpoint answers again: a source backing off for a passing
    /// fault retries soon, not at its backoff's end.
    fn endpoint_recovered(&mut self, plan: &mut Plan) {
        let now = Moment::now();
        let waiting = plan.fetch.is_none() && !self.last_permanent && {
            let s = self.shared.snapshot.borrow();
            s.backing_off(now.mono).is_some() && s.not_before.is_none_or(|t| t <= now.mono)
        };
        if !waiting || !self.shared.claim_early_attempt(now.mono) {
            return;
        }
        let at = now.later(RECOVERY_SPREAD.mul_f64(rand::random::<f64>()));
        if plan.next.is_none_or(|n| at.mono < n.mono) {
            plan.next = Some(at);
            self.shared.snapshot.send_modify(|s| {
                s.retry_at = Some(at.mono);
                s.next_refresh_at = Some(at);
            });
        }
    }

    fn start(&self) -> FetchFuture {
        self.shared.snapshot.send_modify(|s| {
            s.fetching = true;
            s.requested = true;
            s.retry_at = None;
            s.not_before = None;
            s.next_refresh_at = None;
        });
        tracing::debug!(source = %self.config.name, "fetching token");
        let fetch = self.deps.client.fetch(self.config.clone());
        let endpoint = self.endpoint.clone();
        let metrics = self.deps.metrics.clone();
        let label = SourceLabel {
            source: self.config.name.clone(),
        };
        Box::pin(async move {
            // This endpoint's budget only: an IdP that never answers holds
            // its own permits, never another's. The semaphore is never
            // closed; if it were, fetching anyway is the safe fallback.
            let _permit = endpoint.permits.acquire().await.ok();
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
    fn finish(&mut self, result: Result<Token, FetchError>) -> Moment {
        let now = Moment::now();
        self.count(&result);
        match result {
            Ok(token) => self.succeeded(token, now),
            Err(e) => self.failed(&e, now),
        }
    }

    fn count(&self, result: &Result<Token, FetchError>) {
        let name = &self.config.name;
        let outcome = if result.is_ok() { "success" } else { "error" };
        let metrics = &self.deps.metrics;
        metrics
            .fetches
            .get_or_create(&SourceOutcome {
                source: name.clone(),
                outcome,
            })
            .inc();
        if let Ok(t) = result {
            metrics
                .token_expiry
                .get_or_create(&SourceLabel {
                    source: name.clone(),
                })
                .set(epoch_seconds(t.expires.wall));
        }
    }

    /// A new token: rendered, cached, handed to the sinks, and refreshed at
    /// the policy's point of its lifetime.
    fn succeeded(&mut self, token: Token, now: Moment) -> Moment {
        let name = &self.config.name;
        let delay = policy::refresh_delay(
            token.lifetime(),
            token.refresh_in,
            self.config.refresh_ratio,
            self.config.min_ttl,
            rand::random_range(-policy::REFRESH_JITTER..=policy::REFRESH_JITTER),
        );
        let at = token.issued.later(delay);
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
            next_refresh_in = %humantime::format_duration(Duration::from_secs(now.until(at).as_secs())),
            "token fetched"
        );
        self.last_permanent = false;
        if self.shared.snapshot.borrow().consecutive_failures > 0 {
            // It failed before and answers now: its other sources need not
            // wait out their backoff.
            self.endpoint.announce_recovery();
        }
        // What every answer needs is rendered once, now.
        let token = Arc::new(crate::answer::prepare(name, token));
        self.shared.current.store(Some(token.clone()));
        self.deps
            .sinks
            .token(name, self.shared.generation, token.clone());
        self.shared.snapshot.send_modify(|s| {
            s.token = Some(token);
            s.fetching = false;
            s.retry_at = None;
            s.not_before = None;
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

    /// A failed fetch: logged, published, and retried after the backoff
    /// (or the IdP's `Retry-After`).
    fn failed(&mut self, e: &FetchError, now: Moment) -> Moment {
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
        let at = now.later(delay);
        self.last_permanent = e.is_permanent();
        let serving = self.shared.snapshot.borrow().is_servable(now);
        tracing::warn!(
            source = %self.config.name,
            error = %e,
            hint = e.hint().unwrap_or_default(),
            failures,
            retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
            still_serving_cached_token = serving,
            "token fetch failed"
        );
        let last = LastError::from(e);
        let not_before = e
            .retry_after()
            .map(|r| crate::timefmt::later(now.mono, r.min(policy::RETRY_AFTER_CAP)));
        self.shared.snapshot.send_modify(|s| {
            s.fetching = false;
            s.retry_at = Some(at.mono);
            s.not_before = not_before;
            s.next_refresh_at = Some(at);
            s.consecutive_failures = failures;
            s.last_error = Some(last);
            s.fetches_done += 1;
            s.last_fetch_ok = false;
        });
        at
    }
}
