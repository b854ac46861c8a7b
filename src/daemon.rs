//! Running the daemon: bind the socket, start the sources, serve until
//! SIGTERM/SIGINT, reload on SIGHUP. Signals are registered once, before the
//! loop; one cancellation token reaches every task.

use crate::broker::Broker;
use crate::config::Config;
use crate::expiry::ExpiryWarner;
use crate::metrics::Metrics;
use crate::oauth::TokenClient;
pub use crate::reload::ConfigSource;
use crate::reload::{Reloads, Trigger};
use crate::secret::SecretEnv;
use crate::server::{self, tcp::TcpDoor, Door, ListenError, Listener, ServerSettings};
use crate::sink::record::{self, Record};
use crate::systemd;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
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
/// removed before this returns. In phases: watch the files, bind the doors,
/// build the broker, apply the config, serve, loop, shut down.
pub async fn run(config: Config, from: ConfigSource, env: SecretEnv) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    // Loading the system's CA certificates: on another core while the
    // files are watched and the sockets bound.
    let client = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || TokenClient::new(env))
    };
    let mut signals = Signals::install()?;
    // The watch exists before anything else; every later edit is an event.
    let starting = Reloads::start(config, from.clone(), env.clone());
    let started = starting.config();
    raise_fd_limit();
    let doors = Doors::bind(started).await?;
    let client = client
        .await
        .map_err(|e| DaemonError::Client(e.to_string()))?
        .map_err(DaemonError::Client)?;
    let broker = Broker::with_sink_record(
        Arc::new(client),
        started.server.max_concurrent_fetches,
        Arc::new(Metrics::new()),
        tokio::task::block_in_place(|| sink_record(&from, &env)),
    );
    for w in &started.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        socket = %crate::text::path(&started.server.socket),
        sources = started.sources.len(),
        "tokend listening"
    );
    let settings = settings(&started.server, &shutdown);
    let mut reloads = starting.finish(broker.clone()).await;
    // Parsing, checking and registering thousands of sources left freed
    // memory in several threads' heaps: back to the system, off the way to
    // serving.
    tokio::task::spawn_blocking(crate::heap::trim);
    let servers = doors.serve(&broker, settings, &shutdown);
    systemd::ready(&broker.summary());
    systemd::spawn_watchdog(shutdown.clone());
    // A resume from suspend moves the wall clock, not tokio's: the sources
    // and sinks hear of it within seconds, with no request needed.
    tokio::spawn({
        let broker = broker.clone();
        crate::clock::watch_jumps(shutdown.clone(), move |by| broker.clock_jumped(by))
    });
    let mut housekeeping = Housekeeping::default();
    let mut every = tokio::time::interval(HOUSEKEEPING);
    loop {
        let trigger = tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => Trigger::Signal,
            },
            trigger = reloads.due() => trigger,
            _ = every.tick() => {
                housekeeping.run(&broker, reloads.running());
                continue;
            }
        };
        if reloads.reload(trigger).await {
            housekeeping.forget_removed(reloads.running());
        }
    }
    tracing::info!("shutting down");
    systemd::stopping();
    shutdown.cancel();
    for task in servers {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
    broker.shutdown();
    Ok(())
}

/// What the signals ask for.
enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// The signals, registered once, before the loop.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        let on = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    /// The next signal. Cancel-safe.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// The doors, bound (or passed by systemd) before the daemon says it is
/// ready. The TCP doors keep trying in the background if their port is
/// taken (see server::tcp): a port someone else holds must not keep the
/// socket down.
struct Doors {
    socket: Listener,
    managed_identity: Option<(SocketAddr, Option<TcpListener>)>,
    imds: Option<(SocketAddr, Option<TcpListener>)>,
    metrics: Option<(SocketAddr, Option<TcpListener>)>,
}

impl Doors {
    async fn bind(config: &Config) -> Result<Doors, DaemonError> {
        let server = &config.server;
        let passed = systemd::passed_listeners().map_err(DaemonError::Activation)?;
        let socket = match passed.socket {
            Some(l) => {
                tracing::info!("serving the socket systemd passed; [server] socket, socket_mode and socket_group are not used (systemctl edit tokend.socket sets them)");
                Listener::borrowed(l)
            }
            None => server::bind(&server.socket, server.socket_mode, server.socket_group)?,
        };
        let mi_listen = config.managed_identity.as_ref().map(|mi| mi.listen);
        let managed_identity =
            tcp_door(passed.managed_identity, mi_listen, TcpDoor::ManagedIdentity).await;
        let imds_listen = config.imds.as_ref().map(|i| i.listen);
        let imds = tcp_door(passed.imds, imds_listen, TcpDoor::Imds).await;
        let metrics = match server.metrics_listen {
            Some(addr) => Some((addr, first_try(addr).await)),
            None => None,
        };
        Ok(Doors {
            socket,
            managed_identity,
            imds,
            metrics,
        })
    }

