//! One source: an actor task that owns the schedule, the backoff and the
//! single upstream request in flight, and a [`SourceHandle`] through which the
//! server reads the published [`Snapshot`] and asks for fetches.
//!
//! Invariants:
//! - at most one upstream request per source is in flight (only the actor
//!   starts one, and only when none is running);
//! - reading a cached token never waits on a refresh: the snapshot lives in a
//!   `watch` channel whose lock is held only to clone an `Arc`;
//! - callers cannot push the IdP harder than the backoff allows: while the
//!   source backs off, a request without a servable token is answered at once.

use super::policy;
use super::Fetcher;
use crate::config::SourceConfig;
use crate::metrics::{epoch_seconds, Metrics, SourceLabel, SourceOutcome};
use crate::oauth::{FetchError, Token};
use crate::secret::ExposeSecret;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A `min_ttl` request whose cached token is younger than this gets 422
/// rather than a new fetch: a new token would be no longer.
pub const MIN_TTL_FETCH_AGE: Duration = Duration::from_secs(10);
/// Forced refreshes are allowed once per this interval per source.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The last fetch failure, as shown in status.
#[derive(Debug, Clone, PartialEq)]
pub struct LastError {
    pub error: String,
    pub message: String,
    pub hint: Option<String>,
    pub at: SystemTime,
}

impl From<&FetchError> for LastError {
    fn from(e: &FetchError) -> Self {
        LastError {
            error: e.code(),
            message: e.to_string(),
            hint: e.hint(),
            at: SystemTime::now(),
        }
    }
}

/// Lifecycle state, as in SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Idle,
    Fetching,
    Ready,
    Refreshing,
    Degraded,
    Failed,
}

/// What a source publishes after every change. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub token: Option<Arc<Token>>,
    /// An eager source, or a lazy one that has been asked for.
    pub requested: bool,
    pub fetching: bool,
    /// Backing off until then (no fetch in flight).
    pub retry_at: Option<Instant>,
    pub next_refresh_at: Option<Instant>,
    pub refreshed_at: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    /// Fetches finished (either way), so waiters can tell "the one I joined ended".
    pub fetches_done: u64,
    pub last_fetch_ok: bool,
    pub warnings: Vec<String>,
}

impl Snapshot {
    fn servable(&self, now: Instant) -> Option<&Arc<Token>> {
        self.token.as_ref().filter(|t| t.servable_at(now))
    }

    pub fn state(&self, now: Instant) -> State {
        match (
            self.servable(now).is_some(),
            self.consecutive_failures > 0,
            self.fetching,
        ) {
            (true, true, _) => State::Degraded,
            (true, false, true) => State::Refreshing,
            (true, false, false) => State::Ready,
            (false, true, _) => State::Failed,
            (false, false, true) => State::Fetching,
            (false, false, false) if self.token.is_some() => State::Failed,
            (false, false, false) if self.requested => State::Fetching,
            (false, false, false) => State::Idle,
        }
    }

    pub fn is_servable(&self, now: Instant) -> bool {
        self.servable(now).is_some()
    }

    fn backing_off(&self, now: Instant) -> Option<Duration> {
        if self.fetching {
            return None;
        }
        self.retry_at.filter(|t| *t > now).map(|t| t - now)
    }
}

/// Why a token could not be served.
#[derive(Debug, Clone, PartialEq)]
pub enum ServeError {
    /// No servable token and none coming now; retry after the given delay if known.
    Unavailable {
        retry_after: Option<Duration>,
        last_error: Option<LastError>,
    },
    /// Even a fresh token would not live `min_ttl`.
    MinTtlUnsatisfiable { lifetime: Duration },
    /// The source was removed while the request waited.
    Gone,
}

/// Result of a forced refresh that ran and failed.
#[derive(Debug, Clone)]
pub struct RefreshFailed(pub Option<LastError>);

#[derive(Debug)]
pub(crate) enum Command {
    /// Fetch now unless one is in flight (join it). Without `force`, a source
    /// that is backing off only re-publishes so the asker sees the backoff.
    Fetch { force: bool },
    /// New settings with the same identity. With `refetch` (the credential
    /// changed), fetch with it now while the current token keeps serving.
    Reconfigure {
        config: Arc<SourceConfig>,
        refetch: bool,
    },
}

