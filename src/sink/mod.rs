//! File sinks (docs/behaviour.md, "File sinks"): each source's current token
//! in files, for programs that can only read a file.
//!
//! One task does every sink's file work, in the order events were sent.
//! A reload is one event carrying every source whose sinks changed, so the
//! removals are worked out over the whole new config before any write: a
//! path that moves from one source to another holds the new owner's token
//! (or none), never the old owner's, and is never deleted after the new
//! owner wrote it. Events name a source *generation* (one per started
//! source task): events of a generation that was replaced are ignored.
//!
//! Invariants:
//! - a reader sees a whole file with the configured mode, owner and group,
//!   or the previous one ([`file`]);
//! - no file holds a token that is no longer served: what decides a file's
//!   removal is the token *in the file* (a failed write leaves the previous
//!   one there, and its death removes the file), on both clocks (a resume
//!   from suspend removes at once what the wall clock says is dead); a file
//!   also goes when its sink or its source is removed, or when its source's
//!   identity changes; a removal that fails is an ERROR, tried again;
//! - on shutdown files stay (a restart writes them again); what was written
//!   is recorded ([`record`]), so the next start removes what went stale,
//!   whatever ended the last run.

pub mod file;
pub mod record;

use crate::clock::Moment;
use crate::config::{SinkConfig, SinkFormat};
use crate::metrics::{Metrics, SourceOutcome};
use crate::secret::ExposeSecret;
use crate::sync::Locked;
use crate::token::Token;
use record::{Record, Written};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// A source's sinks in force, with the token it holds now.
#[derive(Debug, Clone)]
pub struct SinkSet {
    pub source: String,
    pub generation: u64,
    /// What identifies the source's tokens (see [`crate::config::SourceConfig::identity_digest`]):
    /// a file recorded under another identity is stale.
    pub identity: String,
    pub sinks: Vec<SinkConfig>,
    pub token: Option<Arc<Token>>,
}

enum Event {
    /// A config was applied: `changed` holds every source whose sinks (or
    /// task) changed, `removed` every source that went, each with the
    /// generation it had.
    Apply {
        changed: Vec<SinkSet>,
        removed: Vec<(String, u64)>,
    },
    /// A fetch succeeded.
    Token {
        source: String,
        generation: u64,
        token: Arc<Token>,
    },
}

/// The sender side, held by the broker and every source task.
#[derive(Debug, Clone)]
pub struct Sinks {
    tx: mpsc::UnboundedSender<Event>,
    warnings: Arc<Warnings>,
}

/// Each source's failing sinks, by path: what status shows.
type Warnings = Mutex<HashMap<String, BTreeMap<PathBuf, String>>>;

impl Sinks {
    /// Starts the task that writes sink files, with `record` of what was
    /// written (its stale files are removed at the first [`Sinks::apply`]).
    /// `clock_jumps` changes when the wall clock jumps ahead: files whose
    /// token it says is dead go at once. It stops, leaving every file in
    /// place, when `shutdown` is cancelled.
    pub fn start(
        metrics: Arc<Metrics>,
        record: Record,
        clock_jumps: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Sinks {
        let (tx, rx) = mpsc::unbounded_channel();
        let warnings = Arc::new(Warnings::default());
        let worker = Worker {
            entries: HashMap::new(),
            metrics,
            warnings: warnings.clone(),
            record,
            started: false,
        };
        tokio::spawn(worker.run(rx, clock_jumps, shutdown));
        Sinks { tx, warnings }
    }

    /// A config was applied (see [`Event::Apply`]).
    pub fn apply(&self, changed: Vec<SinkSet>, removed: Vec<(String, u64)>) {
        let _ = self.tx.send(Event::Apply { changed, removed });
    }

    pub fn token(&self, source: &str, generation: u64, token: Arc<Token>) {
        let _ = self.tx.send(Event::Token {
            source: source.to_string(),
            generation,
            token,
        });
    }

    /// Why the source's sinks could not be written, one line per sink.
    pub fn warnings(&self, source: &str) -> Vec<String> {
        self.warnings
            .locked()
            .get(source)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }
}

struct Entry {
    generation: u64,
    identity: String,
    sinks: Vec<SinkConfig>,
    /// The source's latest servable token, for a sink added later: `None`
    /// once it stopped being servable.
    token: Option<Arc<Token>>,
    /// What each of its files holds now, by path: when that token expires.
    held: HashMap<PathBuf, Held>,
}

/// A file that holds a token, and when it must go.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// When the token in the file expires, on both clocks.
    expires: Moment,
    /// A removal failed: the next try is then.
    retry_at: Option<Instant>,
}

