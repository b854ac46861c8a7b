//! The `[server]` table: socket, permissions, limits and log format.

use super::diag::{At, Diagnostics};
use super::raw::RawServer;
use super::values::duration;
use super::{LogFormat, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Validates `[server]` (from the main file, index 0); unset keys get
/// their defaults, and so do invalid ones after their problem is recorded.
pub(super) fn server(d: &mut Diagnostics, raw: RawServer) -> ServerConfig {
    const MAIN: usize = 0;
    let def = ServerConfig::default();
    let socket = match raw.socket {
        Some(s) if s.get_ref().is_empty() => {
            d.error(
                &At::of(MAIN, &s),
                "`socket` is empty",
                Some("give a path such as /run/tokend/tokend.sock".to_string()),
            );
            def.socket.clone()
        }
        Some(s) => PathBuf::from(s.into_inner()),
        None => def.socket.clone(),
    };
    let socket_mode = match raw.socket_mode {
        None => def.socket_mode,
        Some(m) => match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                d.error(
                    &At::of(MAIN, &m),
                    format!("`socket_mode` {:?} is not an octal permission", m.get_ref()),
                    Some("write it as an octal string such as \"0660\"".to_string()),
                );
                def.socket_mode
            }
        },
    };
    let socket_group = raw.socket_group.and_then(|g| group(d, g));
    let mut count = |v: Option<Spanned<i64>>, key: &str, default: usize| match v {
        None => default,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(x) if x >= 1 => x,
            _ => {
                d.error(
                    &At::of(MAIN, &n),
                    format!("`{key}` must be at least 1"),
                    None,
                );
                default
            }
        },
    };
    let max_connections = count(raw.max_connections, "max_connections", def.max_connections);
    let max_concurrent_fetches = count(
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
    let log_format = match raw.log_format {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                d.error(
                    &At::of(MAIN, &f),
                    format!("unknown log_format `{other}`"),
                    Some("use \"text\" or \"json\"".to_string()),
                );
                LogFormat::Text
            }
        },
    };
    let metrics_listen = raw.metrics_listen.and_then(|l| {
        match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                d.error(
                    &At::of(MAIN, &l),
                    format!("`metrics_listen` {:?} is not an address and port: {e}", l.get_ref()),
                    Some("write it as \"127.0.0.1:9464\" (or [::1]:9464, or an address Prometheus can reach)".to_string()),
                );
                None
            }
        }
    });
    ServerConfig {
        socket,
        socket_mode,
        socket_group,
        max_connections,
        request_timeout,
        log_format,
        max_concurrent_fetches,
        metrics_listen,
    }
}

/// `socket_group`: a gid, or a group name resolved now.
fn group(d: &mut Diagnostics, g: Spanned<toml::Value>) -> Option<u32> {
    let at = At::of(0, &g);
    match g.into_inner() {
        toml::Value::Integer(n) => match u32::try_from(n) {
            Ok(gid) => Some(gid),
            Err(_) => {
                d.error(&at, format!("`socket_group` {n} is not a valid gid"), None);
                None
            }
        },
        toml::Value::String(s) => {
            if let Ok(gid) = s.parse::<u32>() {
                return Some(gid);
            }
            match crate::acl::group_gid(&s) {
                Ok(Some(gid)) => Some(gid),
                Ok(None) => {
                    d.error(
                        &at,
                        format!("unknown group `{s}`"),
                        Some("create the group (groupadd) or use a numeric gid".to_string()),
                    );
                    None
                }
                Err(e) => {
                    d.error(
                        &at,
                        format!("cannot look up group `{s}`: {e}"),
                        Some(
                            "check /etc/nsswitch.conf and the group database, or use a numeric gid"
                                .to_string(),
                        ),
                    );
                    None
                }
            }
        }
        _ => {
            d.error(&at, "`socket_group` must be a group name or gid", None);
            None
        }
    }
}
