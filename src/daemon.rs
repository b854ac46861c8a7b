//! Running the daemon: bind the socket, start the sources, serve until
//! SIGTERM/SIGINT, reload on SIGHUP. Signals are registered once, before the
//! loop; one cancellation token reaches every task.

use crate::broker::Broker;
use crate::config::Config;
use crate::expiry::ExpiryWarner;
use crate::metrics::Metrics;
use crate::oauth::TokenClient;
pub use crate::reload::ConfigSource;
use crate::reload::{Change, Reloader, Trigger, Watcher};
use crate::secret::SecretEnv;
use crate::server::{self, tcp::TcpDoor, Door, ListenError, Listener, ServerSettings};
use crate::sink::record::{self, Record};
use crate::systemd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot use the socket systemd passed: {0}")]
    Activation(#[source] std::io::Error),
}

/// Runs until SIGTERM or SIGINT, then drains and returns. The socket file is
/// removed before this returns.
pub async fn run(config: Config, from: ConfigSource, env: SecretEnv) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    // Loading the system's CA certificates takes milliseconds: on another
    // core while the files are watched and the sockets bound.
    let client = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || TokenClient::new(env))
    };
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    // The watcher exists before anything else; then the files are compared
    // with the bytes `config` was parsed from (see `catch_up` below), and
    // every later edit raises an event.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = match &from {
        ConfigSource::File(main) => match Watcher::new(events_tx) {
            Ok(mut w) => {
                // Reads links; the runtime has nothing else to do yet.
                let relevant =
                    tokio::task::block_in_place(|| crate::reload::relevant(main, &config, &env));
                w.follow(relevant);
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration; reload with SIGHUP");
                None
            }
        },
        ConfigSource::Fixed(_) => None,
    };
    let starting = Reloader::begin(from.clone(), env.clone(), config);
    // Read from the config being started until it is handed to the broker.
    let started = starting.config();
    let server_config = &started.server;

    raise_fd_limit();
    let passed = systemd::passed_listeners().map_err(DaemonError::Activation)?;
    let listener = match passed.socket {
        Some(l) => {
            tracing::info!("serving the socket systemd passed; [server] socket, socket_mode and socket_group are not used (systemctl edit tokend.socket sets them)");
            Listener::borrowed(l)
        }
        None => server::bind(
            &server_config.socket,
            server_config.socket_mode,
            server_config.socket_group,
        )?,
    };
    // The TCP doors are bound once the daemon serves (see server::tcp): a
    // port someone else holds must not keep the socket down.
    let mi_listen = started.managed_identity.as_ref().map(|mi| mi.listen);
    let mi_passed = match (passed.managed_identity, mi_listen) {
        (Some(_), None) => {
            tracing::warn!("systemd passed a managed-identity socket, but the configuration has no [managed_identity]: it is not served (stop tokend-mi.socket, or configure the endpoint)");
            None
        }
        (Some(l), Some(_)) => {
            tracing::info!("serving the managed-identity socket systemd passed; [managed_identity] listen is not used (tokend-mi.socket sets it)");
            Some(l)
        }
        // A first try now, so the door listens by the time the daemon says
        // it is ready; if the port is taken, the door keeps trying.
        (None, Some(addr)) => tokio::net::TcpListener::bind(addr).await.ok(),
        (None, None) => None,
    };
    let metrics_first = match server_config.metrics_listen {
        Some(addr) => tokio::net::TcpListener::bind(addr).await.ok(),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::with_sink_record(
        Arc::new(
            client
                .await
                .map_err(|e| DaemonError::Client(e.to_string()))?
                .map_err(DaemonError::Client)?,
        ),
        server_config.max_concurrent_fetches,
        metrics,
        tokio::task::block_in_place(|| sink_record(&from, &env)),
    );
    for w in &started.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        socket = %crate::text::path(&server_config.socket),
        sources = started.sources.len(),
        "tokend listening"
    );
    let settings = ServerSettings {
        max_connections: server_config.max_connections,
        max_connections_per_uid: server_config.max_connections_per_uid,
        denials: Arc::default(),
        socket_health: Arc::default(),
        door_health: Arc::default(),
        closing: shutdown.clone(),
        request_timeout: server_config.request_timeout,
        own_uid: crate::acl::own_uid(),
    };
    let metrics_listen = server_config.metrics_listen;
    let (mut reloader, changed) = starting.finish(broker.clone()).await;
    // Parsing, checking and registering thousands of sources left freed
    // memory in several threads' heaps: back to the system, off the way to
    // serving.
    tokio::task::spawn_blocking(crate::heap::trim);
    // The watch is in place: an edit made since the start-up read shows as
    // a difference in the look taken right after it, and is applied first
    // thing. Anything later raises events, so nothing is read half-written.
    let mut catch_up = watcher.is_some() && changed;
    let mi_server = mi_listen.map(|addr| {
        tokio::spawn(server::tcp::serve_tcp(
            TcpDoor::ManagedIdentity,
            addr,
            mi_passed,
            broker.clone(),
            settings.clone(),
            shutdown.clone(),
        ))
    });
    let metrics_server = metrics_listen.map(|addr| {
        tokio::spawn(server::tcp::serve_tcp(
            TcpDoor::Metrics,
            addr,
            metrics_first,
            broker.clone(),
            settings.clone(),
            shutdown.clone(),
        ))
    });
    let server = tokio::spawn(server::serve(
        Door::Socket(listener),
        broker.clone(),
        settings,
        shutdown.clone(),
    ));
    systemd::ready(&broker.summary());
    systemd::spawn_watchdog(shutdown.clone());
    // A resume from suspend moves the wall clock, not tokio's: the sources
    // and sinks hear of it within seconds, with no request needed.
    tokio::spawn({
        let broker = broker.clone();
        crate::clock::watch_jumps(shutdown.clone(), move |by| broker.clock_jumped(by))
    });
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    let mut last_status = String::new();
    let mut expiry = ExpiryWarner::default();
    let mut log_drops = crate::logging::DropReport::default();
    // A settled file change is pending, to be read at `quiet_at`.
    let mut settled = false;
    let mut quiet_at: Option<Instant> = None;
    loop {
        let trigger = if std::mem::take(&mut catch_up) {
            Trigger::Files
        } else {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => Trigger::Signal,
                Some(change) = events.recv() => {
                    // Read only once the files have been quiet for a moment
                    // after a settled change (a close after writing, a
                    // rename): never a file a writer is still filling.
                    settled |= change == Change::Settled;
                    quiet_at = Some(Instant::now() + crate::reload::QUIET);
                    continue;
                }
                () = crate::timefmt::sleep_until_opt(quiet_at) => {
                    quiet_at = None;
                    if !std::mem::take(&mut settled) {
                        continue;
                    }
                    Trigger::Files
                }
                _ = housekeeping.tick() => {
                    if let Some(n) = log_drops.since_last(crate::logging::dropped_lines()) {
                        broker.metrics().log_lines_dropped.inc_by(n);
                        // If stderr still cannot take it, this line is
                        // dropped too, and counted in the next report.
                        tracing::warn!(dropped = n, "log lines were dropped because stderr (the journal) could not take them; serving was not held up");
                    }
                    let status = broker.summary();
                    if status != last_status {
                        systemd::status(&status);
                        last_status = status;
                    }
                    let config = reloader.running();
                    let creds = config.sources.values().filter_map(|s| Some((s.name.as_str(), s.credential_expires?)));
                    for w in expiry.due(creds, SystemTime::now()) {
                        tracing::warn!("{w}");
                    }
                    continue;
                }
            }
        };
        // Watch first, then read: a directory created since the last look
        // (sources.d, say) is watched before its files are read, so no
        // write into it can fall between the two.
        if let Some(w) = watcher.as_mut() {
            let grew = w.follow(reloader.relevant().await);
            if grew && trigger == Trigger::Files {
                // A directory that just appeared (a `sources.d` being
                // copied into place) may still be filling: its writes are
                // events from now on, so wait for them to be quiet too.
                settled = true;
                quiet_at = Some(Instant::now() + crate::reload::QUIET);
                continue;
            }
        }
        let Some(reading) = reloader.read(trigger).await else {
            continue;
        };
        systemd::reloading();
        if reloader.finish(reading) {
            expiry.retain(reloader.running().sources.keys());
            // The new config may name files in directories not watched so
            // far: watch them, and look once more for an edit made there
            // between the read and the watch.
            if let Some(w) = watcher.as_mut() {
                catch_up = w.follow(reloader.relevant().await);
            }
        } else if let Some(w) = watcher.as_mut() {
            // Refused: watch the files it named too (a `ca_file` not there
            // yet), so the fix is an event.
            w.follow(reloader.relevant().await);
        }
        systemd::ready(&broker.summary());
    }
    tracing::info!("shutting down");
    systemd::stopping();
    shutdown.cancel();
    for task in std::iter::once(server)
        .chain(mi_server)
        .chain(metrics_server)
    {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
    broker.shutdown();
    Ok(())
}

/// The record of sink files for a daemon reading `from` (none for `tokend
/// dev`, whose fixed config must never remove a real daemon's files).
fn sink_record(from: &ConfigSource, env: &SecretEnv) -> Record {
    let ConfigSource::File(main) = from else {
        return Record::none();
    };
    match record::state_dir(|k| env.var(k)) {
        Some(dir) => Record::open(&dir, main),
        None => {
            tracing::warn!("no state directory (set STATE_DIRECTORY, or HOME): sink files are not recorded, so a crash may leave stale ones");
            Record::none()
        }
    }
}

/// Each connection needs a descriptor: raise the soft limit to the hard one
/// so `max_connections` (default 1024) fits.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the descriptor limit");
            }
        }
    }
}
