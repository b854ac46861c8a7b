//! Hot reload: file watching and SIGHUP lead to the same validate-then-swap.
//!
//! Every file the config reads (the main file, the include directory,
//! secrets, certificates, keys, assertions, `ca_file`, managed-identity
//! headers) is followed through its whole chain of symbolic links: the
//! watcher watches the *directory* of each link and of where it leads, so
//! editor renames, delete-and-recreate, a Kubernetes ConfigMap's `..data`
//! swap and a deploy tool's `current -> releases/42` re-pointed at any depth
//! are all seen. Events are filtered to those names, and only settled ones
//! (a close after writing, a rename, a creation, a removal) call for a
//! reload. Whether anything changed is decided from the bytes on disk now
//! (the config files, and every file a source reads), never from what is
//! held in memory; an unchanged state makes an event free, and lets the
//! first check after start-up find an edit made before the watcher existed.
//! Reading and parsing run in the blocking pool.
//!
//! Invariants: a failed reload changes nothing that is running; a file is
//! not read while its writer is half-way through.

use crate::broker::mi::MiState;
use crate::broker::Broker;
use crate::config::{self, Config, ConfigError};
use crate::secret::{Fingerprinter, SecretEnv};
use crate::sync::RwLocked;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// After a settled change, how long no further change may arrive before
/// the files are read: a writer that is still at it is waited for, and a
/// burst of events (an editor's save, a ConfigMap swap) makes one reload.
pub const QUIET: Duration = Duration::from_millis(100);

/// Where a reload reads its configuration from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file (and its include directory), read again on every reload.
    File(PathBuf),
    /// A fixed config (`tokend dev`): SIGHUP re-applies it.
    Fixed(Box<Config>),
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reloads and counts, even if nothing changed.
    Signal,
    /// A file event: skipped when the content hash is unchanged.
    Files,
}

/// Owns the running config and turns triggers into `Broker::apply` calls.
pub struct Reloader {
    from: ConfigSource,
    broker: Arc<Broker>,
    env: SecretEnv,
    running: Arc<Config>,
    /// The on-disk state (files and secrets) last acted on: file events that
    /// find it unchanged are free.
    seen: u64,
    /// The last reload was refused: the files its config named (watched
    /// too, so creating a missing `ca_file` is an event), and any relevant
    /// event reads again whatever the state (a fix may lie in a file the
    /// running config does not read).
    refused: Option<Vec<PathBuf>>,
}

/// Each source's credential fingerprint (see [`crate::config::Credential::fingerprint`]).
/// Reads secret files: call it off the async runtime.
pub fn fingerprints(config: &Config, env: &SecretEnv) -> BTreeMap<String, u64> {
    let apps = config
        .managed_identity
        .iter()
        .flat_map(|mi| mi.apps.values());
    let mut secrets = Fingerprinter::new(env);
    let mut fps: BTreeMap<String, u64> = config
        .sources
        .iter()
        .map(|(n, s)| (n.clone(), s.fingerprint(&mut secrets)))
        .collect();
    // Managed-identity headers too, so a changed header file is a change
    // (`:` cannot be in a source name).
    fps.extend(apps.map(|a| (format!("mi:{}", a.name), secrets.of(&a.header))));
    fps
}

/// What a reload read, off the async runtime: the new config and its
/// secrets' fingerprints, or why it is invalid.
pub struct Reading {
    loaded: Result<(Config, BTreeMap<String, u64>, MiState), ConfigError>,
}

/// A [`Reloader`] on its way (see [`Reloader::begin`]).
pub struct Starting {
    from: ConfigSource,
    env: SecretEnv,
    running: Arc<Config>,
    read: tokio::task::JoinHandle<(BTreeMap<String, u64>, MiState)>,
    look: Option<tokio::task::JoinHandle<u64>>,
}

impl Starting {
    /// The config being started.
    pub fn config(&self) -> &Config {
        &self.running
    }

