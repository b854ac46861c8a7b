//! The record of the sink files tokend wrote, kept in its state directory,
//! so that a daemon started again (after a clean stop, a SIGKILL or a
//! reboot) removes what it left behind: files of sinks no longer
//! configured, files whose token has expired, files that hold an earlier
//! identity's token, and half-written temporaries. `apt purge` reads it to
//! remove the files too.
//!
//! One record per main config file (`sinks-HASH` in the state directory),
//! so a second daemon with another config never removes the first one's
//! files. Plain text, one file per line: `PATH<TAB>SOURCE<TAB>EXPIRES<TAB>
//! IDENTITY`, EXPIRES in Unix seconds, IDENTITY a digest of the source's
//! endpoint, client id, scopes, params and auth method. Sink paths hold no
//! control characters (checked at load), so a line is always one file.
//! Rewritten whole (a temporary file renamed over it) after every change,
//! off the async runtime.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What was written at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub source: String,
    /// When its token expires, in Unix seconds.
    pub expires: u64,
    pub identity: String,
}

/// The files written, by path; saved at `file` when there is one.
#[derive(Debug, Default)]
pub struct Record {
    file: Option<PathBuf>,
    /// Which config it belongs to, for a reader of the file.
    config: String,
    pub entries: BTreeMap<PathBuf, Written>,
    /// Changed since it was last saved.
    dirty: bool,
}

impl Record {
    /// A record that is never saved (`tokend dev`, tests).
    pub fn none() -> Record {
        Record::default()
    }

    /// The record for main config `config` in `state_dir`, with what an
    /// earlier run saved there. A missing or unreadable record is empty.
    pub fn open(state_dir: &Path, config: &Path) -> Record {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(config.as_os_str().as_bytes());
        let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let file = state_dir.join(format!("sinks-{name}"));
        let text = std::fs::read(&file).unwrap_or_default();
        let entries = String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (path, source, expires, identity) =
                    (f.next()?, f.next()?, f.next()?, f.next()?);
                Some((
                    PathBuf::from(path),
                    Written {
                        source: source.to_string(),
                        expires: expires.parse().ok()?,
                        identity: identity.to_string(),
                    },
                ))
            })
            .collect();
        Record {
            file: Some(file),
            config: config.display().to_string(),
            entries,
            dirty: false,
        }
    }

    pub fn wrote(&mut self, path: &Path, written: Written) {
        if self.entries.get(path) != Some(&written) {
            self.entries.insert(path.to_path_buf(), written);
            self.dirty = true;
        }
    }

    pub fn removed(&mut self, path: &Path) {
        if self.entries.remove(path).is_some() {
            self.dirty = true;
        }
    }

    /// The write that brings the file up to date, if anything changed
    /// since the last one (run it off the async runtime).
    pub fn take_save(&mut self) -> Option<Save> {
        let file = self.file.clone()?;
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let mut text = format!(
            "# tokend: sink files written for {}; removed at the next start when stale\n",
            self.config
        );
        for (path, w) in &self.entries {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                path.display(),
                w.source,
                w.expires,
                w.identity
            ));
        }
        Some(Save { file, text })
    }
}

/// A pending write of the record.
#[derive(Debug)]
pub struct Save {
    file: PathBuf,
    text: String,
}

impl Save {
    /// Writes the record (best effort: a failure is logged; the sink files
    /// themselves are unaffected).
    pub fn run(self) {
        if let Err(e) = replace(&self.file, self.text.as_bytes()) {
            tracing::warn!(record = %crate::text::path(&self.file), error = %e, "cannot save the record of sink files; files left by this run may stay after a crash");
        }
    }
}

fn replace(file: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = file.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&temp, file)
}

/// Where the record lives: `$STATE_DIRECTORY` (systemd's
/// `StateDirectory=tokend`), else `/var/lib/tokend` when tokend may write
/// there, else `$XDG_STATE_HOME/tokend` (by default `~/.local/state/tokend`).
pub fn state_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dirs) = var("STATE_DIRECTORY") {
        // systemd lists one per StateDirectory= entry, separated by ':'.
        return dirs.split(':').next().map(PathBuf::from);
    }
    let system = Path::new("/var/lib/tokend");
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable(system) || (!system.exists() && writable(Path::new("/var/lib"))) {
        return Some(system.to_path_buf());
    }
    let base = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(base.join("tokend"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_survives_a_restart_and_each_config_has_its_own() {
        let t = tempfile::tempdir().unwrap();
        let mut r = Record::open(t.path(), Path::new("/etc/tokend/tokend.toml"));
        let w = Written {
            source: "graph".into(),
            expires: 1_800_000_000,
            identity: "abc".into(),
        };
        r.wrote(Path::new("/run/tokend/sinks/graph.token"), w.clone());
        r.wrote(Path::new("/run/tokend/sinks/other"), w.clone());
        r.removed(Path::new("/run/tokend/sinks/other"));
        r.take_save().unwrap().run();
        assert!(r.take_save().is_none(), "nothing new to save");
        let again = Record::open(t.path(), Path::new("/etc/tokend/tokend.toml"));
        assert_eq!(
            again.entries.into_iter().collect::<Vec<_>>(),
            [(PathBuf::from("/run/tokend/sinks/graph.token"), w)]
        );
        let other = Record::open(t.path(), Path::new("/srv/other.toml"));
        assert!(other.entries.is_empty());
    }

    #[test]
    fn the_state_directory_follows_systemd_then_the_system_then_the_user() {
        let dir = state_dir(|k| (k == "STATE_DIRECTORY").then(|| "/var/lib/tokend:/x".into()));
        assert_eq!(dir.unwrap(), Path::new("/var/lib/tokend"));
        if nix::unistd::geteuid().is_root() {
            return; // root may write /var/lib: the user fallback is not reached
        }
        let dir = state_dir(|k| (k == "HOME").then(|| "/home/u".into()));
        assert_eq!(dir.unwrap(), Path::new("/home/u/.local/state/tokend"));
        let dir = state_dir(|k| (k == "XDG_STATE_HOME").then(|| "/s".into()));
        assert_eq!(dir.unwrap(), Path::new("/s/tokend"));
    }
}
