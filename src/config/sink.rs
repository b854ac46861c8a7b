//! A source's `sinks` (docs/config.md, "sinks"): files the token is written
//! to. Checked like sshd's StrictModes: no one but root and tokend may be
//! able to replace a sink file or plant a link where it goes.

use super::diag::{At, Diagnostics};
use super::raw::RawSink;
use super::values::{account, octal_mode, Account};
use super::{SinkConfig, SinkFormat};
use crate::problem::Problem;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use toml::Spanned;

/// The bits a sink's mode may have: read for group and others, read and
/// write for the owner. Readers never need more.
const ALLOWED_MODE: u32 = 0o644;
const DEFAULT_MODE: u32 = 0o600;

/// Who the daemon runs as: what it may give files to.
#[derive(Debug, Clone)]
pub(super) struct Me {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Me {
    pub fn current() -> Me {
        Me {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    fn may_chgrp_to(&self, gid: u32) -> bool {
        self.uid == 0 || gid == self.gid || self.groups.contains(&gid)
    }
}

/// Validates source `name`'s sinks; each valid sink's path, and where it
/// was written, goes into `claims` (see [`one_writer`]).
pub(super) fn sinks(
    d: &mut Diagnostics,
    file: usize,
    name: &str,
    raw: Spanned<Vec<Spanned<RawSink>>>,
    claims: &mut Vec<(PathBuf, At)>,
) -> Vec<SinkConfig> {
    let me = Me::current();
    let mut out = Vec::new();
    for sink in raw.into_inner() {
        let at = At::of(file, &sink);
        if let Some(s) = one(d, file, name, sink.into_inner(), &me) {
            claims.push((s.path.clone(), at));
            out.push(s);
        }
    }
    out
}

/// Checks one source's sink `claims` against `seen`, every sink path of the
/// sources before it, so that two sinks (of any sources) never write the
/// same file. False if one was taken.
pub(super) fn one_writer(
    d: &mut Diagnostics,
    claims: Vec<(PathBuf, At)>,
    seen: &mut BTreeMap<PathBuf, At>,
) -> bool {
    let mut ok = true;
    for (path, at) in claims {
        if let Some(first) = seen.get(&path) {
            let first = d.place(first);
            d.error(
                &at,
                format!(
                    "sink {} is also written by the sink at {first}",
                    crate::text::path(&path)
                ),
                Some("give each sink its own file".to_string()),
            );
            ok = false;
            continue;
        }
        seen.insert(path, at);
    }
    ok
}

fn one(d: &mut Diagnostics, file: usize, name: &str, raw: RawSink, me: &Me) -> Option<SinkConfig> {
    let path_at = At::of(file, &raw.path);
    let path = match sink_path(Path::new(raw.path.get_ref()), me) {
        Ok(Checked::Ready(p)) => Some(p),
        Ok(Checked::NoDirectoryYet(p, warning)) => {
            d.warn(&path_at, warning.message, warning.hint);
            Some(p)
        }
        Err(p) => {
            d.problem(&path_at, p);
            None
        }
    };
    let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("raw") => Some(SinkFormat::Raw),
        Some("json") => Some(SinkFormat::Json),
        Some("header") => Some(SinkFormat::Header),
        Some(_) => {
            d.error(
                &At::of(file, raw.format.as_ref()?),
                "unknown sink format",
                Some("use \"raw\" (the token alone), \"json\" (the API's answer) or \"header\" (Authorization: Bearer …)".to_string()),
            );
            None
        }
    };
    let mode = match &raw.mode {
        None => Some(DEFAULT_MODE),
        Some(m) => octal_mode(d, file, m, "mode", "0640").and_then(|mode| {
            if mode & !ALLOWED_MODE == 0 {
                return Some(mode);
            }
            d.error(
                &At::of(file, m),
                format!("sink mode {mode:04o} lets others write or execute the token file"),
                Some(
                    "readers only read: use \"0600\", or \"0640\" with `group` for the readers"
                        .to_string(),
                ),
            );
            None
        }),
    };
    let owner = match raw.owner {
        None => Some(None),
        Some(v) => {
            let at = At::of(file, &v);
            let shown = shown(v.get_ref());
            account(d, file, v, "owner", Account::User).and_then(|uid| {
                if uid == me.uid || me.uid == 0 {
                    return Some(Some(uid));
                }
                d.error(
                    &at,
                    format!("sink owner `{shown}` needs tokend to run as root; it runs as uid {}, which cannot give files away", me.uid),
                    Some("leave `owner` out (the file belongs to tokend's user) and set `group` to a group the readers are in".to_string()),
                );
                None
            })
        }
    };
    let group = match raw.group {
        None => Some(None),
        Some(v) => {
            let at = At::of(file, &v);
            let shown = shown(v.get_ref());
            account(d, file, v, "group", Account::Group).and_then(|gid| {
                if me.may_chgrp_to(gid) {
                    return Some(Some(gid));
                }
                d.error(
                    &at,
                    format!("sink group `{shown}` is not one of tokend's groups: a process that is not root can only give a file to its own groups"),
                    Some(format!("add the group to the service: `systemctl edit tokend.service`, then [Service] SupplementaryGroups={shown}, and restart tokend (source `{name}`)")),
                );
                None
            })
        }
    };
    Some(SinkConfig {
        path: path?,
        format: format?,
        mode: mode?,
        owner: owner?,
        group: group?,
    })
}

/// A user or group as written, for messages.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A sink path that passed the checks.
enum Checked {
    /// Its directory resolved and safe.
    Ready(PathBuf),
    /// Its directory does not exist yet: not an error (docs/behaviour.md,
    /// "File sinks"); the writer checks it when it appears.
    NoDirectoryYet(PathBuf, Problem),
}

/// The sink's path with its directory resolved, once every check passed:
/// absolute, in a directory that only root and tokend can write (and whose
/// parents only they can rename), and not a link or a directory. A
/// directory that does not exist yet is a warning.
fn sink_path(path: &Path, me: &Me) -> Result<Checked, Problem> {
    let shown = crate::text::path(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Problem::new(
            format!("sink path {shown} is not an absolute path without `..`"),
            "write the full path, such as \"/run/tokend/sinks/graph.token\"".to_string(),
        ));
    }
    if path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(u8::is_ascii_control)
    {
        return Err(Problem::new(
            "sink path holds a control character",
            "use a path of printable characters".to_string(),
        ));
    }
    let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(Problem::new(
            format!("sink path {shown} names no file"),
            "write the full path of the file, such as \"/run/tokend/sinks/graph.token\""
                .to_string(),
        ));
    };
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Checked::NoDirectoryYet(
                path.to_path_buf(),
                Problem::new(
                    format!("sink directory {} does not exist (yet): the file is written once it does, until then the source shows a sink warning", crate::text::path(dir)),
                    format!(
                        "create it, owned by root or tokend and writable by no one else (install -d -m 0755 -o tokend {}), or use /run/tokend/sinks, which the package makes",
                        crate::text::path(dir)
                    ),
                ),
            ))
        }
        Err(e) => {
            return Err(Problem::new(
                format!("sink directory {} cannot be used: {e}", crate::text::path(dir)),
                format!(
                    "make it a directory owned by root or tokend and writable by no one else (install -d -m 0755 -o tokend {})",
                    crate::text::path(dir)
                ),
            ))
        }
    };
    safe_directory(&dir, me)?;
    let path = dir.join(file_name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => Err(Problem::new(
            format!("sink path {shown} is a symbolic link"),
            "tokend replaces the file itself and never writes through a link: remove the link, or point `path` at where it leads".to_string(),
        )),
        Ok(m) if !m.is_file() => Err(Problem::new(
            format!("sink path {shown} exists and is not a regular file"),
            "choose a path that is free or holds an earlier token file".to_string(),
        )),
        Ok(_) => Ok(Checked::Ready(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checked::Ready(path)),
        Err(e) => Err(Problem::new(
            format!("sink path {shown} cannot be checked: {e}"),
            None,
        )),
    }
}

