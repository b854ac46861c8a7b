//! What the TCP doors (the managed-identity endpoint, `metrics_listen`)
//! check before anything else, and how they log a refusal.
//!
//! A web page the host's browser opens can reach loopback ports through a
//! name that its DNS later points at 127.0.0.1 (DNS rebinding); its requests
//! then carry that name in `Host`. The doors answer only a `Host` that is an
//! IP literal or `localhost`, so such a page reads nothing.
//!
//! Anyone on the host can knock on these doors, and journald drops lines
//! past its rate limit: denials are logged at WARN at once for the first,
//! then at most once a minute per door, with the count of those not logged.
//! The socket's denials ([`CallerDenials`]) are kept the same way per
//! caller uid and source, so one uid's flood costs a line a minute.

use crate::sync::Locked;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a `Host` header's value names this machine by address: an IP
/// literal or `localhost`, with or without a port.
pub fn local_host(host: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip.parse::<Ipv6Addr>().is_ok(),
            Some((ip, port)) => {
                port.strip_prefix(':').is_some_and(port_ok) && ip.parse::<Ipv6Addr>().is_ok()
            }
            None => false,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok()
}

/// Why a TCP door refuses a request's `Host`; each door answers it in its
/// own body shape.
pub struct HostRefusal {
    pub status: hyper::StatusCode,
    pub message: String,
}

/// A TCP door's first check: the request names this machine by address,
/// not by a name a web page could point here. A refusal is logged as the
/// door's denials are (see [`Denials`]).
pub fn check_host(
    headers: &hyper::HeaderMap,
    denials: &Denials,
    door: &'static str,
) -> Result<(), HostRefusal> {
    let (status, shown) = match headers.get(hyper::header::HOST) {
        Some(h) if local_host(h.to_str().unwrap_or_default()) => return Ok(()),
        Some(h) => (
            hyper::StatusCode::MISDIRECTED_REQUEST,
            crate::text::clip(&String::from_utf8_lossy(h.as_bytes()), 200),
        ),
        None => (hyper::StatusCode::BAD_REQUEST, "(none)".to_string()),
    };
    if let Some(unlogged) = denials.log_now(Instant::now()) {
        tracing::warn!(
            door,
            host = %shown,
            refused_since_last_line = unlogged,
            "request refused: Host is not an address of this machine"
        );
    }
    let message = match status {
        hyper::StatusCode::BAD_REQUEST => "the request has no Host header".to_string(),
        _ => format!("this endpoint answers requests for an address of this machine (127.0.0.1, [::1], localhost), not for {shown}; use the address, as IDENTITY_ENDPOINT and Prometheus targets do"),
    };
    Err(HostRefusal { status, message })
}

/// How often a door logs its denials at most.
pub const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One door's denials, for the log.
#[derive(Debug)]
pub struct Denials {
    state: Mutex<DenialState>,
}

#[derive(Debug, Default)]
struct DenialState {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl DenialState {
    /// See [`Denials::log_now`].
    fn log_now(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(at) if now.saturating_duration_since(at) < DENIAL_LOG_INTERVAL => {
                self.unlogged = self.unlogged.saturating_add(1);
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    fn quiet_since(&self, now: Instant) -> bool {
        self.last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= DENIAL_LOG_INTERVAL)
    }
}

impl Denials {
    pub fn new() -> Denials {
        Denials {
            state: Mutex::new(DenialState::default()),
        }
    }

    /// Counts a denial at `now`. `Some(n)`: log this one, saying that `n`
    /// more were refused since the last line; `None`: count it silently.
    pub fn log_now(&self, now: Instant) -> Option<u64> {
        self.state.locked().log_now(now)
    }
}

/// The socket's denials (and refused connections), logged at most once a
/// minute per (uid, what was refused).
#[derive(Debug, Default)]
pub struct CallerDenials {
    map: Mutex<HashMap<(u32, String), DenialState>>,
}

/// Callers and sources kept at most; past it, those quiet for a minute go.
const CALLER_DENIALS_KEPT: usize = 4096;

impl CallerDenials {
    /// [`Denials::log_now`] for `uid` refused `what` (a source name, say).
    pub fn log_now(&self, uid: u32, what: &str, now: Instant) -> Option<u64> {
        let mut map = self.map.locked();
        let key = (uid, what.to_string());
        if !map.contains_key(&key) && map.len() >= CALLER_DENIALS_KEPT {
            map.retain(|_, s| !s.quiet_since(now));
        }
        map.entry(key).or_default().log_now(now)
    }
}

impl Default for Denials {
    fn default() -> Self {
        Denials::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_machine_by_address() {
        for yes in [
            "127.0.0.1",
            "127.0.0.1:42356",
            "127.1.2.3:9",
            "localhost",
            "LOCALHOST:9100",
            "[::1]",
            "[::1]:42356",
            "10.0.0.5:80",
        ] {
            assert!(local_host(yes), "{yes}");
        }
        for no in [
            "evil.example",
            "evil.example:42356",
            "localhost.evil.example",
            "127.0.0.1.nip.io:42356",
            "[::1",
            "[::1]x",
            "[::1]:",
            "127.0.0.1:",
            "127.0.0.1:99999999",
            "",
            "localhost:42356:1",
        ] {
            assert!(!local_host(no), "{no}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn denials_are_logged_once_a_minute_with_a_count() {
        let d = Denials::new();
        assert_eq!(d.log_now(Instant::now()), Some(0), "the first is logged");
        for _ in 0..199 {
            assert_eq!(d.log_now(Instant::now()), None);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(d.log_now(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            d.log_now(Instant::now()),
            Some(200),
            "a minute on: logged, with those not logged"
        );
        assert_eq!(d.log_now(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn socket_denials_are_logged_once_a_minute_per_uid_and_source() {
        let d = CallerDenials::default();
        let now = Instant::now();
        assert_eq!(d.log_now(65534, "graph", now), Some(0));
        for _ in 0..10_000 {
            assert_eq!(d.log_now(65534, "graph", now), None);
        }
        // Another source, another uid: each has its own first line.
        assert_eq!(d.log_now(65534, "billing", now), Some(0));
        assert_eq!(d.log_now(1000, "graph", now), Some(0));
        tokio::time::advance(DENIAL_LOG_INTERVAL).await;
        assert_eq!(d.log_now(65534, "graph", Instant::now()), Some(10_000));
    }
}
