//! Prometheus metrics (docs/api.md, GET /metrics), served at `GET /metrics` on the same socket.
//!
//! Label values are only ever configured source names and fixed outcome
//! words, never anything a caller sends, so a client cannot grow the series
//! count. Series for a removed source are dropped with it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every `outcome` of `tokend_token_requests_total`.
pub const REQUEST_OUTCOMES: [&str; 6] = [
    "ok",
    "bad_request",
    "forbidden",
    "min_ttl_unsatisfiable",
    "unavailable",
    "timeout",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// A source's lifecycle state, one series per state (1 for the current).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceState {
    pub source: String,
    pub state: &'static str,
}

/// Every `state` of `tokend_source_state` (as `/v1/sources` names them).
pub const SOURCE_STATES: [&str; 6] = [
    "idle",
    "fetching",
    "ready",
    "refreshing",
    "degraded",
    "failed",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A connection a door closed at once, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub door: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric family tokend exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub token_requests: Family<SourceOutcome, Counter>,
    pub fetches: Family<SourceOutcome, Counter>,
    pub fetch_duration: Family<SourceLabel, Histogram, fn() -> Histogram>,
    pub token_expiry: Family<SourceLabel, FloatGauge>,
    pub credential_expiry: Family<SourceLabel, FloatGauge>,
    pub reloads: Family<OutcomeLabel, Counter>,
    pub source_restarts: Family<SourceLabel, Counter>,
    pub sink_writes: Family<SourceOutcome, Counter>,
    pub source_state: Family<SourceState, Gauge>,
    pub last_reload_ok: Gauge,
    pub last_reload_success: FloatGauge,
    pub sources: Gauge,
    pub connections_refused: Family<RefusedLabel, Counter>,
    pub log_lines_dropped: Counter,
}

fn fetch_buckets() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Seconds since the epoch, as a gauge value.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            token_requests: Family::default(),
            fetches: Family::default(),
            fetch_duration: Family::new_with_constructor(fetch_buckets),
            token_expiry: Family::default(),
            credential_expiry: Family::default(),
            reloads: Family::default(),
            source_restarts: Family::default(),
            sink_writes: Family::default(),
            source_state: Family::default(),
            last_reload_ok: Gauge::default(),
            last_reload_success: FloatGauge::default(),
            sources: Gauge::default(),
            connections_refused: Family::default(),
            log_lines_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tokend_token_requests",
            "Token requests served on the socket, by source and outcome",
            m.token_requests.clone(),
        );
        registry.register(
            "tokend_fetches",
            "Token requests to the identity provider, by source and outcome",
            m.fetches.clone(),
        );
        registry.register(
            "tokend_fetch_duration_seconds",
            "Time taken by token requests to the identity provider",
            m.fetch_duration.clone(),
        );
        registry.register(
            "tokend_token_expiry_timestamp_seconds",
            "When the cached token expires (Unix time)",
            m.token_expiry.clone(),
        );
        registry.register(
            "tokend_credential_expiry_timestamp_seconds",
            "When the source's client credential expires (Unix time), from credential_expires",
            m.credential_expiry.clone(),
        );
        // Both outcomes exist from the start, so rate() works from the first error.
        for outcome in ["success", "error"] {
            drop(m.reloads.get_or_create(&OutcomeLabel { outcome }));
        }
        registry.register(
            "tokend_config_reloads",
            "Configuration reload attempts after start-up, by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "tokend_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time)",
            m.last_reload_success.clone(),
        );
        registry.register(
            "tokend_source_restarts",
            "Restarts of a source's task after it failed unexpectedly (a bug; the cached token is kept)",
            m.source_restarts.clone(),
        );
        registry.register(
            "tokend_sink_writes",
            "Token files written for file sinks, by source and outcome (success, error)",
            m.sink_writes.clone(),
        );
        registry.register(
            "tokend_source_state",
            "A source's state as at the scrape (idle, fetching, ready, refreshing, degraded or failed): one series per source, at 1",
            m.source_state.clone(),
        );
        m.last_reload_ok.set(1);
        registry.register(
            "tokend_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried yet), 0 if it failed and an older configuration runs",
            m.last_reload_ok.clone(),
        );
        registry.register("tokend_sources", "Configured sources", m.sources.clone());
        registry.register(
            "tokend_connections_refused",
            "Connections a door closed at once, by door and reason (per_uid: the caller's uid already held max_connections_per_uid)",
            m.connections_refused.clone(),
        );
        registry.register(
            "tokend_log_lines_dropped",
            "Log lines dropped because stderr or the journal could not take them (logging never blocks serving)",
            m.log_lines_dropped.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("tokend_build_info", "tokend's version", build);
        Metrics { registry, ..m }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition text without the series of the sources `readable`
    /// refuses: what a caller who may read only some sources sees on the
    /// socket. Series without a `source` label stay.
    pub fn encode_for(&self, readable: impl Fn(&str) -> bool) -> String {
        let all = self.encode();
        let mut out = String::with_capacity(all.len());
        for line in all.lines() {
            let hidden = !line.starts_with('#') && source_label(line).is_some_and(|s| !readable(s));
            if !hidden {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Sets `source`'s state series: one, for `current`, at 1 (the series
    /// of its other states go, so 10,000 sources make 10,000 lines).
    pub fn set_state(&self, source: &str, current: &'static str) {
        for state in SOURCE_STATES {
            let label = SourceState {
                source: source.to_string(),
                state,
            };
            if state == current {
                self.source_state.get_or_create(&label).set(1);
            } else {
                self.source_state.remove(&label);
            }
        }
    }

    pub fn count_request(&self, source: &str, outcome: &'static str) {
        self.token_requests
            .get_or_create(&SourceOutcome {
                source: source.to_string(),
                outcome,
            })
            .inc();
    }

    /// Drops every series of a source that is gone, so removed sources do
    /// not linger in scrapes (or in memory).
    pub fn forget_source(&self, source: &str) {
        let l = SourceLabel {
            source: source.to_string(),
        };
        self.token_expiry.remove(&l);
        self.credential_expiry.remove(&l);
        self.fetch_duration.remove(&l);
        self.source_restarts.remove(&l);
        for state in SOURCE_STATES {
            self.source_state.remove(&SourceState {
                source: source.to_string(),
                state,
            });
        }
        for outcome in REQUEST_OUTCOMES {
            self.token_requests.remove(&SourceOutcome {
                source: source.to_string(),
                outcome,
            });
        }
        for outcome in ["success", "error"] {
            let l = SourceOutcome {
                source: source.to_string(),
                outcome,
            };
            self.fetches.remove(&l);
            self.sink_writes.remove(&l);
        }
    }
}

/// The `source` label's value on a sample line (source names need no
/// escaping: `[a-z0-9._-]`).
fn source_label(line: &str) -> Option<&str> {
    let open = line.find('{')?;
    let close = open + line[open..].find('}')?;
    line[open + 1..close]
        .split(',')
        .find_map(|kv| kv.strip_prefix("source=\"")?.strip_suffix('"'))
}
