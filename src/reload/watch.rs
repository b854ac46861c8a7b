//! Which files a configuration reads, and the watcher that reports their
//! changes.
//!
//! Every file the config reads (the main file, the include directory,
//! secrets, certificates, keys, assertions, `ca_file`, managed-identity
//! headers) is followed through its whole chain of symbolic links: the
//! watcher watches the *directory* of each link and of where it leads, so
//! editor renames, delete-and-recreate, a Kubernetes ConfigMap's `..data`
//! swap and a deploy tool's `current -> releases/42` re-pointed at any depth
//! are all seen. Events are filtered to those names, and only settled ones
//! (a close after writing, a rename, a creation, a removal) are reported.

use crate::config::Config;
use crate::secret::SecretEnv;
use crate::sync::RwLocked;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a config reads, before any link is followed: its files and its
/// include directory. Two configs with the same inputs watch the same
/// paths, so a reload that changes no path walks no link twice.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inputs {
    files: BTreeSet<PathBuf>,
    toml_dir: Option<PathBuf>,
}

impl Inputs {
    /// What `config`, loaded from `main`, reads. Reads no file.
    pub fn of(main: &Path, config: &Config, env: &SecretEnv) -> Inputs {
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
        Inputs {
            files,
            toml_dir: Some(include_dir(main, config)),
        }
    }

    /// These, and `more` files besides (those a refused config named).
    pub fn and(mut self, more: &[PathBuf]) -> Inputs {
        self.files.extend(more.iter().cloned());
        self
    }
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

pub fn include_dir(main: &Path, config: &Config) -> PathBuf {
    config
        .include_dir
        .clone()
        .unwrap_or_else(|| parent(main).join("sources.d"))
}

/// Which file events deserve a look.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Relevant {
    /// What was walked to find these paths.
    inputs: Inputs,
    /// Directories to watch (non-recursively).
    pub dirs: BTreeSet<PathBuf>,
    /// Files whose events count.
    files: BTreeSet<PathBuf>,
    /// Directories in which any `*.toml` counts (the include directory).
    toml_dirs: BTreeSet<PathBuf>,
}

impl Relevant {
    /// The paths whose changes matter to a config reading `inputs`: every
    /// file and every link on the way to each (see [`links`]). Reads
    /// links: call it off the async runtime.
    pub fn walk(inputs: Inputs) -> Relevant {
        let mut r = Relevant::default();
        if let Some(dir) = &inputs.toml_dir {
            r.add_toml_dir(dir);
        }
        for p in &inputs.files {
            r.add_file(p);
        }
        r.inputs = inputs;
        r
    }

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

/// After a settled change, how long no further change may arrive before
/// the files are read: a writer that is still at it is waited for, and a
/// burst of events (an editor's save, a ConfigMap swap) makes one reload.
pub const QUIET: Duration = Duration::from_millis(100);

/// The watch on a config's files: the watcher, what it was set up from,
/// and the wait for quiet after its events.
pub struct Watch {
    watcher: Watcher,
    quiet: Quiet,
    inputs: Inputs,
}

impl Watch {
    /// Starts watching what `relevant` names.
    pub fn start(relevant: Relevant) -> Result<Watch, notify::Error> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watch = Watch {
            watcher: Watcher::new(tx)?,
            quiet: Quiet::new(events),
            inputs: Inputs::default(),
        };
        watch.follow(relevant);
        Ok(watch)
    }

    /// Watches exactly what `relevant` names from now on. Returns true if
    /// a directory is watched that was not before.
    pub fn follow(&mut self, relevant: Relevant) -> bool {
        self.inputs = relevant.inputs.clone();
        self.watcher.follow(relevant)
    }

    /// What the watched paths were walked from.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// Returns once a settled change has been followed by [`QUIET`] with no
    /// other event. Cancel-safe: what arrived before a cancel is kept.
    pub async fn settled(&mut self) {
        self.quiet.settled().await;
    }

