//! How fast tokend serves a cached token, next to a bare hyper server that
//! serves the same bytes; and what it costs to hold many sources.
//!
//!     cargo bench --bench serve            # the full run (about 3 minutes)
//!     cargo bench --bench serve -- --smoke # seconds: CI runs this
//!     cargo bench --bench serve -- --startup # only the many-sources start-up, 3 times and the best
//!     cargo bench --bench serve -- --cold  # only the 10,000 concurrent cold requests
//!     cargo bench --bench serve -- --load SOCKET PATH SECONDS CONNS
//!                                          # load only, to profile a server
//!     cargo bench --bench serve -- --outages # only the outage figures (about 4 minutes)
//!     TOKEND_BENCH_BEFORE=OLD/tokend cargo bench --bench serve
//!                                          # another build beside this one, same run
//!
//! Both servers run as their own processes on Unix sockets; one load
//! generator (a hyper client with N keep-alive connections) drives them in
//! turn for a fixed time, two rounds, at 16 and 64 connections: first from
//! this process, then from a process of its own (this benchmark run with
//! `--load`), as a real consumer is. Then: tokend's RSS after a million requests; with 10,000
//! sources, the time to listening and to the first answer, and RSS; and 10,000 concurrent cold
//! requests to one lazy source, which must cause one upstream fetch.
//! Last, the outage figures (docs/performance.md, "Outages"): how long 50
//! sources take to be ready again after their IdP was down for 3 minutes,
//! and the serving p99 while 2,000 sources refresh at once.
//! Figures, not assertions: nothing here fails on a slow machine.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Plan {
    run: Duration,
    rounds: usize,
    million: u64,
    many_sources: usize,
    /// Start-ups with `many_sources`, the best reported as well: like the
    /// rounds of load, one start can land on a busy moment of the machine.
    startups: usize,
    cold: usize,
    /// How long the IdP is down, and for how many sources.
    outage: Duration,
    outage_sources: usize,
    /// Sources refreshing in one wave, and their tokens' lifetime.
    wave_sources: usize,
    wave_lifetime: Duration,
}

const FULL: Plan = Plan {
    run: Duration::from_secs(8),
    rounds: 2,
    million: 1_000_000,
    many_sources: 10_000,
    startups: 3,
    cold: 10_000,
    outage: Duration::from_secs(180),
    outage_sources: 50,
    wave_sources: 2_000,
    wave_lifetime: Duration::from_secs(30),
};

const SMOKE: Plan = Plan {
    run: Duration::from_millis(500),
    rounds: 1,
    million: 20_000,
    many_sources: 500,
    startups: 1,
    cold: 300,
    outage: Duration::from_secs(3),
    outage_sources: 10,
    wave_sources: 100,
    wave_lifetime: Duration::from_secs(10),
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    // Re-executed as the baseline server: `serve --baseline SOCKET BODYFILE`.
    if let Some(i) = args.iter().position(|a| a == "--baseline") {
        return baseline(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
    }
    // Load only, against a running server (for profiling it):
    // `serve --load SOCKET PATH SECONDS CONNS`.
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let (socket, path) = (PathBuf::from(&args[i + 1]), args[i + 2].clone());
        let secs: u64 = args[i + 3].parse()?;
        let conns: usize = args[i + 4].parse()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let r = rt.block_on(load(&socket, &path, conns, Duration::from_secs(secs)));
        println!(
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            r.rate, r.p50, r.p99
        );
        return Ok(());
    }
    let plan = if args.iter().any(|a| a == "--smoke") {
        &SMOKE
    } else {
        &FULL
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--outages") {
        return rt.block_on(outages(plan));
    }
    let only = if args.iter().any(|a| a == "--startup") {
        Only::Startup
    } else if args.iter().any(|a| a == "--cold") {
        Only::Cold
    } else {
        Only::All
    };
    rt.block_on(run(plan, only))?;
    if only == Only::All {
        rt.block_on(outages(plan))?;
    }
    Ok(())
}

/// A part of the run alone (`--startup`, `--cold`), or all of it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Startup,
    Cold,
}

