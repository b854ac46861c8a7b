//! The wire, byte for byte: every answer shape of the socket, the
//! managed-identity endpoint and the IMDS door (status line, headers, body) against a file
//! in tests/golden/. What varies from run to run (tokens, times, ports,
//! lifetimes, lengths) is replaced by a placeholder first; everything
//! else, key order and spacing included, must match. A change to a shape
//! is a change to the API (docs/api.md): regenerate with
//! `TOKEND_REGENERATE=1 cargo test --test golden` and review the diff.

mod common;

use common::mi::{config, free_port, GRAPH};
use common::*;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S: fn(u64) -> Duration = Duration::from_secs;

/// One request, raw: `method path` with `headers`, over `stream`; the
/// whole answer as text (the server closes: `Connection: close`).
async fn raw<St: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: St,
    method: &str,
    path: &str,
    headers: &str,
) -> String {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// `text` with what varies between runs replaced: tokens (the dev IdP's
/// JWTs), RFC 3339 times, the IdPs' and endpoint's ports, the numbers of
/// `expires_in`, `expires_on` (and IMDS's other times), `Content-Length`
/// and `Retry-After` (a countdown), the caller's uid, and the `Date` header.
fn normalise(text: &str, ports: &[u16]) -> String {
    let mut text: String = text
        .split_inclusive("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    for p in ports {
        text = text.replace(&format!(":{p}"), ":<port>");
    }
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    let token_char = |c: u8| c.is_ascii_alphanumeric() || b"._-".contains(&c);
    let is_time = |s: &[u8]| {
        s.len() >= 20
            && s.iter().enumerate().take(20).all(|(k, c)| match k {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    };
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("eyJ") {
            let n = b[i..].iter().take_while(|c| token_char(**c)).count();
            out.push_str("<token>");
            i += n;
            continue;
        }
        if is_time(&b[i..]) {
            out.push_str("<time>");
            i += 20;
            continue;
        }
        let number_after = [
            // IMDS's string numbers first: `"expires_in":` is a prefix.
            "\"expires_in\":\"",
            "\"ext_expires_in\":\"",
            "\"not_before\":\"",
            "\"expires_in\":",
            "\"expires_on\":\"",
            // The caller's uid, whoever runs the tests.
            "to uid ",
            "content-length: ",
            "retry-after: ",
        ]
        .iter()
        .find(|k| {
            rest.len() >= k.len() && rest.as_bytes()[..k.len()].eq_ignore_ascii_case(k.as_bytes())
        });
        if let Some(k) = number_after {
            out.push_str(&rest[..k.len()]);
            i += k.len();
            let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            out.push_str("<n>");
            i += n;
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// One GET on the TCP door at `port` with `headers`, normalised.
async fn on_tcp(port: u16, path: &str, headers: &str, ports: &[u16]) -> String {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    normalise(&raw(stream, "GET", path, headers).await, ports)
}

/// Compares `got` with tests/golden/`name`.http, or writes it there with
/// TOKEND_REGENERATE=1.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.http"));
    if std::env::var_os("TOKEND_REGENERATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (TOKEND_REGENERATE=1 cargo test --test golden writes it)",
            path.display()
        )
    });
    assert_eq!(
        got,
        want,
        "{name}: the answer differs from {} (a change to the API: regenerate and review)",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_shape_is_unchanged_on_the_wire() {
    let down = idp(S(3600), &["down"]).await;
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    // Held back by Retry-After (300 s at most): its state and failure
    // count stay put while the answers are taken.
    down.fail_with(Some(tokend::dev::Failure {
        status: 503,
        body: r#"{"error":"temporarily_unavailable","error_description":"try later"}"#.into(),
        retry_after: Some("3600".into()),
    }));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path()) + &source("down", &down, "");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket.clone()).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    wait_until(&d, |doc| {
        doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "down" && s["consecutive_failures"] == 1)
    })
    .await;
    let ports = [idp.addr().port(), down.addr().port(), port];
    let on_socket = async |method: &str, path: &str| {
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        normalise(&raw(stream, method, path, "").await, &ports)
    };
    for (name, method, path) in [
        ("healthz", "GET", "/healthz"),
        ("readyz", "GET", "/readyz"),
        ("token", "GET", "/v1/tokens/graph"),
        ("token-raw", "GET", "/v1/tokens/graph?format=raw"),
        ("token-min-ttl", "GET", "/v1/tokens/graph?min_ttl=5m"),
        (
            "token-min-ttl-too-long",
            "GET",
            "/v1/tokens/graph?min_ttl=48h",
        ),
        ("token-bad-query", "GET", "/v1/tokens/graph?min_ttl=soon"),
        ("token-unknown", "GET", "/v1/tokens/nope"),
        ("token-bad-name", "GET", "/v1/tokens/..%2Fetc"),
        ("token-unavailable", "GET", "/v1/tokens/down"),
        ("token-wrong-method", "DELETE", "/v1/tokens/graph"),
        ("sources", "GET", "/v1/sources"),
        ("source", "GET", "/v1/sources/graph"),
        ("source-failing", "GET", "/v1/sources/down"),
        ("no-such-path", "GET", "/v2/anything"),
        ("refresh", "POST", "/v1/sources/graph/refresh"),
    ] {
        golden(name, &on_socket(method, path).await);
    }
    let on_mi = async |path: &str, headers: &str| on_tcp(port, path, headers, &ports).await;
    let q = |resource: &str| format!("/msi/token?{}", common::mi::query("2019-08-01", resource));
    let jira = "X-IDENTITY-HEADER: jira-header-value\r\n";
    for (name, path, headers) in [
        ("mi-token", q(GRAPH), jira),
        ("mi-no-header", q(GRAPH), ""),
        (
            "mi-wrong-header",
            q(GRAPH),
            "X-IDENTITY-HEADER: not-it-at-all-0000\r\n",
        ),
        ("mi-other-resource", q("https://storage.azure.com"), jira),
        ("mi-no-such-path", "/other".to_string(), jira),
    ] {
        golden(name, &on_mi(&path, headers).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_imds_answer_shape_is_unchanged_on_the_wire() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let d = daemon(&common::mi::imds_config(&idp, port, ""))
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    let ports = [idp.addr().port(), port];
    let on_imds = async |path: &str, headers: &str| on_tcp(port, path, headers, &ports).await;
    let q = |resource: &str| {
        format!(
            "/metadata/identity/oauth2/token?{}",
            common::mi::query("2018-02-01", resource)
        )
    };
    let metadata = "Metadata: true\r\n";
    for (name, path, headers) in [
        ("imds-token", q(GRAPH), metadata),
        ("imds-no-metadata", q(GRAPH), ""),
        (
            "imds-other-resource",
            q("https://storage.azure.com"),
            metadata,
        ),
        (
            "imds-no-resource",
            "/metadata/identity/oauth2/token?api-version=2018-02-01".to_string(),
            metadata,
        ),
        (
            "imds-no-such-path",
            "/metadata/instance".to_string(),
            metadata,
        ),
    ] {
        golden(name, &on_imds(&path, headers).await);
    }
}
