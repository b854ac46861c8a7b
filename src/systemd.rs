//! systemd integration (docs/operations.md): sd_notify states, the watchdog, and
//! socket activation. Everything is a no-op outside systemd.
//!
//! Uses the sd-notify crate, which reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`
//! and `LISTEN_FDS`/`LISTEN_PID` without mutating the environment.

use sd_notify::NotifyState;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a `STATUS=` line: the socket listens and the config is loaded.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=` alone.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (as `Type=notify-reload` requires);
/// follow with [`ready`] once the reload is done, whatever its outcome.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// When systemd's watchdog is on, pings `WATCHDOG=1` every half period from
/// a task on the daemon's runtime: if the runtime stalls, the pings stop and
/// systemd restarts the service.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!(every = ?every, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// The listening sockets systemd passed (`LISTEN_FDS`), by what each is:
/// the Unix socket (`tokend.socket`), the managed-identity endpoint's TCP
/// socket (`tokend-mi.socket`, `FileDescriptorName=managed-identity`) and
/// the IMDS door's (`tokend-imds.socket`, `FileDescriptorName=imds`).
#[derive(Debug, Default)]
pub struct Passed {
    pub socket: Option<tokio::net::UnixListener>,
    pub managed_identity: Option<tokio::net::TcpListener>,
    pub imds: Option<tokio::net::TcpListener>,
}

/// The managed-identity endpoint's `FileDescriptorName=`.
pub const MI_FD_NAME: &str = "managed-identity";
/// The IMDS door's `FileDescriptorName=`.
pub const IMDS_FD_NAME: &str = "imds";

/// Takes the sockets systemd passed: a listening Unix stream socket is the
/// socket, one named [`MI_FD_NAME`] (a listening TCP socket) the
/// managed-identity endpoint, one named [`IMDS_FD_NAME`] the IMDS door. Anything else is an error that says what it
/// is; each is set non-blocking, and tokend never unlinks a passed socket's
/// file.
pub fn passed_listeners() -> std::io::Result<Passed> {
    let mut passed = Passed::default();
    for (fd, name) in sd_notify::listen_fds_with_names()? {
        let tcp = match name.as_str() {
            MI_FD_NAME => Some((&mut passed.managed_identity, MI_HOW, "managed-identity")),
            IMDS_FD_NAME => Some((&mut passed.imds, IMDS_HOW, "IMDS")),
            _ => None,
        };
        if let Some((slot, how, door)) = tcp {
            check_listener(fd, &[libc::AF_INET, libc::AF_INET6], how)?;
            if slot.is_some() {
                tracing::warn!("systemd passed more than one {door} socket; serving the first");
                continue;
            }
            // SAFETY: systemd hands this process ownership of fd 3 onwards
            // (LISTEN_PID matched our pid); nothing else in tokend uses
            // them, and the check above made sure it is a listening TCP socket.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true)?;
            *slot = Some(tokio::net::TcpListener::from_std(l)?);
            continue;
        }
        check_listener(fd, &[libc::AF_UNIX], SOCKET_HOW)?;
        if passed.socket.is_some() {
            tracing::warn!("systemd passed more than one Unix socket; serving the first");
            continue;
        }
        // SAFETY: as above; the check made sure it is a listening Unix
        // stream socket.
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        warn_if_abstract(&l);
        passed.socket = Some(tokio::net::UnixListener::from_std(l)?);
    }
    Ok(passed)
}

/// An abstract socket (`ListenStream=@name`) has no file, so no mode or
/// group stands between it and any process in the network namespace.
fn warn_if_abstract(l: &std::os::unix::net::UnixListener) {
    use std::os::linux::net::SocketAddrExt;
    if let Some(name) = l
        .local_addr()
        .ok()
        .as_ref()
        .and_then(|a| a.as_abstract_name())
    {
        tracing::warn!(
            name = %crate::text::clip(&String::from_utf8_lossy(name), 108),
            "the socket systemd passed is abstract: with no file, no mode or group keeps anyone in this network namespace from connecting (allow lists still apply); give tokend.socket a path such as ListenStream=/run/tokend/tokend.sock"
        );
    }
}

const SOCKET_HOW: &str = "give tokend.socket a ListenStream= path such as /run/tokend/tokend.sock";
const MI_HOW: &str = "give tokend-mi.socket a ListenStream= loopback address such as 127.0.0.1:42356 and FileDescriptorName=managed-identity";
const IMDS_HOW: &str = "give tokend-imds.socket a ListenStream= such as 127.0.0.1:42357 or 169.254.169.254:80 and FileDescriptorName=imds";

fn socket_option(fd: RawFd, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(std::io::Error::other)?;
    // SAFETY: `value` is valid for `len` bytes; getsockopt writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Fails, saying what `fd` is instead, unless it is a listening stream
/// socket of one of `families`; `how` says what to give instead.
fn check_listener(fd: RawFd, families: &[libc::c_int], how: &str) -> std::io::Result<()> {
    let wanted = if families.contains(&libc::AF_UNIX) {
        "a listening Unix stream socket"
    } else {
        "a listening TCP socket"
    };
    let wrong = |what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fd {fd} is {what}, not {wanted}: {how}"),
        )
    };
    let domain = socket_option(fd, libc::SO_DOMAIN).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => wrong("not a socket".into()),
        _ => e,
    })?;
    let kind = socket_option(fd, libc::SO_TYPE)?;
    let listening = socket_option(fd, libc::SO_ACCEPTCONN)?;
    let family = match domain {
        libc::AF_UNIX => "a Unix",
        libc::AF_INET => "an IPv4 (AF_INET)",
        libc::AF_INET6 => "an IPv6 (AF_INET6)",
        _ => "a non-Unix",
    };
    let style = match kind {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "other",
    };
    if !families.contains(&domain) || kind != libc::SOCK_STREAM {
        return Err(wrong(format!("{family} {style} socket")));
    }
    if listening == 0 {
        return Err(wrong(format!(
            "{family} {style} socket that is not listening"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn check_unix_listener(fd: RawFd) -> std::io::Result<()> {
        check_listener(fd, &[libc::AF_UNIX], SOCKET_HOW)
    }

    #[test]
    fn the_managed_identity_socket_must_be_listening_tcp() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        check_listener(tcp.as_raw_fd(), &[libc::AF_INET, libc::AF_INET6], MI_HOW).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let e = check_listener(l.as_raw_fd(), &[libc::AF_INET, libc::AF_INET6], MI_HOW)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a Unix stream socket, not a listening TCP socket")
                && e.contains("FileDescriptorName=managed-identity"),
            "{e}"
        );
    }

    #[test]
    fn only_a_listening_unix_stream_socket_passes() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        check_unix_listener(l.as_raw_fd()).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = check_unix_listener(tcp.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("an IPv4 (AF_INET) stream socket"), "{e}");
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let e = check_unix_listener(d.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("a Unix datagram socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check_unix_listener(a.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("not listening"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = check_unix_listener(f.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("fd") && e.contains("is not a socket"), "{e}");
    }
}
