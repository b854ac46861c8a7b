//! The `token` and `status` client commands: HTTP/1.1 over the daemon's Unix
//! socket, with exit codes a shell script can branch on.
//!
//! The socket may not be tokend's (`$TOKEND_SOCKET` names anything): an
//! answer is read for a bounded time and up to a bounded size, and what is
//! printed from it is escaped (a token must be visible ASCII; text is
//! clipped and stripped of control and format characters; JSON is written
//! with those characters escaped).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Exit codes of `tokend token`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    /// No such source, or (for a caller other than root and the daemon's
    /// user) one it may not read: the daemon does not say which.
    pub const UNKNOWN_SOURCE: u8 = 2;
    pub const UNAVAILABLE: u8 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is tokend running? set --socket or $TOKEND_SOCKET)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {path}: join group {group} (sudo usermod -aG {group} USER, then start a new login or restart the service), see docs/troubleshooting.md"
    )]
    Denied { path: String, group: String },
    /// The same, in a Kubernetes pod: groups come from its securityContext.
    #[error(
        "permission denied on {path}: this pod is not in the socket's group {gid} — add it to the pod's securityContext.supplementalGroups (docs/kubernetes.md)"
    )]
    DeniedInPod { path: String, gid: u32 },
    #[error("talking to tokend failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer from {path} within {} (is it tokend's socket? --timeout sets the wait)", humantime::format_duration(*.timeout))]
    Timeout { path: String, timeout: Duration },
    #[error("the answer from {path} is larger than {} MiB: not tokend's", MAX_ANSWER / (1024 * 1024))]
    TooLarge { path: String },
}

/// EACCES on the socket: the fix is a group to join (the socket's).
fn connect_error(socket: &Path, path: String, source: std::io::Error) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        if let Ok(meta) = std::fs::metadata(socket) {
            let gid = meta.gid();
            // The kubelet sets this in every container it starts.
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                return ClientError::DeniedInPod { path, gid };
            }
            let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map_or_else(|| gid.to_string(), |g| g.name);
            return ClientError::Denied {
                path,
                group: crate::text::clip(&group, 64),
            };
        }
    }
    ClientError::Connect { path, source }
}

/// Largest answer read: `/v1/sources` of tens of thousands of sources fits.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One request to the daemon; returns the whole response. Waits up to 60 s.
pub async fn call(
    socket: &Path,
    method: hyper::Method,
    path_and_query: &str,
) -> Result<hyper::Response<Bytes>, ClientError> {
    call_within(socket, method, path_and_query, Duration::from_secs(60)).await
}

/// [`call`], giving up after `timeout`, and after [`MAX_ANSWER`] bytes.
pub async fn call_within(
    socket: &Path,
    method: hyper::Method,
    path_and_query: &str,
    timeout: Duration,
) -> Result<hyper::Response<Bytes>, ClientError> {
    let path = crate::text::path(socket);
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| connect_error(socket, path.clone(), source))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())?;
        let (parts, body) = sender.send_request(req).await?.into_parts();
        let body = http_body_util::Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => ClientError::Http(*e),
                Err(_) => ClientError::TooLarge { path: path.clone() },
            })?
            .to_bytes();
        Ok(hyper::Response::from_parts(parts, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            path: path.clone(),
            timeout,
        }),
    }
}

/// Text from the socket, as it may be printed.
fn shown(s: &str) -> String {
    crate::text::clip(s, crate::text::MAX_FIELD)
}

/// `v` as JSON, with every control and format character escaped (serde
/// leaves U+202E and its kind as they are).
fn json_out(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if crate::text::hidden(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn print_error(body: &[u8], status: StatusCode) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let msg = v["message"].as_str().unwrap_or("request failed");
            eprintln!("tokend: {}", shown(msg));
            if let Some(h) = v["hint"].as_str() {
                eprintln!("hint: {}", shown(h));
            }
        }
        Err(_) => eprintln!("tokend: HTTP {status}"),
    }
}

/// `tokend token NAME`: prints the bare token (or the JSON body) and returns the exit code.
pub async fn token(
    socket: &Path,
    name: &str,
    min_ttl: Option<Duration>,
    json: bool,
    timeout: Duration,
) -> u8 {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if !json {
        q.append_pair("format", "raw");
    }
    if let Some(t) = min_ttl {
        q.append_pair("min_ttl", &format!("{}s", t.as_secs()));
    }
    let enc: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let path = format!("/v1/tokens/{enc}?{}", q.finish());
    match call_within(socket, hyper::Method::GET, &path, timeout)
        .await
        .map(|r| (r.status(), r.into_body()))
    {
        Err(e) => {
            eprintln!("tokend: {e}");
            exit::OTHER
        }
        Ok((StatusCode::OK, body)) if json => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => {
                println!("{}", json_out(&v));
                exit::OK
            }
            Err(_) => {
                eprintln!("tokend: the answer is not JSON: not tokend's");
                exit::OTHER
            }
        },
        Ok((StatusCode::OK, body)) => {
            // A token is visible ASCII; anything else could run on a
            // terminal or start a line in a script.
            if !crate::token::is_token_text(&body) {
                eprintln!("tokend: the answer is not a token (it holds characters a token cannot): not tokend's");
                return exit::OTHER;
            }
            println!("{}", String::from_utf8_lossy(&body));
            exit::OK
        }
        Ok((status, body)) => {
            print_error(&body, status);
            match status.as_u16() {
                404 => exit::UNKNOWN_SOURCE,
                503 | 504 | 422 => exit::UNAVAILABLE,
                _ => exit::OTHER,
            }
        }
    }
}

