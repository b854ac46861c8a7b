//! The TCP doors (the managed-identity endpoint, the metrics listener):
//! given by systemd, or bound by tokend. A door whose port is taken (by a
//! squatter that bound it while tokend was stopped, or by another daemon)
//! does not stop the daemon: the socket serves on, the door is tried again
//! every [`RETRY`], an ERROR says so once a minute, and `/readyz` on every
//! door names it ([`DoorHealth`]) until it listens.

use super::{serve, Door, ServerSettings};
use crate::broker::Broker;
use crate::sync::Locked;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a door that cannot bind tries again.
pub const RETRY: Duration = Duration::from_secs(5);

/// How often the ERROR for a door that still cannot bind is repeated.
pub const REPEAT: Duration = Duration::from_secs(60);

/// A TCP door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TcpDoor {
    ManagedIdentity,
    Imds,
    Metrics,
}

impl TcpDoor {
    pub fn name(self) -> &'static str {
        match self {
            TcpDoor::ManagedIdentity => "managed-identity endpoint",
            TcpDoor::Imds => "IMDS door",
            TcpDoor::Metrics => "metrics listener",
        }
    }

    fn key(self) -> &'static str {
        match self {
            TcpDoor::ManagedIdentity => "[managed_identity] listen",
            TcpDoor::Imds => "[imds] listen",
            TcpDoor::Metrics => "[server] metrics_listen",
        }
    }

    /// The door's table, and the socket unit that can hold its port.
    pub fn activation(self) -> (&'static str, &'static str) {
        match self {
            TcpDoor::ManagedIdentity => ("[managed_identity]", "tokend-mi.socket"),
            TcpDoor::Imds => ("[imds]", "tokend-imds.socket"),
            TcpDoor::Metrics => ("[server] metrics_listen", "a socket unit"),
        }
    }

    fn door(self, l: TcpListener) -> Door {
        match self {
            TcpDoor::ManagedIdentity => Door::ManagedIdentity(l),
            TcpDoor::Imds => Door::Imds(l),
            TcpDoor::Metrics => Door::Metrics(l),
        }
    }

    fn hint(self, addr: SocketAddr) -> String {
        let port = addr.port();
        let activation = match self {
            TcpDoor::ManagedIdentity => "; to keep the port systemd's while tokend is stopped, socket-activate the endpoint (systemctl enable --now tokend-mi.socket)",
            TcpDoor::Imds => "; to keep the port systemd's while tokend is stopped, socket-activate the door (systemctl enable --now tokend-imds.socket)",
            TcpDoor::Metrics => "",
        };
        format!("`ss -ltnp 'sport = :{port}'` names the process holding it; if it is not another tokend, it may be a local user capturing what clients send: stop it, or change {}{activation}", self.key())
    }
}

/// Which doors cannot listen, and why: shared by every door's `/readyz`.
#[derive(Debug, Default)]
pub struct DoorHealth(Mutex<BTreeMap<TcpDoor, String>>);

impl DoorHealth {
    /// Every door's problem, in door order.
    pub fn problems(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    fn set(&self, door: TcpDoor, problem: Option<String>) {
        let mut now = self.lock();
        match problem {
            Some(p) => now.insert(door, p),
            None => now.remove(&door),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TcpDoor, String>> {
        self.0.locked()
    }
}

/// Serves `kind` on `bound` (systemd's socket, or one bound already) or,
/// if none, on `addr` once it can be bound; returns at shutdown.
pub async fn serve_tcp(
    kind: TcpDoor,
    addr: SocketAddr,
    bound: Option<TcpListener>,
    broker: std::sync::Arc<Broker>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let listener = match bound {
        Some(l) => l,
        None => match bind_until(kind, addr, &settings, &shutdown).await {
            Some(l) => l,
            None => return,
        },
    };
    let shown = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!(listen = %shown, "{} listening", kind.name());
    serve(kind.door(listener), broker, settings, shutdown).await;
}

/// Binds `addr`, trying every [`RETRY`] while it cannot; `None` if the
/// daemon shuts down first.
async fn bind_until(
    kind: TcpDoor,
    addr: SocketAddr,
    settings: &ServerSettings,
    shutdown: &CancellationToken,
) -> Option<TcpListener> {
    let mut said: Option<Instant> = None;
    let mut failed = 0u64;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                if failed > 0 {
                    settings.door_health.set(kind, None);
                    tracing::info!(
                        listen = %addr,
                        failed_attempts = failed,
                        "the {} could bind its port at last",
                        kind.name()
                    );
                }
                return Some(l);
            }
            Err(e) => {
                failed += 1;
                let problem = format!(
                    "the {} cannot listen on {addr}: {e}; tokend serves the socket meanwhile and tries again every {} s",
                    kind.name(),
                    RETRY.as_secs()
                );
                settings.door_health.set(kind, Some(problem.clone()));
                if said.is_none_or(|t| t.elapsed() >= REPEAT) {
                    said = Some(Instant::now());
                    tracing::error!(hint = %kind.hint(addr), failed_attempts = failed, "{problem}");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}
