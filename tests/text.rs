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
    let log = d.log();
    assert!(
        log.contains("forged WARN secret"),
        "the path is in the log:\n{log}"
    );
    assert!(log.contains("\\u{a}forged ERROR include"), "{log}");
    assert_inert(&log);
    let status = d.get("/v1/sources").await.text();
    assert_inert(
        &serde_json::from_str::<serde_json::Value>(&status)
            .unwrap()
            .to_string(),
    );
}
