//! systemd integration: sd_notify over a real datagram socket, socket
//! activation with a pre-bound fd 3, the shipped units through
//! `systemd-analyze`, and `/metrics` through a Prometheus parser.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const S: fn(u64) -> Duration = Duration::from_secs;

/// A NOTIFY_SOCKET listener: collects the daemon's datagrams.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify { sock, path }
    }

    /// Waits up to `limit` for a datagram containing `line`; returns it.
    fn expect(&self, line: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {line:?} within {limit:?}; got {seen:?}");
    }
}

/// The package installs a configuration with no sources and starts the
/// service: `systemctl status tokend` must show it ready and say why it
/// serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_sources_the_daemon_is_ready_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::new(dir.path());
    let socket = dir.path().join("tokend.sock");
    let mut d = daemon("")
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .at(dir, socket)
        .spawn();
    let ready = tokio::task::spawn_blocking(move || notify.expect("READY=1", S(10)))
        .await
        .unwrap();
    assert!(
        ready.lines().any(|l| l == "STATUS=0 sources configured"),
        "{ready}"
    );
    d.wait_ready().await;
    let readyz = d.get("/readyz").await;
    assert_eq!(readyz.status(), 200, "{}", readyz.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_reloading_stopping_and_watchdog() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::new(dir.path());
    let socket = dir.path().join("tokend.sock");
    let mut d = daemon(&source("a", &idp, ""))
        .env("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "200000")
        .at(dir, socket.clone())
        .spawn();
    let ready = tokio::task::spawn_blocking({
        let n = Notify {
            sock: notify.sock.try_clone().unwrap(),
            path: notify.path.clone(),
        };
        move || n.expect("READY=1", S(10))
    })
    .await
    .unwrap();
    // READY comes only once the socket accepts connections.
    std::os::unix::net::UnixStream::connect(&socket).expect("socket accepts when READY=1 arrives");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=1 source")),
        "{ready}"
    );
    d.wait_ready().await;

    // Watchdog pings every WATCHDOG_USEC/2.
    let start = Instant::now();
    for _ in 0..3 {
        notify.expect("WATCHDOG=1", S(2));
    }
    assert!(start.elapsed() < S(2));

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    d.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1", S(5));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_usec =
        u64::try_from(now.tv_sec).unwrap() * 1_000_000 + u64::try_from(now.tv_nsec).unwrap() / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "MONOTONIC_USEC {usec} vs now {now_usec}"
    );
    notify.expect("READY=1", S(5));

    // SIGTERM: STOPPING=1.
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", S(5));
    assert!(d.wait_exit().await.success());
}

#[tokio::test]
async fn socket_activation_serves_the_passed_socket_and_leaves_it() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let activated = dir.path().join("activated.sock");
    let own = dir.path().join("own.sock");
    let config = dir.path().join("tokend.toml");
    write_private(
        &config,
        &format!(
            "[server]\nsocket = \"{}\"\n{}",
            own.display(),
            source("a", &idp, "")
        ),
    );
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    let mut child = spawn_activated(listener.as_raw_fd(), &config, dir.path());
    drop(listener); // the daemon holds it now
    let r = eventually("a token over the passed socket", async || {
        let r = tokend::client::call(&activated, hyper::Method::GET, "/v1/tokens/a?format=raw")
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert!(!r.body().is_empty());
    assert!(
        !own.exists(),
        "with a passed socket, [server] socket is not bound"
    );
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("tokend.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("serving the socket systemd passed"), "{log}");
    assert!(
        exists(&activated),
        "a socket systemd passed is never unlinked"
    );
}

/// Runs `tokend run -c config` as systemd would with a socket unit: `fd`
/// as fd 3, LISTEN_FDS=1 and LISTEN_PID = the daemon's pid (the shell's,
/// which exec keeps); its log goes to `dir/tokend.log`.
fn spawn_activated(fd: i32, config: &Path, dir: &Path) -> std::process::Child {
    spawn_activated_with(&[(fd, "tokend.socket")], config, dir)
}

/// [`spawn_activated`] with several sockets: each `(fd, name)` becomes fd
/// 3, 4, … with its `FileDescriptorName=` in LISTEN_FDNAMES.
fn spawn_activated_with(fds: &[(i32, &str)], config: &Path, dir: &Path) -> std::process::Child {
    let log = std::fs::File::create(dir.join("tokend.log")).unwrap();
    let names: Vec<&str> = fds.iter().map(|(_, n)| *n).collect();
    let fds: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            r#"export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec "$0" run -c "$1""#,
            fds.len(),
            names.join(":")
        ))
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    // The test's descriptors are far above 3 + fds.len() (the runtime and
    // the listeners were opened first), so no dup2 overwrites a source.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The managed-identity endpoint socket-activated (tokend-mi.socket): the
/// passed TCP socket is served, `[managed_identity] listen` is not bound,
/// so the port was never tokend's to lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_managed_identity_socket_systemd_passed() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let unused_port = common::mi::free_port();
    let config = dir.path().join("tokend.toml");
    write_private(
        &config,
        &format!(
            "[server]\nsocket = \"{}\"\n{}",
            dir.path().join("own.sock").display(),
            common::mi::config(&idp, unused_port, dir.path())
        ),
    );
    let socket = dir.path().join("activated.sock");
    let unix = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut child = spawn_activated_with(
        &[
            (unix.as_raw_fd(), "tokend.socket"),
            (tcp.as_raw_fd(), "managed-identity"),
        ],
        &config,
        dir.path(),
    );
    drop((unix, tcp));
    let body = eventually("a token through the passed endpoint socket", async || {
        let r = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/msi/token?api-version=2019-08-01&resource={}",
                common::mi::GRAPH
            ))
            .header("X-IDENTITY-HEADER", "jira-header-value")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r.text().await.ok()?)
    })
    .await;
    assert!(body.contains("access_token"), "{body}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", unused_port)).is_ok(),
        "[managed_identity] listen was bound too"
    );
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("tokend.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("serving the socket systemd passed for the managed-identity endpoint"),
        "{log}"
    );
}