    /// Serves every door until `shutdown`; the tasks to wait for.
    fn serve(
        self,
        broker: &Arc<Broker>,
        settings: ServerSettings,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let tcp = |kind, (addr, bound)| {
            tokio::spawn(server::tcp::serve_tcp(
                kind,
                addr,
                bound,
                broker.clone(),
                settings.clone(),
                shutdown.clone(),
            ))
        };
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        tasks.extend(
            self.managed_identity
                .map(|d| tcp(TcpDoor::ManagedIdentity, d)),
        );
        tasks.extend(self.imds.map(|d| tcp(TcpDoor::Imds, d)));
        tasks.extend(self.metrics.map(|d| tcp(TcpDoor::Metrics, d)));
        tasks.push(tokio::spawn(server::serve(
            Door::Socket(self.socket),
            broker.clone(),
            settings,
            shutdown.clone(),
        )));
        tasks
    }
}

/// A TCP door: the socket systemd passed for it, else its configured
/// `listen` tried once now; `None` if it is not configured.
async fn tcp_door(
    passed: Option<TcpListener>,
    listen: Option<SocketAddr>,
    kind: TcpDoor,
) -> Option<(SocketAddr, Option<TcpListener>)> {
    let (table, unit) = kind.activation();
    match (passed, listen) {
        (Some(_), None) => {
            tracing::warn!("systemd passed a socket for the {}, but the configuration has no {table}: it is not served (stop {unit}, or configure the door)", kind.name());
            None
        }
        (Some(l), Some(addr)) => {
            tracing::info!("serving the socket systemd passed for the {}; {table} listen is not used ({unit} sets it)", kind.name());
            Some((addr, Some(l)))
        }
        (None, Some(addr)) => Some((addr, first_try(addr).await)),
        (None, None) => None,
    }
}

/// A first try at a TCP door's port, so the door listens by the time the
/// daemon says it is ready; if the port is taken, the door keeps trying.
async fn first_try(addr: SocketAddr) -> Option<TcpListener> {
    TcpListener::bind(addr).await.ok()
}

fn settings(server: &crate::config::ServerConfig, shutdown: &CancellationToken) -> ServerSettings {
    ServerSettings {
        max_connections: server.max_connections,
        max_connections_per_uid: server.max_connections_per_uid,
        denials: Arc::default(),
        socket_health: Arc::default(),
        door_health: Arc::default(),
        accounts: Arc::default(),
        closing: shutdown.clone(),
        request_timeout: server.request_timeout,
        own_uid: crate::acl::own_uid(),
    }
}

/// How often [`Housekeeping`] runs.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// What the daemon does every few seconds besides serving: report dropped
/// log lines, keep systemd's status line current, warn of expiring
/// credentials.
#[derive(Default)]
struct Housekeeping {
    last_status: String,
    expiry: ExpiryWarner,
    log_drops: crate::logging::DropReport,
}

impl Housekeeping {
    fn run(&mut self, broker: &Broker, config: &Config) {
        if let Some(n) = self.log_drops.since_last(crate::logging::dropped_lines()) {
            broker.metrics().log_lines_dropped.inc_by(n);
            // If stderr still cannot take it, this line is dropped too, and
            // counted in the next report.
            tracing::warn!(dropped = n, "log lines were dropped because stderr (the journal) could not take them; serving was not held up");
        }
        let status = broker.summary();
        if status != self.last_status {
            systemd::status(&status);
            self.last_status = status;
        }
        let creds = config
            .sources
            .values()
            .filter_map(|s| Some((s.name.as_str(), s.credential_expires?)));
        for w in self.expiry.due(creds, SystemTime::now()) {
            tracing::warn!("{w}");
        }
    }

    /// Forgets what it knew of sources `config` no longer has.
    fn forget_removed(&mut self, config: &Config) {
        self.expiry.retain(config.sources.keys());
    }
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
