//! The registry of running sources: [`Broker::apply`] turns a validated
//! [`Config`] into one actor per source, keeping what did not change.
//!
//! Invariant: applying a config changes nothing for a source whose settings
//! are equal; a failed reload never reaches this module.

mod actor;
mod endpoint;
mod fetcher;
pub mod mi;
pub mod policy;
mod shared;
pub mod source;
#[cfg(test)]
mod tests;

use crate::clock::Moment;
use crate::config::{Config, SourceConfig};
use crate::metrics::{epoch_seconds, Metrics, OutcomeLabel, SourceLabel};
use crate::sink::record::Record;
use crate::sink::{SinkSet, Sinks};
use crate::sync::{Locked, RwLocked};
use arc_swap::ArcSwap;
use mi::MiState;
use source::SourceHandle;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use fetcher::Fetcher;
pub use source::{LastError, RefreshError, ServeError, Snapshot, State};

/// Outcome of the last config load, for `/v1/sources` and `/readyz`.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub loaded_at: SystemTime,
    pub at: SystemTime,
    pub ok: bool,
    pub error: Option<String>,
    /// Reload attempts after start-up, by outcome.
    pub successes: u64,
    pub errors: u64,
}

/// What [`Broker::apply`] did, by source name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplySummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub credential_changed: Vec<String>,
    pub updated: Vec<String>,
}

impl ApplySummary {
    pub fn is_empty(&self) -> bool {
        self == &ApplySummary::default()
    }
}

/// What one [`Broker::apply`] works out before it changes anything.
#[derive(Default)]
struct Plan {
    summary: ApplySummary,
    stopped: Vec<Arc<SourceHandle>>,
    to_start: Vec<(String, Arc<SourceConfig>, u64, u64)>,
    sinks_changed: Vec<SinkSet>,
    sinks_removed: Vec<(String, u64)>,
}

/// A borrowed view of the running sources, by name (see [`Broker::registry`]).
pub type Registry = arc_swap::Guard<Arc<BTreeMap<String, Arc<SourceHandle>>>>;

/// All running sources.
pub struct Broker {
    /// The running sources by name: read without a lock on every request,
    /// replaced whole by `apply` (whose callers `applying` serializes).
    sources: ArcSwap<BTreeMap<String, Arc<SourceHandle>>>,
    applying: Mutex<()>,
    client: Arc<dyn Fetcher>,
    /// Each token endpoint's fetch budget (`max_concurrent_fetches` each).
    endpoints: Arc<endpoint::Endpoints>,
    /// Bumped when the wall clock jumps ahead (see [`Broker::clock_jumped`]).
    clock_jumps: watch::Sender<u64>,
    shutdown: CancellationToken,
    reload: Mutex<ReloadStatus>,
    metrics: Arc<Metrics>,
    /// The managed-identity apps, swapped whole on reload.
    managed_identity: RwLock<Arc<MiState>>,
    /// Whether some source's `allow` names systemd units, so the socket
    /// must read each caller's unit at accept.
    units_named: std::sync::atomic::AtomicBool,
    /// Writes the sources' file sinks.
    sinks: Sinks,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with no sources; `max_concurrent_fetches` bounds token
    /// requests in flight to each token endpoint. Sink files are not recorded
    /// (see [`Broker::with_sink_record`]).
    pub fn new(
        client: Arc<dyn Fetcher>,
        max_concurrent_fetches: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Broker::with_sink_record(client, max_concurrent_fetches, metrics, Record::none())
    }

    /// [`Broker::new`], recording the sink files written in `record`, so
    /// that what a previous run left stale is removed at the first apply.
    pub fn with_sink_record(
        client: Arc<dyn Fetcher>,
        max_concurrent_fetches: usize,
        metrics: Arc<Metrics>,
        record: Record,
    ) -> Arc<Self> {
        let now = SystemTime::now();
        let shutdown = CancellationToken::new();
        let (clock_jumps, _) = watch::channel(0);
        let sinks = Sinks::start(
            metrics.clone(),
            record,
            clock_jumps.subscribe(),
            shutdown.clone(),
        );
        Arc::new(Broker {
            sources: ArcSwap::default(),
            applying: Mutex::new(()),
            client,
            endpoints: Arc::new(endpoint::Endpoints::new(max_concurrent_fetches)),
            clock_jumps,
            shutdown,
            reload: Mutex::new(ReloadStatus {
                loaded_at: now,
                at: now,
                ok: true,
                error: None,
                successes: 0,
                errors: 0,
            }),
            metrics,
            managed_identity: RwLock::default(),
            units_named: std::sync::atomic::AtomicBool::new(false),
            sinks,
        })
    }