async fn run(plan: &Plan, only: Only) -> Result<(), Box<dyn std::error::Error>> {
    let idp = tokend::dev::DevIdp::start(Duration::from_secs(3600)).await?;
    idp.add_client("bench", "bench-secret");
    let dir = tempfile::tempdir()?;

    // tokend with one eager source.
    let tokend_socket = dir.path().join("tokend.sock");
    let source = |name: &str, extra: &str| {
        format!(
            "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"bench\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\nscopes = [\"api://bench/.default\"]\n{extra}\n",
            idp.token_url()
        )
    };
    match only {
        Only::Startup => return startups(plan, dir.path(), &source).await,
        Only::Cold => return cold(plan, dir.path(), &idp, &source).await,
        Only::All => {}
    }
    let mut daemon = Daemon::start(dir.path(), "one", &source("bench", ""), "")?;
    wait_listening(&daemon.socket).await;
    let path = "/v1/tokens/bench";
    let body = get(&daemon.socket, path).await.map_err(|e| e.to_string())?;
    println!("tokend {} answer: {} bytes", path, body.len());

    // The baseline: bare hyper 1 on tokio, serving the same bytes.
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, &body)?;
    let base_socket = dir.path().join("baseline.sock");
    let mut base = Command::new(std::env::current_exe()?)
        .arg("--baseline")
        .arg(&base_socket)
        .arg(&body_file)
        .stdout(Stdio::null())
        .spawn()?;
    wait_listening(&base_socket).await;
    let _ = tokend_socket;
    // Another build of tokend beside this one, under the same load in the
    // same run: `TOKEND_BENCH_BEFORE=path/to/old/tokend cargo bench --bench serve`.
    let before = match std::env::var_os("TOKEND_BENCH_BEFORE") {
        Some(bin) => {
            let d = Daemon::start_with(
                Path::new(&bin),
                dir.path(),
                "before",
                &source("bench", ""),
                "",
            )?;
            wait_listening(&d.socket).await;
            Some(d)
        }
        None => None,
    };
    let mut servers = vec![
        ("tokend", daemon.socket.clone()),
        ("baseline", base_socket.clone()),
    ];
    if let Some(b) = &before {
        servers.push(("before", b.socket.clone()));
    }

    println!();
    println!(
        "{:<8} {:>10} {:>5} {:>12} {:>10} {:>10}",
        "server", "load", "conns", "req/s", "p50 ms", "p99 ms"
    );
    // Two views of the same servers: the load generator in this process
    // (sharing its runtime with nothing else), and in a process of its own,
    // as every real consumer is (`--load`, spawned per round).
    let mut results = Vec::new();
    for view in ["in-process", "external"] {
        for conns in [16usize, 64] {
            for round in 0..plan.rounds {
                for (name, socket) in servers.iter().map(|(n, s)| (*n, s)) {
                    let r = match view {
                        "external" => external_load(socket, path, conns, plan.run)?,
                        _ => load(socket, path, conns, plan.run).await,
                    };
                    println!(
                        "{:<8} {:>10} {:>5} {:>12.0} {:>10.3} {:>10.3}   (round {})",
                        name,
                        view,
                        conns,
                        r.rate,
                        r.p50,
                        r.p99,
                        round + 1
                    );
                    results.push((view, name, conns, r));
                }
            }
        }
    }
    println!();
    for view in ["in-process", "external"] {
        for conns in [16usize, 64] {
            let best = |who: &str| {
                results
                    .iter()
                    .filter(|(v, n, c, _)| *v == view && *n == who && *c == conns)
                    .map(|(_, _, _, r)| r)
                    .fold(None::<&Load>, |acc, r| match acc {
                        Some(a) if a.rate >= r.rate => Some(a),
                        _ => Some(r),
                    })
            };
            if let (Some(t), Some(b)) = (best("tokend"), best("baseline")) {
                println!(
                    "{view:>10} c={conns}: tokend/baseline throughput {:.2}×, p99 {:.2}× (best round of each)",
                    t.rate / b.rate,
                    t.p99 / b.p99
                );
            }
            if let (Some(t), Some(b)) = (best("tokend"), best("before")) {
                println!(
                    "{view:>10} c={conns}: tokend/before throughput {:.2}×, p99 {:.2}× (best round of each)",
                    t.rate / b.rate,
                    t.p99 / b.p99
                );
            }
        }
    }
    let _ = base.kill();
    let _ = base.wait();

    // RSS after a million requests.
    let before = rss_kib(daemon.pid());
    let started = Instant::now();
    let done = load_count(&daemon.socket, path, 64, plan.million).await;
    println!(
        "\ntokend RSS: {} KiB at start, {} KiB after {done} requests ({:.1} s)",
        before,
        rss_kib(daemon.pid()),
        started.elapsed().as_secs_f64()
    );
    daemon.stop();

    startups(plan, dir.path(), &source).await?;

    cold(plan, dir.path(), &idp, &source).await
}

