//! Where log lines go: stderr (the journal, under systemd), written by a
//! thread of its own through a bounded queue, so a reader that stops
//! reading (a stalled journald, a pipe nobody drains) never blocks serving,
//! refreshing or the watchdog. A line that finds the queue full is dropped
//! and counted; the daemon reports the count (`tokend_log_lines_dropped_total`
//! and a WARN) once a line can get through again.
//!
//! The logger is the process's, so its count is too: [`dropped_lines`].

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines queued for stderr at most; past it, lines are dropped. A burst
/// of 10,000 sources' first fetches fits.
pub const QUEUED_LINES: usize = 16_384;

/// Crates that log every file-system event they see. The config's
/// directory is watched, so with their lines on and the log written into
/// that directory, every line would be an event that logs another line.
/// They stay at `warn` unless `RUST_LOG` names them itself.
const WATCHER_CRATES: &[&str] = &["notify", "inotify"];

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Sets up logging to stderr at `RUST_LOG` (default `info`), as JSON lines
/// or text. Keep the guard until exit: dropping it flushes what is queued
/// (waiting at most a second for a stalled reader).
pub fn init(json: bool) -> WorkerGuard {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for krate in WATCHER_CRATES {
        if !spec.contains(krate) {
            if let Ok(d) = format!("{krate}=warn").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("tokend-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// Log lines dropped so far because stderr could not take them.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Reports the lines dropped since it last looked.
#[derive(Debug, Default)]
pub struct DropReport {
    reported: u64,
}

impl DropReport {
    /// How many more lines were dropped since the last call (given the
    /// count now), if any.
    pub fn since_last(&mut self, dropped: u64) -> Option<u64> {
        let new = dropped.saturating_sub(self.reported);
        self.reported = dropped.max(self.reported);
        (new > 0).then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_drop_is_reported_once() {
        let mut r = DropReport::default();
        assert_eq!(r.since_last(0), None);
        assert_eq!(r.since_last(120), Some(120));
        assert_eq!(r.since_last(120), None);
        assert_eq!(r.since_last(121), Some(1));
    }
}
