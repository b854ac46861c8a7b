//! The HTTP/1.1 server on the Unix socket: accept loop with limits, one hyper
//! connection task per client, graceful drain on shutdown.
//!
//! Limits: a request head over 8 KiB gets 431; a connection that has not
//! sent a complete head within 10 s of opening or of its previous response
//! is closed (hyper's `header_read_timeout`, which also bounds idle
//! keep-alive); `request_timeout` bounds the rest of a request, its body and
//! its answer included (a deadline on the service, and [`stall`]'s guard on
//! writes); at `max_connections` the loop stops accepting, so new clients
//! wait in the kernel backlog while existing ones are served; a uid other
//! than root and the daemon's holds at most `max_connections_per_uid` of
//! the socket's connections ([`budget`]), past which its new ones are
//! closed at once. The socket door keeps its file in place ([`keeper`]).

mod body;
pub mod budget;
pub mod context;
mod drain;
pub mod guard;
pub mod imds;
pub mod keeper;
pub mod listener;
pub mod mi;
mod owner;
pub mod routes;
mod stall;
pub mod tcp;
mod tokens;
pub mod view;

use crate::acl::Peer;
use crate::broker::Broker;
use context::{Caller, Ctx};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use listener::{bind, ListenError, Listener};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for a complete request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings the server takes from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub request_timeout: Duration,
    /// The daemon's own uid, which may read every source.
    pub own_uid: u32,
    /// The socket's denials, logged at most once a minute per uid and source.
    pub denials: Arc<guard::CallerDenials>,
    /// What is wrong with the socket's file, for every door's `/readyz`.
    pub socket_health: Arc<keeper::SocketHealth>,
    /// Which TCP doors cannot listen, for every door's `/readyz`.
    pub door_health: Arc<tcp::DoorHealth>,
    /// The groups of the uids the TCP doors' callers run as.
    pub accounts: Arc<crate::peer::account::Accounts>,
    /// Fires when the daemon begins to shut down: a request still waiting
    /// for a token answers `shutting_down` then, rather than be cut off.
    pub closing: CancellationToken,
}

/// Where requests come in: the Unix socket (the whole API, callers known by
/// their peer credentials), the managed-identity endpoint's loopback TCP
/// listener (`/msi/token` only, callers known by their header), or the
/// metrics listener (`/metrics`, `/healthz`, `/readyz` only, anonymous).
pub enum Door {
    Socket(Listener),
    ManagedIdentity(tokio::net::TcpListener),
    Imds(tokio::net::TcpListener),
    Metrics(tokio::net::TcpListener),
}

impl Door {
    /// The door's `door` label in metrics.
    fn label(&self) -> &'static str {
        match self {
            Door::Socket(_) => "socket",
            Door::ManagedIdentity(_) => "managed_identity",
            Door::Imds(_) => "imds",
            Door::Metrics(_) => "metrics",
        }
    }

    /// The door's name in log lines (a TCP door's as [`tcp::TcpDoor`] says it).
    fn name(&self) -> &'static str {
        match self {
            Door::Socket(_) => "socket",
            Door::ManagedIdentity(_) => tcp::TcpDoor::ManagedIdentity.name(),
            Door::Imds(_) => tcp::TcpDoor::Imds.name(),
            Door::Metrics(_) => tcp::TcpDoor::Metrics.name(),
        }
    }
}

/// Who answers a connection's requests (the TCP doors with their door's
/// denial count, see [`guard`]).
#[derive(Clone)]
enum Handler {
    Api(Arc<Caller>),
    ManagedIdentity(Arc<Caller>, Arc<guard::Denials>),
    Imds(Arc<Caller>, Arc<guard::Denials>),
    Metrics(Arc<guard::Denials>),
}

