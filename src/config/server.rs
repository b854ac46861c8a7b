//! The `[server]` table: socket, permissions, limits and log format.

use super::diag::{At, Diagnostics};
use super::raw::RawServer;
use super::values::{account, address, duration, octal_mode, Account};
use super::{LogFormat, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Validates `[server]` (from the main file, index 0); unset keys get
/// their defaults, and so do invalid ones after their problem is recorded.
pub(super) fn server(d: &mut Diagnostics, raw: RawServer) -> ServerConfig {
    let def = ServerConfig::default();
    let socket = socket_path(d, raw.socket).unwrap_or_else(|| def.socket.clone());
    let socket_mode = raw
        .socket_mode
        .and_then(|m| octal_mode(d, MAIN, &m, "socket_mode", "0660"))
        .unwrap_or(def.socket_mode);
    let socket_group = raw
        .socket_group
        .and_then(|g| account(d, MAIN, g, "socket_group", Account::Group));
    let max_connections = count(
        d,
        raw.max_connections,
        "max_connections",
        def.max_connections,
    );
    let max_connections_per_uid = count(
        d,
        raw.max_connections_per_uid,
        "max_connections_per_uid",
        def.max_connections_per_uid,
    );
    let max_concurrent_fetches = count(
        d,
        raw.max_concurrent_fetches,
        "max_concurrent_fetches",
        def.max_concurrent_fetches,
    );
    let request_timeout = duration(
        d,
        MAIN,
        &raw.request_timeout,
        "request_timeout",
        def.request_timeout,
        Duration::from_millis(100),
    );
    ServerConfig {
        socket,
        socket_mode,
        socket_group,
        max_connections,
        max_connections_per_uid,
        request_timeout,
        log_format: raw
            .log_format
            .map_or(LogFormat::Text, |f| log_format(d, &f)),
        max_concurrent_fetches,
        metrics_listen: raw.metrics_listen.and_then(|l| metrics_listen(d, &l)),
    }
}

/// `[server]` is read from the main file only.
const MAIN: usize = 0;

/// `socket`, if set and not empty.
fn socket_path(d: &mut Diagnostics, raw: Option<Spanned<String>>) -> Option<PathBuf> {
    let s = raw?;
    if s.get_ref().is_empty() {
        d.error(
            &At::of(MAIN, &s),
            "`socket` is empty",
            Some("give a path such as /run/tokend/tokend.sock".to_string()),
        );
        return None;
    }
    Some(PathBuf::from(s.into_inner()))
}

/// A count of at least 1, or `default`.
fn count(d: &mut Diagnostics, v: Option<Spanned<i64>>, key: &str, default: usize) -> usize {
    let Some(n) = v else { return default };
    match usize::try_from(*n.get_ref()) {
        Ok(x) if x >= 1 => x,
        _ => {
            d.error(
                &At::of(MAIN, &n),
                format!("`{key}` must be at least 1"),
                None,
            );
            default
        }
    }
}

fn log_format(d: &mut Diagnostics, f: &Spanned<String>) -> LogFormat {
    match f.get_ref().as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => {
            d.error(
                &At::of(MAIN, f),
                "unknown log_format",
                Some("use \"text\" or \"json\"".to_string()),
            );
            LogFormat::Text
        }
    }
}

/// `metrics_listen`: an address and port, with a warning on every interface.
fn metrics_listen(d: &mut Diagnostics, l: &Spanned<String>) -> Option<std::net::SocketAddr> {
    let example = "\"127.0.0.1:9464\" (or [::1]:9464, or an address Prometheus can reach)";
    let a = address(d, MAIN, l, "metrics_listen", example)?;
    if a.ip().is_unspecified() {
        d.warn(
            &At::of(MAIN, l),
            format!("`metrics_listen` {a} listens on every interface: anyone who can reach this host on port {} reads every source's name, state and token expiry", a.port()),
            Some(format!("listen on 127.0.0.1:{} for a Prometheus on this host, or on the one address Prometheus scrapes, behind a firewall", a.port())),
        );
    }
    Some(a)
}
