//! Trust at the edges, end to end: odd but legal token responses, a secret
//! that is a FIFO, a request body that never comes, and reloads that race
//! waiting requests. The real daemon on a temp socket, the dev IdP on
//! 127.0.0.1 answering what each test scripts.

mod common;

use base64::Engine;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// An IdP that answers every token request with a JWT whose `exp` is
/// `exp` (raw JSON), and no `expires_in`.
async fn idp_issuing_exp(exp: &str) -> DevIdp {
    let idp = idp(S(3600), &[]).await;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = format!(
        "{}.{}.",
        e.encode(r#"{"alg":"none"}"#),
        e.encode(format!(r#"{{"sub":"x","exp":{exp}}}"#))
    );
    idp.fail_with(Some(Failure {
        status: 200,
        body: format!(r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#),
        retry_after: None,
    }));
    idp
}

#[tokio::test]
async fn odd_expiry_times_neither_panic_nor_serve_a_dead_token() {
    let huge = idp_issuing_exp("18446744073709551000").await;
    let y10k = idp_issuing_exp("253402300900").await;
    let past = idp_issuing_exp("1000").await;
    let d = daemon(
        &[
            source("huge", &huge, ""),
            source("y10k", &y10k, ""),
            source("past", &past, ""),
        ]
        .concat(),
    )
    .start()
    .await;
    let year = 366 * 86_400;
    for name in ["huge", "y10k"] {
        for _ in 0..3 {
            let r = wait_for_status(&d, &format!("/v1/tokens/{name}"), 200).await;
            let j = r.json();
            // Capped at 366 days, and the date renders.
            let expires_in = j["expires_in"].as_u64().unwrap();
            assert!((year - 60..=year).contains(&expires_in), "{name}: {j}");
            let at = j["expires_at"].as_str().unwrap();
            assert!(at.ends_with('Z'), "{name}: {j}");
        }
        let st = d.get(&format!("/v1/sources/{name}")).await.json();
        assert_eq!(st["state"], "ready", "{st}");
    }
    // exp in 1970: never served, a fetch error that says why, retried.
    let r = wait_for_status(&d, "/v1/tokens/past", 503).await;
    let j = r.json();
    assert_eq!(j["error"], "token_unavailable");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("exp (1000) is already past"),
        "{j}"
    );
    assert!(r.header("retry-after").is_some());
    let st = d.get("/v1/sources/past").await.json();
    assert_eq!(st["last_error"]["error"], "token_expired", "{st}");
    assert_eq!(st["state"], "failed");
    assert!(d.get("/v1/sources").await.status() == 200);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[tokio::test]
async fn check_fetch_shows_a_year_10000_token_without_panicking() {
    let y10k = idp_issuing_exp("253402300900").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    write_private(&path, &source("y10k", &y10k, ""));
    let (code, stdout, stderr) = check_fetch(&path, &[]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("y10k: ok, lifetime 1year 18h"), "{stdout}");
    assert!(stdout.contains("exp: 9999-12-"), "{stdout}");
}

#[tokio::test]
async fn a_fifo_as_secret_file_is_a_clear_error_and_sigterm_still_works() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("secret");
    mkfifo(&fifo);
    let body = source_with_file_secret("a", &idp, &fifo, "");
    let socket = dir.path().join("tokend.sock");
    let mut d = daemon(&body).at(dir, socket).start().await;
    let st = wait_until(&d, |doc| !doc["sources"][0]["last_error"].is_null()).await;
    let e = &st["sources"][0]["last_error"];
    assert_eq!(e["error"], "secret_unavailable", "{st}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("it is a FIFO, not a regular file"),
        "{st}"
    );
    assert_eq!(idp.requests(), 0);
    let start = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().await.success());
    assert!(start.elapsed() < S(5), "SIGTERM took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_that_never_comes_is_cut_off_at_request_timeout() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, ""))
        .server("request_timeout = \"1s\"\nmax_connections = 3")
        .start()
        .await;
    // Two clients declare a body and never send it.
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let socket = d.socket.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(S(8))).unwrap();
                s.write_all(
                    b"POST /v1/sources/a/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
                )
                .unwrap();
                let start = std::time::Instant::now();
                let mut buf = Vec::new();
                let ended = s.read_to_end(&mut buf).is_ok();
                (ended, start.elapsed())
            })
        })
        .collect();
    for t in stalled {
        let (ended, elapsed) = t.await.unwrap();
        assert!(ended, "the connection was still open after {elapsed:?}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < S(5),
            "closed after {elapsed:?}"
        );
    }
    // Their slots are free again: the daemon serves as before.
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
}