/// Many concurrent cold requests to one lazy source: one upstream fetch,
/// and how many were answered, with the other build beside it when
/// `TOKEND_BENCH_BEFORE` names one.
async fn cold(
    plan: &Plan,
    dir: &Path,
    idp: &tokend::dev::DevIdp,
    source: &dyn Fn(&str, &str) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    idp.set_delay(Duration::from_secs(2));
    let mut builds = vec![("tokend", PathBuf::from(env!("CARGO_BIN_EXE_tokend")))];
    if let Some(bin) = std::env::var_os("TOKEND_BENCH_BEFORE") {
        builds.push(("before", PathBuf::from(bin)));
    }
    for (build, bin) in builds {
        let before = idp.requests();
        let mut daemon = Daemon::start_with(
            &bin,
            dir,
            &format!("cold-{build}"),
            &source("cold", "eager = false"),
            &format!(
                "max_connections = {}\nrequest_timeout = \"30s\"",
                plan.cold + 16
            ),
        )?;
        wait_listening(&daemon.socket).await;
        let tasks: Vec<_> = (0..plan.cold)
            .map(|_| {
                let socket = daemon.socket.clone();
                tokio::spawn(
                    async move { get_waiting(&socket, "/v1/tokens/cold?format=raw").await },
                )
            })
            .collect();
        let (mut ok, mut waited) = (0, 0);
        let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
        for t in tasks {
            match t.await {
                Ok(Ok(w)) => {
                    ok += 1;
                    waited += usize::from(w);
                }
                Ok(Err(e)) => *errors.entry(e.to_string()).or_default() += 1,
                Err(e) => *errors.entry(e.to_string()).or_default() += 1,
            }
        }
        println!(
            "{build}: {} concurrent cold requests to one lazy source: {ok} answered \
             ({waited} found the listen queue full and connected again), {} upstream fetch(es)",
            plan.cold,
            idp.requests() - before
        );
        for (e, n) in errors {
            println!("{build}:   {n} failed: {e}");
        }
        daemon.stop();
    }
    Ok(())
}

