//! Text from outside stays text: what an identity provider puts in a
//! token's claims, what a file name holds, never reaches a terminal or the
//! log as anything but characters (no escape sequence, no line of its own,
//! no reordering).

mod common;

use base64::Engine;
use common::*;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// What a hostile string may not carry to a terminal.
fn assert_inert(text: &str) {
    for bad in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2028}', '\u{200b}'] {
        assert!(!text.contains(bad), "{bad:?} reached the output:\n{text:?}");
    }
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("forged"),
            "a forged line:\n{text}"
        );
    }
}

/// `check --fetch` prints a token's claims and scope: a hostile issuer
/// (or anyone it trusts to mint tokens) can set none of the terminal's
/// title, colours or screen, nor add a `hint:` line of its own.
#[tokio::test]
async fn check_fetch_prints_hostile_claims_as_inert_text() {
    let idp = idp(S(3600), &["c"]).await;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "aud": "api\u{1b}]0;pwned\u{7}\u{1b}[2J",
        "roles": ["ok", "x\nforged: line", "rtl\u{202e}txet"],
        "tid": "t\u{2028}forged too",
        "appid": "zero\u{200b}width",
        "exp": 4_102_444_800u64,
    });
    let jwt = format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"RS256"}"#),
        e.encode(claims.to_string())
    );
    idp.fail_with(Some(Failure {
        status: 200,
        body: serde_json::json!({
            "access_token": jwt,
            "expires_in": 3600,
            "scope": "read\u{1b}[31m\nforged scope",
        })
        .to_string(),
        retry_after: None,
    }));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokend.toml");
    write_private(&config, &source("c", &idp, ""));
    let (code, out, err) = check_fetch(&config, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("aud: api"), "{out}");
    assert_inert(&out);
    assert_inert(&err);
}

/// A newline (or a bidi override) in a secret file's name or an include
/// file's name cannot start a log line of its own: paths are printed with
/// such characters escaped.
#[tokio::test]
async fn paths_in_the_log_are_escaped() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("sources.d");
    std::fs::create_dir(&inc).unwrap();
    write_private(
        &inc.join("x\nforged ERROR include\u{202e}.toml"),
        "this is not toml",
    );
    let body = format!(
        "{}[sources.b]\ntoken_url = \"{}\"\nclient_id = \"b\"\nclient_secret = {{ file = \"/nonexistent/s\\nforged WARN secret\" }}\n",
        source("a", &idp, ""),
        idp.token_url()
    );
    let socket = dir.path().join("tokend.sock");
    // The include file is broken: first load without it, then add it.
    let broken = inc.join("x\nforged ERROR include\u{202e}.toml");
    let kept = dir.path().join("later.toml");
    std::fs::rename(&broken, &kept).unwrap();
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/b", 503).await;
    std::fs::rename(&kept, &broken).unwrap();
    wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let log = d
        .log_when("the path, escaped", |log| {
            log.contains("forged WARN secret") && log.contains("\\u{a}forged ERROR include")
        })
        .await;
    assert_inert(&log);
    let status = d.get("/v1/sources").await.text();
    assert_inert(
        &serde_json::from_str::<serde_json::Value>(&status)
            .unwrap()
            .to_string(),
    );
}

/// A Unix socket that is not tokend's: each connection gets `answer`
/// (after reading the request), or nothing at all when it is `None`.
fn hostile_socket(
    dir: &std::path::Path,
    answer: Option<Vec<u8>>,
    endless: bool,
) -> std::path::PathBuf {
    use std::io::{Read, Write};
    let path = dir.join(format!("hostile-{}.sock", rand_suffix()));
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let answer = answer.clone();
            std::thread::spawn(move || match answer {
                None => std::thread::sleep(Duration::from_secs(600)),
                Some(a) => {
                    let _ = conn.write_all(&a);
                    if endless {
                        while conn.write_all(&[b'a'; 65536]).is_ok() {}
                    }
                }
            });
        }
    });
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn tokend_client(
    args: &[&str],
    socket: &std::path::Path,
) -> (Option<i32>, String, String, Duration) {
    let start = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// `tokend token` and `status` against someone else's socket: an endless
/// body is cut off, a silent server is given up on, and a crafted status
/// document or token prints nothing that acts on a terminal.
#[tokio::test]
async fn client_commands_survive_a_hostile_socket() {
    let dir = tempfile::tempdir().unwrap();
    let endless = hostile_socket(
        dir.path(),
        Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        true,
    );
    // Chunked framing aside, the body never ends: bounded in size.
    let raw_endless = hostile_socket(
        dir.path(),
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n".to_vec()),
        true,
    );
    let (code, _, err, took) = tokio::task::spawn_blocking({
        let s = raw_endless.clone();
        move || tokend_client(&["status"], &s)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("larger than 64 MiB"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let (code, _, _, _) = tokio::task::spawn_blocking(move || tokend_client(&["status"], &endless))
        .await
        .unwrap();
    assert_eq!(code, Some(1));

    let silent = hostile_socket(dir.path(), None, false);
    let (code, _, err, took) = tokio::task::spawn_blocking(move || {
        tokend_client(&["token", "x", "--timeout", "1s"], &silent)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no answer") && err.contains("within 1s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    let doc = serde_json::json!({
        "sources": [{
            "name": "x\u{1b}[2J",
            "state": "ready\u{1b}]0;pwned\u{7}",
            "consecutive_failures": 0,
            "last_error": { "message": "boom\nforged: line", "hint": "h\u{202e}int" },
            "warnings": ["w\u{2028}forged too"],
            "managed_identity_apps": ["a\u{1b}[31m"],
        }]
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
        doc.len()
    );
    let crafted = hostile_socket(dir.path(), Some(answer.into_bytes()), false);
    for args in [vec!["status"], vec!["status", "--json"]] {
        let s = crafted.clone();
        let (code, out, err, _) = tokio::task::spawn_blocking(move || tokend_client(&args, &s))
            .await
            .unwrap();
        assert_eq!(code, Some(0), "{err}");
        assert_inert(&out);
    }
    let body = "abc\u{1b}]0;pwned\u{7}\nforged";
    let token = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let crafted = hostile_socket(dir.path(), Some(token.into_bytes()), false);
    let (code, out, err, _) =
        tokio::task::spawn_blocking(move || tokend_client(&["token", "x"], &crafted))
            .await
            .unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("not a token"), "{err}");
}