    /// Applies the config to `broker`. With the reloader, whether the config
    /// files changed since they were read, before the watch (an edit made
    /// during start-up, to apply first thing). The secrets need no second
    /// look: their fingerprints were taken after the watch.
    pub async fn finish(self, broker: Arc<Broker>) -> (Reloader, bool) {
        let (fps, mi) = self.read.await.unwrap_or_default();
        broker.apply(&self.running, &fps);
        broker.set_managed_identity(mi);
        let seen = state_of(self.running.digest, &fps);
        let changed = match self.look {
            Some(look) => look.await.map_or(true, |now| now != self.running.digest),
            None => false,
        };
        let reloader = Reloader {
            from: self.from,
            broker,
            env: self.env,
            running: self.running,
            seen,
            refused: None,
        };
        (reloader, changed)
    }
}

impl Reloader {
    /// Starts taking what start-up needs besides the config, off the
    /// runtime while the daemon binds its sockets: the secrets'
    /// fingerprints, the managed-identity headers, and for a file one more
    /// look at the files. Call it right after the watch is set up: a later
    /// look could catch a writer half-way, which only events should report.
    /// [`Starting::finish`] applies the config.
    pub fn begin(from: ConfigSource, env: SecretEnv, running: Config) -> Starting {
        let running = Arc::new(running);
        let look = match &from {
            ConfigSource::File(path) => {
                let (path, dir) = (path.clone(), include_dir(path, &running));
                Some(tokio::task::spawn_blocking(move || {
                    config::disk_digest(&path, &dir)
                }))
            }
            ConfigSource::Fixed(_) => None,
        };
        let read = {
            let (config, env) = (running.clone(), env.clone());
            tokio::task::spawn_blocking(move || {
                (fingerprints(&config, &env), MiState::load(&config, &env))
            })
        };
        Starting {
            from,
            env,
            running,
            read,
            look,
        }
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Reads what a reload needs for `trigger`, off the async runtime (file
    /// reads and name-service look-ups). `None` when there is nothing to do:
    /// a file event that finds files and secrets as last seen. A signal
    /// always reloads (and counts). Pass the result to [`Reloader::finish`].
    pub async fn read(&mut self, trigger: Trigger) -> Option<Reading> {
        let path = match &self.from {
            ConfigSource::File(p) => p.clone(),
            ConfigSource::Fixed(c) => {
                if trigger == Trigger::Files {
                    return None;
                }
                let new = (**c).clone();
                let fps = fingerprints(&new, &self.env);
                let mi = MiState::load(&new, &self.env);
                return Some(Reading {
                    loaded: Ok((new, fps, mi)),
                });
            }
        };
        let (running, env, seen) = (self.running.clone(), self.env.clone(), self.seen);
        let retry = self.refused.is_some();
        let reading = tokio::task::spawn_blocking(move || {
            let state = disk_state(&path, &running, &env);
            if trigger == Trigger::Files && state == seen && !retry {
                return (state, None);
            }
            let loaded = config::load_nonempty(&path)
                .and_then(|new| keeps_include_dir(&path, &running, new))
                .map(|new| {
                    let fps = fingerprints(&new, &env);
                    let mi = MiState::load(&new, &env);
                    (new, fps, mi)
                });
            (state, Some(loaded))
        })
        .await;
        match reading {
            Ok((state, loaded)) => {
                self.seen = state;
                loaded.map(|loaded| Reading { loaded })
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the configuration failed");
                None
            }
        }
    }

    /// Applies what [`Reloader::read`] found: a valid config replaces the
    /// running one; an invalid one changes nothing and is reported. Returns
    /// true if a new config was applied.
    pub fn finish(&mut self, reading: Reading) -> bool {
        match reading.loaded {
            Ok((new, fps, mi)) => {
                self.refused = None;
                self.apply(new.rehome(), fps, mi)
            }
            Err(e) => {
                for p in e.problems() {
                    tracing::error!("reload failed, keeping the running configuration: {p}");
                }
                self.refused = Some(e.named_files().to_vec());
                self.broker.record_reload_error(e.to_string());
                self.broker.count_reload(false);
                false
            }
        }
    }

    fn apply(&mut self, new: Config, fps: BTreeMap<String, u64>, mi: MiState) -> bool {
        if new.server != self.running.server {
            tracing::warn!("[server] settings changed; they take effect after a restart");
        }
        let listen = |c: &Config| c.managed_identity.as_ref().map(|m| m.listen);
        if listen(&new) != listen(&self.running) {
            tracing::warn!("[managed_identity] listen changed; the endpoint moves after a restart (its apps change now)");
        }
        self.broker.set_managed_identity(mi);
        for w in new
            .warnings
            .iter()
            .filter(|w| !self.running.warnings.contains(w))
        {
            tracing::warn!("{w}");
        }
        let summary = self.broker.apply(&new, &fps);
        self.broker.count_reload(true);
        tracing::info!(
            sources = new.sources.len(),
            added = ?summary.added,
            removed = ?summary.removed,
            restarted = ?summary.restarted,
            credential_changed = ?summary.credential_changed,
            updated = ?summary.updated,
            "configuration reloaded"
        );
        self.seen = state_of(new.digest, &fps);
        self.running = Arc::new(new);
        true
    }

    /// The paths whose changes matter to the running config (it reads
    /// links, in the blocking pool).
    pub async fn relevant(&self) -> Relevant {
        let ConfigSource::File(main) = &self.from else {
            return Relevant::default();
        };
        let (main, running, env) = (main.clone(), self.running.clone(), self.env.clone());
        let refused = self.refused.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let mut r = relevant(&main, &running, &env);
            for p in &refused {
                r.add_file(p);
            }
            r
        })
        .await
        .unwrap_or_default()
    }
}

