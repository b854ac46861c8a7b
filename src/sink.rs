//! File sinks (docs/behaviour.md, "File sinks"): each source's current token
//! in files, for programs that can only read a file.
//!
//! One task does every sink's file work, in the order events were sent, so
//! a removed source's delete can never land after its successor's write.
//! Events name a source *generation* (one per started source task): events
//! of a generation that was replaced are ignored.
//!
//! Invariants:
//! - a reader sees a whole file with the configured mode, owner and group,
//!   or the previous one: a file is written beside its target under a fresh
//!   name (`O_EXCL | O_NOFOLLOW`), given its mode and owner, synced, and
//!   renamed over the target;
//! - no file holds a token that is no longer served: it is deleted when
//!   the token stops being servable with no new one, when its sink or its
//!   source is removed, or when its source's identity changes;
//! - on shutdown files stay: a restart writes them again.

use crate::config::{SinkConfig, SinkFormat};
use crate::metrics::{Metrics, SourceOutcome};
use crate::secret::ExposeSecret;
use crate::token::Token;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

enum Event {
    /// The source's settings in force, with the token it holds now.
    Configure {
        source: String,
        generation: u64,
        sinks: Vec<SinkConfig>,
        token: Option<Arc<Token>>,
    },
    /// A fetch succeeded.
    Token {
        source: String,
        generation: u64,
        token: Arc<Token>,
    },
    /// The source was removed.
    Remove { source: String, generation: u64 },
}

/// The sender side, held by the broker and every source task.
#[derive(Debug, Clone)]
pub struct Sinks {
    tx: mpsc::UnboundedSender<Event>,
    warnings: Arc<Warnings>,
}

/// Each source's failing sinks, by path: what status shows.
type Warnings = Mutex<HashMap<String, BTreeMap<std::path::PathBuf, String>>>;

impl Sinks {
    /// Starts the task that writes sink files. It stops, leaving every
    /// file in place, when `shutdown` is cancelled.
    pub fn start(metrics: Arc<Metrics>, shutdown: CancellationToken) -> Sinks {
        let (tx, rx) = mpsc::unbounded_channel();
        let warnings = Arc::new(Warnings::default());
        let worker = Worker {
            entries: HashMap::new(),
            metrics,
            warnings: warnings.clone(),
        };
        tokio::spawn(worker.run(rx, shutdown));
        Sinks { tx, warnings }
    }

    pub fn configure(
        &self,
        source: &str,
        generation: u64,
        sinks: Vec<SinkConfig>,
        token: Option<Arc<Token>>,
    ) {
        let _ = self.tx.send(Event::Configure {
            source: source.to_string(),
            generation,
            sinks,
            token,
        });
    }

    pub fn token(&self, source: &str, generation: u64, token: Arc<Token>) {
        let _ = self.tx.send(Event::Token {
            source: source.to_string(),
            generation,
            token,
        });
    }

    pub fn remove(&self, source: &str, generation: u64) {
        let _ = self.tx.send(Event::Remove {
            source: source.to_string(),
            generation,
        });
    }

    /// Why the source's sinks could not be written, one line per sink.
    pub fn warnings(&self, source: &str) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }
}

struct Entry {
    generation: u64,
    sinks: Vec<SinkConfig>,
    /// The token the files hold (or should): `None` once it stopped being
    /// servable and its files were deleted.
    token: Option<Arc<Token>>,
}

