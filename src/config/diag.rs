//! Diagnostics: where each value was written, and problems pinned there.
//!
//! Every value that validation looks at carries an [`At`]: the file it came
//! from and its byte span there. A problem found in it becomes a
//! [`Diagnostic`] with file, line and column; nothing depends on a notion
//! of "the file being read now". Concept modules (secret references,
//! `allow`, Entra rules) report a [`Problem`] without a place; config pins
//! it to the value it came from.

use super::Diagnostic;
use crate::files::{open_regular, open_regular_at, Opened, ReadError};
use crate::problem::Problem;
use crate::trust::Facts;
use serde::Deserialize;
use std::ffi::OsStr;
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// One file of the configuration: the main file or an include.
#[derive(Clone)]
pub(super) struct File {
    pub path: PathBuf,
    pub text: String,
    /// Whether anyone but root and the file's owner may read it (decides
    /// the inline-secret warning); `None` when it was not read from disk.
    pub shared: Option<bool>,
    /// Who else could change it, if anyone (see [`untrusted`]).
    pub untrusted: Option<Problem>,
    /// Its mode, owner, group and ACL as read (`None` when not read from
    /// disk): part of the config's digest, so a `chmod`, `chown` or
    /// `setfacl` is a change.
    pub attrs: Option<Facts>,
    /// Where each line starts, made at the first diagnostic: placing a
    /// problem is a binary search, not a scan from the top (40,000 sources
    /// with one warning each would otherwise take minutes).
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

/// Largest config file read.
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

impl File {
    /// Reads `path` from disk: a regular file of at most [`MAX_CONFIG_FILE`].
    pub fn read(path: &Path) -> Result<File, ReadError> {
        File::judged(path, open_regular(path)?)
    }

    /// Reads `name` in the open include directory `dir`, shown as `path`.
    pub fn read_at(dir: impl AsFd, name: &OsStr, path: &Path) -> Result<File, ReadError> {
        File::judged(path, open_regular_at(dir, name)?)
    }

    /// Reads an opened file and judges it by what its descriptor says:
    /// the file judged is the file read.
    fn judged(path: &Path, opened: Opened) -> Result<File, ReadError> {
        let facts = Facts::of(opened.fd())?;
        let bytes = opened.read(MAX_CONFIG_FILE)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text")
        })?;
        let mut file = File::new(
            path.to_path_buf(),
            text,
            Some(crate::trust::other_readers(&facts).is_some()),
            untrusted(path, &facts, "file"),
        );
        file.attrs = Some(facts);
        Ok(file)
    }

    pub fn new(
        path: PathBuf,
        text: String,
        shared: Option<bool>,
        untrusted: Option<Problem>,
    ) -> File {
        File {
            path,
            text,
            shared,
            untrusted,
            attrs: None,
            line_starts: std::sync::OnceLock::new(),
        }
    }

    /// Line and column (both from 1, columns in characters) of byte `at`.
    fn place(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|s| *s <= at).max(1);
        let start = starts[line - 1];
        let col = self.text.get(start..at).map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

/// Who may change a config file or the include directory (see
/// [`crate::trust::untrusted`]): anyone who could would define a source
/// that sends a real secret to an endpoint of theirs.
pub fn untrusted(path: &Path, facts: &Facts, what: &str) -> Option<Problem> {
    crate::trust::untrusted(
        path,
        facts,
        &format!("config {what}"),
        "whoever can change it could define sources",
    )
}

/// Where a value was written: a file (index into [`Diagnostics::files`])
/// and a byte span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct At {
    pub file: usize,
    pub span: Range<usize>,
}

impl At {
    pub fn new(file: usize, span: Range<usize>) -> At {
        At { file, span }
    }

    /// The place of a spanned value in `file`.
    pub fn of<T>(file: usize, v: &Spanned<T>) -> At {
        At::new(file, v.span())
    }
}

/// The files being validated and every problem found in them so far.
pub(super) struct Diagnostics {
    /// Shared with [`Diagnostics::fork`]s.
    pub files: std::sync::Arc<Vec<File>>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// The warnings so far, to keep each once in constant time.
    warned: std::collections::HashSet<Diagnostic>,
    /// Files the config names that validation read (see [`super::ConfigError::Invalid`]).
    pub named: Vec<std::path::PathBuf>,
}

impl Diagnostics {
    pub fn new(main: File) -> Self {
        Diagnostics {
            files: std::sync::Arc::new(vec![main]),
            errors: Vec::new(),
            warnings: Vec::new(),
            warned: std::collections::HashSet::new(),
            named: Vec::new(),
        }
    }