/// An abstract socket (`ListenStream=@name`) has no file to guard it:
/// served, with a warning that says what that means and what to use.
#[tokio::test]
async fn a_passed_abstract_socket_is_served_with_a_warning() {
    use std::os::linux::net::SocketAddrExt;
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokend.toml");
    write_private(
        &config,
        &format!(
            "[server]\nsocket = \"{}\"\n{}",
            dir.path().join("own.sock").display(),
            source("a", &idp, "")
        ),
    );
    let name = format!("tokend-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let mut child = spawn_activated(listener.as_raw_fd(), &config, dir.path());
    drop(listener);
    let log_path = dir.path().join("tokend.log");
    let log = eventually("the warning", async || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains("abstract").then_some(log)
    })
    .await;
    assert!(
        log.contains("no mode or group keeps anyone in this network namespace from connecting")
            && log.contains("ListenStream=/run/tokend/tokend.sock"),
        "{log}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_passed_socket_that_is_not_a_unix_listener_is_refused_clearly() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokend.toml");
    write_private(
        &config,
        &format!(
            "[server]\nsocket = \"{}\"\n{}",
            dir.path().join("own.sock").display(),
            source("a", &idp, "")
        ),
    );
    // A socket unit with ListenStream=127.0.0.1:… instead of a path.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = spawn_activated(tcp.as_raw_fd(), &config, dir.path());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("tokend.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot use the socket systemd passed: fd 3 is an IPv4 (AF_INET) stream socket, not a listening Unix stream socket"),
        "{log}"
    );
    assert!(!dir.path().join("own.sock").exists());
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{name} is missing: install Debian's systemd package (apt-get install systemd)"
    );
    path
}

/// The shipped units with ExecStart pointing at the built binary, and the
/// generated man page under `man/man8`, where `Documentation=man:tokend(8)`
/// finds it with `MANPATH` set there.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("man/man8")).unwrap();
    std::fs::copy(
        root.join("dist/tokend.8"),
        dir.path().join("man/man8/tokend.8"),
    )
    .unwrap();
    let src = root.join("systemd");
    let service = std::fs::read_to_string(src.join("tokend.service")).unwrap();
    let service = service.replace("/usr/bin/tokend", env!("CARGO_BIN_EXE_tokend"));
    std::fs::write(dir.path().join("tokend.service"), service).unwrap();
    for unit in ["tokend.socket", "tokend-mi.socket", "tokend-imds.socket"] {
        std::fs::copy(src.join(unit), dir.path().join(unit)).unwrap();
    }
    dir
}

#[test]
fn shipped_units_verify_and_score_below_two() {
    let analyze = tool("systemd-analyze");
    let dir = units();
    let out = Command::new(&analyze)
        .arg("verify")
        .env("MANPATH", dir.path().join("man"))
        .arg(dir.path().join("tokend.service"))
        .arg(dir.path().join("tokend.socket"))
        .arg(dir.path().join("tokend-mi.socket"))
        .arg(dir.path().join("tokend-imds.socket"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // systemd < 253 does not know Type=notify-reload yet and says so; nothing else may be reported.
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("notify-reload"),
            "systemd-analyze verify: {line}"
        );
    }

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(dir.path().join("tokend.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tokend.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security: {score}");
    assert!(out.status.success(), "exposure above 2.0: {score}\n{text}");
}

async fn scrape(d: &Daemon) -> prometheus_parse::Scrape {
    let r = d.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("openmetrics-text"));
    parse_metrics(&r.text())
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("parses as Prometheus text")
}