/// Serves until `shutdown` fires, then stops accepting and drains in-flight
/// requests for at most [`DRAIN_TIMEOUT`]. The listener (and with it, the
/// socket file it owns) is dropped before this returns. Both doors have the
/// same limits.
pub async fn serve(
    mut door: Door,
    broker: Arc<Broker>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let drain = Arc::new(drain::Drain::default());
    let settings = Arc::new(settings);
    let denials = Arc::new(guard::Denials::new());
    let per_uid = budget::UidBudget::new(settings.max_connections_per_uid, settings.own_uid);
    let mut diag = owner::Owners::default();
    let mut keep = tokio::time::interval(keeper::KEEP_INTERVAL);
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let is_socket = matches!(door, Door::Socket(_));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = keep.tick(), if is_socket => {
                keep_socket(&mut door, &settings);
                continue;
            }
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = keep.tick(), if is_socket => None,
            r = accept(&door) => Some(r),
        };
        let Some(accepted) = accepted else {
            keep_socket(&mut door, &settings);
            continue;
        };
        match accepted {
            Ok(Accepted::Unix(stream)) => {
                // Taken once per connection, at accept.
                let peer = Peer::of(&stream, broker.units_named()).map(Arc::new);
                // A caller whose credentials cannot be read is counted by
                // the global limit only.
                let Ok(slot) = per_uid.claim_for(peer.as_ref().map(|p| p.uid)) else {
                    refuse_over_budget(&door, peer.map_or(0, |p| p.uid), &broker, &settings);
                    continue;
                };
                let caller = Arc::new(Caller::socket(peer, settings.own_uid));
                let conn = connection(stream, Handler::Api(caller), &broker, &settings, &drain);
                tokio::spawn(drive(conn, (permit, slot)));
            }
            Ok(Accepted::Tcp(stream)) if matches!(door, Door::Metrics(_)) => {
                let conn = connection(
                    stream,
                    Handler::Metrics(denials.clone()),
                    &broker,
                    &settings,
                    &drain,
                );
                tokio::spawn(drive(conn, permit));
            }
            Ok(Accepted::Tcp(stream)) => {
                let owner = diag.owner(&stream);
                let Ok(slot) = per_uid.claim_for(owner.as_ref().ok().copied()) else {
                    refuse_over_budget(&door, owner.unwrap_or(0), &broker, &settings);
                    continue;
                };
                let (broker, settings, drain) = (broker.clone(), settings.clone(), drain.clone());
                let (denials, imds) = (denials.clone(), matches!(door, Door::Imds(_)));
                tokio::spawn(async move {
                    let peer = match owner {
                        Ok(uid) => Ok(settings.accounts.peer(uid).await),
                        Err(why) => Err(why),
                    };
                    let caller = Arc::new(Caller::tcp(peer, settings.own_uid));
                    let handler = if imds {
                        Handler::Imds(caller, denials)
                    } else {
                        Handler::ManagedIdentity(caller, denials)
                    };
                    let conn = connection(stream, handler, &broker, &settings, &drain);
                    drive(conn, (permit, slot)).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(door);
    drain.start();
    // Every connection holds a slot until it ends.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("requests still in flight after the drain timeout; closing them"),
    }
}

/// One look at the socket door's file; a socket made again replaces the
/// listener (the old one's file is gone, so nobody could reach it).
fn keep_socket(door: &mut Door, settings: &ServerSettings) {
    if let Door::Socket(l) = door {
        if let Some(fresh) = keeper::look(l, &settings.socket_health) {
            *door = Door::Socket(fresh);
        }
    }
}

/// Runs one connection to its end, holding its slots (`max_connections`,
/// and its uid's) until then.
async fn drive<Slots>(
    conn: impl std::future::Future<Output = Result<(), hyper::Error>>,
    slots: Slots,
) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(slots);
}

/// Counts and logs (at most once a minute per uid) a connection closed
/// at once because its uid holds `max_connections_per_uid` already.
fn refuse_over_budget(door: &Door, uid: u32, broker: &Broker, settings: &ServerSettings) {
    broker
        .metrics()
        .connections_refused
        .get_or_create(&crate::metrics::RefusedLabel {
            door: door.label(),
            reason: "per_uid",
        })
        .inc();
    if let Some(unlogged) =
        settings
            .denials
            .log_now(uid, "(connections)", tokio::time::Instant::now())
    {
        tracing::warn!(
            uid,
            limit = settings.max_connections_per_uid,
            refused_since_last_line = unlogged,
            "connection closed: this uid already holds max_connections_per_uid connections to the {}",
            door.name()
        );
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(door: &Door) -> std::io::Result<Accepted> {
    match door {
        Door::Socket(l) => l.listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
        Door::ManagedIdentity(l) | Door::Imds(l) | Door::Metrics(l) => {
            l.accept().await.map(|(s, _)| Accepted::Tcp(s))
        }
    }
}

/// One client connection: hyper's HTTP/1 with the limits above.
fn connection<S>(
    stream: S,
    handler: Handler,
    broker: &Arc<Broker>,
    settings: &Arc<ServerSettings>,
    drain: &Arc<drain::Drain>,
) -> impl std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = settings.request_timeout;
    // One count per connection, not per request: the broker and settings
    // are shared by every connection, and bumping their counts on each
    // request made the cores fight over those cache lines.
    let conn = Arc::new((broker.clone(), settings.clone(), handler));
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move {
            let (broker, settings, handler) = &*conn;
            // request_timeout bounds the whole request: every wait in the
            // handlers ends at this deadline (504 for a fetch, else 408 and
            // the connection closed), and the stall guard bounds writing the
            // answer. A request that waits for nothing sets no timer.
            let now = crate::clock::Moment::now();
            let deadline = crate::timefmt::later(now.mono, settings.request_timeout);
            let anonymous = Caller::anonymous();
            let caller = match handler {
                Handler::Api(caller)
                | Handler::ManagedIdentity(caller, _)
                | Handler::Imds(caller, _) => caller,
                Handler::Metrics(_) => &anonymous,
            };
            let ctx = Ctx {
                broker,
                settings,
                caller,
                now,
                deadline,
            };
            Ok::<_, std::convert::Infallible>(match handler {
                Handler::Api(_) => routes::handle(req, &ctx).await,
                // Boxed, like the API's waits: the future every request
                // builds and hyper moves stays small.
                Handler::ManagedIdentity(_, denials) => {
                    Box::pin(mi::handle(req, &ctx, denials)).await
                }
                Handler::Imds(_, denials) => Box::pin(imds::handle(req, &ctx, denials)).await,
                Handler::Metrics(denials) => routes::handle_metrics_door(&req, &ctx, denials),
            })
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let io = TokioIo::new(stall::StallGuard::new(stream, request_timeout));
    drain.run(builder.serve_connection(io, service), |c| {
        c.graceful_shutdown()
    })
}
