//! Loading: the main file and the include directory, parsed as spanned
//! TOML; source names checked, duplicates across files named, `[defaults]`
//! merged into each source; then `[server]` and every source validated.
//! One run collects every problem.

use super::diag::{At, Diagnostics, File};
use super::raw::{RawManagedIdentity, RawServer, RawSource};
use super::{Config, ConfigError, SourceConfig};
use crate::files::ReadError;
use crate::trust::Facts;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "defaults",
    "sources",
    "include_dir",
    "managed_identity",
    "imds",
];

/// Source names: `[a-z0-9][a-z0-9._-]{0,63}`. Checked before any lookup, so a
/// request for `../etc` never reaches the registry or the filesystem.
///
/// ```
/// use tokend::config::valid_source_name;
/// assert!(valid_source_name("graph"));
/// assert!(valid_source_name("billing.prod-2"));
/// assert!(!valid_source_name("../etc"));
/// assert!(!valid_source_name("Graph"));
/// ```
pub fn valid_source_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// An include directory as read through one descriptor: what it is, and
/// each of its `*.toml` files in name order, opened in it (`openat`), so
/// what is judged is what is listed and what is read, whatever is renamed
/// meanwhile. Entries that are not regular files (a directory, a FIFO, a
/// dangling link) are left out.
pub(super) struct Includes {
    pub facts: Facts,
    pub files: Vec<(PathBuf, Result<File, ReadError>)>,
}

pub(super) fn read_includes(dir: &Path) -> std::io::Result<Includes> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let facts = Facts::of(&fd)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_os_string();
        if Path::new(&name).extension().is_some_and(|x| x == "toml") {
            names.push(name);
        }
    }
    names.sort();
    let files = names
        .into_iter()
        .filter_map(|name| {
            let path = dir.join(&name);
            match File::read_at(&fd, &name, &path) {
                Err(ReadError::NotRegular(_)) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                read => Some((path, read)),
            }
        })
        .collect();
    Ok(Includes { facts, files })
}

/// The main file's top-level keys other than `sources`.
#[derive(Default)]
struct MainParts {
    server: Option<RawServer>,
    managed_identity: Option<RawManagedIdentity>,
    imds: Option<super::raw::RawImds>,
    defaults: Option<RawSource>,
    include_dir: Option<Result<Spanned<String>, ()>>,
}

/// A source as written, with the file it came from.
struct Found {
    file: usize,
    name: String,
    span: Range<usize>,
    /// Boxed: a source as written is a kilobyte, moved several times.
    raw: Box<RawSource>,
}

/// Validates `main` and its include directory into a [`Config`].
pub(super) fn run(main: File) -> Result<Config, ConfigError> {
    if let Some(p) = &main.untrusted {
        // Nothing in a file someone else could have written is looked at.
        return Err(ConfigError::Invalid(
            vec![refused(&main.path, p)],
            Vec::new(),
        ));
    }
    let mut d = Diagnostics::new(main);
    let mut found = Vec::new();
    let main = process_file(&mut d, 0, &mut found);
    if !d.errors.is_empty() && main.server.is_none() && main.defaults.is_none() && found.is_empty()
    {
        // A syntax error in the main file: nothing else is worth checking.
        return Err(ConfigError::Invalid(d.errors, d.named));
    }
    let defaults = main.defaults.unwrap_or_default();
    if let Some(s) = &defaults.sinks {
        d.error(
            &At::of(0, s),
            "`sinks` cannot be set in [defaults]",
            Some("a sink file belongs to one source: set sinks in each [sources.NAME]".to_string()),
        );
    }
    let server = super::server::server(&mut d, main.server.unwrap_or_default());
    let include_dir = include_dir(&mut d, main.include_dir);
    let include_files = match &include_dir {
        Some(dir) => load_includes(&mut d, dir, &mut found),
        None => Vec::new(),
    };
    let (defined, to_check) = names(&mut d, found);
    let sources = check_sources(&mut d, to_check, &defaults);
    let managed_identity = main
        .managed_identity
        .and_then(|raw| super::mi::managed_identity(&mut d, raw, &sources, &defined));
    let imds = main
        .imds
        .and_then(|raw| super::mi::imds(&mut d, raw, &sources, &defined));
    if !d.errors.is_empty() {
        d.errors
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        return Err(ConfigError::Invalid(d.errors, d.named));
    }
    let digest = super::digest(d.files.iter().map(|f| {
        (
            f.path.as_path(),
            Some((f.text.as_bytes(), f.attrs.as_ref())),
        )
    }));
    Ok(Config {
        digest,
        path: d.files[0].path.clone(),
        server,
        sources,
        include_dir,
        include_files,
        managed_identity,
        imds,
        warnings: d.warnings,
    })
}

