//! One sink file's writes and removals, done through its directory's
//! descriptor.
//!
//! The directory is opened anew for every operation with `O_DIRECTORY |
//! O_NOFOLLOW` and checked on that descriptor (`fstat`): a directory, owned
//! by root or tokend, writable by no one else. Everything after is relative
//! to it (`openat`, `renameat`, `unlinkat`), so a directory swapped for a
//! symbolic link, or for one someone else controls, after the config was
//! loaded is refused, never followed.
//!
//! Invariant: a reader sees a whole file with the configured mode, owner
//! and group, or the previous one: a file is written beside its target
//! under a fresh name (`O_EXCL | O_NOFOLLOW`, mode 0600), given its mode and
//! owner, synced, and renamed over the target.

use crate::config::SinkConfig;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The prefix and infix of a temporary file: `.NAME.tokend-RANDOM`.
const TEMP_MARK: &str = ".tokend-";

/// Opens `dir` without following a link at its end and checks, on the
/// descriptor, that only root and tokend can write it.
fn open_dir(dir: &Path) -> io::Result<File> {
    let shown = crate::text::path(dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW with O_DIRECTORY: a link at the end is ENOTDIR (or ELOOP).
            Some(libc::ELOOP | libc::ENOTDIR)
                if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                io::Error::other(format!(
                    "sink directory {shown} is now a symbolic link: refused, never followed (it was a directory when the configuration was loaded)"
                ))
            }
            Some(libc::ENOTDIR) => {
                io::Error::other(format!("sink directory {shown} is not a directory"))
            }
            Some(libc::ENOENT) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("sink directory {shown} does not exist (yet)"),
            ),
            _ => io::Error::new(e.kind(), format!("cannot open sink directory {shown}: {e}")),
        })?;
    let meta = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(io::Error::other(format!(
            "sink directory {shown} now belongs to uid {}, not to root or tokend: refused",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "sink directory {shown} can now be written by others (mode {:04o}): refused",
            meta.mode() & 0o7777
        )));
    }
    Ok(file)
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::other("the sink path names no file")),
    }
}

/// Writes `contents` to the sink so that a reader sees the old file or the
/// new one, whole, and never a file more open than configured.
pub fn write_atomic(sink: &SinkConfig, contents: &[u8]) -> io::Result<()> {
    let (dir, name) = split(&sink.path)?;
    let dir = open_dir(dir)?;
    let temp = format!(
        ".{}{TEMP_MARK}{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    );
    // Created new (never through a link someone planted), readable by no
    // one else until its owner and mode are set.
    let fd = nix::fcntl::openat(
        &dir,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let file = File::from(fd);
    let result = (|| {
        if sink.owner.is_some() || sink.group.is_some() {
            std::os::unix::fs::fchown(&file, sink.owner, sink.group)?;
        }
        // Exactly the configured bits: the umask does not apply to fchmod.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(sink.mode))?;
        (&file).write_all(contents)?;
        file.sync_all()?;
        nix::fcntl::renameat(&dir, temp.as_str(), &dir, name)?;
        // The rename itself survives a crash.
        let _ = dir.sync_all();
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(&dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Removes the sink file at `path`; one that is not there (or whose
/// directory is gone) is already removed.
pub fn remove(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let dir = match open_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the temporary files a write left in `dir` when tokend was
/// killed half-way (`.NAME.tokend-RANDOM`); returns how many.
pub fn remove_temporaries(dir: &Path) -> usize {
    let Ok(fd) = open_dir(dir) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_temporary(&name) {
            let gone = nix::unistd::unlinkat(
                &fd,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            removed += usize::from(gone.is_ok());
        }
    }
    removed
}

/// `.NAME.tokend-` and 16 hex digits.
fn is_temporary(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    let Some(at) = bytes
        .windows(TEMP_MARK.len())
        .rposition(|w| w == TEMP_MARK.as_bytes())
    else {
        return false;
    };
    let random = &bytes[at + TEMP_MARK.len()..];
    bytes.first() == Some(&b'.') && random.len() == 16 && random.iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::SinkFormat;
    use std::os::unix::fs::PermissionsExt;

    fn sink(path: &Path) -> SinkConfig {
        SinkConfig {
            path: path.to_path_buf(),
            format: SinkFormat::Raw,
            mode: 0o640,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_refused_for_writes_and_removals() {
        let t = tempfile::tempdir().unwrap();
        let (real, elsewhere) = (t.path().join("real"), t.path().join("elsewhere"));
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let path = real.join("a.token");
        write_atomic(&sink(&path), b"token").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"token");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);

        std::fs::write(elsewhere.join("a.token"), "someone else's").unwrap();
        std::fs::rename(&real, t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &real).unwrap();
        let e = write_atomic(&sink(&path), b"token2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is now a symbolic link"), "{e}");
        let e = remove(&path).unwrap_err().to_string();
        assert!(e.contains("is now a symbolic link"), "{e}");
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("a.token")).unwrap(),
            "someone else's",
            "nothing written or removed through the link"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_others_can_write_now_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_atomic(&sink(&dir.join("a")), b"t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("can now be written by others (mode 0777)"),
            "{e}"
        );
        assert!(!dir.join("a").exists());
    }

    #[test]
    fn a_missing_file_or_directory_is_already_removed() {
        let t = tempfile::tempdir().unwrap();
        remove(&t.path().join("none")).unwrap();
        remove(&t.path().join("no-dir/none")).unwrap();
        let e = write_atomic(&sink(&t.path().join("no-dir/a")), b"t").unwrap_err();
        assert!(e.to_string().contains("does not exist (yet)"), "{e}");
    }

    #[test]
    fn leftover_temporaries_are_recognised_and_removed() {
        let t = tempfile::tempdir().unwrap();
        for name in [
            ".a.token.tokend-0123456789abcdef",
            ".b.tokend-ffffffffffffffff",
            "a.token",
            ".a.token.tokend-xyz",
            "x.tokend-0123456789abcdef",
        ] {
            std::fs::write(t.path().join(name), "").unwrap();
        }
        assert_eq!(remove_temporaries(t.path()), 2);
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".a.token.tokend-xyz",
                "a.token",
                "x.tokend-0123456789abcdef"
            ]
        );
    }
}
