//! Who holds the other end of a TCP connection on a loopback door: the
//! kernel's answer, through NETLINK_SOCK_DIAG (docs/security.md, "Callers
//! of the TCP doors").
//!
//! A connection accepted from `peer` on `local` has, in this network
//! namespace, exactly one other socket: the client's, bound to `peer` and
//! connected to `local`. One exact inet_diag lookup of that 4-tuple names
//! it and the uid that created it. A lookup that finds nothing (the client
//! is in another namespace, or gone) or finds a socket no process holds any
//! more (closed: the kernel reports such sockets as uid 0) is an unknown
//! caller, never root.

use super::Unknown;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

/// The kernel's TCP_TIME_WAIT state: a socket closed by its process.
const TCP_TIME_WAIT: u8 = 6;

/// A cookie that matches any socket (INET_DIAG_NOCOOKIE).
const ANY_COOKIE: [u8; 8] = [0xff; 8];

/// A NETLINK_SOCK_DIAG socket, asked one lookup at a time.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens the netlink socket (no privilege is needed to look up sockets
    /// of this network namespace).
    pub fn open() -> Result<SockDiag, Unknown> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| Unknown::Netlink(e.to_string()))?;
        socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| Unknown::Netlink(e.to_string()))?;
        Ok(SockDiag { fd, seq: 0 })
    }

    /// The uid of the socket that holds the other end of the connection
    /// accepted on `local` from `peer`.
    pub fn owner(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<u32, Unknown> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(self.seq, unmapped(local), unmapped(peer));
        socket::send(self.fd.as_raw_fd(), &request, MsgFlags::empty())
            .map_err(|e| Unknown::Netlink(e.to_string()))?;
        // The kernel answers within the send: the reply is queued by now.
        let mut buf = vec![0u8; 8192];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                .map_err(|e| Unknown::Netlink(format!("no answer: {e}")))?;
            if let Some(answer) = answer(&buf[..n], self.seq) {
                return answer;
            }
        }
    }
}

/// The lookup of the client's socket: bound to `peer`, connected to `local`.
fn request(seq: u32, local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let family = if peer.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: peer.port(),
                destination_port: local.port(),
                source_address: peer.ip(),
                destination_address: local.ip(),
                interface_id: 0,
                cookie: ANY_COOKIE,
            },
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// What the datagram `buf` says of lookup `seq`; `None` if it is about
/// another (an earlier lookup's late part).
fn answer(mut buf: &[u8], seq: u32) -> Option<Result<u32, Unknown>> {
    while !buf.is_empty() {
        let message = match NetlinkMessage::<SockDiagMessage>::deserialize(buf) {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(Unknown::Netlink(format!(
                    "an answer tokend cannot read: {e}"
                ))))
            }
        };
        let len = usize::try_from(message.header.length).unwrap_or(0);
        if message.header.sequence_number == seq {
            return Some(match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    if r.header.state == TCP_TIME_WAIT || r.header.inode == 0 {
                        Err(Unknown::Closed)
                    } else {
                        Ok(r.header.uid)
                    }
                }
                NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                    Some(libc::ENOENT) => Err(Unknown::NotFound),
                    Some(code) => Err(Unknown::Netlink(
                        std::io::Error::from_raw_os_error(code).to_string(),
                    )),
                    None => Err(Unknown::NotFound),
                },
                _ => Err(Unknown::NotFound),
            });
        }
        if len == 0 || len >= buf.len() {
            break;
        }
        buf = &buf[len..];
    }
    None
}

/// An IPv4 address as itself where a dual-stack listener shows it mapped
/// (`::ffff:127.0.0.1`): the client's socket is an IPv4 one.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_connection_of_this_process_is_ours() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let uid = diag.owner(server.local_addr().unwrap(), peer).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        drop(client);
    }

    #[test]
    fn a_client_that_closed_is_not_taken_as_root() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        drop(client);
        let mut diag = SockDiag::open().unwrap();
        let got = diag.owner(server.local_addr().unwrap(), peer);
        assert!(
            matches!(got, Err(Unknown::Closed | Unknown::NotFound)),
            "{got:?}"
        );
    }

    #[test]
    fn no_such_connection_is_not_found() {
        let mut diag = SockDiag::open().unwrap();
        let got = diag.owner(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        );
        assert_eq!(got, Err(Unknown::NotFound));
    }

    #[test]
    fn ipv6_loopback_and_mapped_addresses() {
        if let Ok(listener) = TcpListener::bind("[::1]:0") {
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let mut diag = SockDiag::open().unwrap();
            assert_eq!(
                diag.owner(server.local_addr().unwrap(), peer),
                Ok(nix::unistd::geteuid().as_raw())
            );
        }
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(unmapped(mapped), "127.0.0.1:80".parse().unwrap());
    }

    #[test]
    fn many_lookups_on_one_socket_each_get_their_own_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut diag = SockDiag::open().unwrap();
        for _ in 0..50 {
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            assert!(diag.owner(server.local_addr().unwrap(), peer).is_ok());
            assert_eq!(
                diag.owner(
                    "127.0.0.1:9".parse().unwrap(),
                    "127.0.0.1:1".parse().unwrap()
                ),
                Err(Unknown::NotFound)
            );
        }
    }
}