/// A source to check: its name, where its header is, and its table.
type ToCheck = (String, At, Box<RawSource>);

/// The sources' names, in file order (which definition of a name is the
/// first decides which one the error is about): where each is defined,
/// and those to check (valid names, first definitions).
fn names(d: &mut Diagnostics, found: Vec<Found>) -> (BTreeMap<String, At>, Vec<ToCheck>) {
    let mut defined: BTreeMap<String, At> = BTreeMap::new();
    let mut to_check = Vec::new();
    for Found {
        file,
        name,
        span,
        raw,
    } in found
    {
        let header = At::new(file, span);
        if !valid_source_name(&name) {
            d.error(
                &header,
                format!("invalid source name `{name}`"),
                Some("names are 1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit".to_string()),
            );
            continue;
        }
        if let Some(first) = defined.get(&name) {
            let first = d.place(first);
            d.error(
                &header,
                format!("source `{name}` is defined twice: here and at {first}"),
                Some("rename or remove one of them".to_string()),
            );
            continue;
        }
        defined.insert(name.clone(), header.clone());
        to_check.push((name, header, raw));
    }
    (defined, to_check)
}

/// Each source on its own, on every core; their problems and sink files
/// are taken back in file order. The sources that are valid and write no
/// other source's sink file.
fn check_sources(
    d: &mut Diagnostics,
    to_check: Vec<ToCheck>,
    defaults: &RawSource,
) -> BTreeMap<String, std::sync::Arc<SourceConfig>> {
    let checked = crate::cores::map(to_check, |(name, header, raw)| {
        let mut fork = d.fork();
        let mut claims = Vec::new();
        let s = super::source::source(&mut fork, &name, &header, *raw, defaults, &mut claims);
        (fork, name, s.map(std::sync::Arc::new), claims)
    });
    let mut sources = BTreeMap::new();
    let mut sink_paths = BTreeMap::new();
    for (fork, name, s, claims) in checked {
        d.join(fork);
        let own_sinks = super::sink::one_writer(d, claims, &mut sink_paths);
        if let Some(s) = s.filter(|_| own_sinks) {
            sources.insert(name, s);
        }
    }
    sources
}

/// Parses file `idx` and takes what it holds: `[sources.*]` into `found`,
/// and for the main file its other top-level keys. Everything returned is
/// owned, so the parsed text need not outlive this call.
fn process_file(d: &mut Diagnostics, idx: usize, found: &mut Vec<Found>) -> MainParts {
    let mut parts = MainParts::default();
    let files = d.files.clone();
    let text = &files[idx].text;
    let parsed = super::pieces::parse(text, super::pieces::PIECE);
    match parsed {
        Err(parse_errors) => {
            for e in parse_errors {
                let span = e.span().unwrap_or(0..0);
                // Never the offending text itself: it may be a secret whose
                // quotes were forgotten (client_secret = Sup3rSecret). The
                // line and column say where it is.
                let msg = e.message().trim().to_string();
                d.error(
                    &At::new(idx, span),
                    msg,
                    Some("fix the TOML syntax".to_string()),
                );
            }
        }
        Ok(pieces) => {
            for piece in pieces {
                take_piece(d, idx, piece, found, &mut parts);
            }
        }
    }
    parts
}

