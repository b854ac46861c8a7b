//! Hot reload: file watching and SIGHUP lead to the same validate-then-swap.
//!
//! The whole cycle lives here: watch ([`watch`]), wait for the files to be
//! quiet, watch again (a directory may have appeared), read ([`read`]),
//! apply, and watch what the new config reads. Whether anything changed is
//! decided from the bytes on disk now (the config files, and every file a
//! source reads), never from what is held in memory; an unchanged state
//! makes an event free, and lets the first check after start-up find an
//! edit made before the watcher existed. Reading and parsing run in the
//! blocking pool.
//!
//! Invariants: a failed reload changes nothing that is running; a file is
//! not read while its writer is half-way through; a file is watched before
//! it is read.

mod read;
mod watch;

use crate::broker::mi::MiState;
use crate::broker::Broker;
use crate::config::{self, Config};
use crate::secret::SecretEnv;
use crate::systemd;
use read::{fingerprints, state_of, Loaded, Look, Reading};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
pub use watch::QUIET;
use watch::{Inputs, Relevant, Watch};

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

/// Owns the running config and the watch on its files, and turns triggers
/// into `Broker::apply` calls.
pub struct Reloads {
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
    /// `None` for a fixed config, or when the files cannot be watched.
    watch: Option<Watch>,
    /// Look at the files once more, now: a directory was just watched, and
    /// an edit may have been made there before the watch.
    catch_up: bool,
}

/// [`Reloads`] on its way (see [`Reloads::start`]).
pub struct Starting {
    from: ConfigSource,
    env: SecretEnv,
    running: Arc<Config>,
    watch: Option<Watch>,
    read: tokio::task::JoinHandle<(BTreeMap<String, u64>, MiState)>,
    look: Option<tokio::task::JoinHandle<u64>>,
}

