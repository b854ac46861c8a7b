//! What a source's handle, its actor and the actor's supervisor share:
//! the published [`Snapshot`] and its [`State`], the settings the actor
//! should run with ([`Desired`]), the fetch request levels, and what an
//! actor needs to run ([`Deps`]). Both [`super::source`] and
//! [`super::actor`] build on it; neither imports the other's insides.

use super::endpoint::Endpoints;
use super::fetcher::Fetcher;
use crate::clock::Moment;
use crate::config::SourceConfig;
use crate::metrics::Metrics;
use crate::oauth::FetchError;
use crate::sync::Locked;
use crate::token::Token;
use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A source backing off without a servable token makes at most one early
/// attempt per this interval: asked for by a request, or because another
/// source of its endpoint got a token (docs/behaviour.md, "Recovery").
pub const EARLY_ATTEMPT_INTERVAL: Duration = Duration::from_secs(10);

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

/// Lifecycle state, as `/v1/sources` shows it (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Fetching,
    Ready,
    Refreshing,
    Degraded,
    Failed,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Idle,
        State::Fetching,
        State::Ready,
        State::Refreshing,
        State::Degraded,
        State::Failed,
    ];

    /// The name `/v1/sources` and the `tokend_source_state` metric use.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Fetching => "fetching",
            State::Ready => "ready",
            State::Refreshing => "refreshing",
            State::Degraded => "degraded",
            State::Failed => "failed",
        }
    }
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
    /// The IdP's `Retry-After` ends then: no early attempt before it.
    pub not_before: Option<Instant>,
    /// The next fetch the schedule makes, on both clocks.
    pub next_refresh_at: Option<Moment>,
    pub refreshed_at: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    /// Fetches finished (either way), so waiters can tell "the one I joined ended".
    pub fetches_done: u64,
    pub last_fetch_ok: bool,
    pub warnings: Vec<String>,
}

impl Snapshot {
    pub(super) fn servable(&self, now: Moment) -> Option<&Arc<Token>> {
        self.token.as_ref().filter(|t| t.servable_at(now))
    }

    pub fn state(&self, now: Moment) -> State {
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

    pub fn is_servable(&self, now: Moment) -> bool {
        self.servable(now).is_some()
    }

    pub(super) fn backing_off(&self, now: Instant) -> Option<Duration> {
        if self.fetching {
            return None;
        }
        self.retry_at.filter(|t| *t > now).map(|t| t - now)
    }
}

/// What a source should run with. The actor watches it, so a reload's
/// settings can never be dropped: the latest value is always there to read.
#[derive(Debug, Clone)]
pub(super) struct Desired {
    pub(super) config: Arc<SourceConfig>,
    /// Bumped when the credential changes: the actor fetches with it at once.
    pub(super) credential_epoch: u64,
}

/// What a caller asked the actor for, in rising order: a higher request
/// since the actor last looked includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum Want {
    Nothing = 0,
    /// A fetch, unless the source backs off.
    Fetch = 1,
    /// A fetch now, backoff or not (a forced refresh).
    Force = 2,
}

/// The highest [`Want`] since the actor last looked: requests coalesce,
/// nothing is queued.
#[derive(Debug, Default)]
pub(super) struct Wanted(AtomicU8);

impl Wanted {
    pub(super) fn ask(&self, want: Want) {
        self.0.fetch_max(want as u8, Ordering::SeqCst);
    }

    /// What was asked for since the last look, leaving nothing asked.
    pub(super) fn take(&self) -> Want {
        match self.0.swap(Want::Nothing as u8, Ordering::SeqCst) {
            0 => Want::Nothing,
            1 => Want::Fetch,
            _ => Want::Force,
        }
    }
}

/// What the handle, the actor and its supervisor share. Outlives any one
/// actor task, so a restarted actor picks up the cached token and every
/// waiter keeps waiting.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) desired: watch::Sender<Desired>,
    /// The settings in force, for readers on the hot path (no lock).
    pub(super) config: ArcSwap<SourceConfig>,
    pub(super) snapshot: watch::Sender<Snapshot>,
    /// The latest token, for readers on the hot path (no lock): set with
    /// every snapshot that changes it.
    pub(super) current: ArcSwapOption<Token>,
    /// `tokend_token_requests_total{source, outcome="ok"}`, made once.
    pub(super) served: Counter,
    /// What callers asked the actor for since it last looked.
    pub(super) wanted: Wanted,
    pub(super) wake: Notify,
    pub(super) cancel: CancellationToken,
    /// Fingerprint of the credential's value when last applied.
    pub(super) fingerprint: AtomicU64,
    /// A lazy source's task is started by its first request: until then it
    /// costs no task and no timer (thousands of idle sources are cheap).
    pub(super) unstarted: Mutex<Option<Deps>>,
    /// Unique to this source task: sink events name it, so those of a
    /// replaced task are told apart from its successor's.
    pub(super) generation: u64,
    /// The last early attempt during a backoff (see [`EARLY_ATTEMPT_INTERVAL`]).
    pub(super) last_early: Mutex<Option<Instant>>,
}

/// The next [`Shared::generation`].
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation for the next [`spawn`]: known before the task starts, so
/// the sinks hear of it before its first token.
pub(crate) fn new_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// What an actor needs besides the shared state.
#[derive(Clone)]
pub(crate) struct Deps {
    pub metrics: Arc<Metrics>,
    pub client: Arc<dyn Fetcher>,
    /// Each token endpoint's budget of fetches in flight.
    pub endpoints: Arc<Endpoints>,
    pub sinks: crate::sink::Sinks,
    /// Bumped when the wall clock jumps ahead of the monotonic one.
    pub clock_jumps: watch::Receiver<u64>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deps")
    }
}

impl Shared {
    /// Claims the source's early attempt during a backoff: true at most
    /// once per [`EARLY_ATTEMPT_INTERVAL`].
    pub(super) fn claim_early_attempt(&self, now: Instant) -> bool {
        let mut last = self.last_early.locked();
        if last.is_some_and(|at| now.saturating_duration_since(at) < EARLY_ATTEMPT_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}