    /// Adds an include file; its index.
    pub fn add_file(&mut self, file: File) -> usize {
        let files = std::sync::Arc::make_mut(&mut self.files);
        files.push(file);
        files.len() - 1
    }

    /// Diagnostics for the same files with no problems yet, for another
    /// thread; [`Diagnostics::join`] takes its problems back.
    pub fn fork(&self) -> Diagnostics {
        Diagnostics {
            files: self.files.clone(),
            errors: Vec::new(),
            warnings: Vec::new(),
            warned: std::collections::HashSet::new(),
            named: Vec::new(),
        }
    }

    /// Takes the problems of a [`Diagnostics::fork`], after those so far;
    /// a warning already given is kept once.
    pub fn join(&mut self, fork: Diagnostics) {
        self.errors.extend(fork.errors);
        self.named.extend(fork.named);
        for w in fork.warnings {
            if self.warned.insert(w.clone()) {
                self.warnings.push(w);
            }
        }
    }

    /// Line and column (both from 1, columns in characters) of `at`.
    pub fn diagnostic(&self, at: &At, message: String, hint: Option<String>) -> Diagnostic {
        let f = &self.files[at.file];
        let (line, col) = f.place(at.span.start);
        Diagnostic {
            file: f.path.clone(),
            line,
            col,
            message,
            hint,
        }
    }

    /// `FILE:LINE:COL` of `at`, for a message that points at a second place.
    pub fn place(&self, at: &At) -> String {
        let d = self.diagnostic(at, String::new(), None);
        format!("{}:{}:{}", crate::text::path(&d.file), d.line, d.col)
    }

    pub fn error(&mut self, at: &At, message: impl Into<String>, hint: impl Into<Option<String>>) {
        let d = self.diagnostic(at, message.into(), hint.into());
        self.errors.push(d);
    }

    /// A warning; the same one for the same place is kept once (a value
    /// in `[defaults]` is inherited by many sources).
    pub fn warn(&mut self, at: &At, message: impl Into<String>, hint: impl Into<Option<String>>) {
        let d = self.diagnostic(at, message.into(), hint.into());
        if self.warned.insert(d.clone()) {
            self.warnings.push(d);
        }
    }

    /// Pins `problem` to `at` as an error.
    pub fn problem(&mut self, at: &At, problem: Problem) {
        self.error(at, problem.message, problem.hint);
    }

    /// Whether anyone but root and its owner may read the file `at` points
    /// into (see [`File::shared`]).
    pub fn shared(&self, at: &At) -> bool {
        self.files[at.file].shared == Some(true)
    }

    /// Deserializes one table of file `file`, turning a serde error into a
    /// diagnostic (see [`deserialize`]).
    pub fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        file: usize,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        deserialize(value).map_err(|p| self.pending(file, p)).ok()
    }

    /// Pins a problem found away from here to its place in `file`.
    pub fn pending(&mut self, file: usize, p: Pending) {
        self.error(&At::new(file, p.span), p.message, p.hint);
    }
}

/// A problem found where no [`Diagnostics`] is at hand (on a thread parsing
/// part of a file), with its byte span; [`Diagnostics::pending`] places it.
#[derive(Debug)]
pub(super) struct Pending {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// Deserializes one parsed table; a serde error becomes a problem at the
/// key or value it is about (an unknown key gets a did-you-mean hint).
pub(super) fn deserialize<T: for<'de> Deserialize<'de>>(
    value: Spanned<DeValue<'_>>,
) -> Result<T, Pending> {
    let whole = value.span();
    T::deserialize(ValueDeserializer::from(value)).map_err(|e| {
        let (message, hint) = explain_serde_error(e.message().trim());
        Pending {
            span: e.span().unwrap_or(whole),
            message,
            hint,
        }
    })
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a
/// short message and a did-you-mean hint, and drops the value serde quotes
/// in "invalid type: integer `5`, expected …": a value is never repeated
/// (it may be a secret).
fn explain_serde_error(msg: &str) -> (String, Option<String>) {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((unexpected, expected)) = msg
            .strip_prefix(prefix)
            .and_then(|r| r.split_once(", expected "))
        {
            let kind = unexpected
                .split(['`', '"', '\''])
                .next()
                .unwrap_or_default()
                .trim();
            return (format!("{prefix}{kind}, expected {expected}"), None);
        }
    }
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return (msg.to_string(), None);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return (msg.to_string(), None);
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = known
        .iter()
        .map(|k| (strsim::levenshtein(field, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3);
    let hint = match closest {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => format!("valid keys here: {}", known.join(", ")),
    };
    (format!("unknown key `{field}`"), Some(hint))
}