struct Worker {
    entries: HashMap<String, Entry>,
    metrics: Arc<Metrics>,
    warnings: Arc<Warnings>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>, shutdown: CancellationToken) {
        loop {
            let deadline = self.next_expiry();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = rx.recv() => match event {
                    Some(e) => self.handle(e).await,
                    None => break,
                },
                () = crate::timefmt::sleep_until_opt(deadline), if deadline.is_some() => {
                    self.expire().await;
                }
            }
        }
    }

    /// When the earliest token a file holds stops being servable.
    fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.token.as_ref())
            .map(|t| t.servable_until())
            .min()
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Configure {
                source,
                generation,
                sinks,
                token,
            } => {
                let old = self.entries.remove(&source);
                let mut token = token.filter(|t| t.servable_at(Instant::now()));
                let mut stale = Vec::new();
                let mut changed: Vec<SinkConfig> = sinks.clone();
                match old {
                    // The same source task: keep the newer token; delete
                    // the sinks that went, write the new or changed ones.
                    Some(old) if old.generation == generation => {
                        token = newer(token, old.token);
                        stale = old
                            .sinks
                            .iter()
                            .filter(|o| !sinks.iter().any(|n| n.path == o.path))
                            .cloned()
                            .collect();
                        changed.retain(|n| !old.sinks.contains(n));
                    }
                    // A new task (identity changed): the old token must go.
                    Some(old) => stale = old.sinks,
                    None => {}
                }
                self.delete(&source, &stale).await;
                if let Some(t) = &token {
                    self.write(&source, &changed, t).await;
                }
                if sinks.is_empty() {
                    self.forget_warnings(&source);
                } else {
                    self.entries.insert(
                        source,
                        Entry {
                            generation,
                            sinks,
                            token,
                        },
                    );
                }
            }
            Event::Token {
                source,
                generation,
                token,
            } => {
                let Some(entry) = self.entries.get_mut(&source) else {
                    return;
                };
                if entry.generation != generation {
                    return;
                }
                entry.token = Some(token.clone());
                let sinks = entry.sinks.clone();
                self.write(&source, &sinks, &token).await;
            }
            Event::Remove { source, generation } => {
                if self
                    .entries
                    .get(&source)
                    .is_some_and(|e| e.generation == generation)
                {
                    if let Some(entry) = self.entries.remove(&source) {
                        self.delete(&source, &entry.sinks).await;
                    }
                    self.forget_warnings(&source);
                }
            }
        }
    }

    /// Deletes the files of every token that is no longer servable.
    async fn expire(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (source, entry) in &mut self.entries {
            if entry.token.as_ref().is_some_and(|t| !t.servable_at(now)) {
                entry.token = None;
                gone.push((source.clone(), entry.sinks.clone()));
            }
        }
        for (source, sinks) in gone {
            tracing::warn!(
                source = %source,
                "the token expired with no new one: its sink files are removed so no reader picks up a dead token"
            );
            self.delete(&source, &sinks).await;
        }
    }

    async fn write(&self, source: &str, sinks: &[SinkConfig], token: &Arc<Token>) {
        for sink in sinks {
            let contents = render(source, sink.format, token);
            let job = sink.clone();
            let result = tokio::task::spawn_blocking(move || write_atomic(&job, &contents))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let outcome = if result.is_ok() { "success" } else { "error" };
            self.metrics
                .sink_writes
                .get_or_create(&SourceOutcome {
                    source: source.to_string(),
                    outcome,
                })
                .inc();
            match result {
                Ok(()) => self.set_warning(source, sink, None),
                Err(e) => {
                    tracing::warn!(
                        source = %source,
                        path = %sink.path.display(),
                        error = %e,
                        "cannot write the sink file; the socket still serves the token, and the next fetch tries again"
                    );
                    self.set_warning(
                        source,
                        sink,
                        Some(format!(
                            "sink {} could not be written: {e}",
                            sink.path.display()
                        )),
                    );
                }
            }
        }
    }

    async fn delete(&self, source: &str, sinks: &[SinkConfig]) {
        for sink in sinks {
            let path = sink.path.clone();
            let result = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(Err(e)) => tracing::warn!(
                    source = %source,
                    path = %sink.path.display(),
                    error = %e,
                    "cannot remove the sink file"
                ),
                Err(e) => tracing::warn!(source = %source, error = %e, "sink removal failed"),
            }
            self.set_warning(source, sink, None);
        }
    }

    fn set_warning(&self, source: &str, sink: &SinkConfig, warning: Option<String>) {
        let mut all = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        match warning {
            Some(w) => {
                all.entry(source.to_string())
                    .or_default()
                    .insert(sink.path.clone(), w);
            }
            None => {
                if let Some(w) = all.get_mut(source) {
                    w.remove(&sink.path);
                    if w.is_empty() {
                        all.remove(source);
                    }
                }
            }
        }
    }

    fn forget_warnings(&self, source: &str) {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(source);
    }
}

