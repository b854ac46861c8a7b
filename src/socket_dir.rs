//! `tokend socket-dir`: hands the socket's directory to the daemon's user,
//! the one job of a Kubernetes init container (docs/kubernetes.md). A
//! `hostPath` of type `DirectoryOrCreate` is made by the kubelet as root,
//! mode 0755, where a daemon that is not root cannot make its socket; the
//! image has no shell and no `chown`, so tokend does this itself, as root
//! with CAP_CHOWN and nothing else.

use rustix::fs::{Mode, OFlags};
use std::path::Path;

/// The directory's mode once handed over: the daemon writes, clients pass
/// through to the socket (whose own mode and group decide who connects).
const MODE: u32 = 0o755;

/// Makes `dir` owned by `owner`:`group` with mode 0755, unless it is
/// already; a symbolic link or anything but a directory is refused. Prints
/// what it did; the exit status.
pub fn run(dir: &Path, owner: u32, group: u32) -> u8 {
    match hand_over(dir, owner, group) {
        Ok(changed) => {
            let shown = crate::text::clip(&dir.display().to_string(), 200);
            let what = if changed { "now" } else { "already" };
            println!("{shown}: {what} owned by {owner}:{group}, mode {MODE:04o}");
            0
        }
        Err(e) => {
            eprintln!("tokend: {e}");
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SocketDirError {
    #[error(
        "cannot open {dir} as a directory: {source} (it must be a directory, not a symbolic link)"
    )]
    Open {
        dir: String,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("cannot {what} {dir}: {source} — run this as root with only CAP_CHOWN (securityContext: runAsUser: 0, capabilities: {{drop: [ALL], add: [CHOWN]}})")]
    Change {
        what: &'static str,
        dir: String,
        #[source]
        source: rustix::io::Errno,
    },
}

/// Whether anything had to change.
fn hand_over(dir: &Path, owner: u32, group: u32) -> Result<bool, SocketDirError> {
    let shown = crate::text::clip(&dir.display().to_string(), 200);
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| SocketDirError::Open {
        dir: shown.clone(),
        source,
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|source| SocketDirError::Open {
        dir: shown.clone(),
        source,
    })?;
    let mode = st.st_mode & 0o7777;
    let mut changed = false;
    // The mode first: root, as the directory's owner, may change it without
    // CAP_FOWNER; once it belongs to `owner`, it could not.
    if mode != MODE {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(MODE)).map_err(|source| {
            SocketDirError::Change {
                what: "set the mode of",
                dir: shown.clone(),
                source,
            }
        })?;
        changed = true;
    }
    if st.st_uid != owner || st.st_gid != group {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(owner)),
            Some(rustix::fs::Gid::from_raw(group)),
        )
        .map_err(|source| SocketDirError::Change {
            what: "change the owner of",
            dir: shown,
            source,
        })?;
        changed = true;
    }
    Ok(changed)
}
