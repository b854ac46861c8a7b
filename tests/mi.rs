//! The managed-identity endpoint (the Azure SDK drop-in): the App Service
//! protocol on loopback, answered from tokend's sources, with every error
//! the SDKs can meet. Real SDK clients are in tests/azure_sdk.rs.

mod common;

use common::mi::{config, free_port, GRAPH, VAULT};
use common::*;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

async fn mi_get(port: u16, header: Option<&str>, query: &str) -> (u16, serde_json::Value) {
    let headers: Vec<(&str, &str)> = header
        .map(|h| ("X-IDENTITY-HEADER", h))
        .into_iter()
        .collect();
    common::mi::get_json(
        &format!("http://127.0.0.1:{port}/msi/token?{query}"),
        &headers,
    )
    .await
}

fn q(resource: &str) -> String {
    common::mi::query("2019-08-01", resource)
}

#[tokio::test]
async fn an_app_gets_its_sources_tokens_in_the_app_service_shape() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let expected = wait_for_status(&d, "/v1/tokens/graph", 200).await.json();

    let (status, j) = mi_get(port, Some("jira-header-value"), &q(GRAPH)).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        j["access_token"], expected["access_token"],
        "the token tokend holds"
    );
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["resource"], GRAPH);
    assert_eq!(j["client_id"], "graph");
    let expires_on: u64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    let at = tokend::timefmt::parse_rfc3339(expected["expires_at"].as_str().unwrap()).unwrap();
    let at = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expires_on.abs_diff(at) <= 1, "{expires_on} vs {at}");
    assert!(j["expires_in"].as_u64().unwrap() > 3500);
    // A trailing slash on the resource is the same resource (Python sends none, .NET one).
    let (status, _) = mi_get(port, Some("jira-header-value"), &q(&format!("{VAULT}/"))).await;
    assert_eq!(status, 200);

    // Status says which apps use each source.
    let st = d.get("/v1/sources/vault").await.json();
    assert_eq!(
        st["managed_identity_apps"],
        serde_json::json!(["billing", "jira"])
    );
    assert!(d
        .get("/metrics")
        .await
        .text()
        .contains("tokend_token_requests_total{source=\"graph\",outcome=\"ok\"}"));
}

#[tokio::test]
async fn every_refusal_says_what_to_configure() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;

    // No header, or a wrong one: 401, in the shape SDKs read.
    for header in [None, Some("guess")] {
        let (status, j) = mi_get(port, header, &q(GRAPH)).await;
        assert_eq!(status, 401, "{j}");
        assert_eq!(j["statusCode"], 401);
        assert!(
            j["error_description"]
                .as_str()
                .unwrap()
                .contains("matches no managed-identity app"),
            "{j}"
        );
        assert_eq!(j["message"], j["error_description"]);
    }
    // billing may not use graph: the message lists what it can get.
    let (status, j) = mi_get(port, Some("billing-header-value"), &q(GRAPH)).await;
    assert_eq!(status, 400, "{j}");
    let msg = j["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("app billing has no source for resource {GRAPH}")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("app billing can get: {VAULT}, {VAULT}")),
        "{msg}"
    );
    // Two vault identities: client_id chooses, and is required.
    let (status, j) = mi_get(port, Some("billing-header-value"), &q(VAULT)).await;
    assert_eq!(status, 400, "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("pass client_id (AZURE_CLIENT_ID) to choose one of vault, vault2"),
        "{j}"
    );
    let (status, j) = mi_get(
        port,
        Some("billing-header-value"),
        &format!("{}&client_id=vault2", q(VAULT)),
    )
    .await;
    assert_eq!(
        (status, j["client_id"].as_str()),
        (200, Some("vault2")),
        "{j}"
    );
    // Other ways of naming an identity are not tokend's.
    let (status, j) = mi_get(
        port,
        Some("jira-header-value"),
        &format!("{}&object_id=x", q(GRAPH)),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("by client_id, not object_id"),
        "{j}"
    );
    let (status, _) = mi_get(
        port,
        Some("jira-header-value"),
        "api-version=2017-09-01&resource=x",
    )
    .await;
    assert_eq!(status, 400);
    // Denials are logged with the app (or its absence).
    d.log_when("both denials", |log| {
        log.contains("app=\"no app\"") && log.contains("app=billing")
    })
    .await;
}