/// What the server holds for one source.
#[derive(Debug)]
pub struct SourceHandle {
    name: String,
    config: std::sync::RwLock<Arc<SourceConfig>>,
    /// Fingerprint of the credential's value when last applied.
    fingerprint: std::sync::atomic::AtomicU64,
    snapshot: watch::Receiver<Snapshot>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    last_forced: Mutex<Option<Instant>>,
}

enum Next {
    Serve(Arc<Token>),
    Fail(ServeError),
    Wait,
    Ask { force: bool },
}

impl SourceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<SourceConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies settings with the same identity; `refetch` when the credential changed.
    pub(crate) fn reconfigure(&self, config: Arc<SourceConfig>, fingerprint: u64, refetch: bool) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        self.fingerprint
            .store(fingerprint, std::sync::atomic::Ordering::Relaxed);
        // The actor's queue only fills if it is stuck; then the next reload retries.
        let _ = self
            .commands
            .try_send(Command::Reconfigure { config, refetch });
    }

    /// The current snapshot (a clone; never waits on a fetch).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }

    /// A token valid for at least `min_ttl` (and always more than 5 s),
    /// fetching one if needed. Concurrent callers share one fetch.
    pub async fn token(&self, min_ttl: Option<Duration>) -> Result<Arc<Token>, ServeError> {
        let mut rx = self.snapshot.clone();
        let mut asked = false;
        loop {
            // A stopped source (removed, or restarted with a new identity)
            // serves nothing, not even a request that was already waiting.
            if self.cancel.is_cancelled() {
                return Err(ServeError::Gone);
            }
            let next = decide(&rx.borrow_and_update(), Instant::now(), min_ttl, asked);
            match next {
                Next::Serve(t) => return Ok(t),
                Next::Fail(e) => return Err(e),
                Next::Wait => {}
                Next::Ask { force } => {
                    asked = true;
                    // A full queue already holds a fetch request: waiting is enough.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.commands.try_send(Command::Fetch { force })
                    {
                        return Err(ServeError::Gone);
                    }
                }
            }
            rx.changed().await.map_err(|_| ServeError::Gone)?;
        }
    }

    /// Claims a forced-refresh slot; `Err` holds the wait until the next one.
    pub fn claim_forced_refresh(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = *last {
            let next = at + FORCED_REFRESH_INTERVAL;
            if next > now {
                return Err(next - now);
            }
        }
        *last = Some(now);
        Ok(())
    }

    /// Fetches a new token now (joining one in flight, skipping any backoff)
    /// and waits for that fetch to end.
    pub async fn force_refresh(&self) -> Result<Snapshot, RefreshFailed> {
        let mut rx = self.snapshot.clone();
        let before = rx.borrow_and_update().fetches_done;
        if self
            .commands
            .try_send(Command::Fetch { force: true })
            .is_err()
            && self.commands.is_closed()
        {
            return Err(RefreshFailed(None));
        }
        loop {
            rx.changed().await.map_err(|_| RefreshFailed(None))?;
            let s = rx.borrow_and_update();
            if s.fetches_done > before && !s.fetching {
                return if s.last_fetch_ok {
                    Ok(s.clone())
                } else {
                    Err(RefreshFailed(s.last_error.clone()))
                };
            }
        }
    }
}

fn decide(s: &Snapshot, now: Instant, min_ttl: Option<Duration>, asked: bool) -> Next {
    let unavailable = |retry_after| {
        Next::Fail(ServeError::Unavailable {
            retry_after,
            last_error: s.last_error.clone(),
        })
    };
    if let Some(t) = s.servable(now) {
        let too_short = min_ttl.is_some_and(|want| t.remaining_at(now) < want);
        if !too_short {
            return Next::Serve(t.clone());
        }
        if now.saturating_duration_since(t.issued_at) < MIN_TTL_FETCH_AGE {
            return Next::Fail(ServeError::MinTtlUnsatisfiable {
                lifetime: t.lifetime(),
            });
        }
    }
    if s.fetching {
        return Next::Wait;
    }
    if let Some(wait) = s.backing_off(now) {
        return unavailable(Some(wait));
    }
    if asked {
        // We asked and nothing is in flight or pending: do not loop.
        return unavailable(None);
    }
    Next::Ask {
        force: s.servable(now).is_some(),
    }
}