    /// The managed-identity apps in force.
    pub fn managed_identity(&self) -> Arc<MiState> {
        self.managed_identity.read_locked().clone()
    }

    /// Whether some source's `allow` names units (see [`crate::peer::unit`]).
    pub fn units_named(&self) -> bool {
        self.units_named.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts `state` in force for the next managed-identity request.
    pub fn set_managed_identity(&self, state: MiState) {
        *self.managed_identity.write_locked() = Arc::new(state);
    }

    /// Makes the running sources match `config` (docs/behaviour.md, Reload). `fingerprints`
    /// holds each source's credential fingerprint; a missing entry counts as
    /// unchanged.
    ///
    /// - equal settings and credential: untouched (token and schedule kept);
    /// - identity changed (endpoint, client id, scopes, params, auth method):
    ///   restarted, the old token dropped;
    /// - credential changed: the token keeps serving while a fetch with the
    ///   new credential starts at once;
    /// - other settings changed: applied in place, token kept;
    /// - removed: stopped at once; added: started.
    pub fn apply(&self, config: &Config, fingerprints: &BTreeMap<String, u64>) -> ApplySummary {
        self.client.reloaded();
        let _one_at_a_time = self.applying.locked();
        let units = config
            .sources
            .values()
            .any(|s| s.allow.as_ref().is_some_and(|a| !a.units.is_empty()));
        self.units_named
            .store(units, std::sync::atomic::Ordering::Relaxed);
        let mut plan = Plan::default();
        let mut map = BTreeMap::clone(&self.sources.load());
        // The sources whose expiry gauge may need to go (at start-up, none).
        let had_expiry: Vec<String> = map
            .iter()
            .filter(|(_, h)| h.config_ref().credential_expires.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        self.drop_changed_identities(config, &mut map, &mut plan);
        self.update_in_place(config, fingerprints, &map, &mut plan);
        // Always, even empty: the first one also clears what a previous
        // run left (a config that dropped every sink included).
        self.sinks.apply(plan.sinks_changed, plan.sinks_removed);
        // Thousands at start-up: registered on every core.
        let started = crate::cores::map(plan.to_start, |(name, cfg, fp, generation)| {
            (name, self.start(cfg, fp, generation))
        });
        map.extend(started);
        self.metrics
            .sources
            .set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        self.sources.store(Arc::new(map));
        // Stopped only once the new map is in place: a request that finds a
        // stopped source then finds its successor by name.
        for handle in plan.stopped {
            handle.stop();
        }
        self.set_expiry_gauges(config, had_expiry);
        self.record_reload_success();
        plan.summary
    }

    /// Takes out of `map` every source the config removes or whose identity
    /// it changes (to stop once the new map is in place).
    fn drop_changed_identities(
        &self,
        config: &Config,
        map: &mut BTreeMap<String, Arc<SourceHandle>>,
        plan: &mut Plan,
    ) {
        map.retain(|name, handle| {
            let keep = config
                .sources
                .get(name)
                .is_some_and(|c| c.same_identity(&handle.config()));
            if !keep {
                plan.stopped.push(handle.clone());
                if config.sources.contains_key(name) {
                    plan.summary.restarted.push(name.clone());
                } else {
                    plan.summary.removed.push(name.clone());
                    self.metrics.forget_source(name);
                    plan.sinks_removed.push((name.clone(), handle.generation()));
                }
            }
            keep
        });
    }

    /// Reconfigures the sources `map` keeps, and plans the start of the
    /// others; what the sinks hear is worked out over the whole config, in
    /// one event, before any new task starts.
    fn update_in_place(
        &self,
        config: &Config,
        fingerprints: &BTreeMap<String, u64>,
        map: &BTreeMap<String, Arc<SourceHandle>>,
        plan: &mut Plan,
    ) {
        // Looked up once per new source: a set, so that restarting
        // thousands of sources at once stays linear.
        let restarted: std::collections::HashSet<String> =
            plan.summary.restarted.iter().cloned().collect();
        for (name, cfg) in &config.sources {
            let fp = fingerprints.get(name).copied();
            let Some(handle) = map.get(name) else {
                let was_running = restarted.contains(name);
                if !was_running {
                    plan.summary.added.push(name.clone());
                }
                // Known before the task starts, so its first token finds
                // its sinks. Also for a restarted source without sinks: its
                // predecessor's files go. (A new source without sinks has
                // nothing to tell them.)
                let generation = source::new_generation();
                if !cfg.sinks.is_empty() || was_running {
                    plan.sinks_changed.push(SinkSet {
                        source: name.clone(),
                        generation,
                        identity: cfg.identity_digest(),
                        sinks: cfg.sinks.clone(),
                        token: None,
                    });
                }
                let fp = fp.unwrap_or_default();
                plan.to_start
                    .push((name.clone(), cfg.clone(), fp, generation));
                continue;
            };
            let old = handle.config();
            let fp = fp.unwrap_or_else(|| handle.fingerprint());
            let credential_changed = old.credential != cfg.credential || fp != handle.fingerprint();
            if credential_changed {
                plan.summary.credential_changed.push(name.clone());
                handle.reconfigure(cfg.clone(), fp, true);
            } else if *old != **cfg {
                plan.summary.updated.push(name.clone());
                handle.reconfigure(cfg.clone(), fp, false);
            }
            if old.sinks != cfg.sinks {
                plan.sinks_changed.push(SinkSet {
                    source: name.clone(),
                    generation: handle.generation(),
                    identity: cfg.identity_digest(),
                    sinks: cfg.sinks.clone(),
                    token: handle.current_token(),
                });
            }
        }
    }

    /// `tokend_credential_expiry_timestamp_seconds` as the config says.
    fn set_expiry_gauges(&self, config: &Config, had_expiry: Vec<String>) {
        for (name, cfg) in &config.sources {
            if let Some(t) = cfg.credential_expires {
                let l = SourceLabel {
                    source: name.clone(),
                };
                self.metrics
                    .credential_expiry
                    .get_or_create(&l)
                    .set(epoch_seconds(t));
            }
        }
        for source in had_expiry {
            // A removed source's series went with forget_source.
            if config
                .sources
                .get(&source)
                .is_some_and(|c| c.credential_expires.is_none())
            {
                self.metrics
                    .credential_expiry
                    .remove(&SourceLabel { source });
            }
        }
    }

    fn record_reload_success(&self) {
        let now = SystemTime::now();
        self.metrics.last_reload_success.set(epoch_seconds(now));
        let mut r = self.reload.locked();
        r.loaded_at = now;
        r.at = now;
        r.ok = true;
        r.error = None;
        self.metrics.last_reload_ok.set(1);
    }

    /// Counts a reload attempt after start-up (for status and metrics).
    pub fn count_reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "error" };
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        let mut r = self.reload.locked();
        if ok {
            r.successes += 1;
        } else {
            r.errors += 1;
        }
    }

