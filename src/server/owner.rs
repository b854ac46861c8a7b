//! The uid behind a TCP door's connection, asked of the kernel at accept
//! (`peer::inet`), over one netlink socket per door that is opened again
//! when it fails.

use crate::peer::inet::SockDiag;
use crate::peer::Unknown;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often the WARN that the kernel cannot be asked is repeated.
const REPEAT: Duration = Duration::from_secs(60);

/// One door's way to ask.
#[derive(Debug, Default)]
pub struct Owners {
    diag: Option<SockDiag>,
    /// When the netlink failure was last logged.
    said: Option<Instant>,
}

impl Owners {
    /// The uid of the socket on the other end of `stream`.
    pub fn owner(&mut self, stream: &TcpStream) -> Result<u32, Unknown> {
        let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
            return Err(Unknown::Closed);
        };
        let owner = match &mut self.diag {
            Some(d) => d.owner(local, peer),
            None => SockDiag::open().and_then(|d| self.diag.insert(d).owner(local, peer)),
        };
        if let Err(Unknown::Netlink(e)) = &owner {
            // Opened again at the next connection; said once a minute, not
            // once a connection.
            self.diag = None;
            if self.said.is_none_or(|t| t.elapsed() >= REPEAT) {
                self.said = Some(Instant::now());
                tracing::warn!(error = %e, "cannot ask the kernel who holds a TCP connection (NETLINK_SOCK_DIAG); callers are refused wherever their uid matters until it can");
            }
        }
        owner
    }
}