/// `metrics_listen`: a TCP port Prometheus can scrape, with nothing else on it.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_health_but_no_tokens() {
    let idp = idp(S(3600), &["a"]).await;
    let port = common::mi::free_port();
    let d = daemon(&format!(
        "{}{}",
        source("a", &idp, ""),
        source_as("down", "nobody", &idp, "allow = { uids = [4242] }")
    ))
    .server(&format!("metrics_listen = \"127.0.0.1:{port}\""))
    .start()
    .await;
    let token = wait_for_status(&d, "/v1/tokens/a", 200).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://127.0.0.1:{port}{path}")).send();

    let r = get("/metrics").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let scrape = parse_metrics(&r.text().await.unwrap());
    assert!(scrape
        .samples
        .iter()
        .any(|x| x.metric == "tokend_token_requests_total"
            && x.labels.get("source") == Some("a")
            && x.labels.get("outcome") == Some("ok")));
    assert!(scrape
        .samples
        .iter()
        .any(|x| x.metric == "tokend_build_info"));

    for path in [
        "/v1/tokens/a",
        "/v1/tokens/a?format=raw",
        "/v1/sources",
        "/v1/sources/a",
        "/msi/token",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("not_found") && body.contains("Unix socket"),
            "{path}: {body}"
        );
        assert!(!body.contains(&token));
    }
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/sources/a/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no forced refresh from the network");
    let r = http
        .post(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    // `down` never gets a token: not ready. The anonymous caller is not
    // told its name (it is not open to all).
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(j["ready"], false);
    assert_eq!(j["not_ready"], serde_json::json!([]));
    // The socket still tells root which one.
    let j = d.get("/readyz").await.json();
    assert_eq!(j["not_ready"], serde_json::json!(["down"]));
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&format!(
        "{}{}",
        source("a", &idp, "credential_expires = 2027-05-01"),
        source_as("down", "nobody", &idp, "")
    ))
    .start()
    .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    let value = |s: &prometheus_parse::Scrape,
                 metric: &str,
                 labels: &[(&str, &str)]|
     -> Option<f64> {
        s.samples
            .iter()
            .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match &x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    };
    let before = scrape(&d).await;
    let ok_before = value(
        &before,
        "tokend_token_requests_total",
        &[("source", "a"), ("outcome", "ok")],
    )
    .unwrap_or(0.0);
    for _ in 0..3 {
        assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
    }
    assert_eq!(d.get("/v1/tokens/down").await.status(), 503);
    assert_eq!(d.get("/v1/tokens/no-such-source").await.status(), 404);
    assert_eq!(
        d.request(hyper::Method::POST, "/v1/sources/a/refresh")
            .await
            .status(),
        200
    );
    let after = scrape(&d).await;

    assert_eq!(
        value(
            &after,
            "tokend_token_requests_total",
            &[("source", "a"), ("outcome", "ok")]
        ),
        Some(ok_before + 3.0)
    );
    assert_eq!(
        value(
            &after,
            "tokend_token_requests_total",
            &[("source", "down"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.get("source") == Some("no-such-source")),
        "unknown names mint no series"
    );
    assert_eq!(
        value(
            &after,
            "tokend_fetches_total",
            &[("source", "a"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    assert!(
        value(
            &after,
            "tokend_fetches_total",
            &[("source", "down"), ("outcome", "error")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &after,
            "tokend_fetch_duration_seconds_count",
            &[("source", "a")]
        )
        .or_else(|| value(&after, "tokend_fetch_duration_seconds", &[("source", "a")]))
        .unwrap()
            >= 2.0
    );
    let expiry = value(
        &after,
        "tokend_token_expiry_timestamp_seconds",
        &[("source", "a")],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((expiry - now - 3600.0).abs() < 60.0, "{expiry} vs {now}");
    assert_eq!(
        value(
            &after,
            "tokend_credential_expiry_timestamp_seconds",
            &[("source", "a")]
        ),
        Some(1_809_129_600.0)
    );
    assert_eq!(value(&after, "tokend_sources", &[]), Some(2.0));
    assert!(
        value(
            &after,
            "tokend_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        value(
            &after,
            "tokend_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // A reload moves the reload counter.
    d.signal(libc::SIGHUP);
    wait_until(&d, |doc| doc["config"]["reloads"]["success"] == 1).await;
    let reloaded = scrape(&d).await;
    assert_eq!(
        value(
            &reloaded,
            "tokend_config_reloads_total",
            &[("outcome", "success")]
        ),
        Some(1.0)
    );
}
