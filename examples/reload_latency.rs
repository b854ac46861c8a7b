//! Measures hot-reload latency: the time from writing the config file to the
//! new source being served on the socket, debounce included (goal ≤ 500 ms).
//!
//! Runs the daemon in-process against the dev IdP, edits the config in place
//! N times, and prints min / median / max. Not a test: figures, no asserts.
//! With `--reader`, a thread opens and reads the config every 10 ms
//! throughout (a monitoring agent, a config checker): a reader is no
//! change, and must not hold a reload back.
//!
//!     cargo run --release --example reload_latency [ITERATIONS] [--reader]

use std::time::{Duration, Instant};
use tokend::daemon::{self, ConfigSource};
use tokend::dev::DevIdp;
use tokend::secret::SecretEnv;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let reader = std::env::args().any(|a| a == "--reader");
    let idp = DevIdp::start(Duration::from_secs(3600)).await?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("tokend.sock");
    let path = dir.path().join("tokend.toml");
    let source = |name: &str| {
        idp.add_client(name, "secret");
        format!(
            "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"{name}\"\nclient_secret = \"secret\"\n",
            idp.token_url()
        )
    };
    let mut text = format!(
        "[server]\nsocket = \"{}\"\nsocket_mode = \"0600\"\n{}",
        socket.display(),
        source("s0")
    );
    std::fs::write(&path, &text)?;
    let config = tokend::config::load(&path)?;
    tokio::spawn(daemon::run(
        config,
        ConfigSource::File(path.clone()),
        SecretEnv::process(),
    ));
    while tokend::client::call(&socket, hyper::Method::GET, "/healthz")
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if reader {
        let path = path.clone();
        std::thread::spawn(move || loop {
            let _ = std::fs::read(&path);
            std::thread::sleep(Duration::from_millis(10));
        });
    }
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("s{i}");
        text.push_str(&source(&name));
        let start = Instant::now();
        std::fs::write(&path, &text)?;
        let probe = format!("/v1/tokens/{name}?format=raw");
        loop {
            let r = tokend::client::call(&socket, hyper::Method::GET, &probe).await?;
            if r.status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(start.elapsed());
        // Let the watcher go quiet so each sample is one reload.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "write → new source served, {n} reloads (quiet wait {} ms){}: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        tokend::reload::QUIET.as_millis(),
        if reader { ", the config read every 10 ms throughout" } else { "" },
        ms(samples[0]),
        ms(samples[n / 2]),
        ms(samples[n - 1])
    );
    Ok(())
}
