//! Configuration: loading, validation and the validated types.
//!
//! `load` is the one way from files to a [`Config`], used by start-up,
//! `tokend check` and `tokend dev` alike. The raw serde types in `raw` never
//! leave this module; the running code sees only validated values (a
//! [`Duration`], a parsed [`Url`], a resolved gid). Every problem is reported
//! at once, each as `FILE:LINE:COL: what is wrong — how to fix`.

mod diag;
mod load;
mod raw;
mod server;
mod source;
#[cfg(test)]
mod tests;
mod values;

use crate::secret::SecretRef;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use url::Url;

pub use diag::Problem;
pub use load::valid_source_name;

/// Default config path when neither `-c` nor `$TOKEND_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/tokend/tokend.toml";
/// Default socket path for the daemon and the client commands.
pub const DEFAULT_SOCKET: &str = "/run/tokend/tokend.sock";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The main file it was loaded from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    /// The include directory in force, if any.
    pub include_dir: Option<PathBuf>,
    /// The `*.toml` files loaded from it, in load order.
    pub include_files: Vec<PathBuf>,
    /// Things that work but deserve a look (a plain secret in a readable file).
    pub warnings: Vec<Diagnostic>,
    /// A hash of the files exactly as they were parsed (see [`disk_digest`]).
    pub digest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Group the socket file is given to.
    pub socket_group: Option<u32>,
    pub max_connections: usize,
    /// Bound on a whole request, including waiting for a fetch.
    pub request_timeout: Duration,
    pub log_format: LogFormat,
    /// Token requests in flight at once across all sources.
    pub max_concurrent_fetches: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o660,
            socket_group: None,
            max_connections: 1024,
            request_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            max_concurrent_fetches: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Generic,
    Azure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// One validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub provider: Provider,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub refresh_ratio: f64,
    pub min_ttl: Duration,
    pub fetch_timeout: Duration,
    pub eager: bool,
    pub credential_expires: Option<SystemTime>,
    pub probe_url: Option<Url>,
    /// Who may read it; `None`: anyone who can open the socket.
    pub allow: Option<crate::acl::Allow>,
}

impl SourceConfig {
    /// The requested scopes as sent in the `scope` form parameter.
    pub fn scope_param(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(" "))
    }

    /// True when the two differ in what identifies the token (endpoint, client
    /// id, scopes, params, auth method): the old token must not be served for
    /// the new identity.
    pub fn same_identity(&self, other: &SourceConfig) -> bool {
        self.token_url == other.token_url
            && self.client_id == other.client_id
            && self.scopes == other.scopes
            && self.params == other.params
            && self.auth_method == other.auth_method
    }
}

/// One problem (or warning), pinned to a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, " — {h}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::files::ReadError,
    },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The individual problems (one for a read error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Reads and validates the config at `path` and its include directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let main = diag::File::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load::run(main)
}

/// A hash of config files' paths and contents, in load order (`None` for a
/// file that could not be read).
fn digest<'a>(files: impl IntoIterator<Item = (&'a Path, Option<&'a [u8]>)>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, bytes) in files {
        path.hash(&mut h);
        bytes.hash(&mut h);
    }
    h.finish()
}

/// The [`Config::digest`] that loading `main` now would give, with the
/// include directory `include_dir` (read as the loader reads it). Equal to
/// the running config's digest exactly when the files hold what was parsed.
pub fn disk_digest(main: &Path, include_dir: &Path) -> u64 {
    let read = |p: &Path| diag::File::read(p).ok().map(|f| f.text);
    let mut files = vec![(main.to_path_buf(), read(main))];
    for p in load::include_files(include_dir).unwrap_or_default() {
        let text = read(&p);
        files.push((p, text));
    }
    digest(
        files
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_deref().map(str::as_bytes))),
    )
}

/// Validates config text as if read from `path` (whose permission bits, if
/// known, decide whether an inline secret earns a warning). An include
/// directory beside `path` is read from disk as usual.
pub fn load_str(text: &str, path: &Path, mode: Option<u32>) -> Result<Config, ConfigError> {
    load::run(diag::File {
        path: path.to_path_buf(),
        text: text.to_string(),
        mode,
    })
}
