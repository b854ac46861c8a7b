//! Thirty seconds of everything at once (docs/behaviour.md, "Bulkheads",
//! "Recovery", "Clocks"): the release daemon with sources on a healthy
//! IdP, on one whose faults switch on and off, and on one that never
//! answers; its config edited every 2 s; its log pipe unread for half the
//! time; garbage connections, and (as root) another uid holding all the
//! connections it can and flooding denied requests. Throughout, every
//! token it serves is live by the wall clock, the healthy IdP's sources
//! always have one, and `/healthz` answers; afterwards its descriptors and
//! memory come back to their level.

mod common;

use base64::Engine;
use common::others::*;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const S: fn(u64) -> Duration = Duration::from_secs;
const CHAOS: Duration = Duration::from_secs(30);
const HEALTHY: usize = 20;
const FLAKY: usize = 10;
const STUCK: usize = 8;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `exp` claim of a dev IdP token.
fn exp_of(token: &str) -> u64 {
    let claims = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&claims).unwrap()["exp"]
        .as_u64()
        .unwrap()
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn config(healthy: &DevIdp, flaky: &DevIdp, hole: &str, extra: &str) -> String {
    let mut body = String::new();
    for i in 0..HEALTHY {
        body += &source(&format!("h{i}"), healthy, "");
    }
    for i in 0..FLAKY {
        body += &source(&format!("f{i}"), flaky, "");
    }
    for i in 0..STUCK {
        body += &format!(
            "[sources.b{i}]\ntoken_url = \"{hole}\"\nclient_id = \"b{i}\"\nclient_secret = \"{SECRET}\"\nfetch_timeout = \"2s\"\n"
        );
    }
    body += &source("guarded", healthy, "allow = { uids = [4242] }");
    body + extra
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_chaos_never_serve_a_dead_token_nor_stall_the_daemon() {
    let healthy_names: Vec<String> = (0..HEALTHY).map(|i| format!("h{i}")).collect();
    let mut clients: Vec<&str> = healthy_names.iter().map(String::as_str).collect();
    clients.push("guarded");
    // 8 s tokens: each source refreshes every 3 s or so throughout.
    let healthy = idp(S(8), &clients).await;
    let flaky_names: Vec<String> = (0..FLAKY).map(|i| format!("f{i}")).collect();
    let flaky_clients: Vec<&str> = flaky_names.iter().map(String::as_str).collect();
    let flaky = Arc::new(idp(S(8), &flaky_clients).await);
    let hole = black_hole();

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let socket = dir.path().join("tokend.sock");
    let mut d = daemon(&config(&healthy, &flaky, &hole, ""))
        .server("socket_mode = \"0666\"\nmax_connections_per_uid = 16\nrequest_timeout = \"5s\"")
        .rust_log("debug")
        .piped_stderr()
        .at(dir, socket.clone())
        .start()
        .await;
    let all_ready = |doc: &serde_json::Value, prefix: &str| {
        doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with(prefix))
            .all(|s| s["state"] == "ready" || s["state"] == "refreshing")
    };
    wait_until_within(&d, S(20), |doc| all_ready(doc, "h") && all_ready(doc, "f")).await;
    let (base_fds, base_rss) = (fds(d.pid()), rss_kib(d.pid()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // The log pipe: unread for the first half, then drained.
    let mut stderr = d.take_stderr();
    let drained = Arc::new(AtomicU64::new(0));
    let log_reader = {
        let drained = drained.clone();
        std::thread::spawn(move || {
            std::thread::sleep(CHAOS / 2);
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                drained.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };

    // Faults on the flaky IdP switch every 3 s.
    let switcher = {
        let (flaky, stop) = (flaky.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                failing = !failing;
                flaky.fail_with(failing.then(|| tokend::dev::Failure {
                    status: 503,
                    body: r#"{"error":"temporarily_unavailable"}"#.into(),
                    retry_after: None,
                }));
                tokio::time::sleep(S(3)).await;
            }
            flaky.fail_with(None);
        })
    };

    // The config edited every 2 s: one extra source, a new one each time.
    let editor = {
        let (stop, config_path) = (stop.clone(), d.config.clone());
        let server = d.config_text();
        let server = server[..server.find("[sources.").unwrap()].to_string();
        let healthy_url = healthy.token_url();
        let base = config(&healthy, &flaky, &hole, "");
        for n in 0..20 {
            healthy.add_client(&format!("r{n}"), SECRET);
        }
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(S(2)).await;
                let extra = format!(
                    "[sources.r{n}]\ntoken_url = \"{healthy_url}\"\nclient_id = \"r{n}\"\nclient_secret = \"{SECRET}\"\n"
                );
                let tmp = config_path.with_extension("tmp");
                write_private(&tmp, &format!("{server}{base}{extra}"));
                std::fs::rename(&tmp, &config_path).unwrap();
                n = (n + 1) % 20;
            }
        })
    };

    // Garbage connections from this uid, a debug line each.
    let garbage = {
        let (stop, socket) = (stop.clone(), socket.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(S(5)));
                let _ = s.write_all(b"\x01garbage\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
        })
    };

    // As root: nobody holds every connection it can, and floods denials.
    let hostile = if root_or_skip("the other-uid part of the soak") {
        let mut holder = Command::new("python3");
        holder
            .args(["-c", HOLDER])
            .arg(&socket)
            .args(["200", "16"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let holder = run_as(&mut holder, NOBODY, NOBODY, &[]).spawn().unwrap();
        let mut flood = Command::new("python3");
        flood.args(["-c", FLOOD]).arg(&socket).args([
            "guarded",
            "1000000000",
            &CHAOS.as_secs().to_string(),
        ]);
        let flood = run_as(&mut flood, NOBODY, NOBODY, &[]).spawn().unwrap();
        Some((holder, flood))
    } else {
        None
    };

    // /healthz, every 200 ms, each answer within 5 s.
    let health = {
        let (stop, socket) = (stop.clone(), socket.clone());
        tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(
                    S(5),
                    tokend::client::call(&socket, hyper::Method::GET, "/healthz"),
                )
                .await;
                match r {
                    Ok(Ok(r)) if r.status() == 200 => answered += 1,
                    other => panic!("/healthz failed at {:?}: {other:?}", started.elapsed()),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answered
        })
    };

    // Callers of the black-holed sources wait for their fetches and get
    // 503 or 504, never a token and never a hang.
    let stuck = {
        let (stop, socket) = (stop.clone(), socket.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/v1/tokens/b{}", i % STUCK);
                let r = tokend::client::call(&socket, hyper::Method::GET, &path)
                    .await
                    .unwrap();
                assert!(
                    [503, 504].contains(&r.status().as_u16()),
                    "{path}: {}",
                    r.status()
                );
                i += 1;
            }
        })
    };

    // The checker: tokens from the healthy and the flaky IdP, and the states.
    let mut served = 0;
    let mut i = 0;
    while started.elapsed() < CHAOS {
        for name in [format!("h{}", i % HEALTHY), format!("f{}", i % FLAKY)] {
            let r = d.get(&format!("/v1/tokens/{name}")).await;
            match r.status() {
                200 => {
                    let token = r.json()["access_token"].as_str().unwrap().to_string();
                    let now = now_secs();
                    assert!(
                        exp_of(&token) >= now + 4,
                        "{name} served a token with exp {} at {now}",
                        exp_of(&token)
                    );
                    served += 1;
                }
                status => assert!(
                    name.starts_with('f') && [503, 504].contains(&status),
                    "{name}: {status} {}",
                    r.text()
                ),
            }
        }
        let doc = d.get("/v1/sources").await.json();
        assert!(
            all_ready(&doc, "h"),
            "a healthy source without a token: {doc}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let answered = health.await.unwrap();
    switcher.await.unwrap();
    stuck.await.unwrap();
    editor.await.unwrap();
    garbage.await.unwrap();
    if let Some((mut holder, mut flood)) = hostile {
        drop(holder.stdin.take());
        holder.wait().unwrap();
        flood.wait().unwrap();
    }
    assert!(served > 100, "{served} tokens served");
    assert!(answered > 100, "{answered} health checks");
    assert!(drained.load(Ordering::Relaxed) > 0, "the log flowed again");

    // Descriptors back to their level once the clients are gone (the
    // black hole's fetches come and go, hence the margin); memory close.
    let settled = poll_within(S(20), async || {
        (fds(d.pid()) <= base_fds + STUCK + 4).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "descriptors: {} at the start, {} after",
        base_fds,
        fds(d.pid())
    );
    let rss = rss_kib(d.pid());
    eprintln!(
        "soak: RSS {base_rss} KiB before, {rss} KiB after; fds {base_fds} before, {} after",
        fds(d.pid())
    );
    assert!(
        rss <= base_rss + base_rss / 2 + 8 * 1024,
        "RSS {base_rss} KiB before, {rss} KiB after"
    );
    // The flaky IdP's sources recover once it is healthy again: a caller
    // starts an early attempt for a source still backing off (at most one
    // per 10 s), and one success brings the rest back.
    for name in &flaky_names {
        eventually_within(S(15), &format!("a token for {name}"), async || {
            (d.get(&format!("/v1/tokens/{name}")).await.status() == 200).then_some(())
        })
        .await;
    }
    wait_until_within(&d, S(5), |doc| all_ready(doc, "f")).await;
    drop(d);
    log_reader.join().unwrap();
}