    /// A directory was just watched for the first time (a `sources.d`
    /// being copied into place) and may still be filling: its writes are
    /// events from now on, so wait for them to be quiet too.
    pub fn wait_again(&mut self) {
        self.quiet.restart();
    }
}

/// The wait for quiet: a settled change is pending until [`QUIET`] passes
/// with no event.
struct Quiet {
    events: mpsc::UnboundedReceiver<Change>,
    /// A settled change is pending, to be read at `at`.
    settled: bool,
    at: Option<Instant>,
}

impl Quiet {
    fn new(events: mpsc::UnboundedReceiver<Change>) -> Quiet {
        Quiet {
            events,
            settled: false,
            at: None,
        }
    }

    fn restart(&mut self) {
        self.settled = true;
        self.at = Some(Instant::now() + QUIET);
    }

    async fn settled(&mut self) {
        loop {
            tokio::select! {
                change = self.events.recv() => match change {
                    // Read only once the files have been quiet for a
                    // moment after a settled change (a close after
                    // writing, a rename): never a file a writer is still
                    // filling. A bare write only delays.
                    Some(change) => {
                        self.settled |= change == Change::Settled;
                        self.at = Some(Instant::now() + QUIET);
                    }
                    // The watcher is gone: no event will come.
                    None => std::future::pending().await,
                },
                () = crate::timefmt::sleep_until_opt(self.at) => {
                    self.at = None;
                    if std::mem::take(&mut self.settled) {
                        return;
                    }
                }
            }
        }
    }
}

/// The file watcher: events for relevant paths arrive on a channel. It
/// sleeps in the kernel until one comes (no polling, no ticking timer);
/// [`Watch`] waits for quiet before a reload reads (see [`QUIET`]).
struct Watcher {
    inner: RecommendedWatcher,
    relevant: Arc<RwLock<Relevant>>,
    watched: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts watching; each event on a relevant path that changes
    /// something sends a [`Change`]. Events on other paths, and reads, are
    /// dropped here, unlogged.
    fn new(tx: mpsc::UnboundedSender<Change>) -> Result<Watcher, notify::Error> {
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
    fn follow(&mut self, relevant: Relevant) -> bool {
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

    /// Waits on the paused clock for `quiet` to report a settled change.
    async fn reported_after(quiet: &mut Quiet, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        tokio::time::timeout(within, quiet.settled())
            .await
            .ok()
            .map(|()| start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_reload_after_quiet() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut quiet = Quiet::new(rx);
        // An editor's save: a write, a close, a rename, 30 ms apart.
        let writer = tokio::spawn(async move {
            for change in [Change::Activity, Change::Settled, Change::Settled] {
                tx.send(change).unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Then nothing, but the channel stays open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        // Reported once, QUIET after the last event (at 60 ms).
        let at = reported_after(&mut quiet, Duration::from_secs(10)).await;
        assert_eq!(at, Some(Duration::from_millis(60) + QUIET));
        // And not again: nothing new arrived.
        assert_eq!(
            reported_after(&mut quiet, Duration::from_secs(10)).await,
            None
        );
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_is_never_closed_is_not_read() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut quiet = Quiet::new(rx);
        // A writer that truncates, then pauses: the empty file is not read.
        tx.send(Change::Activity).unwrap();
        assert_eq!(
            reported_after(&mut quiet, Duration::from_secs(10)).await,
            None
        );
        // Its close is.
        tx.send(Change::Settled).unwrap();
        assert_eq!(
            reported_after(&mut quiet, Duration::from_secs(10)).await,
            Some(QUIET)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_keeps_what_arrived() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut quiet = Quiet::new(rx);
        tx.send(Change::Settled).unwrap();
        // The daemon's loop picks another branch (a signal) after 50 ms.
        assert_eq!(
            reported_after(&mut quiet, Duration::from_millis(50)).await,
            None
        );
        // The change is still pending, and due QUIET after it arrived.
        assert_eq!(
            reported_after(&mut quiet, Duration::from_secs(10)).await,
            Some(QUIET - Duration::from_millis(50))
        );
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
