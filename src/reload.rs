//! Hot reload (SPEC §8): file watching and SIGHUP lead to the same
//! validate-then-swap.
//!
//! The watcher watches the *directories* holding the main file, the include
//! directory and every secret file the config names, so editor renames,
//! delete-and-recreate and a Kubernetes ConfigMap's `..data` symlink swap are
//! all seen; events are debounced, filtered to the paths that matter, and a
//! content hash makes the rest free. The watched set follows the config.
//!
//! Invariant: a failed reload changes nothing that is running.

use crate::broker::Broker;
use crate::config::{self, Config};
use crate::secret::SecretEnv;
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the file system must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

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
    running: Config,
    last_hash: u64,
}

/// Each source's credential fingerprint (see [`crate::secret::SecretRef::fingerprint`]).
pub fn fingerprints(config: &Config, env: &SecretEnv) -> BTreeMap<String, u64> {
    config
        .sources
        .iter()
        .map(|(n, s)| (n.clone(), s.client_secret.fingerprint(env)))
        .collect()
}

impl Reloader {
    /// Applies `running` to the broker (start-up) and remembers its content hash.
    pub fn start(
        from: ConfigSource,
        broker: Arc<Broker>,
        env: SecretEnv,
        running: Config,
    ) -> Reloader {
        let fps = fingerprints(&running, &env);
        broker.apply(&running, &fps);
        let last_hash = state_hash(&running, &fps);
        Reloader {
            from,
            broker,
            env,
            running,
            last_hash,
        }
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Whether a trigger calls for a reload: always for a signal; for file
    /// events only if what a reload would read has changed.
    pub fn wanted(&mut self, trigger: Trigger) -> bool {
        if trigger == Trigger::Signal || !matches!(self.from, ConfigSource::File(_)) {
            return true;
        }
        let h = state_hash(&self.running, &fingerprints(&self.running, &self.env));
        if h == self.last_hash {
            return false;
        }
        self.last_hash = h;
        true
    }

    /// Reloads now. Returns true if a new config was applied.
    pub fn reload(&mut self) -> bool {
        let loaded = match &self.from {
            ConfigSource::File(p) => config::load(p),
            ConfigSource::Fixed(c) => Ok((**c).clone()),
        };
        match loaded {
            Ok(new) => {
                if new.server != self.running.server {
                    tracing::warn!("[server] settings changed; they take effect after a restart");
                }
                for w in new
                    .warnings
                    .iter()
                    .filter(|w| !self.running.warnings.contains(w))
                {
                    tracing::warn!("{w}");
                }
                let fps = fingerprints(&new, &self.env);
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
                self.last_hash = state_hash(&new, &fps);
                self.running = new;
                true
            }
            Err(e) => {
                for p in e.problems() {
                    tracing::error!("reload failed, keeping the running configuration: {p}");
                }
                self.broker.record_reload_error(e.to_string());
                self.broker.count_reload(false);
                false
            }
        }
    }

    /// The paths whose changes matter to the running config.
    pub fn relevant(&self) -> Relevant {
        let ConfigSource::File(main) = &self.from else {
            return Relevant::default();
        };
        let mut r = Relevant::default();
        r.files.insert(main.clone());
        let include = include_dir(main, &self.running);
        r.dirs.insert(parent(main));
        r.toml_dirs.insert(include.clone());
        r.dirs.insert(include);
        for s in self.running.sources.values() {
            if let Some(p) = s.client_secret.path(&self.env) {
                r.dirs.insert(parent(&p));
                r.files.insert(p);
            }
        }
        r
    }
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

/// Hash of everything a reload would read: the main file, the include
/// directory's `*.toml` files, and the secrets' fingerprints `fps`.
fn state_hash(config: &Config, fps: &BTreeMap<String, u64>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&config.path)
        .map_err(|e| e.kind())
        .hash(&mut h);
    let dir = include_dir(&config.path, config);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            f.hash(&mut h);
            std::fs::read(&f).map_err(|e| e.kind()).hash(&mut h);
        }
    }
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
    /// True for the main file, an include file, a secret file, the include
    /// directory itself, or a Kubernetes `..data` swap in a watched directory.
    pub fn matches(&self, p: &Path) -> bool {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        self.files.contains(p)
            || self.toml_dirs.contains(p)
            || (name.starts_with("..data") && self.dirs.contains(&parent(p)))
            || (p.extension().is_some_and(|x| x == "toml") && self.toml_dirs.contains(&parent(p)))
    }
}

/// The file watcher: debounced events for relevant paths arrive on a channel.
pub struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    relevant: Arc<RwLock<Relevant>>,
    watched: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts watching; each debounced batch with a relevant path sends `()`.
    pub fn new(
        tx: mpsc::UnboundedSender<()>,
    ) -> Result<Watcher, notify_debouncer_full::notify::Error> {
        let relevant = Arc::new(RwLock::new(Relevant::default()));
        let filter = relevant.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
            let Ok(events) = res else { return };
            let r = filter.read().unwrap_or_else(|p| p.into_inner());
            if events.iter().any(|e| e.paths.iter().any(|p| r.matches(p))) {
                let _ = tx.send(());
            }
        })?;
        Ok(Watcher {
            debouncer,
            relevant,
            watched: BTreeSet::new(),
        })
    }

    /// Watches exactly `relevant.dirs` (those that exist) from now on.
    pub fn follow(&mut self, relevant: Relevant) {
        let want: BTreeSet<PathBuf> = relevant
            .dirs
            .iter()
            .filter(|d| d.is_dir())
            .cloned()
            .collect();
        for gone in self.watched.difference(&want) {
            let _ = self.debouncer.unwatch(gone);
        }
        for new in want.difference(&self.watched) {
            if let Err(e) = self.debouncer.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %new.display(), error = %e, "cannot watch directory; changes there need SIGHUP");
            }
        }
        self.watched = want;
        *self.relevant.write().unwrap_or_else(|p| p.into_inner()) = relevant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_filter() {
        let mut r = Relevant::default();
        r.dirs.insert("/etc/tokend".into());
        r.dirs.insert("/etc/tokend/sources.d".into());
        r.files.insert("/etc/tokend/tokend.toml".into());
        r.files.insert("/run/secrets/graph".into());
        r.toml_dirs.insert("/etc/tokend/sources.d".into());
        for yes in [
            "/etc/tokend/tokend.toml",
            "/etc/tokend/..data",
            "/etc/tokend/..data_tmp",
            "/etc/tokend/sources.d/a.toml",
            "/etc/tokend/sources.d",
            "/run/secrets/graph",
        ] {
            assert!(r.matches(Path::new(yes)), "{yes}");
        }
        for no in [
            "/etc/tokend/tokend.sock",
            "/etc/tokend/tokend.log",
            "/etc/tokend/sources.d/a.toml.swp",
            "/etc/tokend/other.toml",
            "/run/secrets/other",
        ] {
            assert!(!r.matches(Path::new(no)), "{no}");
        }
    }
}