#[tokio::test]
async fn the_cached_token_is_served_while_the_idp_is_down() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let token = wait_for_status(&d, "/v1/tokens/graph?format=raw", 200)
        .await
        .text();
    idp.fail_with(Some(Failure {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    }));
    let r = d
        .request(hyper::Method::POST, "/v1/sources/graph/refresh")
        .await;
    assert_eq!(r.status(), 502);
    let (status, j) = mi_get(port, Some("jira-header-value"), &q(GRAPH)).await;
    assert_eq!(
        (status, j["access_token"].as_str()),
        (200, Some(token.as_str()))
    );
}

#[tokio::test]
async fn mi_env_prints_the_lines_for_environmentfile() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping mi_env_prints_the_lines_for_environmentfile: mi-env is root only");
        return;
    }
    let idp = idp(S(3600), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    write_private(&path, &config(&idp, 42356, dir.path()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["mi-env", "jira", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "IDENTITY_ENDPOINT=http://127.0.0.1:42356/msi/token\nIDENTITY_HEADER=jira-header-value\n"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["mi-env", "nope", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the apps are: billing, jira"));
}

#[tokio::test]
async fn app_changes_apply_on_reload() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let key = dir.path().join("jira.key");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    assert_eq!(
        mi_get(port, Some("jira-header-value"), &q(GRAPH)).await.0,
        200
    );
    // A new header in the watched file: the old one stops working, the new one works.
    write_private(&key, "rotated-header\n");
    eventually("the rotated header to be accepted", async || {
        (mi_get(port, Some("rotated-header"), &q(GRAPH)).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        mi_get(port, Some("jira-header-value"), &q(GRAPH)).await.0,
        401
    );
    // jira loses graph in the config: refused, and told what it can still get.
    write_private(
        &d.config,
        &d.config_text()
            .replace("sources = [\"graph\", \"vault\"]", "sources = [\"vault\"]"),
    );
    let j = eventually("graph to be withdrawn from jira", async || {
        let (status, j) = mi_get(port, Some("rotated-header"), &q(GRAPH)).await;
        (status == 400).then_some(j)
    })
    .await;
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains(&format!("app jira can get: {VAULT}")),
        "{j}"
    );
}

/// One HTTP/1.1 GET with `host` as its `Host` header, over a plain TCP
/// connection (a client library would set `Host` itself): the status and body.
fn get_with_host(port: u16, host: &str, path: &str, header: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra = header
        .map(|h| format!("X-IDENTITY-HEADER: {h}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A page that rebinds its own name to 127.0.0.1 sends that name as
/// `Host`: both TCP doors refuse it, before the identity header is looked
/// at; an address or `localhost` is answered.
#[tokio::test]
async fn the_tcp_doors_answer_only_a_host_that_is_an_address_of_this_machine() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body)
        .server(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .at(dir, socket)
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    let path = format!("/msi/token?{}", q(GRAPH));
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
    ] {
        let (status, body) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || get_with_host(port, &host, &path, Some("jira-header-value"))
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let rebound = format!("attacker.example:{port}");
    let (status, body) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || get_with_host(port, &rebound, &path, Some("jira-header-value"))
    })
    .await
    .unwrap();
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("access_token"), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || {
        get_with_host(metrics_port, "attacker.example", "/metrics", None)
    })
    .await
    .unwrap();
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("tokend_"), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || {
        get_with_host(
            metrics_port,
            &format!("127.0.0.1:{metrics_port}"),
            "/metrics",
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("tokend_build_info"), "{body}");
}

/// Anyone on the host can knock: 200 requests with a wrong header make one
/// WARN line now (and one a minute later with the count), not 200, so
/// journald's rate limit never drops the warnings that matter.
#[tokio::test]
async fn wrong_headers_are_logged_once_a_minute_per_door_not_once_each() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    for _ in 0..200 {
        assert_eq!(mi_get(port, Some("guess"), &q(GRAPH)).await.0, 401);
    }
    let log = d.log_with("managed-identity request refused").await;
    let lines = log
        .lines()
        .filter(|l| l.contains("managed-identity request refused"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(log.contains("refused_since_last_line=0"), "{log}");
}

/// A request waiting for a token when a reload restarts the source with
/// another scope follows it by name, then checks the resource again: it
/// gets a 400, never a token for another resource.
#[tokio::test]
async fn a_request_that_follows_a_restarted_source_checks_the_resource_again() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    // Lazy sources and a slow IdP: the request starts graph's first fetch
    // and waits for it, so the fetch reaching the IdP says it is waiting.
    idp.set_delay(S(3));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[defaults]\neager = false\n",
        config(&idp, port, dir.path())
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let waiting =
        tokio::spawn(async move { mi_get(port, Some("jira-header-value"), &q(GRAPH)).await });
    eventually("the request's fetch at the IdP", async || {
        (idp.requests() >= 1).then_some(())
    })
    .await;
    // graph now asks for another resource: a new identity, a restart.
    write_private(
        &d.config,
        &d.config_text().replace(
            &format!("scopes = [\"{GRAPH}/.default\"]"),
            "scopes = [\"https://other.example/.default\"]",
        ),
    );
    let (status, j) = waiting.await.unwrap();
    assert_eq!(status, 400, "{j}");
    assert_eq!(j["error"], "invalid_resource", "{j}");
    assert!(j.get("access_token").is_none(), "{j}");
}

/// A managed-identity header file reached through two links
/// (`mi/current -> v1`, `v1/jira.key -> ../store/jira-1`): re-pointing the
/// outer link to `v2` (whose own link leads elsewhere) rotates the header.
#[tokio::test]
async fn a_header_file_behind_two_links_rotates_when_a_link_is_re_pointed() {
    use std::os::unix::fs::symlink;
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mi = dir.path().join("mi");
    for d in ["v1", "v2", "store"] {
        std::fs::create_dir_all(mi.join(d)).unwrap();
    }
    write_private(&mi.join("store/jira-1"), "first-header\n");
    write_private(&mi.join("store/jira-2"), "second-header\n");
    symlink("../store/jira-1", mi.join("v1/jira.key")).unwrap();
    symlink("../store/jira-2", mi.join("v2/jira.key")).unwrap();
    symlink("v1", mi.join("current")).unwrap();
    let body = config(&idp, port, dir.path()).replace(
        &format!(
            "header = {{ file = \"{}\" }}",
            dir.path().join("jira.key").display()
        ),
        &format!(
            "header = {{ file = \"{}\" }}",
            mi.join("current/jira.key").display()
        ),
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    assert_eq!(mi_get(port, Some("first-header"), &q(GRAPH)).await.0, 200);
    let tmp = mi.join("next");
    symlink("v2", &tmp).unwrap();
    std::fs::rename(&tmp, mi.join("current")).unwrap();
    eventually("the header the re-pointed link leads to", async || {
        (mi_get(port, Some("second-header"), &q(GRAPH)).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(mi_get(port, Some("first-header"), &q(GRAPH)).await.0, 401);
}

/// A squatter that bound the endpoint's port (and the metrics port) while
/// tokend was stopped does not keep tokend down: the socket serves,
/// `/readyz` names each door that cannot listen, an ERROR says how to find
/// the holder, and once the port is free the door listens within a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_port_stops_only_its_door_until_it_is_free() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let metrics_squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_port = metrics_squatter.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body)
        .server(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .at(dir, socket)
        .start()
        .await;
    assert_eq!(
        wait_for_status(&d, "/v1/tokens/graph", 200).await.status(),
        200
    );
    let ready = d.get("/readyz").await;
    assert_eq!(ready.status(), 503, "{}", ready.text());
    let errors = ready.json()["door_errors"].to_string();
    assert!(
        errors.contains(&format!(
            "the managed-identity endpoint cannot listen on 127.0.0.1:{port}"
        )) && errors.contains(&format!(
            "the metrics listener cannot listen on 127.0.0.1:{metrics_port}"
        )),
        "{errors}"
    );
    let log = d.log_with("cannot listen on").await;
    assert!(
        log.contains(&format!("ss -ltnp 'sport = :{port}'")),
        "{log}"
    );
    assert!(log.contains("tokend-mi.socket"), "{log}");

    drop(squatter);
    drop(metrics_squatter);
    let (status, _) = eventually_within(S(15), "the endpoint to listen", async || {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/msi/token?{}", q(GRAPH)))
            .header("X-IDENTITY-HEADER", "jira-header-value")
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.bytes().await.ok()?))
    })
    .await;
    assert_eq!(status, 200);
    let ready = wait_for_status(&d, "/readyz", 200).await.json();
    assert_eq!(ready["door_errors"], serde_json::json!([]));
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}