/// Takes one parsed piece of file `idx` (see [`process_file`]).
fn take_piece(
    d: &mut Diagnostics,
    idx: usize,
    piece: super::pieces::Piece<'_>,
    found: &mut Vec<Found>,
    parts: &mut MainParts,
) {
    if let Some(span) = piece.sources_not_table {
        d.error(
            &At::new(idx, span),
            "`sources` must be a table",
            Some("write sources as [sources.NAME] tables".to_string()),
        );
    }
    for s in piece.sources {
        match s.raw {
            Ok(raw) => found.push(Found {
                file: idx,
                name: s.name,
                span: s.span,
                raw,
            }),
            Err(p) => d.pending(idx, p),
        }
    }
    for (key, value) in piece.others {
        let at = At::of(idx, &key);
        match (key.get_ref().as_ref(), idx == 0) {
            ("server", true) => parts.server = d.deserialize(idx, value),
            ("defaults", true) => parts.defaults = d.deserialize(idx, value),
            ("managed_identity", true) => parts.managed_identity = d.deserialize(idx, value),
            ("imds", true) => parts.imds = d.deserialize(idx, value),
            ("include_dir", true) => {
                parts.include_dir = Some(d.deserialize::<Spanned<String>>(idx, value).ok_or(()));
            }
            (other, true) => {
                let msg = format!("unknown key `{other}`");
                d.error(
                    &at,
                    msg,
                    Some(format!("top-level keys are {}", TOP_LEVEL_KEYS.join(", "))),
                );
            }
            (other, false) => {
                let msg = format!("`{other}` is not allowed in an include file");
                d.error(&at, msg, Some("include files hold only [sources.NAME] tables; put [server] and [defaults] in the main file".to_string()));
            }
        }
    }
}

/// The include directory: `include_dir` (relative to the main file), else
/// `sources.d` beside the main file if it exists.
fn include_dir(d: &mut Diagnostics, key: Option<Result<Spanned<String>, ()>>) -> Option<PathBuf> {
    let base = d.files[0]
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match key {
        None => {
            let dir = base.join("sources.d");
            dir.is_dir().then_some(dir)
        }
        Some(Err(())) => None,
        Some(Ok(v)) => {
            let dir = base.join(v.get_ref());
            if dir.is_dir() {
                Some(dir)
            } else {
                d.error(
                    &At::of(0, &v),
                    format!("include_dir {} is not a directory", crate::text::path(&dir)),
                    Some("create it or remove include_dir".to_string()),
                );
                None
            }
        }
    }
}

/// A file refused as a whole (see [`super::diag::untrusted`]), placed at its start.
fn refused(path: &Path, why: &crate::problem::Problem) -> super::Diagnostic {
    super::Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message: why.message.clone(),
        hint: why.hint.clone(),
    }
}

/// Loads every `*.toml` in `dir`, in name order, into `found`.
fn load_includes(d: &mut Diagnostics, dir: &Path, found: &mut Vec<Found>) -> Vec<PathBuf> {
    let includes = match read_includes(dir) {
        Ok(i) => i,
        Err(e) => {
            d.error(
                &At::new(0, 0..0),
                format!(
                    "cannot read include directory {}: {e}",
                    crate::text::path(dir)
                ),
                None,
            );
            return Vec::new();
        }
    };
    if let Some(p) = super::diag::untrusted(dir, &includes.facts, "directory") {
        // Anyone who can write it can add a file: none is loaded.
        d.error(&At::new(0, 0..0), p.message, p.hint);
        return Vec::new();
    }
    let mut paths = Vec::new();
    for (path, read) in includes.files {
        paths.push(path.clone());
        let file = match read {
            Ok(f) => f,
            Err(e) => {
                d.errors.push(super::Diagnostic {
                    file: path,
                    line: 1,
                    col: 1,
                    message: format!("cannot read: {e}"),
                    hint: Some("check the file's permissions".to_string()),
                });
                continue;
            }
        };
        if let Some(p) = &file.untrusted {
            d.errors.push(refused(&path, p));
            continue;
        }
        let idx = d.add_file(file);
        process_file(d, idx, found);
    }
    paths
}