/// Recovery after an outage, and serving while many sources refresh.
async fn outages(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let idp = tokend::dev::DevIdp::start(Duration::from_secs(3600)).await?;
    idp.add_client("bench", "bench-secret");
    let source = |name: &str| {
        format!(
            "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"bench\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\n",
            idp.token_url()
        )
    };

    // The IdP down from the start for `outage`, then back: each source's
    // time from then to ready, no requests made (timers alone).
    idp.fail_with(Some(tokend::dev::Failure {
        status: 503,
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        retry_after: None,
    }));
    let names: Vec<String> = (0..plan.outage_sources).map(|i| format!("o{i}")).collect();
    let config: String = names.iter().map(|n| source(n)).collect();
    let daemon = Daemon::start(dir.path(), "outage", &config, "")?;
    wait_listening(&daemon.socket).await;
    tokio::time::sleep(plan.outage).await;
    idp.fail_with(None);
    let healed = Instant::now();
    let mut ready: Vec<Option<Duration>> = vec![None; names.len()];
    while ready.iter().any(Option::is_none) && healed.elapsed() < Duration::from_secs(600) {
        let doc = get(&daemon.socket, "/v1/sources")
            .await
            .map_err(|e| e.to_string())?;
        let doc: serde_json::Value = serde_json::from_slice(&doc)?;
        for s in doc["sources"].as_array().into_iter().flatten() {
            let i = names.iter().position(|n| s["name"] == n.as_str());
            if let (Some(i), "ready") = (i, s["state"].as_str().unwrap_or_default()) {
                ready[i].get_or_insert(healed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut took: Vec<Duration> = ready.into_iter().flatten().collect();
    took.sort();
    if let (Some(first), Some(last)) = (took.first(), took.last()) {
        println!(
            "\n{} sources after a {} s outage: ready again {:.1} s (first), {:.1} s (median), {:.1} s (max) after the IdP came back ({} of {} ready)",
            names.len(),
            plan.outage.as_secs(),
            first.as_secs_f64(),
            took[took.len() / 2].as_secs_f64(),
            last.as_secs_f64(),
            took.len(),
            names.len()
        );
    }
    drop(daemon);

    // Many sources refreshing in one wave, one of them under load: the
    // load's p99 in 1 s slices, those the wave falls in against the rest.
    idp.set_lifetime(plan.wave_lifetime);
    let config: String = (0..plan.wave_sources)
        .map(|i| source(&format!("w{i}")))
        .collect();
    let daemon = Daemon::start(dir.path(), "wave", &config, "")?;
    wait_listening(&daemon.socket).await;
    let before = idp.issued();
    while idp.issued() < before + plan.wave_sources as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (mut wave, mut quiet) = (Vec::new(), Vec::new());
    while started.elapsed() < plan.wave_lifetime {
        let issued = idp.issued();
        let r = load(&daemon.socket, "/v1/tokens/w0", 16, Duration::from_secs(1)).await;
        let refreshed = idp.issued() - issued;
        if refreshed > plan.wave_sources as u64 / 20 {
            println!(
                "  a slice with {refreshed} refreshes: {:.0} req/s, p99 {:.3} ms",
                r.rate, r.p99
            );
            wave.push(r.p99);
        } else {
            quiet.push(r.p99);
        }
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max);
    println!(
        "{} sources refreshing at once: serving p99 {:.3} ms at worst in the {} slice(s) of the wave, {:.3} ms at worst in {} quiet slice(s); {} refreshes",
        plan.wave_sources,
        worst(&wave),
        wave.len(),
        worst(&quiet),
        quiet.len(),
        idp.issued() - before - plan.wave_sources as u64
    );
    Ok(())
}

/// [`startup`] `plan.startups` times, then the best.
async fn startups(
    plan: &Plan,
    dir: &Path,
    source: &dyn Fn(&str, &str) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut best = f64::INFINITY;
    for _ in 0..plan.startups {
        best = best.min(startup(plan, dir, source).await?);
    }
    if plan.startups > 1 {
        println!(
            "{} sources: first answer at {best:.1} ms at best of {}",
            plan.many_sources, plan.startups
        );
    }
    Ok(())
}

/// Many lazy sources: time to listening and to the first answer (returned,
/// in ms), and RSS.
async fn startup(
    plan: &Plan,
    dir: &Path,
    source: &dyn Fn(&str, &str) -> String,
) -> Result<f64, Box<dyn std::error::Error>> {
    let many: String = (0..plan.many_sources)
        .map(|i| source(&format!("s{i}"), "eager = false"))
        .collect();
    let started = Instant::now();
    let mut daemon = Daemon::start(dir, "many", &many, "")?;
    wait_listening(&daemon.socket).await;
    let listening = started.elapsed();
    // The socket takes connections once bound; the first answer comes when
    // every source is registered and the server runs.
    get(&daemon.socket, "/healthz")
        .await
        .map_err(|e| e.to_string())?;
    let answering = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "{} sources: listening {:.1} ms after start, first answer at {:.1} ms, RSS {} KiB",
        plan.many_sources,
        listening.as_secs_f64() * 1000.0,
        answering.as_secs_f64() * 1000.0,
        rss_kib(daemon.pid())
    );
    daemon.stop();
    Ok(answering.as_secs_f64() * 1000.0)
}

/// tokend as its own process, on a socket in `dir`.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, name: &str, sources: &str, server: &str) -> std::io::Result<Daemon> {
        Daemon::start_with(
            Path::new(env!("CARGO_BIN_EXE_tokend")),
            dir,
            name,
            sources,
            server,
        )
    }

    /// [`Daemon::start`] from another build of tokend (`TOKEND_BENCH_BEFORE`).
    fn start_with(
        bin: &Path,
        dir: &Path,
        name: &str,
        sources: &str,
        server: &str,
    ) -> std::io::Result<Daemon> {
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nsocket = \"{}\"\nsocket_mode = \"0600\"\n{server}\n{sources}",
                socket.display()
            ),
        )?;
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env("BENCH_SECRET", "bench-secret")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()?;
        Ok(Daemon { child, socket })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_listening(socket: &Path) {
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn get(socket: &Path, path: &str) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let resp = send(stream, path).await?;
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// One GET on a connected stream.
async fn send(
    stream: tokio::net::UnixStream,
    path: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(req).await?)
}

/// [`get`] as a blocking client makes it: where the socket's listen queue
/// is full, a blocking `connect` waits, while tokio's non-blocking one fails
/// at once with EAGAIN, so try again. Says whether it had to.
async fn get_waiting(
    socket: &Path,
    path: &str,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut waited = false;
    let stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                waited = true;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => break other?,
        }
    };
    let resp = send(stream, path).await?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()).into());
    }
    resp.into_body().collect().await?;
    Ok(waited)
}

