//! The daemon's own Unix socket: created with its final mode and group before
//! anyone can reach it, replacing a stale socket file but never a live socket
//! or a file that is not a socket; unlinked on drop if it is still ours.
//! [`Listener::check`] tells whether the file is still the one bound (a
//! clean-up that deletes `/run/tokend` leaves a socket nobody can reach),
//! and [`Listener::rebind`] makes it again.

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

/// The file a socket was bound to, as it was then.
#[derive(Debug, Clone)]
struct Place {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Place {
    fn of(path: &Path) -> Option<Place> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(Place {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether `path` is still this file: `Some(false)` when it is gone or
    /// another file, `None` when it cannot be told (a permission error).
    fn holds(&self) -> Option<bool> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Some(m.dev() == self.dev && m.ino() == self.ino),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        }
    }
}

/// How a socket tokend made was made, to make it again.
#[derive(Debug, Clone, Copy)]
struct Made {
    mode: u32,
    group: Option<u32>,
    /// The directory's mode when it was bound, for re-creating it.
    dir_mode: u32,
}

/// A bound socket whose file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    pub listener: tokio::net::UnixListener,
    place: Option<Place>,
    /// `None` for a socket systemd made: never unlinked nor re-made here.
    made: Option<Made>,
}

/// A socket file that is no longer the one listened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub path: PathBuf,
    /// Whether tokend made the socket (and so may make it again).
    pub ours: bool,
}

impl Listener {
    /// Wraps a socket someone else created (systemd): never unlinked.
    pub fn borrowed(listener: tokio::net::UnixListener) -> Self {
        let place = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().and_then(Place::of));
        Listener {
            listener,
            place,
            made: None,
        }
    }

    /// The socket's file if it is gone or is another file now (deleted
    /// with its directory, or replaced); `None` while it is in place, or
    /// if that cannot be told.
    pub fn check(&self) -> Option<Lost> {
        let place = self.place.as_ref()?;
        match place.holds() {
            Some(false) => Some(Lost {
                path: place.path.clone(),
                ours: self.made.is_some(),
            }),
            _ => None,
        }
    }

    /// A new socket at this one's path, made as this one was, its
    /// directory re-created if it is gone; `None` for systemd's socket.
    pub fn rebind(&self) -> Option<Result<Listener, ListenError>> {
        let (place, made) = (self.place.as_ref()?, self.made?);
        Some(rebind(&place.path, made))
    }
}

fn rebind(path: &Path, made: Made) -> Result<Listener, ListenError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(made.dir_mode)
                .create(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(made.dir_mode))
                })
                .map_err(|source| ListenError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    bind(path, made.mode, made.group)
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let (Some(place), Some(_)) = (&self.place, self.made) {
            // Only remove the file if it is still the socket we created: a
            // newer daemon (or this one, re-binding) may have replaced it.
            if place.holds() == Some(true) {
                let _ = std::fs::remove_file(&place.path);
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
    let dir_mode = std::fs::metadata(&parent).map_or(0o755, |m| m.mode() & 0o7777);
    Ok(Listener {
        listener,
        place: Some(Place {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        }),
        made: Some(Made {
            mode,
            group,
            dir_mode,
        }),
    })
}
