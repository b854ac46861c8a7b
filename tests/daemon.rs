//! The daemon end to end: the real binary on a temp socket, the dev IdP on
//! 127.0.0.1 as the token endpoint.

mod common;

use common::*;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test]
async fn serves_token_as_json_and_raw() {
    let idp = idp(S(3600), &["api"]).await;
    let d = daemon(&source("api", &idp, "scopes = [\"read\", \"write\"]"))
        .start()
        .await;
    let r = d.get("/v1/tokens/api").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let j = r.json();
    let token = j["access_token"].as_str().unwrap().to_string();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["source"], "api");
    assert_eq!(j["scope"], "read write");
    let expires_in = j["expires_in"].as_u64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{j}");
    assert!(
        humantime::parse_rfc3339(j["expires_at"].as_str().unwrap()).is_ok(),
        "{j}"
    );

    let raw = d.get("/v1/tokens/api?format=raw").await;
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(raw.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(raw.text(), token);
    assert_eq!(idp.issued(), 1, "both answers come from the cache");
    assert_eq!(idp.scopes_seen(), vec!["read write".to_string()]);
}

#[tokio::test]
async fn error_bodies_and_status_codes() {
    let idp = idp(S(3600), &["ok"]).await;
    let slow = idp_slow().await;
    let body = format!(
        "{}{}{}",
        source("ok", &idp, ""),
        // Wrong secret: the IdP answers invalid_client.
        source("bad", &idp, ""),
        source("slow", &slow, "eager = false\nfetch_timeout = \"30s\""),
    );
    let d = daemon(&body)
        .server("request_timeout = \"1s\"")
        .start()
        .await;

    let r = d.get("/v1/tokens/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json()["error"], "unknown_source");
    let r = d.get("/v1/tokens/..%2Fetc").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json()["error"], "unknown_source");
    let r = d.get("/nowhere").await;
    assert_eq!(
        (r.status(), r.json()["error"].as_str().unwrap()),
        (404, "not_found")
    );
    let r = d.request(hyper::Method::DELETE, "/v1/tokens/ok").await;
    assert_eq!(r.status(), 405);
    let r = d.get("/v1/tokens/ok?min_ttl=soon").await;
    assert_eq!(
        (r.status(), r.json()["error"].as_str().unwrap()),
        (400, "bad_request")
    );

    // The failing source: 503 at once, with Retry-After and the IdP's reason.
    let r = wait_for_status(&d, "/v1/tokens/bad", 503).await;
    let j = r.json();
    assert_eq!(j["error"], "token_unavailable");
    assert!(
        j["message"].as_str().unwrap().contains("invalid_client"),
        "{j}"
    );
    assert!(j["hint"].as_str().is_some(), "{j}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");

    // A fetch slower than request_timeout: 504.
    let r = d.get("/v1/tokens/slow").await;
    assert_eq!(r.status(), 504, "{}", r.text());
    assert_eq!(r.json()["error"], "fetch_timeout");

    // Status shows the failure with its hint, and never a secret.
    let r = d.get("/v1/sources/bad").await;
    let j = r.json();
    assert_eq!(j["state"], "failed");
    assert_eq!(j["last_error"]["error"], "invalid_client");
    assert!(!r.text().contains(SECRET));
    drop(slow);
}

async fn idp_slow() -> DevIdp {
    let slow = idp(S(3600), &["slow"]).await;
    slow.set_delay(S(5));
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_cause_one_upstream_request() {
    let idp = idp(S(3600), &["lazy"]).await;
    idp.set_delay(Duration::from_millis(500));
    let d = daemon(&source("lazy", &idp, "eager = false")).start().await;
    assert_eq!(d.get("/v1/sources/lazy").await.json()["state"], "idle");
    let socket = d.socket.clone();
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move {
                let r =
                    tokend::client::call(&socket, hyper::Method::GET, "/v1/tokens/lazy?format=raw")
                        .await
                        .unwrap();
                assert_eq!(r.status(), 200);
                r.into_body()
            })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(idp.requests(), 1, "exactly one upstream request");
    assert_eq!(tokens.len(), 1, "exactly one token");
}