impl Reloads {
    /// Watches the files `config` was read from (before anything else: an
    /// edit from now on is an event), then starts taking what start-up
    /// needs besides the config, off the runtime while the daemon binds its
    /// sockets: the secrets' fingerprints, the managed-identity headers,
    /// and for a file one more look at the files (a later look could catch
    /// a writer half-way, which only events should report).
    /// [`Starting::finish`] applies the config.
    pub fn start(config: Config, from: ConfigSource, env: SecretEnv) -> Starting {
        let watch = match &from {
            ConfigSource::File(main) => {
                // Reads links; the runtime has nothing else to do yet.
                let relevant =
                    tokio::task::block_in_place(|| Relevant::walk(Inputs::of(main, &config, &env)));
                match Watch::start(relevant) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the configuration; reload with SIGHUP");
                        None
                    }
                }
            }
            ConfigSource::Fixed(_) => None,
        };
        let running = Arc::new(config);
        let look = match &from {
            ConfigSource::File(path) => {
                let (path, dir) = (path.clone(), watch::include_dir(path, &running));
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
            watch,
            read,
            look,
        }
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Returns when the files call for a reload: a settled change followed
    /// by quiet, or a catch-up look. Pending forever with no watch.
    /// Cancel-safe.
    pub async fn due(&mut self) -> Trigger {
        if std::mem::take(&mut self.catch_up) {
            return Trigger::Files;
        }
        match &mut self.watch {
            Some(w) => w.settled().await,
            None => std::future::pending().await,
        }
        Trigger::Files
    }

    /// One reload: watch first, read, apply or refuse, watch what was read.
    /// Tells systemd it is reloading while it applies. Returns true if a new
    /// config was applied.
    pub async fn reload(&mut self, trigger: Trigger) -> bool {
        if !self.watch_first(trigger).await {
            return false;
        }
        let Some(reading) = self.read(trigger).await else {
            return false;
        };
        systemd::reloading();
        let applied = self.finish(reading);
        systemd::ready(&self.broker.summary());
        applied
    }

    /// Watch first, then read: a directory created since the last look
    /// (sources.d, say) is watched before its files are read, so no write
    /// into it can fall between the two. False when the read must wait: a
    /// directory that just appeared may still be filling.
    async fn watch_first(&mut self, trigger: Trigger) -> bool {
        let (ConfigSource::File(main), Some(watch)) = (&self.from, &mut self.watch) else {
            return true;
        };
        let inputs = Inputs::of(main, &self.running, &self.env)
            .and(self.refused.as_deref().unwrap_or_default());
        let relevant = tokio::task::spawn_blocking(move || Relevant::walk(inputs))
            .await
            .unwrap_or_default();
        let grew = watch.follow(relevant);
        if grew && trigger == Trigger::Files {
            watch.wait_again();
            return false;
        }
        true
    }

    /// Reads what a reload needs for `trigger`, off the async runtime (file
    /// reads and name-service look-ups). `None` when there is nothing to do:
    /// a file event that finds files and secrets as last seen. A signal
    /// always reloads (and counts).
    async fn read(&mut self, trigger: Trigger) -> Option<Reading> {
        let main = match &self.from {
            ConfigSource::File(p) => p.clone(),
            ConfigSource::Fixed(c) => {
                return (trigger == Trigger::Signal).then(|| Reading {
                    loaded: Ok(Loaded::of((**c).clone(), &self.env)),
                    watch: None,
                });
            }
        };
        let look = Look {
            main,
            running: self.running.clone(),
            env: self.env.clone(),
            seen: self.seen,
            refused: self.refused.is_some(),
            watched: self.watch.as_ref().map(|w| w.inputs().clone()),
        };
        match tokio::task::spawn_blocking(move || look.read(trigger)).await {
            Ok((state, reading)) => {
                self.seen = state;
                reading
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the configuration failed");
                None
            }
        }
    }

    /// Applies what [`Reloads::read`] found: a valid config replaces the
    /// running one; an invalid one changes nothing and is reported. Then
    /// watches what the reading names. Returns true if a new config was
    /// applied.
    fn finish(&mut self, reading: Reading) -> bool {
        let applied = match reading.loaded {
            Ok(new) => {
                self.refused = None;
                self.apply(new);
                true
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
        };
        if let (Some(watch), Some(relevant)) = (self.watch.as_mut(), reading.watch) {
            // The new config may name files in directories not watched so
            // far: look once more for an edit made there between the read
            // and the watch.
            let grew = watch.follow(relevant);
            self.catch_up = grew && applied;
        }
        applied
    }

    fn apply(&mut self, new: Loaded) {
        let Loaded {
            config: new,
            fps,
            mi,
        } = new;
        let new = new.rehome();
        warn_restart_needed(&self.running, &new);
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
    }
}

/// Settings read once at start-up: a change is logged, not applied.
fn warn_restart_needed(running: &Config, new: &Config) {
    if new.server != running.server {
        tracing::warn!("[server] settings changed; they take effect after a restart");
    }
    let listen = |c: &Config| c.managed_identity.as_ref().map(|m| m.listen);
    if listen(new) != listen(running) {
        tracing::warn!("[managed_identity] listen changed; the endpoint moves after a restart (its apps change now)");
    }
    let imds = |c: &Config| c.imds.as_ref().map(|i| i.listen);
    if imds(new) != imds(running) {
        tracing::warn!(
            "[imds] listen changed; the door moves after a restart (its sources change now)"
        );
    }
}

impl Starting {
    /// The config being started.
    pub fn config(&self) -> &Config {
        &self.running
    }

    /// Applies the config to `broker`. If the config files changed since
    /// they were read, before the watch (an edit made during start-up),
    /// the first [`Reloads::due`] applies it. The secrets need no second
    /// look: their fingerprints were taken after the watch.
    pub async fn finish(self, broker: Arc<Broker>) -> Reloads {
        let (fps, mi) = self.read.await.unwrap_or_default();
        broker.apply(&self.running, &fps);
        broker.set_managed_identity(mi);
        let changed = match self.look {
            Some(look) => look.await.map_or(true, |now| now != self.running.digest),
            None => false,
        };
        Reloads {
            seen: state_of(self.running.digest, &fps),
            catch_up: self.watch.is_some() && changed,
            from: self.from,
            broker,
            env: self.env,
            running: self.running,
            refused: None,
            watch: self.watch,
        }
    }
}