impl Held {
    fn of(token: &Token) -> Held {
        Held {
            expires: token.expires,
            retry_at: None,
        }
    }

    /// Whether the token in the file is no longer served at `now` (or
    /// will not be within [`TIMER_SLACK`]: a timer may wake a little early).
    fn dead_at(&self, now: Moment) -> bool {
        now.until(self.expires) <= crate::token::SERVE_MARGIN + TIMER_SLACK
    }

    /// When to look at the file next, as the clocks read at `now`.
    fn due(&self, now: Moment) -> Instant {
        self.retry_at.unwrap_or_else(|| {
            crate::timefmt::later(
                now.mono,
                now.until(self.expires)
                    .saturating_sub(crate::token::SERVE_MARGIN),
            )
        })
    }
}

/// A file whose token has at most this much servable time left when the
/// timer wakes is removed then rather than at a second wake-up.
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// How long after a failed removal the next is tried.
const REMOVAL_RETRY: Duration = Duration::from_secs(5);

struct Worker {
    entries: HashMap<String, Entry>,
    metrics: Arc<Metrics>,
    warnings: Arc<Warnings>,
    record: Record,
    /// The first config was applied (and the last run's leftovers removed).
    started: bool,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut clock_jumps: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
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
                    self.save_record().await;
                }
                Ok(()) = clock_jumps.changed() => {
                    // The wall clock jumped: some tokens in files may be
                    // dead by it already.
                    self.expire().await;
                    self.save_record().await;
                }
            }
        }
    }

    /// When the earliest token a file holds stops being servable (or a
    /// failed removal is due again), as the clocks read now.
    fn next_expiry(&self) -> Option<Instant> {
        let now = Moment::now();
        let files = self.entries.values().flat_map(|e| e.held.values());
        let tokens = self
            .entries
            .values()
            .filter_map(|e| e.token.as_ref())
            .map(|t| Held::of(t));
        files.copied().chain(tokens).map(|h| h.due(now)).min()
    }

    async fn handle(&mut self, event: Event) {
        self.handle_event(event).await;
        self.save_record().await;
    }

    /// Brings the record file up to date with what the files hold.
    async fn save_record(&mut self) {
        if let Some(save) = self.record.take_save() {
            let _ = tokio::task::spawn_blocking(move || save.run()).await;
        }
    }

    async fn handle_event(&mut self, event: Event) {
        match event {
            Event::Apply { changed, removed } => self.apply(changed, removed).await,
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
        }
    }

    async fn apply(&mut self, changed: Vec<SinkSet>, removed: Vec<(String, u64)>) {
        let now = Moment::now();
        // What each changed source writes now, and which files it keeps.
        let mut writes: Vec<(String, Vec<SinkConfig>, Arc<Token>)> = Vec::new();
        let mut stale: Vec<(String, SinkConfig)> = Vec::new();
        for (source, generation) in removed {
            if self
                .entries
                .get(&source)
                .is_some_and(|e| e.generation == generation)
            {
                if let Some(old) = self.entries.remove(&source) {
                    stale.extend(old.sinks.into_iter().map(|s| (source.clone(), s)));
                }
                self.forget_warnings(&source);
            }
        }
        for set in changed {
            let old = self.entries.remove(&set.source);
            let mut token = set.token.filter(|t| t.servable_at(now));
            let mut to_write = set.sinks.clone();
            let mut held = HashMap::new();
            match old {
                // The same source task: keep the newer token; the sinks
                // that went are stale, the new or changed ones written.
                Some(old) if old.generation == set.generation => {
                    token = newer(token, old.token);
                    held = old.held;
                    held.retain(|path, _| set.sinks.iter().any(|n| n.path == *path));
                    stale.extend(
                        old.sinks
                            .iter()
                            .filter(|o| !set.sinks.iter().any(|n| n.path == o.path))
                            .map(|o| (set.source.clone(), o.clone())),
                    );
                    to_write.retain(|n| !old.sinks.contains(n));
                }
                // A new task (identity changed): the old token must go.
                Some(old) => {
                    stale.extend(old.sinks.into_iter().map(|s| (set.source.clone(), s)));
                }
                None => {}
            }
            if let Some(t) = &token {
                writes.push((set.source.clone(), to_write, t.clone()));
            }
            if set.sinks.is_empty() {
                self.forget_warnings(&set.source);
            } else {
                self.entries.insert(
                    set.source,
                    Entry {
                        generation: set.generation,
                        identity: set.identity,
                        sinks: set.sinks,
                        token,
                        held,
                    },
                );
            }
        }
        // A stale path that a source writes now is overwritten, not
        // deleted after the write; every other stale path goes first.
        let rewritten: BTreeSet<PathBuf> = writes
            .iter()
            .flat_map(|(_, sinks, _)| sinks.iter().map(|s| s.path.clone()))
            .collect();
        for (source, sink) in stale {
            if !rewritten.contains(&sink.path) {
                self.delete(&source, std::slice::from_ref(&sink)).await;
            }
        }
        if !std::mem::replace(&mut self.started, true) {
            self.remove_leftovers().await;
        }
        for (source, sinks, token) in writes {
            self.write(&source, &sinks, &token).await;
        }
    }

    /// At the first config: removes what the last run left behind (see
    /// [`record`]): files no source writes now, files whose token has
    /// expired or that an earlier identity wrote, and temporaries.
    async fn remove_leftovers(&mut self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let current: HashMap<PathBuf, (String, String)> = self
            .entries
            .iter()
            .flat_map(|(name, e)| {
                e.sinks
                    .iter()
                    .map(|s| (s.path.clone(), (name.clone(), e.identity.clone())))
            })
            .collect();
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let recorded: Vec<(PathBuf, Written)> = self.record.entries.clone().into_iter().collect();
        for (path, w) in recorded {
            dirs.extend(path.parent().map(PathBuf::from));
            let why = match current.get(&path) {
                None => Some("no sink writes it any more"),
                Some((source, _)) if *source != w.source => Some("another source writes it now"),
                Some((_, identity)) if *identity != w.identity => {
                    Some("it holds the token of the source's earlier identity")
                }
                _ if w.expires <= now.saturating_add(crate::token::SERVE_MARGIN.as_secs()) => {
                    Some("its token has expired")
                }
                Some((source, _)) => {
                    // It stays, holding the last run's token, until that
                    // token dies or the source writes a new one.
                    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(w.expires);
                    let at = Moment::now();
                    let left = expires.duration_since(at.wall).unwrap_or_default();
                    if let Some(e) = self.entries.get_mut(source) {
                        e.held.entry(path.clone()).or_insert(Held {
                            expires: Moment {
                                mono: crate::timefmt::later(at.mono, left),
                                wall: expires,
                            },
                            retry_at: None,
                        });
                    }
                    None
                }
            };
            if let Some(why) = why {
                tracing::info!(path = %crate::text::path(&path), source = %w.source, "removing a sink file the last run left: {why}");
                let p = path.clone();
                let result = tokio::task::spawn_blocking(move || file::remove(&p)).await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(path = %crate::text::path(&path), error = %e, "cannot remove a stale sink file");
                }
                self.record.removed(&path);
            }
        }
        dirs.extend(current.keys().filter_map(|p| p.parent().map(PathBuf::from)));
        let removed = tokio::task::spawn_blocking(move || {
            dirs.iter()
                .map(|d| file::remove_temporaries(d))
                .sum::<usize>()
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::info!(
                count = removed,
                "removed temporary sink files a killed run left"
            );
        }
    }

    /// Deletes every file whose token is no longer servable (and tries
    /// again the removals that failed and are due).
    async fn expire(&mut self) {
        let now = Moment::now();
        let mut gone: Vec<(String, SinkConfig)> = Vec::new();
        for (source, entry) in &mut self.entries {
            if entry
                .token
                .as_ref()
                .is_some_and(|t| Held::of(t).dead_at(now))
            {
                entry.token = None;
            }
            let due = |h: &Held| h.dead_at(now) && h.retry_at.is_none_or(|r| r <= now.mono);
            for sink in &entry.sinks {
                if entry.held.get(&sink.path).is_some_and(due) {
                    gone.push((source.clone(), sink.clone()));
                }
            }
        }
        for (source, sink) in gone {
            tracing::warn!(
                source = %source,
                path = %crate::text::path(&sink.path),
                "the token in the sink file is no longer served and no new one was written: the file is removed so no reader picks up a dead token"
            );
            self.delete(&source, std::slice::from_ref(&sink)).await;
        }
    }

    async fn write(&mut self, source: &str, sinks: &[SinkConfig], token: &Arc<Token>) {
        if !token.servable_at(Moment::now()) {
            // Dead by one of the clocks already: never written.
            return;
        }
        let identity = self
            .entries
            .get(source)
            .map(|e| e.identity.clone())
            .unwrap_or_default();
        let expires = token
            .expires
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for sink in sinks {
            let contents = render(source, sink.format, token);
            let job = sink.clone();
            let result = tokio::task::spawn_blocking(move || file::write_atomic(&job, &contents))
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
                Ok(()) => {
                    self.record.wrote(
                        &sink.path,
                        Written {
                            source: source.to_string(),
                            expires,
                            identity: identity.clone(),
                        },
                    );
                    if let Some(e) = self.entries.get_mut(source) {
                        e.held.insert(sink.path.clone(), Held::of(token));
                    }
                    self.set_warning(source, sink, None);
                }
                Err(e) => {
                    // The file keeps what it held (if anything): that
                    // token's death, not this one's, removes it.
                    tracing::warn!(
                        source = %source,
                        path = %crate::text::path(&sink.path),
                        error = %e,
                        "cannot write the sink file; it keeps the token it held until that one expires, the socket still serves the new one, and the next fetch tries again"
                    );
                    self.set_warning(
                        source,
                        sink,
                        Some(format!(
                            "sink {} could not be written: {e}",
                            crate::text::path(&sink.path)
                        )),
                    );
                }
            }
        }
    }

    /// Removes `sinks`' files. One that cannot be removed stays known
    /// (with the deadline of the token it holds), is an ERROR and a source
    /// warning, and is tried again in [`REMOVAL_RETRY`] while its source
    /// still names it.
    async fn delete(&mut self, source: &str, sinks: &[SinkConfig]) {
        for sink in sinks {
            let path = sink.path.clone();
            let result = tokio::task::spawn_blocking(move || file::remove(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match result {
                Ok(()) => {
                    self.record.removed(&sink.path);
                    if let Some(e) = self.entries.get_mut(source) {
                        e.held.remove(&sink.path);
                    }
                    self.set_warning(source, sink, None);
                }
                Err(e) => {
                    tracing::error!(
                        source = %source,
                        path = %crate::text::path(&sink.path),
                        error = %e,
                        "cannot remove the sink file: it may hold a token that is no longer served; tried again in 5 s"
                    );
                    if let Some(h) = self
                        .entries
                        .get_mut(source)
                        .and_then(|e| e.held.get_mut(&sink.path))
                    {
                        h.retry_at = Some(crate::timefmt::later(Instant::now(), REMOVAL_RETRY));
                    }
                    self.set_warning(
                        source,
                        sink,
                        Some(format!(
                            "sink {} could not be removed: {e}; it may hold a token that is no longer served",
                            crate::text::path(&sink.path)
                        )),
                    );
                }
            }
        }
    }

    fn set_warning(&self, source: &str, sink: &SinkConfig, warning: Option<String>) {
        let mut all = self.warnings.locked();
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
        self.warnings.locked().remove(source);
    }
}

/// The later-expiring of two tokens.
fn newer(a: Option<Arc<Token>>, b: Option<Arc<Token>>) -> Option<Arc<Token>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.expires.mono > a.expires.mono {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// What a sink file of `format` holds for `token`.
fn render(source: &str, format: SinkFormat, token: &Token) -> Zeroizing<Vec<u8>> {
    match format {
        SinkFormat::Raw => Zeroizing::new(token.access_token.expose_secret().as_bytes().to_vec()),
        // A file is read later than it is written: no expires_in.
        SinkFormat::Json => crate::answer::file_body(source, token),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::AccessToken;
    use std::path::Path;
    use std::time::Duration;

    fn token(value: &str, lifetime: Duration) -> Arc<Token> {
        let now = Moment::now();
        Arc::new(Token {
            access_token: AccessToken::new(value.to_string()),
            token_type: "Bearer".into(),
            scope: None,
            issued: now,
            expires: now.later(lifetime),
            refresh_in: None,
            rendered: Default::default(),
        })
    }

    fn worker() -> Worker {
        Worker {
            entries: HashMap::new(),
            metrics: Arc::new(Metrics::new()),
            warnings: Arc::default(),
            record: Record::none(),
            started: false,
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

    fn set(source: &str, generation: u64, sinks: &[&Path], token: Option<Arc<Token>>) -> SinkSet {
        SinkSet {
            source: source.into(),
            generation,
            identity: format!("id-{generation}"),
            sinks: sinks.iter().map(|p| sink(p)).collect(),
            token,
        }
    }

    fn apply(changed: Vec<SinkSet>, removed: Vec<(&str, u64)>) -> Event {
        Event::Apply {
            changed,
            removed: removed
                .into_iter()
                .map(|(s, g)| (s.to_string(), g))
                .collect(),
        }
    }

    /// A source restarted with a new identity: its predecessor's file goes
    /// at once, and a late token of the predecessor never comes back.
    #[tokio::test]
    async fn a_replaced_generation_can_neither_write_nor_keep_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut w = worker();
        w.handle(apply(vec![set("a", 1, &[&path], None)], vec![]))
            .await;
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token("old-identity", Duration::from_secs(3600)),
        })
        .await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old-identity");

        w.handle(apply(vec![set("a", 2, &[&path], None)], vec![]))
            .await;
        assert!(!path.exists(), "the old identity's token is gone");
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token("late-old-identity", Duration::from_secs(3600)),
        })
        .await;
        assert!(!path.exists(), "a replaced task's token is ignored");
        w.handle(apply(vec![], vec![("a", 1)])).await;
        w.handle(Event::Token {
            source: "a".into(),
            generation: 2,
            token: token("new-identity", Duration::from_secs(3600)),
        })
        .await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-identity");
    }

    /// One reload moves a path from one source to another, in either
    /// order of their names: it holds the new owner's token at once, or
    /// nothing while the new owner has none; never the old owner's.
    #[tokio::test]
    async fn a_path_moved_between_sources_holds_the_new_owners_token_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.token");
        let other = dir.path().join("other.token");
        let life = Duration::from_secs(3600);
        for (old, new) in [("a", "b"), ("b", "a")] {
            let mut w = worker();
            w.handle(apply(
                vec![
                    set(old, 1, &[&path], Some(token("old-owner", life))),
                    set(new, 2, &[&other], Some(token("new-owner", life))),
                ],
                vec![],
            ))
            .await;
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "old-owner");
            w.handle(apply(
                vec![
                    set(old, 1, &[], Some(token("old-owner", life))),
                    set(new, 2, &[&path], Some(token("new-owner", life))),
                ],
                vec![],
            ))
            .await;
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "new-owner",
                "{old} -> {new}"
            );
            assert!(!other.exists());
            // Moved to a source that has no token yet (a new one): removed.
            w.handle(apply(
                vec![set(new, 2, &[], None), set("c", 3, &[&path], None)],
                vec![],
            ))
            .await;
            assert!(!path.exists(), "{old} -> {new} -> c");
        }
    }

    /// At the first config, a recorded file whose token expired while
    /// tokend was down is removed; one still valid stays until rewritten.
    #[tokio::test]
    async fn the_first_apply_removes_recorded_files_whose_token_expired() {
        let dir = tempfile::tempdir().unwrap();
        let (dead, alive) = (dir.path().join("dead"), dir.path().join("alive"));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let state = dir.path().join("state");
        let mut record = Record::open(&state, Path::new("/etc/tokend/tokend.toml"));
        for (path, source, expires) in [(&dead, "d", now - 10), (&alive, "l", now + 3600)] {
            std::fs::write(path, "earlier run").unwrap();
            record.wrote(
                path,
                Written {
                    source: source.into(),
                    expires,
                    identity: "id-1".into(),
                },
            );
        }
        let mut w = Worker { record, ..worker() };
        w.handle(apply(
            vec![set("d", 1, &[&dead], None), set("l", 1, &[&alive], None)],
            vec![],
        ))
        .await;
        assert!(
            !dead.exists(),
            "an expired token's file is removed at start"
        );
        assert!(
            alive.exists(),
            "a valid one stays until its source rewrites it"
        );
        let saved = Record::open(&state, Path::new("/etc/tokend/tokend.toml"));
        assert_eq!(saved.entries.keys().collect::<Vec<_>>(), [&alive]);
    }

    /// A config that dropped every sink still clears what the last run wrote.
    #[tokio::test]
    async fn a_first_apply_without_sinks_removes_every_recorded_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.token");
        std::fs::write(&file, "earlier run").unwrap();
        let mut record = Record::open(&dir.path().join("state"), Path::new("/c.toml"));
        record.wrote(
            &file,
            Written {
                source: "gone".into(),
                expires: u64::MAX,
                identity: "x".into(),
            },
        );
        let mut w = Worker { record, ..worker() };
        w.handle(apply(vec![], vec![])).await;
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn expire_deletes_only_files_whose_token_is_no_longer_served() {
        let dir = tempfile::tempdir().unwrap();
        let (short, long) = (dir.path().join("short"), dir.path().join("long"));
        let mut w = worker();
        for (name, path, life) in [("s", &short, 6), ("l", &long, 3600)] {
            w.handle(apply(
                vec![set(
                    name,
                    1,
                    &[path],
                    Some(token(name, Duration::from_secs(life))),
                )],
                vec![],
            ))
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

    fn token_event(source: &str, generation: u64, value: &str, life: u64) -> Event {
        Event::Token {
            source: source.into(),
            generation,
            token: token(value, Duration::from_secs(life)),
        }
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A write that fails (here: the directory became writable by others,
    /// as good as a full disk for this purpose) leaves the previous token
    /// in the file, and that token's death, not the new one's, removes it.
    #[tokio::test(start_paused = true)]
    async fn a_failed_write_leaves_the_old_token_whose_death_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = dir.path().join("sinks");
        std::fs::create_dir(&sinks).unwrap();
        chmod(&sinks, 0o755);
        let path = sinks.join("a.token");
        let mut w = worker();
        w.handle(apply(vec![set("a", 1, &[&path], None)], vec![]))
            .await;
        w.handle(token_event("a", 1, "first", 20)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");

        chmod(&sinks, 0o777);
        w.handle(token_event("a", 1, "second", 3600)).await;
        chmod(&sinks, 0o755);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first",
            "the write failed"
        );
        assert!(!w.warnings.lock().unwrap().is_empty(), "a sink warning");

        // The first token stops being served 5 s before its expiry.
        let due = w.next_expiry().unwrap();
        let left = due.saturating_duration_since(Instant::now());
        assert!(
            left <= Duration::from_secs(15),
            "due in {left:?}: the file's token decides"
        );
        tokio::time::sleep_until(due).await;
        w.expire().await;
        assert!(
            !path.exists(),
            "the dead first token is not left in the file"
        );
        // The next token that can be written is.
        w.handle(token_event("a", 1, "third", 3600)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third");
    }

    /// A file that cannot be removed when its token dies is an ERROR and a
    /// warning, tried again (and not in a loop) until it goes.
    #[tokio::test(start_paused = true)]
    async fn a_removal_that_fails_is_a_warning_and_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.token");
        let mut w = worker();
        w.handle(apply(vec![set("a", 1, &[&path], None)], vec![]))
            .await;
        w.handle(token_event("a", 1, "first", 10)).await;
        // Something put a directory with a file in it where the file was.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        tokio::time::sleep_until(w.next_expiry().unwrap()).await;
        w.expire().await;
        let warned = w
            .warnings
            .lock()
            .unwrap()
            .get("a")
            .cloned()
            .unwrap_or_default();
        assert!(
            warned.values().any(|m| m.contains("could not be removed")),
            "{warned:?}"
        );
        let again = w.next_expiry().unwrap();
        assert!(again >= Instant::now() + REMOVAL_RETRY - Duration::from_millis(1));
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, "first").unwrap();
        tokio::time::sleep_until(again).await;
        w.expire().await;
        assert!(!path.exists(), "removed on the next try");
        assert!(w.warnings.lock().unwrap().is_empty());
        assert!(w.next_expiry().is_none());
    }

    /// A token whose deadlines are `mono` from now on the monotonic clock
    /// and `wall` (negative: already past) on the wall clock.
    fn token_on_clocks(value: &str, mono: u64, wall: i64) -> Arc<Token> {
        let now = Moment::now();
        let w = Duration::from_secs(wall.unsigned_abs());
        Arc::new(Token {
            expires: Moment {
                mono: now.mono + Duration::from_secs(mono),
                wall: if wall >= 0 {
                    now.wall + w
                } else {
                    now.wall - w
                },
            },
            ..Arc::into_inner(token(value, Duration::ZERO)).unwrap()
        })
    }

    /// After a wall-clock jump, a file whose token is dead by the wall
    /// clock goes, however long the monotonic clock says it has left; and
    /// a token dead by the wall clock is never written.
    #[tokio::test(start_paused = true)]
    async fn a_token_dead_by_the_wall_clock_leaves_its_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.token");
        let mut w = worker();
        w.handle(apply(vec![set("a", 1, &[&path], None)], vec![]))
            .await;
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token_on_clocks("before-suspend", 120, 120),
        })
        .await;
        assert!(path.exists());
        // The suspend: the wall clock moved 180 s, the monotonic one did not.
        for h in w.entries.get_mut("a").unwrap().held.values_mut() {
            h.expires.wall -= Duration::from_secs(180);
        }
        w.expire().await;
        assert!(!path.exists(), "removed at once, no timer needed");
        w.handle(Event::Token {
            source: "a".into(),
            generation: 1,
            token: token_on_clocks("dead", 120, -1),
        })
        .await;
        assert!(!path.exists(), "a dead token is never written");
    }
}