    /// Records a reload that failed validation; running sources are untouched.
    pub fn record_reload_error(&self, message: String) {
        let mut r = self.reload.locked();
        r.at = SystemTime::now();
        r.ok = false;
        r.error = Some(message);
        self.metrics.last_reload_ok.set(0);
    }

    /// The metrics exposition as of now (each source's state is taken at
    /// the scrape), with only the series of the sources `readable` admits.
    pub fn scrape(&self, readable: Option<&dyn Fn(&str) -> bool>) -> String {
        let now = Moment::now();
        for handle in self.registry().values() {
            let state = handle.state(now);
            self.metrics.set_state(handle.name(), state.name());
        }
        match readable {
            None => self.metrics.encode(),
            Some(f) => self.metrics.encode_for(f),
        }
    }

    fn start(
        &self,
        cfg: Arc<SourceConfig>,
        fingerprint: u64,
        generation: u64,
    ) -> Arc<SourceHandle> {
        source::spawn(
            cfg,
            fingerprint,
            generation,
            source::Deps {
                metrics: self.metrics.clone(),
                client: self.client.clone(),
                endpoints: self.endpoints.clone(),
                sinks: self.sinks.clone(),
                clock_jumps: self.clock_jumps.subscribe(),
            },
            self.shutdown.child_token(),
        )
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A one-line summary for systemd's STATUS=: "3 sources: 2 ready, 1
    /// failing: graph", or "0 sources configured" on a fresh install.
    pub fn summary(&self) -> String {
        let now = Moment::now();
        let list = self.list();
        if list.is_empty() {
            return "0 sources configured".to_string();
        }
        let mut ready = 0;
        let mut pending = 0;
        let mut failing = Vec::new();
        for h in &list {
            match h.state(now) {
                State::Ready | State::Refreshing => ready += 1,
                State::Idle | State::Fetching => pending += 1,
                State::Degraded | State::Failed => failing.push(h.name().to_string()),
            }
        }
        let mut parts = vec![format!("{ready} ready")];
        if pending > 0 {
            parts.push(format!("{pending} pending"));
        }
        if !failing.is_empty() {
            parts.push(format!("{} failing: {}", failing.len(), failing.join(", ")));
        }
        let noun = if list.len() == 1 { "source" } else { "sources" };
        format!("{} {noun}: {}", list.len(), parts.join(", "))
    }

    /// The source called `name` (no lock).
    pub fn get(&self, name: &str) -> Option<Arc<SourceHandle>> {
        self.sources.load().get(name).cloned()
    }

    /// The registry as it is now, borrowed (the hot path): a look-up in it
    /// touches no reference count that other threads touch too. Hold it only
    /// briefly and never across an `.await`.
    pub fn registry(&self) -> Registry {
        self.sources.load()
    }

    pub fn list(&self) -> Vec<Arc<SourceHandle>> {
        self.sources.load().values().cloned().collect()
    }

    /// The wall clock jumped `by` ahead of the monotonic clock (a resume
    /// from suspend, a paused VM let go, a clock stepped forward): every
    /// source whose next fetch is due by the wall clock starts it now, and
    /// the sinks drop what the wall clock says is dead.
    pub fn clock_jumped(&self, by: Duration) {
        let now = Moment::now();
        let due = self
            .registry()
            .values()
            .filter(|h| {
                let s = h.snapshot();
                !s.fetching && s.next_refresh_at.is_some_and(|at| now.reached(at))
            })
            .count();
        tracing::warn!(
            by = %humantime::format_duration(crate::timefmt::whole_secs(by)),
            sources_due = due,
            "the wall clock jumped ahead of the monotonic clock (a suspend or a paused VM?): sources whose refresh is due by the wall clock fetch now, and no token the wall clock says is dead is served"
        );
        self.clock_jumps.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Stops every source actor.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Eager sources without a servable token.
    pub fn not_ready(&self) -> Vec<String> {
        let now = Moment::now();
        self.list()
            .iter()
            .filter(|h| h.config().eager && !h.snapshot().is_servable(now))
            .map(|h| h.name().to_string())
            .collect()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload.locked().clone()
    }

    /// What `/v1/sources` shows of a source: never a token or a secret.
    pub fn status(&self, handle: &SourceHandle) -> SourceStatus {
        let now = Moment::now();
        let mut snapshot = handle.snapshot();
        snapshot.warnings.extend(self.sinks.warnings(handle.name()));
        // From 30 days before the credential expires, status says so too.
        let credential_expires = handle.config().credential_expires;
        snapshot.warnings.extend(
            credential_expires
                .and_then(|t| crate::expiry::message(handle.name(), t, SystemTime::now())),
        );
        SourceStatus {
            name: handle.name().to_string(),
            state: snapshot.state(now),
            snapshot,
            credential_expires,
            managed_identity_apps: self.managed_identity().apps_using(handle.name()),
        }
    }
}

/// A source's status as of now (see [`Broker::status`]).
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub name: String,
    pub state: State,
    /// What the source published, its warnings with the sinks' and the
    /// credential's.
    pub snapshot: Snapshot,
    pub credential_expires: Option<SystemTime>,
    pub managed_identity_apps: Vec<String>,
}
