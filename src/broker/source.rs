//! One source: a [`SourceHandle`] through which the server reads the
//! published [`Snapshot`] and asks for fetches, and the state it shares with
//! the source's actor task ([`super::actor`]), which owns the schedule, the
//! backoff and the single upstream request in flight.
//!
//! Invariants:
//! - at most one upstream request per source is in flight (only the actor
//!   starts one, and only when none is running);
//! - reading a cached token never waits on a refresh: the snapshot lives in a
//!   `watch` channel whose lock is held only to clone an `Arc`;
//! - callers cannot push the IdP harder than the backoff allows: while the
//!   source backs off, a request without a servable token is answered at once.

use super::actor::supervise;
pub(crate) use super::shared::new_generation;
pub(crate) use super::shared::Deps;
use super::shared::{Desired, Shared, Want};
pub use super::shared::{LastError, Snapshot, State, EARLY_ATTEMPT_INTERVAL};
use crate::clock::Moment;
use crate::config::SourceConfig;
use crate::metrics::SourceOutcome;
use crate::sync::Locked;
use crate::token::Token;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A `min_ttl` request whose cached token is younger than this gets 422
/// rather than a new fetch: a new token would be no longer.
pub const MIN_TTL_FETCH_AGE: Duration = Duration::from_secs(10);
/// Forced refreshes are allowed once per this interval per source.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

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

/// Why a forced refresh did not succeed.
#[derive(Debug, Clone)]
pub enum RefreshError {
    /// The fetch ran and failed.
    Failed(Option<LastError>),
    /// The source was stopped (removed, or replaced by a reload) meanwhile.
    Gone,
}

impl Shared {
    /// Starts the source's task (under its supervisor) if not yet running.
    /// `first`: when to fetch without being asked (an eager start). True
    /// if this call started it.
    fn ensure_started(self: &Arc<Self>, first: Option<Moment>) -> bool {
        let deps = self.unstarted.locked().take();
        let Some(deps) = deps else {
            return false;
        };
        tokio::spawn(supervise(self.clone(), deps, first));
        true
    }
}

/// What the server holds for one source.
#[derive(Debug)]
pub struct SourceHandle {
    shared: Arc<Shared>,
    last_forced: Mutex<Option<Instant>>,
}

enum Next {
    Serve(Arc<Token>),
    Fail(ServeError),
    /// Backing off, with no servable token, for this long yet.
    BackingOff(Duration),
    Wait,
    Ask {
        force: bool,
    },
}

