//! The `tokend` binary: CLI parsing, logging setup, dispatch and exit codes.

use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokend::cli::{Cli, Command};
use tokend::config::LogFormat;
use tokend::daemon::{self, ConfigSource};
use tokend::secret::SecretEnv;

/// Logging to stderr that never blocks the daemon (see [`tokend::logging`]);
/// the guard flushes it at exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    tokend::logging::init(format == LogFormat::Json)
}

/// Release builds of the daemon are not dumpable: no core dumps, and no
/// same-uid reads of /proc/PID/mem, so secrets and tokens stay in the process.
fn harden() {
    #[cfg(not(debug_assertions))]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("tokend: cannot make the process undumpable: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. } | Command::Dev) {
        harden();
        tokend::heap::settle();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(dispatch(cli.command));
    // A read stuck in the blocking pool (it should not happen: files are
    // checked before they are read) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

async fn dispatch(command: Command) -> u8 {
    match command {
        Command::Run { config } => run(&config).await,
        Command::Dev => dev().await,
        Command::Check { config, fetch } => {
            tokend::check::run(&config, fetch, SecretEnv::process()).await
        }
        Command::Token {
            name,
            min_ttl,
            json,
            daemon,
        } => tokend::client::token(&daemon.socket, &name, min_ttl, json, daemon.timeout).await,
        Command::Status { json, daemon } => {
            tokend::client::status(&daemon.socket, json, daemon.timeout).await
        }
        Command::MiEnv { app, config } => tokend::mi_env::run(&app, &config),
        Command::SocketDir { dir, owner, group } => tokend::socket_dir::run(&dir, owner, group),
        Command::Credential { kind } => {
            let exec_info = std::env::var("KUBERNETES_EXEC_INFO").ok();
            let out = tokend::credential::run(kind, std::io::stdin(), exec_info).await;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            out.code
        }
    }
}

async fn run(path: &Path) -> u8 {
    // Absolute from the start: file events name the paths watched, and a
    // relative `-c tokend.toml` would be watched as `./tokend.toml`.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let p = path.to_path_buf();
    // Reading files and looking up names may block: off the runtime.
    let Ok(Some(cfg)) = tokio::task::spawn_blocking(move || tokend::check::validate(&p)).await
    else {
        return 1;
    };
    // Not rehomed (see Config::rehome): at start-up the copy would delay
    // the first answer (docs/performance.md). The daemon trims the heap
    // once the sources are registered.
    let _flushed_at_exit = init_logging(cfg.server.log_format);
    match daemon::run(
        cfg,
        ConfigSource::File(path.to_path_buf()),
        SecretEnv::process(),
    )
    .await
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

async fn dev() -> u8 {
    let _flushed_at_exit = init_logging(LogFormat::Text);
    let setup = match tokend::dev::DevSetup::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tokend dev: {e}");
            return 1;
        }
    };
    println!("{}", setup.banner());
    let config = setup.config.clone();
    match daemon::run(
        config.clone(),
        ConfigSource::Fixed(Box::new(config)),
        SecretEnv::process(),
    )
    .await
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tokend dev: {e}");
            1
        }
    }
}
