//! Who is on the other end of a connection, by the kernel's word, taken
//! once at accept: on the socket, SO_PEERCRED's uid, gid and pid and
//! SO_PEERGROUPS' supplementary groups (tokio's `peer_cred` gives only the
//! primary gid); on a loopback TCP door, the uid of the client's socket
//! ([`inet`]) and that uid's groups ([`account`]).

pub mod account;
pub mod inet;
pub mod unit;

use std::os::fd::AsRawFd;

/// Why the caller of a connection is not known.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Unknown {
    #[error("the kernel gave no credentials for the connection")]
    NoCredentials,
    #[error("this door does not ask who its callers are")]
    NotAsked,
    #[error("the kernel's socket table could not be asked ({0})")]
    Netlink(String),
    #[error("no socket in tokend's network namespace holds the other end of the connection (a client in another namespace or container, or one that has gone)")]
    NotFound,
    #[error("the client closed its end of the connection before tokend could see who it is")]
    Closed,
}

/// The process on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// Primary group (`None`: a TCP caller whose uid has no passwd entry).
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// Supplementary groups (SO_PEERGROUPS), empty if the kernel gave none.
    pub groups: Vec<u32>,
    /// The system unit it runs in (socket callers, when an `allow` names
    /// units; `None` if it could not be told for certain).
    pub unit: Option<String>,
}

impl Peer {
    /// Reads the credentials of a connected Unix stream, and its caller's
    /// unit if `with_unit` (some `allow` names units: the reads cost a few
    /// microseconds a connection, spared otherwise).
    pub fn of(stream: &tokio::net::UnixStream, with_unit: bool) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
        Some(Peer {
            uid: cred.uid(),
            gid: Some(cred.gid()),
            pid: cred.pid(),
            groups: peer_groups(stream.as_raw_fd()).unwrap_or_default(),
            unit: if with_unit {
                unit::of_socket(stream, cred.pid())
            } else {
                None
            },
        })
    }

    /// A caller known by its uid alone: no groups.
    pub fn uid_only(uid: u32) -> Peer {
        Peer {
            uid,
            gid: None,
            pid: None,
            groups: Vec::new(),
            unit: None,
        }
    }
}

/// SO_PEERGROUPS: the peer's supplementary groups at connect time.
fn peer_groups(fd: std::os::fd::RawFd) -> Option<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..4 {
        let mut len =
            libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>()).ok()?;
        // SAFETY: `groups` is valid for `len` bytes; the kernel writes at most
        // `len` bytes and sets `len` to what it wrote (or needs, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = usize::try_from(len).ok()? / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len()
        {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peer_credentials_of_a_real_socket() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let p = Peer::of(&a, false).unwrap();
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.pid, Some(i32::try_from(std::process::id()).unwrap()));
        assert_eq!(p.gid, Some(nix::unistd::getgid().as_raw()));
    }
}
