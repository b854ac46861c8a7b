//! Running the daemon: bind the socket, start the sources, serve until
//! SIGTERM/SIGINT, reload on SIGHUP. Signals are registered once, before the
//! loop; one cancellation token reaches every task.

use crate::broker::Broker;
use crate::config::{self, Config};
use crate::oauth::TokenClient;
use crate::secret::SecretEnv;
use crate::server::{self, ListenError, ServerSettings};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Where a reload reads its configuration from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, read again on every reload.
    File(PathBuf),
    /// A fixed config (`tokend dev`): SIGHUP re-applies it.
    Fixed(Box<Config>),
}

/// Runs until SIGTERM or SIGINT, then drains and returns. The socket file is
/// removed before this returns.
pub async fn run(config: Config, from: ConfigSource, env: SecretEnv) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let listener = server::bind(
        &config.server.socket,
        config.server.socket_mode,
        config.server.socket_group,
    )?;
    let broker = Broker::new(
        Arc::new(TokenClient::new(env)?),
        config.server.max_concurrent_fetches,
    );
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    broker.apply(&config);
    tracing::info!(
        socket = %config.server.socket.display(),
        sources = config.sources.len(),
        "tokend listening"
    );
    let settings = ServerSettings {
        max_connections: config.server.max_connections,
        request_timeout: config.server.request_timeout,
    };
    let server = tokio::spawn(server::serve(
        listener,
        broker.clone(),
        settings,
        shutdown.clone(),
    ));
    let running = Arc::new(std::sync::Mutex::new(config));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&broker, &from, &running),
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "server task failed");
    }
    broker.shutdown();
    Ok(())
}

/// Validate-then-swap: an invalid config leaves everything running as it was.
fn reload(broker: &Broker, from: &ConfigSource, running: &std::sync::Mutex<Config>) {
    let loaded = match from {
        ConfigSource::File(p) => config::load(p),
        ConfigSource::Fixed(c) => Ok((**c).clone()),
    };
    let mut current = running.lock().unwrap_or_else(|p| p.into_inner());
    match loaded {
        Ok(new) => {
            if new.server != current.server {
                tracing::warn!("[server] settings changed; they take effect after a restart");
            }
            broker.apply(&new);
            tracing::info!(sources = new.sources.len(), "configuration reloaded");
            *current = new;
        }
        Err(e) => {
            for p in e.problems() {
                tracing::error!("reload failed, keeping the running configuration: {p}");
            }
            broker.record_reload_error(e.to_string());
        }
    }
}