/// `new`, unless the include directory the running config reads is gone
/// and `new` would read it: a deploy that replaces `sources.d`
/// non-atomically (`rm -rf`, then a copy) never drops its sources for the
/// moment between. Reads the file system: off the async runtime.
fn keeps_include_dir(main: &Path, running: &Config, new: Config) -> Result<Config, ConfigError> {
    match &running.include_dir {
        Some(dir) if !dir.is_dir() && include_dir(main, &new) == *dir => {
            Err(ConfigError::IncludeDirGone { path: dir.clone() })
        }
        _ => Ok(new),
    }
}

/// The paths whose changes matter to `config`, loaded from `main`: every
/// file it reads and every link on the way to each (see [`links`]).
/// Reads links: call it off the async runtime.
pub fn relevant(main: &Path, config: &Config, env: &SecretEnv) -> Relevant {
    let mut r = Relevant::default();
    r.add_toml_dir(&include_dir(main, config));
    // Each file once, however many sources share it.
    let mut files: BTreeSet<PathBuf> = config
        .managed_identity
        .iter()
        .flat_map(|mi| mi.apps.values())
        .filter_map(|a| a.header.path(env))
        .collect();
    files.insert(main.to_path_buf());
    // An include file may itself be a link to a file elsewhere.
    files.extend(config.include_files.iter().cloned());
    for s in config.sources.values() {
        let ca = s.ca_file.as_ref().map(|c| c.path.clone());
        files.extend(s.credential.paths(env).into_iter().chain(ca));
    }
    for p in &files {
        r.add_file(p);
    }
    r
}

/// Most symbolic links followed for one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Every symbolic link `path` goes through, at any depth (a link to a
/// file, a directory link in the middle, a link inside a link's target),
/// then where it leads, each as a path with no link in its directories:
/// the names to watch, each in its own directory, so that re-pointing any
/// link (by rename or by delete-and-create) is an event on a watched path.
/// A missing name ends the walk: its creation is the event to wait for.
/// Reads links, not files: call it off the async runtime.
pub fn links(path: &Path) -> Vec<PathBuf> {
    use std::path::Component;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut todo: std::collections::VecDeque<PathBuf> = path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut at = PathBuf::from("/");
    let mut out = Vec::new();
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => at = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                at.pop();
            }
            Some(Component::Normal(name)) => {
                let next = at.join(name);
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() && out.len() < MAX_LINKS => {
                        out.push(next.clone());
                        let Ok(target) = std::fs::read_link(&next) else {
                            return out;
                        };
                        // The target's parts come next, relative to the
                        // link's directory (`at`) unless absolute.
                        for c in target.components().rev() {
                            todo.push_front(PathBuf::from(c.as_os_str()));
                        }
                    }
                    Ok(_) => at = next,
                    Err(_) => {
                        out.push(next);
                        return out;
                    }
                }
            }
            _ => {}
        }
    }
    out.push(at);
    out
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn include_dir(main: &Path, config: &Config) -> PathBuf {
    config
        .include_dir
        .clone()
        .unwrap_or_else(|| parent(main).join("sources.d"))
}