#[tokio::test]
async fn min_ttl_forces_a_fetch_or_answers_422() {
    let idp = idp(S(40), &["short"]).await;
    let d = daemon(&source("short", &idp, "min_ttl = \"0s\""))
        .start()
        .await;
    let first = d.get("/v1/tokens/short?format=raw").await.text();
    // A 40 s token cannot live an hour: 422 at once, no new fetch.
    let r = d.get("/v1/tokens/short?min_ttl=1h").await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json()["error"], "min_ttl_unsatisfiable");
    assert!(r.json()["message"].as_str().unwrap().contains("40s"));
    assert_eq!(idp.issued(), 1);
    // Once the token is over 10 s old, asking for more than it has left fetches anew.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let r = d.get("/v1/tokens/short?min_ttl=35s&format=raw").await;
    assert_eq!(r.status(), 200);
    assert_ne!(r.text(), first);
    assert_eq!(idp.issued(), 2);
}

#[tokio::test]
async fn forced_refresh_then_rate_limited() {
    let idp = idp(S(3600), &["api"]).await;
    let d = daemon(&source("api", &idp, "")).start().await;
    wait_for_status(&d, "/v1/tokens/api", 200).await;
    let r = d
        .request(hyper::Method::POST, "/v1/sources/api/refresh")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.json()["state"], "ready");
    assert_eq!(idp.issued(), 2);
    let r = d
        .request(hyper::Method::POST, "/v1/sources/api/refresh")
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.json()["error"], "refresh_rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(idp.issued(), 2);
}

