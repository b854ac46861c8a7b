//! The uid behind a TCP door's connection, asked of the kernel at accept
//! (`peer::inet`), over one netlink socket per door that is opened again
//! when it fails.

use crate::peer::inet::SockDiag;
use crate::peer::Unknown;
use tokio::net::TcpStream;

/// One door's way to ask.
#[derive(Debug, Default)]
pub struct Owners {
    diag: Option<SockDiag>,
}

impl Owners {
    /// The uid of the socket on the other end of `stream`.
    pub fn owner(&mut self, stream: &TcpStream) -> Result<u32, Unknown> {
        let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
            return Err(Unknown::Closed);
        };
        let diag = match &mut self.diag {
            Some(d) => d,
            None => self.diag.insert(SockDiag::open()?),
        };
        let owner = diag.owner(local, peer);
        if let Err(Unknown::Netlink(e)) = &owner {
            tracing::warn!(error = %e, "cannot ask the kernel who holds a TCP connection; the caller is refused where its uid matters");
            self.diag = None;
        }
        owner
    }
}