impl SourceHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<SourceConfig> {
        self.shared.config.load_full()
    }

    /// The settings in force, without cloning the `Arc` (hot path).
    pub fn config_ref(&self) -> arc_swap::Guard<Arc<SourceConfig>> {
        self.shared.config.load()
    }

    /// Counts a request answered with a token (hot path: no label look-up).
    pub fn count_served(&self) {
        self.shared.served.inc();
    }

    /// Calls `f` with the cached token if it stays valid at `now` for
    /// `min_ttl` (and 5 s more): the hot path, with no lock and no wait.
    /// `None`: ask [`Self::token`]. The token is borrowed, not counted, so
    /// requests on other threads touch no shared reference count.
    pub fn with_token<R>(
        &self,
        min_ttl: Option<Duration>,
        now: Moment,
        f: impl FnOnce(&Token) -> R,
    ) -> Option<R> {
        let current = self.shared.current.load();
        let t = current.as_deref()?;
        let ok = t.servable_at(now) && min_ttl.is_none_or(|want| t.remaining_at(now) >= want);
        (ok && !self.shared.cancel.is_cancelled()).then(|| f(t))
    }

    /// Unique to this source task (see [`crate::sink`]).
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// The latest token, servable or not.
    pub(crate) fn current_token(&self) -> Option<Arc<Token>> {
        self.shared.current.load_full()
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        self.shared.fingerprint.load(Ordering::Relaxed)
    }

    /// Applies settings with the same identity; `refetch` when the credential
    /// changed. Never lost: the actor reads the latest settings when it wakes.
    pub(crate) fn reconfigure(&self, config: Arc<SourceConfig>, fingerprint: u64, refetch: bool) {
        let eager = config.eager;
        self.shared
            .fingerprint
            .store(fingerprint, Ordering::Relaxed);
        self.shared.config.store(config.clone());
        self.shared.desired.send_modify(|d| {
            d.config = config;
            if refetch {
                d.credential_epoch += 1;
            }
        });
        // A lazy source not yet asked for has no task to hear this: made
        // eager (`eager = true`, or sinks added), it starts fetching now.
        if eager && self.shared.ensure_started(Some(Moment::now())) {
            self.shared.snapshot.send_modify(|s| s.requested = true);
        }
    }

    /// The current snapshot (a clone; never waits on a fetch).
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot.borrow().clone()
    }

    /// The state at `now`, read in place (no clone of the snapshot).
    pub fn state(&self, now: Moment) -> State {
        self.shared.snapshot.borrow().state(now)
    }

    pub(crate) fn stop(&self) {
        self.shared.cancel.cancel();
    }

    /// Asks the actor for a fetch; requests made before it looks coalesce.
    fn request_fetch(&self, force: bool) {
        self.shared
            .wanted
            .ask(if force { Want::Force } else { Want::Fetch });
        self.shared.wake.notify_one();
        self.shared.ensure_started(None);
    }

    /// A token valid for at least `min_ttl` (and always more than 5 s),
    /// fetching one if needed. Concurrent callers share one fetch. While
    /// the source backs off with no servable token, a request makes one
    /// early attempt if the source has made none for 10 s and the IdP's
    /// `Retry-After` has passed, and is answered at once otherwise.
    pub async fn token(&self, min_ttl: Option<Duration>) -> Result<Arc<Token>, ServeError> {
        let mut rx = self.shared.snapshot.subscribe();
        let mut asked = false;
        loop {
            // A stopped source (removed, or restarted with a new identity)
            // serves nothing, not even a request that was already waiting.
            if self.shared.cancel.is_cancelled() {
                return Err(ServeError::Gone);
            }
            let next = decide(&rx.borrow_and_update(), Moment::now(), min_ttl, asked);
            match next {
                Next::Serve(t) => return Ok(t),
                Next::Fail(e) => return Err(e),
                Next::BackingOff(wait) => {
                    let now = Instant::now();
                    let told_to_wait = rx.borrow().not_before.is_some_and(|t| t > now);
                    if asked || told_to_wait || !self.shared.claim_early_attempt(now) {
                        return Err(ServeError::Unavailable {
                            retry_after: Some(wait),
                            last_error: rx.borrow().last_error.clone(),
                        });
                    }
                    asked = true;
                    tracing::debug!(source = %self.shared.name, "a request during the backoff makes an early attempt");
                    self.request_fetch(true);
                }
                Next::Wait => {}
                Next::Ask { force } => {
                    asked = true;
                    self.request_fetch(force);
                }
            }
            tokio::select! {
                r = rx.changed() => r.map_err(|_| ServeError::Gone)?,
                () = self.shared.cancel.cancelled() => return Err(ServeError::Gone),
            }
        }
    }

    /// Claims a forced-refresh slot; `Err` holds the wait until the next one.
    pub fn claim_forced_refresh(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut last = self.last_forced.locked();
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
    pub async fn force_refresh(&self) -> Result<Snapshot, RefreshError> {
        let mut rx = self.shared.snapshot.subscribe();
        let before = rx.borrow_and_update().fetches_done;
        self.request_fetch(true);
        loop {
            tokio::select! {
                r = rx.changed() => r.map_err(|_| RefreshError::Gone)?,
                () = self.shared.cancel.cancelled() => return Err(RefreshError::Gone),
            }
            let s = rx.borrow_and_update();
            if s.fetches_done > before && !s.fetching {
                return if s.last_fetch_ok {
                    Ok(s.clone())
                } else {
                    Err(RefreshError::Failed(s.last_error.clone()))
                };
            }
        }
    }
}

fn decide(s: &Snapshot, now: Moment, min_ttl: Option<Duration>, asked: bool) -> Next {
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
        if now.mono.saturating_duration_since(t.issued.mono) < MIN_TTL_FETCH_AGE {
            return Next::Fail(ServeError::MinTtlUnsatisfiable {
                lifetime: t.lifetime(),
            });
        }
    }
    if s.fetching {
        return Next::Wait;
    }
    if let Some(wait) = s.backing_off(now.mono) {
        return Next::BackingOff(wait);
    }
    if asked {
        // We asked and nothing is in flight or pending: do not loop.
        return unavailable(None);
    }
    Next::Ask {
        force: s.servable(now).is_some(),
    }
}

/// Starts the actor for `config`, under a supervisor, and returns its handle.
pub(crate) fn spawn(
    config: Arc<SourceConfig>,
    fingerprint: u64,
    generation: u64,
    deps: Deps,
    cancel: CancellationToken,
) -> Arc<SourceHandle> {
    let (snapshot, _) = watch::channel(Snapshot {
        requested: config.eager,
        ..Snapshot::default()
    });
    let eager = config.eager;
    let (desired, _) = watch::channel(Desired {
        config: config.clone(),
        credential_epoch: 0,
    });
    let served = deps
        .metrics
        .token_requests
        .get_or_create(&SourceOutcome {
            source: config.name.clone(),
            outcome: "ok",
        })
        .clone();
    let shared = Arc::new(Shared {
        name: config.name.clone(),
        desired,
        config: ArcSwap::new(config.clone()),
        snapshot,
        current: ArcSwapOption::empty(),
        served,
        wanted: Default::default(),
        wake: Notify::new(),
        cancel,
        fingerprint: AtomicU64::new(fingerprint),
        unstarted: Mutex::new((!eager).then(|| deps.clone())),
        generation,
        last_early: Mutex::new(None),
    });
    if eager {
        tokio::spawn(supervise(shared.clone(), deps, Some(Moment::now())));
    }
    Arc::new(SourceHandle {
        shared,
        last_forced: Mutex::new(None),
    })
}
