//! systemd integration (SPEC §9): sd_notify states, the watchdog, and
//! socket activation. Everything is a no-op outside systemd.
//!
//! Uses the sd-notify crate, which reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`
//! and `LISTEN_FDS`/`LISTEN_PID` without mutating the environment.

use sd_notify::NotifyState;
use std::os::fd::FromRawFd;
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

/// The listening socket systemd passed (`LISTEN_FDS`), if any. The first fd
/// is used; it is set non-blocking, and tokend never unlinks its file.
pub fn passed_listener() -> std::io::Result<Option<tokio::net::UnixListener>> {
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            "systemd passed {} sockets; serving the first",
            fds.len() + 1
        );
    }
    // SAFETY: systemd hands this process ownership of fd 3 onwards
    // (LISTEN_PID matched our pid); nothing else in tokend uses them.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std_listener).map(Some)
}
