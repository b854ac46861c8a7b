//! Bulkheads (docs/behaviour.md, "Bulkheads"): nothing one caller does,
//! and nothing the log pipe does, stops the others being served. The
//! daemon runs for real; hostile callers are other uids (which needs root,
//! as CI runs) or this process holding a pipe.

mod common;

use common::others::*;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// One uid that holds every connection it can get locks no one else out:
/// past `max_connections_per_uid` its connections are closed at once (and
/// counted), while root and other uids are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_holding_connections_cannot_lock_the_others_out() {
    if !root_or_skip("one_uid_holding_connections_cannot_lock_the_others_out") {
        return;
    }
    let idp = idp(S(3600), &["a"]).await;
    let d = open_daemon(
        &source("a", &idp, ""),
        "socket_mode = \"0666\"\nmax_connections = 100\nmax_connections_per_uid = 16",
    )
    .await;
    let (mut holder, line) = hold(&d.socket.display().to_string(), 150, 16).await;
    assert_eq!(line.trim(), "16 134", "open and closed at once");

    // Root, and another uid, are served while nobody holds its 16.
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut other = tokend_for_others(dir.path());
    other.args(["token", "a", "--socket"]).arg(&d.socket);
    let out = run_as(&mut other, 4242, 4242, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics = d.get("/metrics").await.text();
    assert!(
        metrics
            .contains("tokend_connections_refused_total{door=\"socket\",reason=\"per_uid\"} 134\n"),
        "{metrics}"
    );
    let log = d.log_with("already holds max_connections_per_uid").await;
    assert_eq!(
        log.matches("already holds max_connections_per_uid").count(),
        1,
        "logged once a minute, not per connection:\n{log}"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
}

/// Runs [`HOLDER`] as nobody: `n` connections to `target`, of which `keep`
/// should stay open; returns it (holding them until its stdin closes) and
/// its line "OPEN CLOSED".
async fn hold(target: &str, n: usize, keep: usize) -> (std::process::Child, String) {
    let mut holder = Command::new("python3");
    holder
        .args(["-c", HOLDER, target, &n.to_string(), &keep.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut holder = run_as(&mut holder, NOBODY, NOBODY, &[]).spawn().unwrap();
    let stdout = holder.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    (holder, line)
}

/// The managed-identity endpoint knows its callers' uids from the kernel,
/// so the same budget holds there: nobody holding 16 connections has the
/// rest closed at once, and root is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_cannot_hold_every_connection_of_the_managed_identity_endpoint() {
    if !root_or_skip("one_uid_cannot_hold_every_connection_of_the_managed_identity_endpoint") {
        return;
    }
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = common::mi::free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = common::mi::config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body)
        .server("max_connections = 100\nmax_connections_per_uid = 16")
        .at(dir, socket)
        .start()
        .await;
    let (mut holder, line) = hold(&format!("tcp:127.0.0.1:{port}"), 60, 16).await;
    assert_eq!(line.trim(), "16 44", "open and closed at once");
    let served = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/msi/token?api-version=2019-08-01&resource={}",
            common::mi::GRAPH
        ))
        .header("X-IDENTITY-HEADER", "jira-header-value")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "root is served meanwhile");
    let metrics = d.get("/metrics").await.text();
    assert!(
        metrics.contains(
            "tokend_connections_refused_total{door=\"managed_identity\",reason=\"per_uid\"} 44\n"
        ),
        "{metrics}"
    );
    let log = d
        .log_with("connections to the managed-identity endpoint")
        .await;
    assert!(log.contains("uid=65534"), "{log}");
    drop(holder.stdin.take());
    holder.wait().unwrap();
}

/// The socket's listen backlog is at least 1024 (std's default is 128).
#[tokio::test]
async fn the_socket_listens_with_a_backlog_of_1024() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    // The socket is bound under a staging name and renamed into place, so
    // ss knows it by the daemon's pid, not by its path.
    let out = Command::new("ss")
        .args(["-xlnpH"])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mine = format!("pid={},", d.pid());
    let line = text
        .lines()
        .find(|l| l.contains(&mine))
        .unwrap_or_else(|| panic!("no listening socket of pid {}: {text}", d.pid()));
    // Netid State Recv-Q Send-Q Local ...: Send-Q is the backlog.
    let backlog: u32 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in: {line}"));
    assert!(backlog >= 1024, "backlog {backlog}: {line}");
}

/// A uid flooding denied requests costs one log line a minute (with the
/// count), not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denials_is_one_line_a_minute() {
    if !root_or_skip("a_flood_of_denials_is_one_line_a_minute") {
        return;
    }
    let idp = idp(S(3600), &["a"]).await;
    let d = open_daemon(
        &source("a", &idp, "allow = { uids = [4242] }"),
        "socket_mode = \"0666\"",
    )
    .await;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", FLOOD])
        .arg(&d.socket)
        .args(["a", "2000", "60"]);
    let out = run_as(&mut cmd, NOBODY, NOBODY, &[]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2000",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = d.log_with("access denied").await;
    assert_eq!(log.matches("access denied").count(), 1, "{log}");
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200, "root is served");
}

/// Opens `n` connections to `socket` one after another, each sending a
/// request hyper cannot parse (a debug line each in the daemon's log).
fn garbage_connections(socket: &std::path::Path, n: usize) {
    use std::io::{Read, Write};
    for _ in 0..n {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
            return;
        };
        // A wedged daemon must fail the test, not hang it.
        let _ = s.set_read_timeout(Some(S(5)));
        let _ = s.write_all(b"\x01garbage\r\n\r\n");
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// With stderr a pipe whose reader has stopped, logging never blocks the
/// daemon: requests and /healthz are answered; lines that cannot be
/// written are dropped and counted, and a WARN says how many once the
/// output flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_never_wedges_the_daemon() {
    let idp = idp(S(3600), &["a"]).await;
    let mut d = daemon(&source("a", &idp, ""))
        .rust_log("debug")
        .piped_stderr()
        .start()
        .await;
    // Nobody reads the pipe: it fills (64 KiB), then the daemon's queue.
    let stderr = d.take_stderr();
    let socket = d.socket.clone();
    let flood = tokio::task::spawn_blocking(move || garbage_connections(&socket, 25_000));
    for _ in 0..20 {
        let answered = tokio::time::timeout(S(5), async {
            (
                d.get("/healthz").await.status(),
                d.get("/v1/tokens/a").await.status(),
            )
        })
        .await;
        assert_eq!(
            answered.ok(),
            Some((200, 200)),
            "the daemon stopped answering"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.await.unwrap();
    let metrics_while_stalled = d.get("/metrics").await.text();
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);

    // The reader comes back: the count is reported.
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let text = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        })
    };
    let warn = eventually_within(S(15), "the dropped-lines WARN", async || {
        let t = text.lock().unwrap();
        t.lines()
            .find(|l| l.contains("log lines were dropped"))
            .map(str::to_string)
    })
    .await;
    assert!(warn.contains("WARN"), "{warn}");
    let dropped = eventually("the dropped-lines count", async || {
        let m = d.get("/metrics").await.text();
        let line = m
            .lines()
            .find(|l| l.starts_with("tokend_log_lines_dropped_total "))?
            .to_string();
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        (n > 0).then_some(n)
    })
    .await;
    assert!(
        dropped > 1000,
        "{dropped} dropped; while stalled: {metrics_while_stalled}"
    );
    drop(d);
    reader.join().unwrap();
}
