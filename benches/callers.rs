//! What knowing a TCP door's caller costs (docs/performance.md, "Callers
//! of the TCP doors"). Prints figures, asserts nothing:
//!
//!     cargo bench --bench callers            # about half a minute
//!     cargo bench --bench callers -- --smoke # seconds: CI runs this
//!
//! It times the kernel lookup of a connection's other end alone, a uid's
//! groups looked up afresh, the IMDS door answering the SDKs' probe (a
//! request without `Metadata: true`, which they send with sub-second
//! timeouts), and the managed-identity endpoint answering one request per
//! new connection (the case the lookup costs most: once per
//! connection, never per request on a kept-alive one). With
//! `TOKEND_BENCH_BEFORE=/path/to/tokend` that build, which looked nothing up,
//! runs in turns beside this one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokend::peer::account::Accounts;
use tokend::peer::inet::SockDiag;

const GRAPH: &str = "https://graph.microsoft.com";
const HEADER: &str = "bench-header-value-0123456789";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (lookups, round) = if smoke {
        (1_000, Duration::from_millis(300))
    } else {
        (100_000, Duration::from_secs(4))
    };
    lookup_cost(lookups)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(groups_cost(if smoke { 20 } else { 2_000 }));
    rt.block_on(endpoint(round, if smoke { 1 } else { 3 }))
}

/// One exact NETLINK_SOCK_DIAG lookup, on one socket, `n` times.
fn lookup_cost(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let _client = TcpStream::connect(listener.local_addr()?)?;
    let (server, peer) = listener.accept()?;
    let local = server.local_addr()?;
    let mut diag = SockDiag::open()?;
    let start = Instant::now();
    for _ in 0..n {
        diag.owner(local, peer)?;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "kernel lookup of a connection's other end: {:.2} µs each ({n} lookups)",
        per * 1e6
    );
    Ok(())
}

/// A uid's groups from NSS, never from the cache (a fresh cache each time).
async fn groups_cost(n: usize) {
    let start = Instant::now();
    for _ in 0..n {
        Accounts::default().peer(0).await;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "a uid's groups looked up afresh (root, /etc/group): {:.1} µs each ({n} lookups)",
        per * 1e6
    );
}

/// The managed-identity endpoint, one request per new connection, each
/// build in turn for `rounds` rounds of `round`.
async fn endpoint(round: Duration, rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    let idp = tokend::dev::DevIdp::start(Duration::from_secs(3600)).await?;
    idp.add_client("bench", "bench-secret");
    let dir = tempfile::tempdir()?;
    let mut builds = vec![("tokend", PathBuf::from(env!("CARGO_BIN_EXE_tokend")))];
    if let Some(bin) = std::env::var_os("TOKEND_BENCH_BEFORE") {
        builds.push(("before", PathBuf::from(bin)));
    }
    for r in 0..rounds {
        for (build, bin) in &builds {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let imds = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let imds = (*build == "tokend").then_some(imds);
            let name = format!("{build}-{r}");
            let mut daemon = start(bin, dir.path(), &name, &idp.token_url(), port, imds)?;
            let (figures, probes) = tokio::task::spawn_blocking(move || {
                wait_answering(port);
                let probes = imds.map(|p| probe_each(p, round));
                (new_connection_each(port, round), probes)
            })
            .await?;
            if let Some((n, p50, p99, max)) = probes {
                println!(
                    "{build}: IMDS door, the SDKs' probe (no Metadata header, a new connection each): {n} answered 400, p50 {p50:.3} ms, p99 {p99:.3} ms, slowest {max:.3} ms"
                );
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
            println!(
                "{build}: managed-identity endpoint, a new connection per request: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                figures.0, figures.1, figures.2
            );
        }
    }
    Ok(())
}

/// The daemon with one source behind a managed-identity app on `port`,
/// and offered on the IMDS door on `imds` (a build that has one).
fn start(
    bin: &Path,
    dir: &Path,
    name: &str,
    token_url: &str,
    port: u16,
    imds: Option<u16>,
) -> std::io::Result<std::process::Child> {
    let imds = imds
        .map(|p| format!("[imds]\nlisten = \"127.0.0.1:{p}\"\nsources = [\"graph\"]\n"))
        .unwrap_or_default();
    let config = dir.join(format!("{name}.toml"));
    let header = dir.join(format!("{name}.key"));
    std::fs::write(&header, HEADER)?;
    std::fs::set_permissions(&header, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"{}\"\nsocket_mode = \"0600\"\n\
             [sources.graph]\ntoken_url = \"{token_url}\"\nclient_id = \"bench\"\n\
             client_secret = {{ env = \"BENCH_SECRET\" }}\nscopes = [\"{GRAPH}/.default\"]\n\
             [managed_identity]\nlisten = \"127.0.0.1:{port}\"\n\
             [managed_identity.apps.bench]\nheader = {{ file = \"{}\" }}\nsources = [\"graph\"]\n{imds}",
            dir.join(format!("{name}.sock")).display(),
            header.display()
        ),
    )?;
    Command::new(bin)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("BENCH_SECRET", "bench-secret")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()
}

/// One request on a new connection: the status line's code.
fn ask(port: u16) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET /msi/token?api-version=2019-08-01&resource={GRAPH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-IDENTITY-HEADER: {HEADER}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let code = answer
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok());
    Ok(code.unwrap_or(0))
}

fn wait_answering(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if matches!(ask(port), Ok(200)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the managed-identity endpoint on port {port} never answered 200");
}

/// The SDKs' probe, one after another on new connections, for `run`: how
/// many, p50, p99 and the slowest in ms.
fn probe_each(port: u16, run: Duration) -> (usize, f64, f64, f64) {
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the IMDS door");
        write!(
            s,
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource={GRAPH} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
        )
        .expect("send the probe");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read the answer");
        assert!(answer.starts_with(b"HTTP/1.1 400"), "the probe's answer");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (times.len(), at(0.5), at(0.99), times[times.len() - 1])
}

/// Requests one after another, each on a new connection, for `run`:
/// requests per second, p50 and p99 in ms.
fn new_connection_each(port: u16, run: Duration) -> (f64, f64, f64) {
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        let code = ask(port).expect("ask the endpoint");
        assert_eq!(code, 200, "the endpoint's answer");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = times.len() as f64 / start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (rate, at(0.5), at(0.99))
}
