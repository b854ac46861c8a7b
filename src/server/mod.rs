//! The HTTP/1.1 server on the Unix socket: accept loop with limits, one hyper
//! connection task per client, graceful drain on shutdown.
//!
//! Limits (SPEC §10): a request head over 8 KiB gets 431; a connection that
//! has not sent a complete head within 10 s of opening or of its previous
//! response is closed (hyper's `header_read_timeout`, which also bounds idle
//! keep-alive); at `max_connections` the loop stops accepting, so new clients
//! wait in the kernel backlog while existing ones are served.

pub mod listener;
pub mod routes;

use crate::broker::Broker;
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
    pub request_timeout: Duration,
}

/// Who is on the other end of a connection (SO_PEERCRED), taken once at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Serves until `shutdown` fires, then stops accepting and drains in-flight
/// requests for at most [`DRAIN_TIMEOUT`]. The listener (and with it, the
/// socket file it owns) is dropped before this returns.
pub async fn serve(
    listener: Listener,
    broker: Arc<Broker>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let settings = Arc::new(settings);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = stream.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        });
        let broker = broker.clone();
        let settings = settings.clone();
        let service = hyper::service::service_fn(move |req| {
            let broker = broker.clone();
            let settings = settings.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    routes::handle(req, &broker, peer, &settings).await,
                )
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("requests still in flight after the drain timeout; closing them"),
    }
}