/// The later-expiring of two tokens.
fn newer(a: Option<Arc<Token>>, b: Option<Arc<Token>>) -> Option<Arc<Token>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.expires_at > a.expires_at { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// What a sink file of `format` holds for `token`.
fn render(source: &str, format: SinkFormat, token: &Token) -> Zeroizing<Vec<u8>> {
    match format {
        SinkFormat::Raw => Zeroizing::new(token.access_token.expose_secret().as_bytes().to_vec()),
        SinkFormat::Json => crate::token::json(source, token),
        SinkFormat::Header => {
            let mut out = Zeroizing::new(Vec::new());
            let kind = if token.token_type.eq_ignore_ascii_case("bearer") {
                "Bearer"
            } else {
                &token.token_type
            };
            // Writing to a Vec cannot fail.
            let _ = writeln!(
                out,
                "Authorization: {kind} {}",
                token.access_token.expose_secret()
            );
            out
        }
    }
}

/// Writes `contents` to the sink so that a reader sees the old file or the
/// new one, whole, and never a file more open than configured.
pub fn write_atomic(sink: &SinkConfig, contents: &[u8]) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (sink.path.parent(), sink.path.file_name()) else {
        return Err(std::io::Error::other("the sink path names no file"));
    };
    let temp = dir.join(format!(
        ".{}.tokend-{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    // Created new (never through a link someone planted), readable by no
    // one else until its owner and mode are set.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    let result = (|| {
        if sink.owner.is_some() || sink.group.is_some() {
            std::os::unix::fs::fchown(&file, sink.owner, sink.group)?;
        }
        // Exactly the configured bits: the umask does not apply to fchmod.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(sink.mode))?;
        (&file).write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &sink.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::AccessToken;
    use std::path::Path;
    use std::time::Duration;

    fn token(value: &str, lifetime: Duration) -> Arc<Token> {
        let now = Instant::now();
        Arc::new(Token {
            access_token: AccessToken::new(value.to_string()),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now,
            expires_at: now + lifetime,
            refresh_in: None,
            json_head: bytes::Bytes::new(),
        })
    }

    fn worker() -> Worker {
        Worker {
            entries: HashMap::new(),
            metrics: Arc::new(Metrics::new()),
            warnings: Arc::default(),
        }
    }

    fn sink(path: &Path) -> SinkConfig {
        SinkConfig {
            path: path.to_path_buf(),
            format: SinkFormat::Raw,
            mode: 0o600,
            owner: None,
            group: None,
        }
    }

    /// A source restarted with a new identity: its predecessor's file goes
    /// at once, and a late token of the predecessor never comes back.
    #[tokio::test]
    async fn a_replaced_generation_can_neither_write_nor_keep_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut w = worker();
        let configure = |generation| Event::Configure {
            source: "a".into(),
            generation,
            sinks: vec![sink(&path)],
            token: None,
        };
        w.handle(configure(1)).await;
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token("old-identity", Duration::from_secs(3600)),
        })
        .await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old-identity");

        w.handle(configure(2)).await;
        assert!(!path.exists(), "the old identity's token is gone");
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token("late-old-identity", Duration::from_secs(3600)),
        })
        .await;
        assert!(!path.exists(), "a replaced task's token is ignored");
        w.handle(Event::Remove {
            source: "a".into(),
            generation: 1,
        })
        .await;
        w.handle(Event::Token {
            source: "a".into(),
            generation: 2,
            token: token("new-identity", Duration::from_secs(3600)),
        })
        .await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-identity");
    }

    #[tokio::test]
    async fn expire_deletes_only_files_whose_token_is_no_longer_served() {
        let dir = tempfile::tempdir().unwrap();
        let (short, long) = (dir.path().join("short"), dir.path().join("long"));
        let mut w = worker();
        for (name, path, life) in [("s", &short, 6), ("l", &long, 3600)] {
            w.handle(Event::Configure {
                source: name.into(),
                generation: 1,
                sinks: vec![sink(path)],
                token: Some(token(name, Duration::from_secs(life))),
            })
            .await;
        }
        assert!(short.exists() && long.exists());
        let due = w.next_expiry().unwrap();
        let left = due.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(1), "6 s token: due in {left:?}");
        tokio::time::sleep_until(due).await;
        w.expire().await;
        assert!(!short.exists(), "the dead token's file is removed");
        assert!(long.exists());
        assert!(w.next_expiry().unwrap() > Instant::now() + Duration::from_secs(3000));
    }
}