pub(crate) type FetchFuture = Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>>;

/// Starts the actor for `config` and returns its handle.
pub(crate) fn spawn(
    config: Arc<SourceConfig>,
    fingerprint: u64,
    metrics: Arc<Metrics>,
    client: Arc<dyn Fetcher>,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
) -> Arc<SourceHandle> {
    let (tx, rx) = watch::channel(Snapshot {
        requested: config.eager,
        ..Snapshot::default()
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let actor = Actor {
        config: config.clone(),
        client,
        limit,
        tx,
        commands: cmd_rx,
        cancel: cancel.clone(),
        warned_consent: false,
        refetch_pending: false,
        metrics,
    };
    tokio::spawn(actor.run());
    Arc::new(SourceHandle {
        name: config.name.clone(),
        config: std::sync::RwLock::new(config),
        fingerprint: std::sync::atomic::AtomicU64::new(fingerprint),
        snapshot: rx,
        commands: cmd_tx,
        cancel,
        last_forced: Mutex::new(None),
    })
}

struct Actor {
    config: Arc<SourceConfig>,
    client: Arc<dyn Fetcher>,
    limit: Arc<Semaphore>,
    tx: watch::Sender<Snapshot>,
    commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    warned_consent: bool,
    /// The credential changed while a fetch with the old one was in flight.
    refetch_pending: bool,
    metrics: Arc<Metrics>,
}

async fn in_flight(f: &mut Option<FetchFuture>) -> Result<Token, FetchError> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        let name = self.config.name.clone();
        let mut next: Option<Instant> = self.config.eager.then(Instant::now);
        let mut fetch: Option<FetchFuture> = None;
        loop {
            let wake = next;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                result = in_flight(&mut fetch) => {
                    fetch = None;
                    next = Some(self.finish(result));
                    if std::mem::take(&mut self.refetch_pending) {
                        fetch = Some(self.start());
                        next = None;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    None => break,
                    Some(Command::Fetch { force }) => {
                        let backing_off = self.tx.borrow().backing_off(Instant::now()).is_some();
                        if fetch.is_some() {
                            // joined: the fetch in flight answers this request too
                        } else if force || !backing_off {
                            fetch = Some(self.start());
                            next = None;
                        } else {
                            // Wake the asker so it sees the backoff and answers 503.
                            self.tx.send_modify(|_| {});
                        }
                    }
                    Some(Command::Reconfigure { config, refetch }) => {
                        self.config = config;
                        let idle = !self.tx.borrow().requested;
                        let start_now = refetch || (self.config.eager && idle);
                        if fetch.is_some() {
                            self.refetch_pending |= refetch;
                        } else if start_now {
                            fetch = Some(self.start());
                            next = None;
                        }
                    }
                },
                () = sleep_until_opt(wake), if fetch.is_none() && wake.is_some() => {
                    fetch = Some(self.start());
                    next = None;
                }
            }
        }
        tracing::debug!(source = %name, "source stopped");
    }

    fn start(&self) -> FetchFuture {
        self.tx.send_modify(|s| {
            s.fetching = true;
            s.requested = true;
            s.retry_at = None;
            s.next_refresh_at = None;
        });
        tracing::debug!(source = %self.config.name, "fetching token");
        let fetch = self.client.fetch(self.config.clone());
        let limit = self.limit.clone();
        let metrics = self.metrics.clone();
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
        self.metrics
            .fetches
            .get_or_create(&SourceOutcome {
                source: name.clone(),
                outcome,
            })
            .inc();
        if let Ok(t) = &result {
            self.metrics
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
                let at = token.issued_at + delay;
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
                    lifetime = %humantime::format_duration(token.lifetime()),
                    next_refresh_in = %humantime::format_duration(Duration::from_secs(at.saturating_duration_since(now).as_secs())),
                    "token fetched"
                );
                self.tx.send_modify(|s| {
                    s.token = Some(Arc::new(token));
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
                let failures = self.tx.borrow().consecutive_failures.saturating_add(1);
                let delay = policy::backoff_delay(
                    failures,
                    e.is_permanent(),
                    e.retry_after(),
                    rand::random::<f64>(),
                );
                let at = now + delay;
                let serving = self.tx.borrow().is_servable(now);
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
                self.tx.send_modify(|s| {
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