/// The state of what loading `path` with `running`'s include directory and
/// secrets would read now. Reads files: off the async runtime.
fn disk_state(path: &Path, running: &Config, env: &SecretEnv) -> u64 {
    state_of(
        config::disk_digest(path, &include_dir(path, running)),
        &fingerprints(running, env),
    )
}

/// What a reload would read: the config files' digest and the secrets' fingerprints.
fn state_of(digest: u64, fps: &BTreeMap<String, u64>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    digest.hash(&mut h);
    fps.hash(&mut h);
    h.finish()
}

/// Which file events deserve a look.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Relevant {
    /// Directories to watch (non-recursively).
    pub dirs: BTreeSet<PathBuf>,
    /// Files whose events count.
    files: BTreeSet<PathBuf>,
    /// Directories in which any `*.toml` counts (the include directory).
    toml_dirs: BTreeSet<PathBuf>,
}

impl Relevant {
    /// `path` and every link on the way to it, each watched from its
    /// directory.
    fn add_file(&mut self, path: &Path) {
        for p in links(path) {
            self.dirs.insert(parent(&p));
            self.files.insert(p);
        }
    }

    /// The include directory: its links like a file's, and any `*.toml`
    /// in the directory it leads to.
    fn add_toml_dir(&mut self, dir: &Path) {
        let chain = links(dir);
        for p in &chain {
            self.dirs.insert(parent(p));
            self.files.insert(p.clone());
        }
        if let Some(real) = chain.last() {
            self.dirs.insert(real.clone());
            self.toml_dirs.insert(real.clone());
        }
    }

    /// True for a file the config reads, a link on the way to one, the
    /// include directory itself, or a `*.toml` file in it.
    pub fn matches(&self, p: &Path) -> bool {
        self.files.contains(p)
            || (p.extension().is_some_and(|x| x == "toml") && self.toml_dirs.contains(&parent(p)))
    }
}

/// What an event on a relevant path means. Settled: a file holds what its
/// writer meant (a close after writing, a rename, a creation, a deletion,
/// a change of mode or owner). Activity: a bare write, which a close will
/// follow (a writer that truncates a file, pauses, then writes the rest
/// must not have the truncated, empty, valid content applied). Nothing: a
/// reader opening, reading or closing the file (inotify reports those too,
/// and a reader polling every 50 ms must not hold a reload back, nor 2,000
/// sources reading one secret file at each fetch).
fn classify(kind: &EventKind) -> Option<Change> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Settled),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Data(_)) => Some(Change::Activity),
        EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => Some(Change::Settled),
        EventKind::Any | EventKind::Other => Some(Change::Settled),
    }
}

/// What a batch of file events on relevant paths means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A file was written and closed, renamed, created or removed: worth a
    /// reload once things are quiet.
    Settled,
    /// A write in progress: it delays a pending reload but causes none.
    Activity,
}