/// The `sub` claim of a dev IdP token: the client id it was issued to.
fn subject(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_through_an_identity_change_get_the_new_token_never_404() {
    let idp = idp(S(3600), &["old-client", "new-client"]).await;
    idp.set_delay(S(2));
    let d = daemon(&source_as("a", "old-client", &idp, "eager = false"))
        .start()
        .await;
    let socket = d.socket.clone();
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move {
                let r =
                    tokend::client::call(&socket, hyper::Method::GET, "/v1/tokens/a?format=raw")
                        .await
                        .unwrap();
                (r.status(), String::from_utf8_lossy(r.body()).into_owned())
            })
        })
        .collect();
    eventually("the first fetch to be in flight", async || {
        (idp.requests() == 1).then_some(())
    })
    .await;
    // The client id changes while all 50 wait on the old identity's fetch.
    write_private(
        &d.config,
        &d.config_text().replace("old-client", "new-client"),
    );
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(subject(&body), "new-client", "a token for the new identity");
    }
    assert_eq!(
        idp.secrets_seen().len(),
        2,
        "one fetch per identity, shared by all waiters"
    );
}

/// The rotation arrives while hundreds of requests wait on a fetch: it is
/// not lost behind them. (The IdP does not know the new secret, so its
/// fetch fails in status while the old token keeps serving.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_while_hundreds_of_requests_wait_is_used_for_the_next_fetch() {
    let idp = idp(S(3600), &["a"]).await;
    idp.set_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_private(&secret, SECRET);
    let body = source_with_file_secret("a", &idp, &secret, "eager = false");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let waiters: Vec<_> = (0..400)
        .map(|_| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                tokend::client::call(&socket, hyper::Method::GET, "/v1/tokens/a?format=raw")
                    .await
                    .map(|r| (r.status(), String::from_utf8_lossy(r.body()).into_owned()))
            })
        })
        .collect();
    eventually("the first fetch to be in flight", async || {
        (idp.requests() == 1).then_some(())
    })
    .await;
    write_private(&secret, "rotated");
    let mut tokens = std::collections::HashSet::new();
    for w in waiters {
        let (status, token) = w.await.unwrap().unwrap();
        assert_eq!(status, 200, "{token}");
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), 1);
    eventually_within(S(10), "a fetch with the rotated secret", async || {
        (idp.secrets_seen().last().map(String::as_str) == Some("rotated")).then_some(())
    })
    .await;
    let st = wait_until(&d, |doc| !doc["sources"][0]["last_error"].is_null()).await;
    assert_eq!(
        st["sources"][0]["last_error"]["error"], "invalid_client",
        "{st}"
    );
    let token = tokens.into_iter().next().unwrap();
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
}

/// A client that pipelines requests and never reads the answers: once
/// the socket's buffers are full, the daemon's write stalls, and after
/// request_timeout it closes the connection instead of holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, ""))
        .server("request_timeout = \"1s\"")
        .start()
        .await;
    let socket = d.socket.clone();
    let (answers, elapsed) = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(S(2))).unwrap();
        // 1000 × /metrics is megabytes of answers: far more than the
        // socket buffers hold.
        let _ = s.write_all(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000));
        std::thread::sleep(Duration::from_millis(2500));
        s.set_read_timeout(Some(S(20))).unwrap();
        let start = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        (text.matches("HTTP/1.1 200").count(), start.elapsed())
    })
    .await
    .unwrap();
    assert!(
        answers < 1000,
        "all {answers} answers were kept for a client that did not read"
    );
    assert!(elapsed < S(5), "the connection stayed open {elapsed:?}");
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
}

/// An identity provider answering with a CR LF in the token (or the token
/// type) would put a line of its own into a header sink, a raw answer and
/// `tokend token`'s output: such a token is a `bad_response`, never served.
#[tokio::test]
async fn a_token_that_could_inject_a_line_is_never_served() {
    for body in [
        r#"{"access_token":"abc\r\nX-Injected: evil","token_type":"Bearer","expires_in":3600}"#,
        r#"{"access_token":"abc","token_type":"Bearer\r\nX-Injected: evil","expires_in":3600}"#,
    ] {
        let idp = idp(S(3600), &["inj"]).await;
        idp.fail_with(Some(Failure {
            status: 200,
            body: body.to_string(),
            retry_after: None,
        }));
        let dir = tempfile::tempdir().unwrap();
        let sink = dir.path().join("inj.header");
        let socket = dir.path().join("tokend.sock");
        let d = daemon(&source(
            "inj",
            &idp,
            &format!(
                "sinks = [{{ path = \"{}\", format = \"header\" }}]",
                sink.display()
            ),
        ))
        .at(dir, socket)
        .start()
        .await;
        let r = wait_for_status(&d, "/v1/tokens/inj?format=raw", 503).await;
        assert!(!r.text().contains("evil"), "{}", r.text());
        let st = d.get("/v1/sources/inj").await.json();
        assert_eq!(st["last_error"]["error"], "bad_response", "{st}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["token", "inj", "--socket"])
            .arg(&d.socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "unavailable");
        assert!(
            out.stdout.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!exists(&sink), "no sink file holds it");
        assert!(!d.log().contains("X-Injected"), "{}", d.log());
    }
}