/// `tokend status`: a table of sources, or the raw document with `--json`.
pub async fn status(socket: &Path, json: bool, timeout: Duration) -> u8 {
    let (status, body) = match call_within(socket, hyper::Method::GET, "/v1/sources", timeout).await
    {
        Ok(r) => (r.status(), r.into_body()),
        Err(e) => {
            eprintln!("tokend: {e}");
            return exit::OTHER;
        }
    };
    if status != StatusCode::OK {
        print_error(&body, status);
        return exit::OTHER;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(doc) if json => {
            println!("{}", json_out(&doc));
            exit::OK
        }
        Ok(doc) => {
            print!("{}", render_table(&doc, SystemTime::now()));
            exit::OK
        }
        Err(e) => {
            eprintln!("tokend: unreadable status document: {e}");
            exit::OTHER
        }
    }
}

fn relative(v: &Value, now: SystemTime) -> String {
    let Some(t) = v.as_str().and_then(crate::timefmt::parse_rfc3339) else {
        return "-".to_string();
    };
    let round =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    match t.duration_since(now) {
        Ok(d) => format!("in {}", round(d)),
        Err(e) => format!("{} ago", round(e.duration())),
    }
}

/// The `status` table: one line per source, then its error and warnings.
pub fn render_table(doc: &Value, now: SystemTime) -> String {
    let mut rows = vec![[
        "SOURCE",
        "STATE",
        "EXPIRES",
        "LAST REFRESH",
        "NEXT REFRESH",
        "FAILURES",
        "CREDENTIAL EXPIRES",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    let empty = Vec::new();
    let sources = doc["sources"].as_array().unwrap_or(&empty);
    for s in sources {
        let name = shown(s["name"].as_str().unwrap_or("?"));
        rows.push(vec![
            name.clone(),
            shown(s["state"].as_str().unwrap_or("?")),
            relative(&s["expires_at"], now),
            relative(&s["refreshed_at"], now),
            relative(&s["next_refresh_at"], now),
            shown(&s["consecutive_failures"].to_string()),
            relative(&s["credential_expires_at"], now),
        ]);
        if let Some(e) = s["last_error"].as_object() {
            notes.push(format!(
                "{name}: {}",
                shown(e.get("message").and_then(Value::as_str).unwrap_or(""))
            ));
            if let Some(h) = e.get("hint").and_then(Value::as_str) {
                notes.push(format!("{name}: hint: {}", shown(h)));
            }
        }
        for w in s["warnings"].as_array().unwrap_or(&empty) {
            notes.push(format!(
                "{name}: warning: {}",
                shown(w.as_str().unwrap_or(""))
            ));
        }
        let apps: Vec<String> = s["managed_identity_apps"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .map(shown)
            .collect();
        if !apps.is_empty() {
            notes.push(format!(
                "{name}: served to managed-identity apps: {}",
                apps.join(", ")
            ));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if sources.is_empty() {
        out.push_str("(no sources you may read)\n");
    }
    if let Some(err) = doc["config"]["last_reload"]["error"].as_str() {
        notes.push(format!("config: last reload failed: {err}"));
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_state_error_and_hint() {
        let now = crate::timefmt::parse_rfc3339("2026-11-29T10:00:00Z").unwrap();
        let doc = serde_json::json!({
            "sources": [{
                "name": "graph", "state": "degraded",
                "expires_at": "2026-11-29T10:30:00Z", "refreshed_at": "2026-11-29T09:30:00Z",
                "next_refresh_at": "2026-11-29T10:00:05Z", "consecutive_failures": 2,
                "last_error": {"error": "invalid_client", "message": "HTTP 401", "hint": "check the secret", "at": "2026-11-29T09:59:00Z"},
                "credential_expires_at": null, "warnings": [],
                "managed_identity_apps": ["jira-sync"]
            }],
            "config": {"last_reload": {"ok": true, "error": null}}
        });
        let t = render_table(&doc, now);
        assert!(
            t.contains("graph")
                && t.contains("degraded")
                && t.contains("in 30m")
                && t.contains("30m ago"),
            "{t}"
        );
        assert!(t.contains("hint: check the secret"), "{t}");
        assert!(
            t.contains("graph: served to managed-identity apps: jira-sync"),
            "{t}"
        );
    }
}