#[tokio::test]
async fn readyz_and_sources_document() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&format!(
        "{}{}",
        source("a", &idp, ""),
        source_as("b", "unknown", &idp, "")
    ))
    .start()
    .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    let r = d.get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json()["not_ready"], serde_json::json!(["b"]));
    let doc = d.get("/v1/sources").await.json();
    assert_eq!(doc["sources"].as_array().unwrap().len(), 2);
    assert_eq!(doc["config"]["last_reload"]["ok"], true);
    assert_eq!(d.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn sigterm_removes_the_socket_and_exits_zero() {
    let idp = idp(S(3600), &["api"]).await;
    let mut d = daemon(&source("api", &idp, "")).start().await;
    assert!(exists(&d.socket));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit().await;
    assert!(status.success(), "{status}");
    assert!(!exists(&d.socket), "socket file left behind");
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_and_regular_file_refused() {
    let idp = idp(S(3600), &["api"]).await;
    // A socket file nobody listens on (a crashed daemon's).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(exists(&path));
    let d = daemon(&source("api", &idp, ""))
        .at(dir, path.clone())
        .start()
        .await;
    assert_eq!(d.get("/v1/tokens/api").await.status(), 200);

    // A second daemon on the same, live socket exits non-zero naming the path.
    let mut second = daemon(&source("api", &idp, ""))
        .at(tempfile::tempdir().unwrap(), path.clone())
        .spawn();
    let status = second.wait_exit().await;
    assert!(!status.success());
    assert!(
        second.log().contains(&path.display().to_string()),
        "{}",
        second.log()
    );
    assert_eq!(
        d.get("/v1/tokens/api").await.status(),
        200,
        "the first daemon is undisturbed"
    );

    // A regular file at the socket path is never deleted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokend.sock");
    std::fs::write(&file, "precious").unwrap();
    let mut third = daemon(&source("api", &idp, ""))
        .at(dir, file.clone())
        .spawn();
    assert!(!third.wait_exit().await.success());
    assert!(third.log().contains("not a socket"), "{}", third.log());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[tokio::test]
async fn socket_has_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let idp = idp(S(3600), &["api"]).await;
    let d = daemon(&source("api", &idp, ""))
        .server("socket_mode = \"0640\"")
        .start()
        .await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[tokio::test]
async fn trace_log_contains_no_token_and_no_secret() {
    let idp = idp(S(20), &["basic", "post"]).await;
    idp.set_refresh_in(Some(S(2)));
    let body = format!(
        "{}{}{}",
        source("basic", &idp, "min_ttl = \"0s\""),
        source(
            "post",
            &idp,
            "auth_method = \"client_secret_post\"\nmin_ttl = \"0s\""
        ),
        source_as("wrong", "nobody", &idp, ""),
    );
    let mut d = daemon(&body).rust_log("trace").start().await;
    let mut tokens = Vec::new();
    for name in ["basic", "post"] {
        tokens.push(
            wait_for_status(&d, &format!("/v1/tokens/{name}?format=raw"), 200)
                .await
                .text(),
        );
    }
    wait_for_status(&d, "/v1/tokens/wrong", 503).await;
    // refresh_in = 2 s: wait for a refresh of each source to land.
    eventually("a refresh of each source", async || {
        (idp.issued() >= 4).then_some(())
    })
    .await;
    for name in ["basic", "post"] {
        tokens.push(d.get(&format!("/v1/tokens/{name}?format=raw")).await.text());
    }
    d.signal(libc::SIGTERM);
    d.wait_exit().await;
    let log = d.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log was captured at trace level"
    );
    assert!(
        log.contains("token fetched") && log.contains("token fetch failed"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "secret in log");
    let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    assert!(!log.contains(&encoded), "form-encoded secret in log");
    for t in tokens {
        assert!(!log.contains(&t), "token in log");
        // and no recognisable piece of one
        assert!(
            !log.contains(t.split('.').nth(1).unwrap()),
            "token payload in log"
        );
    }
}

#[tokio::test]
async fn throttled_idp_retry_after_and_entra_hint_reach_the_caller() {
    let idp = idp(S(3600), &["graph"]).await;
    idp.fail_with(Some(Failure {
        status: 400,
        body: r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '1' are expired.","error_codes":[7000222],"trace_id":"t-1","correlation_id":"c-1"}"#.into(),
        retry_after: None,
    }));
    let d = daemon(&source("graph", &idp, "")).start().await;
    let r = wait_for_status(&d, "/v1/tokens/graph", 503).await;
    let j = r.json();
    assert!(j["hint"].as_str().unwrap().contains("expired"), "{j}");
    let st = d.get("/v1/sources/graph").await.json();
    assert_eq!(st["last_error"]["error"], "invalid_client");
    assert!(
        st["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("correlation_id c-1"),
        "{st}"
    );

    let idp2 = idp_with_429().await;
    let d2 = daemon(&source("api", &idp2, "")).start().await;
    let r = wait_for_status(&d2, "/v1/tokens/api", 503).await;
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (25..=30).contains(&retry),
        "Retry-After {retry} should follow the IdP's 30 s"
    );
    assert!(r.json()["hint"].as_str().unwrap().contains("throttling"));
    assert_eq!(idp2.requests(), 1, "no retry before Retry-After");

    // The same as an HTTP date, 40 s from now.
    let idp3 = common::idp(S(3600), &["api"]).await;
    let at = std::time::SystemTime::now() + S(40);
    idp3.fail_with(Some(Failure {
        status: 503,
        body: "{}".into(),
        retry_after: Some(httpdate::fmt_http_date(at)),
    }));
    let d3 = daemon(&source("api", &idp3, "")).start().await;
    let r = wait_for_status(&d3, "/v1/tokens/api", 503).await;
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (30..=41).contains(&retry),
        "Retry-After {retry} should follow the IdP's date 40 s ahead"
    );
    assert_eq!(idp3.requests(), 1, "no retry before the date");
}

async fn idp_with_429() -> DevIdp {
    let idp = idp(S(3600), &["api"]).await;
    idp.fail_with(Some(Failure {
        status: 429,
        body: "{}".into(),
        retry_after: Some("30".into()),
    }));
    idp
}

/// One 10 s header timeout bounds slow clients and idle keep-alive
/// connections alike, and a head over 8 KiB gets 431.
#[tokio::test]
async fn slow_heads_idle_keepalive_and_huge_heads_are_cut_off() {
    use std::io::{Read, Write};
    let idp = idp(S(3600), &["api"]).await;
    let d = daemon(&source("api", &idp, "")).start().await;
    let sock = d.socket.clone();
    let closed_after = |first: &'static [u8]| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(S(30))).unwrap();
            s.write_all(first).unwrap();
            let start = std::time::Instant::now();
            let mut buf = Vec::new();
            // Reads the answer to a complete request (if any), then waits for EOF.
            let _ = s.read_to_end(&mut buf);
            (start.elapsed(), String::from_utf8_lossy(&buf).into_owned())
        })
    };
    let idle = closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let half = closed_after(b"GET /heal");
    let (idle, half) = (idle.await.unwrap(), half.await.unwrap());
    assert!(idle.1.starts_with("HTTP/1.1 200"), "{}", idle.1);
    for (elapsed, _) in [&idle, &half] {
        assert!(
            *elapsed >= Duration::from_millis(9_500) && *elapsed < S(20),
            "{elapsed:?}"
        );
    }

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(big.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 431");
    assert_eq!(
        d.get("/healthz").await.status(),
        200,
        "the daemon still answers"
    );
}

