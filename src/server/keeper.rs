//! Keeping the socket file in place. A clean-up that deletes `/run/tokend`
//! (systemd-tmpfiles, a careless `rm -rf`) leaves the daemon listening on a
//! socket no client can reach. Every [`KEEP_INTERVAL`] the socket door
//! looks at its file; one that is gone or replaced is made again (its
//! directory too) and said at ERROR. While it cannot be, `/readyz` on
//! every door says why ([`SocketHealth`]). A socket systemd made is not
//! tokend's to re-create: that is an ERROR and a hint.

use super::listener::{Listener, Lost};
use crate::sync::Locked;
use std::sync::Mutex;
use std::time::Duration;

/// How often the socket door looks at its file: a lost socket is back (or
/// reported) within this.
pub const KEEP_INTERVAL: Duration = Duration::from_secs(2);

/// What is wrong with the socket's file, shared by every door's `/readyz`.
#[derive(Debug, Default)]
pub struct SocketHealth(Mutex<Option<String>>);

impl SocketHealth {
    /// Why clients cannot reach the socket, if they cannot.
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Records the problem (or none); true if that changed what was said.
    fn set(&self, problem: Option<String>) -> bool {
        let mut now = self.lock();
        let changed = *now != problem;
        *now = problem;
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.locked()
    }
}

/// One look at `listener`'s file: a new listener if the socket had to be
/// made again, else `None` (in place, or reported as it cannot be).
pub fn look(listener: &Listener, health: &SocketHealth) -> Option<Listener> {
    let Some(Lost { path, ours }) = listener.check() else {
        if health.set(None) {
            tracing::info!("the socket file is in place again; clients can connect");
        }
        return None;
    };
    let shown = crate::text::path(&path);
    if !ours {
        let problem = format!(
            "the socket file {shown} that systemd created was deleted or replaced, so clients cannot connect; tokend does not re-create systemd's socket: run `systemctl restart tokend.socket tokend.service`"
        );
        if health.set(Some(problem.clone())) {
            tracing::error!("{problem}");
        }
        return None;
    }
    match listener.rebind()? {
        Ok(fresh) => {
            health.set(None);
            tracing::error!(
                path = %shown,
                "the socket file was deleted or replaced, so clients could not connect; re-created it (if a clean-up job removed it, exclude the socket's directory from it)"
            );
            Some(fresh)
        }
        Err(e) => {
            let problem = format!(
                "the socket file {shown} was deleted or replaced, so clients cannot connect, and it cannot be re-created: {e}; tokend tries again every {} s",
                KEEP_INTERVAL.as_secs()
            );
            if health.set(Some(problem.clone())) {
                tracing::error!("{problem}");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deleted_socket_and_its_directory_are_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/tokend.sock");
        std::fs::create_dir(dir.path().join("run")).unwrap();
        let health = SocketHealth::default();
        let l = super::super::bind(&path, 0o660, None).unwrap();
        assert!(look(&l, &health).is_none(), "in place: nothing to do");
        std::fs::remove_dir_all(dir.path().join("run")).unwrap();
        let fresh = look(&l, &health).expect("made again");
        assert!(health.problem().is_none());
        std::os::unix::net::UnixStream::connect(&path).expect("clients reach the new socket");
        // The old listener's drop leaves the new socket's file alone.
        drop(l);
        assert!(path.exists());
        drop(fresh);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_socket_that_cannot_be_made_again_is_a_problem_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let path = run.join("tokend.sock");
        let health = SocketHealth::default();
        let l = super::super::bind(&path, 0o660, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        assert!(look(&l, &health).is_none());
        let problem = health.problem().expect("a problem while it cannot");
        assert!(problem.contains("not a socket"), "{problem}");
        std::fs::remove_file(&path).unwrap();
        assert!(look(&l, &health).is_some());
        assert!(health.problem().is_none());
    }
}
