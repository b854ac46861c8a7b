//! What a reload reads, off the async runtime: the files' state, the new
//! config, its secrets' fingerprints and managed-identity headers, and the
//! paths to watch next.

use super::watch::{include_dir, Inputs, Relevant};
use super::Trigger;
use crate::broker::mi::MiState;
use crate::config::{self, Config, ConfigError};
use crate::secret::{Fingerprinter, SecretEnv};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A config with what applying it needs besides: its secrets'
/// fingerprints and its managed-identity headers.
pub struct Loaded {
    pub config: Config,
    pub fps: BTreeMap<String, u64>,
    pub mi: MiState,
}

impl Loaded {
    /// Reads secret and header files: call it off the async runtime.
    pub fn of(config: Config, env: &SecretEnv) -> Loaded {
        Loaded {
            fps: fingerprints(&config, env),
            mi: MiState::load(&config, env),
            config,
        }
    }
}

/// What a reload read: the new config, or why it is invalid; and, when
/// the watch must change, the paths to watch from now on.
pub struct Reading {
    pub loaded: Result<Loaded, ConfigError>,
    pub watch: Option<Relevant>,
}

/// A look at the files for a reload of `main`.
pub struct Look {
    pub main: PathBuf,
    pub running: Arc<Config>,
    pub env: SecretEnv,
    /// The state on disk last acted on.
    pub seen: u64,
    /// The last reload was refused: read whatever the state (a fix may lie
    /// in a file the running config does not read).
    pub refused: bool,
    /// What is watched now (`None`: nothing is).
    pub watched: Option<Inputs>,
}

impl Look {
    /// The state on disk now, and what a reload for `trigger` reads:
    /// `None` for a file event that finds the state as last seen. Reads
    /// files: call it off the async runtime.
    pub fn read(&self, trigger: Trigger) -> (u64, Option<Reading>) {
        let (main, running, env) = (self.main.as_path(), &*self.running, &self.env);
        let state = disk_state(main, running, env);
        if trigger == Trigger::Files && state == self.seen && !self.refused {
            return (state, None);
        }
        let loaded = config::load_nonempty(main)
            .and_then(|new| keeps_include_dir(main, running, new))
            .map(|new| Loaded::of(new, env));
        let watch = self.watched.as_ref().and_then(|watched| {
            // Files a refused config names are watched too (a `ca_file`
            // not there yet), so the fix is an event.
            let inputs = match &loaded {
                Ok(new) => Inputs::of(main, &new.config, env),
                Err(e) => Inputs::of(main, running, env).and(e.named_files()),
            };
            (inputs != *watched).then(|| Relevant::walk(inputs))
        });
        (state, Some(Reading { loaded, watch }))
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

/// The state of what loading `path` with `running`'s include directory and
/// secrets would read now. Reads files: off the async runtime.
fn disk_state(path: &Path, running: &Config, env: &SecretEnv) -> u64 {
    state_of(
        config::disk_digest(path, &include_dir(path, running)),
        &fingerprints(running, env),
    )
}

/// What a reload would read: the config files' digest and the secrets' fingerprints.
pub fn state_of(digest: u64, fps: &BTreeMap<String, u64>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    digest.hash(&mut h);
    fps.hash(&mut h);
    h.finish()
}
