//! Reading small files that someone else controls (secrets, config files)
//! without ever blocking on them.
//!
//! A path may name a FIFO (an `open` for reading waits for a writer), a
//! device (`/dev/zero` never ends) or a huge file. [`read_regular`] opens
//! without blocking, checks on the open descriptor (so a swap between check
//! and read cannot fool it) that it is a regular file of bounded size, and
//! reads at most that much.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be read, in words that say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than {limit} bytes ({size} bytes)")]
    TooLarge { size: u64, limit: u64 },
}

impl ReadError {
    /// The I/O error kind, or `InvalidData` for a file of the wrong kind or size.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ReadError::Io(e) => e.kind(),
            _ => io::ErrorKind::InvalidData,
        }
    }
}

/// Reads `path` if it is a regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    open_regular(path)?.read(limit)
}

/// A regular file, open for reading; what is judged about it is judged on
/// this descriptor ([`crate::trust::Facts::of`]).
pub struct Opened {
    file: std::fs::File,
    len: u64,
}

/// Opens `path` if it is a regular file (following links).
pub fn open_regular(path: &Path) -> Result<Opened, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    Opened::new(file)
}

/// Opens `name` in the open directory `dir` if it is a regular file: the
/// file is the one in that directory, whatever is renamed meanwhile.
pub fn open_regular_at(dir: impl AsFd, name: &OsStr) -> Result<Opened, ReadError> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    Opened::new(std::fs::File::from(fd))
}

impl Opened {
    fn new(file: std::fs::File) -> Result<Opened, ReadError> {
        let meta = file.metadata()?;
        let kind = meta.file_type();
        if !kind.is_file() {
            return Err(ReadError::NotRegular(if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else if kind.is_dir() {
                "a directory"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a special file"
            }));
        }
        Ok(Opened {
            file,
            len: meta.len(),
        })
    }

    /// The descriptor, for [`crate::trust::Facts::of`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads the whole file, if it holds at most `limit` bytes.
    pub fn read(mut self, limit: u64) -> Result<Vec<u8>, ReadError> {
        if self.len > limit {
            return Err(ReadError::TooLarge {
                size: self.len,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        // The file may grow after the check: never read past the limit.
        self.file.by_ref().take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(ReadError::TooLarge {
                size: buf.len() as u64,
                limit,
            });
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_only_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "secret\n").unwrap();
        assert_eq!(read_regular(&f, 64).unwrap(), b"secret\n");
        let e = read_regular(&f, 3).unwrap_err();
        assert!(e.to_string().contains("larger than 3 bytes"), "{e}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Would block for ever with a plain open; here it is an error at once.
        assert_eq!(
            read_regular(&fifo, 64).unwrap_err().to_string(),
            "it is a FIFO, not a regular file"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 64)
                .unwrap_err()
                .to_string(),
            "it is a device, not a regular file"
        );
        assert!(read_regular(dir.path(), 64)
            .unwrap_err()
            .to_string()
            .contains("directory"));
        assert_eq!(
            read_regular(&dir.path().join("none"), 64)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