/// The directory must be writable by root and tokend only (a sticky one
/// included: its other users could still plant names there); its parents
/// must belong to root or tokend and, when others can write them, be
/// sticky, so no one else can move the directory away.
fn safe_directory(dir: &Path, me: &Me) -> Result<(), Problem> {
    let trusted = |uid: u32| uid == 0 || uid == me.uid;
    let meta = std::fs::metadata(dir).map_err(|e| {
        Problem::new(
            format!(
                "sink directory {} cannot be used: {e}",
                crate::text::path(dir)
            ),
            None,
        )
    })?;
    if !meta.is_dir() {
        return Err(Problem::new(
            format!(
                "sink directory {} is not a directory",
                crate::text::path(dir)
            ),
            None,
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Problem::new(
            format!(
                "sink directory {} can be written by {} (mode {:04o})",
                crate::text::path(dir),
                writers(meta.mode()),
                meta.mode() & 0o7777
            ),
            format!(
                "anyone who can write it could replace the token file or plant a link in its place: chmod go-w {}, or use a directory of tokend's own such as /run/tokend/sinks",
                crate::text::path(dir)
            ),
        ));
    }
    if !trusted(meta.uid()) {
        return Err(Problem::new(
            format!(
                "sink directory {} belongs to uid {}, not to root or tokend",
                crate::text::path(dir),
                meta.uid()
            ),
            format!(
                "its owner could replace the token file: chown root {}",
                crate::text::path(dir)
            ),
        ));
    }
    for parent in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(parent) else {
            continue;
        };
        let open = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if !trusted(meta.uid()) || open {
            return Err(Problem::new(
                format!(
                    "sink directory {} lies in {}, which {}",
                    crate::text::path(dir),
                    crate::text::path(parent),
                    if open {
                        format!("{} can write (mode {:04o})", writers(meta.mode()), meta.mode() & 0o7777)
                    } else {
                        format!("belongs to uid {}", meta.uid())
                    }
                ),
                "whoever can rename the directory can swap in their own: put sinks under a path that only root (or tokend) controls, such as /run/tokend/sinks".to_string(),
            ));
        }
    }
    Ok(())
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_daemon_may_chgrp_only_to_its_own_groups() {
        let me = Me {
            uid: 990,
            gid: 990,
            groups: vec![990, 44],
        };
        assert!(me.may_chgrp_to(990));
        assert!(me.may_chgrp_to(44));
        assert!(!me.may_chgrp_to(45));
        let root = Me {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        assert!(root.may_chgrp_to(45));
    }
}
