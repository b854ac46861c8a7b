//! The daemon's own Unix socket: created with its final mode and group before
//! anyone can reach it, replacing a stale socket file but never a live socket
//! or a file that is not a socket; unlinked on drop if it is still ours.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the socket could not be set up. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0} exists and is not a socket; refusing to replace it (move it away or choose another [server] socket)")]
    NotASocket(PathBuf),
    #[error("another process is already listening on {0} (is tokend already running?)")]
    InUse(PathBuf),
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The socket's listen backlog (the kernel caps it at `net.core.somaxconn`,
/// 4096 by default).
pub const BACKLOG: i32 = 1024;

/// A bound socket whose file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    pub listener: tokio::net::UnixListener,
    owned: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    /// Wraps a socket someone else created (systemd): never unlinked.
    pub fn borrowed(listener: tokio::net::UnixListener) -> Self {
        Listener {
            listener,
            owned: None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.owned {
            // Only remove the file if it is still the socket we created: a
            // newer daemon may have replaced it.
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.dev() == *dev && m.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Binds `path` with `mode` and optional `group`, atomically: the socket is
/// created inside a fresh 0700 directory next to `path`, given its mode and
/// group there, and renamed into place, so it is never reachable with wider
/// permissions than configured.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<Listener, ListenError> {
    let io_err = |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ListenError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %crate::text::path(path), "replacing stale socket file");
            }
            Err(e) => return Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".tokend-bind-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err)?;
    let result = (|| {
        let tmp = staging.join("s");
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        // std listens with a backlog of 128: a burst of clients (or one
        // uid's flood, closed at once) would fill it. Listening again on
        // a listening socket only sets the queue's length.
        nix::sys::socket::listen(&std_listener, nix::sys::socket::Backlog::new(BACKLOG)?)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        std_listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok::<_, io::Error>((std_listener, meta))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    let (std_listener, meta) = result.map_err(io_err)?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io_err)?;
    Ok(Listener {
        listener,
        owned: Some((path.to_path_buf(), meta.dev(), meta.ino())),
    })
}