struct Load {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// [`load`] from a process of its own: this benchmark run with `--load`.
fn external_load(
    socket: &Path,
    path: &str,
    conns: usize,
    run: Duration,
) -> Result<Load, Box<dyn std::error::Error>> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--load")
        .arg(socket)
        .arg(path)
        .arg(run.as_secs().max(1).to_string())
        .arg(conns.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    // "N req/s, p50 X ms, p99 Y ms"
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<f64> = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [rate, _, p50, _, p99, ..] => Ok(Load {
            rate: *rate,
            p50: *p50,
            p99: *p99,
        }),
        _ => Err(format!("unreadable --load output: {text}").into()),
    }
}

/// `conns` keep-alive connections sending `path` for `run`.
async fn load(socket: &Path, path: &str, conns: usize, run: Duration) -> Load {
    let deadline = Instant::now() + run;
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let socket = socket.to_path_buf();
            let path = path.to_string();
            tokio::spawn(async move {
                connection(&socket, &path, |n, _| n > 0 && Instant::now() >= deadline).await
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    Load {
        rate: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// `total` requests over `conns` connections; returns how many were answered.
async fn load_count(socket: &Path, path: &str, conns: usize, total: u64) -> u64 {
    let per = total / conns as u64;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let socket = socket.to_path_buf();
            let path = path.to_string();
            tokio::spawn(async move {
                connection(&socket, &path, |n, _| n as u64 >= per)
                    .await
                    .len() as u64
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap_or(0);
    }
    n
}

/// One keep-alive connection sending requests until `done(count, last)`;
/// returns each request's latency in microseconds.
async fn connection(socket: &Path, path: &str, done: impl Fn(usize, u32) -> bool) -> Vec<u32> {
    let mut lat = Vec::with_capacity(1 << 16);
    let Ok(stream) = tokio::net::UnixStream::connect(socket).await else {
        return lat;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return lat;
    };
    tokio::spawn(conn);
    let mut last = 0;
    while !done(lat.len(), last) {
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let t = Instant::now();
        let Ok(resp) = sender.send_request(req).await else {
            break;
        };
        if resp.into_body().collect().await.is_err() {
            break;
        }
        last = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        lat.push(last);
    }
    lat
}

/// The baseline: bare hyper 1 + tokio answering every request with the
/// same bytes and headers tokend sends.
fn baseline(socket: &Path, body: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let body = Bytes::from(std::fs::read(body)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let mut r = hyper::Response::new(Full::new(body.clone()));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    r.headers_mut().insert(
                        hyper::header::CACHE_CONTROL,
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