#[tokio::test]
async fn huge_and_non_json_token_responses_are_clear_fetch_errors() {
    let huge = idp(S(3600), &["huge"]).await;
    huge.fail_with(Some(Failure {
        status: 200,
        body: format!("{{\"access_token\":\"{}\"}}", "x".repeat(2 * 1024 * 1024)),
        retry_after: None,
    }));
    let html = idp(S(3600), &["html"]).await;
    html.fail_with(Some(Failure {
        status: 200,
        body: "<!DOCTYPE html><html><body>Sign in</body></html>".into(),
        retry_after: None,
    }));
    let d = daemon(&format!(
        "{}{}",
        source("huge", &huge, ""),
        source("html", &html, "")
    ))
    .start()
    .await;
    for (name, want) in [("huge", "larger than 1024 KiB"), ("html", "HTML, not JSON")] {
        let r = wait_for_status(&d, &format!("/v1/tokens/{name}"), 503).await;
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{name}: {msg}");
        let st = d.get(&format!("/v1/sources/{name}")).await.json();
        assert_eq!(st["last_error"]["error"], "bad_response");
    }
    assert_eq!(
        d.get("/healthz").await.status(),
        200,
        "no panic, still serving"
    );
}

/// A clean-up that deletes the socket's directory is undone within
/// seconds, said at ERROR; while the socket cannot be made again (a file
/// in its place), `/readyz` on the metrics listener says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_socket_is_made_again_and_readyz_says_while_it_cannot_be() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let socket = run.join("tokend.sock");
    let port = common::mi::free_port();
    let d = daemon(&source("a", &idp, ""))
        .at(dir, socket.clone())
        .server(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    let readyz = async || {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
    };

    // systemd-tmpfiles, or an rm -rf: back within the 2 s look and a margin.
    std::fs::remove_dir_all(&run).unwrap();
    eventually("the socket made again", async || {
        let r = tokend::client::call(&socket, hyper::Method::GET, "/v1/tokens/a").await;
        r.ok().filter(|r| r.status() == 200)
    })
    .await;
    d.log_when("an ERROR that the socket was re-created", |log| {
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("re-created it"))
    })
    .await;

    // A regular file in its place: it cannot be made again, and /readyz says so.
    let blocker = d.dir.path().join("blocker");
    std::fs::write(&blocker, "not a socket").unwrap();
    std::fs::rename(&blocker, &socket).unwrap();
    let doc = eventually("/readyz to say the socket is lost", async || {
        let (status, doc) = readyz().await;
        (status == 503).then_some(doc)
    })
    .await;
    let why = doc["socket_error"].as_str().unwrap();
    assert!(
        why.contains(&socket.display().to_string()) && why.contains("not a socket"),
        "{doc}"
    );
    assert_eq!(doc["not_ready"], serde_json::json!([]), "{doc}");

    std::fs::remove_file(&socket).unwrap();
    let doc = eventually("/readyz to be ready again", async || {
        let (status, doc) = readyz().await;
        (status == 200).then_some(doc)
    })
    .await;
    assert_eq!(doc["socket_error"], serde_json::Value::Null);
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
}

/// On SIGTERM a request waiting for a slow first fetch is answered 503
/// `shutting_down` at once, not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_waiting_request_shutting_down() {
    let idp = idp(S(3600), &["a"]).await;
    idp.set_delay(S(60));
    let mut d = daemon(&source("a", &idp, "eager = false"))
        .server("request_timeout = \"60s\"")
        .start()
        .await;
    let socket = d.socket.clone();
    let waiting = tokio::spawn(async move {
        tokend::client::call(&socket, hyper::Method::GET, "/v1/tokens/a").await
    });
    // The lazy source's fetch starts only for this request: once the IdP
    // sees it, the request is waiting.
    eventually("the request's fetch at the IdP", async || {
        (idp.requests() == 1).then_some(())
    })
    .await;
    d.signal(libc::SIGTERM);
    let r = Resp(
        waiting
            .await
            .unwrap()
            .expect("an answer, not a closed connection"),
    );
    assert_eq!(r.status(), 503, "{}", r.text());
    assert_eq!(r.json()["error"], "shutting_down", "{}", r.text());
    assert!(d.wait_exit().await.success());
}