/// The file watcher: events for relevant paths arrive on a channel. It
/// sleeps in the kernel until one comes (no polling, no ticking timer);
/// the daemon's loop waits for quiet before it reads (see [`QUIET`]).
pub struct Watcher {
    inner: RecommendedWatcher,
    relevant: Arc<RwLock<Relevant>>,
    watched: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts watching; each event on a relevant path that changes
    /// something sends a [`Change`]. Events on other paths, and reads, are
    /// dropped here, unlogged.
    pub fn new(tx: mpsc::UnboundedSender<Change>) -> Result<Watcher, notify::Error> {
        let relevant = Arc::new(RwLock::new(Relevant::default()));
        let filter = relevant.clone();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let r = filter.read_locked();
            if !event.paths.iter().any(|p| r.matches(p)) {
                return;
            }
            if let Some(change) = classify(&event.kind) {
                let _ = tx.send(change);
            }
        })?;
        Ok(Watcher {
            inner,
            relevant,
            watched: BTreeSet::new(),
        })
    }

    /// Watches exactly `relevant.dirs` (those that exist) from now on.
    /// Returns true if a directory is watched that was not before.
    pub fn follow(&mut self, relevant: Relevant) -> bool {
        let want: BTreeSet<PathBuf> = relevant
            .dirs
            .iter()
            .filter(|d| d.is_dir())
            .cloned()
            .collect();
        for gone in self.watched.difference(&want) {
            let _ = self.inner.unwatch(gone);
        }
        let mut grew = false;
        for new in want.difference(&self.watched) {
            grew = true;
            if let Err(e) = self.inner.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %crate::text::path(new), error = %e, "cannot watch directory; changes there need SIGHUP");
            }
        }
        self.watched = want;
        *self.relevant.write_locked() = relevant;
        grew
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_follows_every_link_at_any_depth() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        // etc/tokend.toml -> data/tokend.toml, data -> v1, v1/tokend.toml -> ../shared/main.toml
        for d in ["etc/v1", "etc/shared"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/shared/main.toml"), "").unwrap();
        symlink("../shared/main.toml", root.join("etc/v1/tokend.toml")).unwrap();
        symlink("v1", root.join("etc/data")).unwrap();
        symlink("data/tokend.toml", root.join("etc/tokend.toml")).unwrap();
        assert_eq!(
            links(&root.join("etc/tokend.toml")),
            [
                "etc/tokend.toml",
                "etc/data",
                "etc/v1/tokend.toml",
                "etc/shared/main.toml"
            ]
            .map(|p| root.join(p))
        );
        // An absolute link in a directory of the path, and a missing end.
        symlink(root.join("etc/v1"), root.join("abs")).unwrap();
        assert_eq!(
            links(&root.join("abs/missing/x")),
            [root.join("abs"), root.join("etc/v1/missing")]
        );
        // A loop ends.
        symlink("loop", root.join("loop")).unwrap();
        assert!(links(&root.join("loop")).len() <= MAX_LINKS + 1);
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind};
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert_eq!(classify(&read), None, "{read:?}");
        }
        assert_eq!(
            classify(&EventKind::Modify(ModifyKind::Data(DataChange::Any))),
            Some(Change::Activity)
        );
        for settled in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Ownership)),
        ] {
            assert_eq!(classify(&settled), Some(Change::Settled), "{settled:?}");
        }
    }

    #[test]
    fn relevance_filter() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("releases/42/sources.d")).unwrap();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        symlink("releases/42", root.join("current")).unwrap();
        let mut r = Relevant::default();
        r.add_file(&root.join("current/tokend.toml"));
        r.add_toml_dir(&root.join("current/sources.d"));
        // Not there yet: its creation is what counts.
        r.add_file(&root.join("secrets/graph"));
        for yes in [
            "current",
            "releases/42/tokend.toml",
            "releases/42/sources.d",
            "releases/42/sources.d/a.toml",
            "secrets/graph",
        ] {
            assert!(r.matches(&root.join(yes)), "{yes}");
        }
        for no in [
            "current.new",
            "releases/42/tokend.sock",
            "releases/42/sources.d/a.toml.swp",
            "releases/42/other.toml",
            "releases/43/tokend.toml",
            "secrets/other",
        ] {
            assert!(!r.matches(&root.join(no)), "{no}");
        }
        for dir in ["", "releases/42", "releases/42/sources.d"] {
            assert!(r.dirs.contains(&root.join(dir)), "{dir} watched");
        }
    }
}
