//! Configuration: loading, validation and the validated types.
//!
//! `load` is the one way from files to a [`Config`], used by start-up,
//! `tokend check` and `tokend dev` alike. The raw serde types in `raw` never
//! leave this module; the running code sees only validated values (a
//! [`Duration`], a parsed [`Url`], a resolved gid). Every problem is reported
//! at once, each as `FILE:LINE:COL: what is wrong — how to fix`.

mod diag;
mod load;
mod mi;
mod pieces;
mod raw;
mod server;
mod sink;
mod source;
#[cfg(test)]
mod tests;
mod values;

use crate::secret::{Fingerprinter, SecretEnv, SecretRef};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

pub use load::valid_source_name;
pub use mi::resource_of;

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
    /// Shared with the running sources, so a config holds each once.
    pub sources: BTreeMap<String, Arc<SourceConfig>>,
    /// The include directory in force, if any.
    pub include_dir: Option<PathBuf>,
    /// The `*.toml` files loaded from it, in load order.
    pub include_files: Vec<PathBuf>,
    /// The Azure SDK drop-in endpoint, if configured.
    pub managed_identity: Option<ManagedIdentity>,
    /// The instance-metadata (IMDS) door, if configured.
    pub imds: Option<Imds>,
    /// Things that work but deserve a look (a plain secret in a readable file).
    pub warnings: Vec<Diagnostic>,
    /// A hash of the files exactly as they were parsed (see [`disk_digest`]).
    pub digest: u64,
}

impl Config {
    /// This config copied into the calling thread's heap (each source's
    /// settings too, not just the map of them), the original freed and the
    /// freed heap handed back to the system. A config is parsed in the
    /// blocking pool, where the parse leaves freed memory interleaved with
    /// the config's own allocations; glibc can return none of it while the
    /// config lives there. Moved out, the loading thread's heap is all free and goes back
    /// whole. The original is freed, and the heap trimmed, on a blocking
    /// thread: off the way to serving. Every reload calls it; start-up only
    /// trims the heap once its sources are registered (see daemon.rs).
    pub fn rehome(self) -> Config {
        let mut fresh = self.clone();
        fresh.sources = self
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), Arc::new(SourceConfig::clone(s))))
            .collect();
        crate::heap::release(self);
        fresh
    }
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
    /// Connections one uid (other than root and the daemon's) may hold on
    /// the socket at once.
    pub max_connections_per_uid: usize,
    /// Bound on a whole request, including waiting for a fetch.
    pub request_timeout: Duration,
    pub log_format: LogFormat,
    /// Token requests in flight at once to each token endpoint.
    pub max_concurrent_fetches: usize,
    /// A TCP listener for Prometheus: `/metrics`, `/healthz` and `/readyz`
    /// only, no tokens.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o660,
            socket_group: None,
            max_connections: 1024,
            max_connections_per_uid: 64,
            request_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            max_concurrent_fetches: 8,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Generic,
    Azure,
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// A signed JWT assertion (RFC 7523): from a certificate's key, or a
    /// ready-made federated one.
    PrivateKeyJwt,
    /// The client certificate in the TLS handshake (RFC 8705).
    TlsClientAuth,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
        }
    }
}

/// The algorithm a client assertion is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Rs256,
    Ps256,
    Es256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Ps256 => "PS256",
            SigningAlg::Es256 => "ES256",
        }
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
            SigningAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
            SigningAlg::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

/// `client_certificate = { cert, key, alg }`: the certificate is read when
/// the config loads; the key, a secret, when a token is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertificate {
    pub cert_path: PathBuf,
    pub cert: Arc<crate::cert::Certificate>,
    pub key: SecretRef,
    pub alg: SigningAlg,
}

/// How a source proves who it is. Exactly one per source.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// `client_secret`.
    Secret(SecretRef),
    /// `client_certificate`: `private_key_jwt` or `tls_client_auth`.
    Certificate(ClientCertificate),
    /// `client_assertion`: a ready-made assertion, read at every fetch.
    Assertion(SecretRef),
}

impl Credential {
    /// A hash of the credential's current content (or of why it cannot be
    /// read), so a reload can tell a rotated one from an unchanged one.
    /// Reads files: call it off the async runtime.
    pub fn fingerprint<'a>(&'a self, secrets: &mut Fingerprinter<'a>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self {
            Credential::Secret(r) => (0u8, secrets.of(r)).hash(&mut h),
            // The certificate's bytes on disk, not the ones loaded: a
            // renewal with the same key is a change.
            Credential::Certificate(c) => {
                let cert = secrets.file(&c.cert_path, crate::cert::MAX_CERT_FILE);
                (1u8, cert, secrets.of(&c.key)).hash(&mut h);
            }
            Credential::Assertion(r) => (2u8, secrets.of(r)).hash(&mut h),
        }
        h.finish()
    }

    /// The files it is read from, to watch them.
    pub fn paths(&self, env: &SecretEnv) -> Vec<PathBuf> {
        match self {
            Credential::Secret(r) | Credential::Assertion(r) => r.path(env).into_iter().collect(),
            Credential::Certificate(c) => std::iter::once(c.cert_path.clone())
                .chain(c.key.path(env))
                .collect(),
        }
    }
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `token_url` (or Entra's, from `tenant`).
    Url(Url),
    /// `issuer`: the `token_endpoint` of its discovery document.
    Issuer(Url),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printed as any URL is: no credentials, no query.
        match self {
            Endpoint::Url(u) => write!(f, "{}", crate::text::url(u)),
            Endpoint::Issuer(u) => write!(f, "issuer {}", crate::text::url(u)),
        }
    }
}

/// `ca_file`: extra CA certificates trusted for one source's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Arc<Vec<u8>>,
}

/// One validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub provider: Provider,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub credential: Credential,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub refresh_ratio: f64,
    pub min_ttl: Duration,
    pub fetch_timeout: Duration,
    pub eager: bool,
    /// `credential_expires`, else the certificate's `notAfter`.
    pub credential_expires: Option<SystemTime>,
    pub probe_url: Option<Url>,
    /// Who may read it; `None`: anyone who can open the socket.
    pub allow: Option<crate::acl::Allow>,
    pub ca_file: Option<CaFile>,
    /// Files the token is written to after every fetch (docs/config.md,
    /// "sinks"). A source with sinks is always eager.
    pub sinks: Vec<SinkConfig>,
}

/// One file a source's token is written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Absolute; its directory checked safe at load.
    pub path: PathBuf,
    pub format: SinkFormat,
    /// Permission bits: never write or execute for anyone but the owner.
    pub mode: u32,
    /// uid and gid to give the file; `None`: the daemon's own.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// What a sink file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// The token alone, no newline.
    Raw,
    /// The body `GET /v1/tokens/NAME` answers.
    Json,
    /// `Authorization: Bearer TOKEN` and a newline.
    Header,
}

impl SourceConfig {
    /// A hash of what the source reads from outside the config as it is on
    /// disk now: its credential (see [`Credential::fingerprint`]) and its
    /// `ca_file`. A change is a credential change: the token keeps serving
    /// while a fetch with the new files starts at once. Reads files: call
    /// it off the async runtime.
    pub fn fingerprint<'a>(&'a self, secrets: &mut Fingerprinter<'a>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.credential.fingerprint(secrets).hash(&mut h);
        if let Some(ca) = &self.ca_file {
            secrets
                .file(&ca.path, crate::cert::MAX_CERT_FILE)
                .hash(&mut h);
        }
        h.finish()
    }

    /// The requested scopes as sent in the `scope` form parameter.
    pub fn scope_param(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(" "))
    }

    /// A digest of what identifies the source's tokens (endpoint, client
    /// id, scopes, params, auth method), the same in every run: a sink file
    /// recorded under another one holds an earlier identity's token.
    pub fn identity_digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let endpoint = match &self.endpoint {
            Endpoint::Url(u) => format!("url {u}"),
            Endpoint::Issuer(u) => format!("issuer {u}"),
        };
        for part in [
            endpoint,
            self.client_id.clone(),
            self.scopes.join(" "),
            format!("{:?}", self.params),
            self.auth_method.as_str().to_string(),
        ] {
            h.update(part.len().to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// True when the two differ in what identifies the token (endpoint, client
    /// id, scopes, params, auth method): the old token must not be served for
    /// the new identity.
    pub fn same_identity(&self, other: &SourceConfig) -> bool {
        self.endpoint == other.endpoint
            && self.client_id == other.client_id
            && self.scopes == other.scopes
            && self.params == other.params
            && self.auth_method == other.auth_method
    }
}

/// `[managed_identity]`: an App Service managed-identity endpoint on
/// loopback for unmodified Azure SDK programs.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedIdentity {
    pub listen: std::net::SocketAddr,
    pub apps: BTreeMap<String, MiApp>,
}

/// `[imds]`: Azure's instance-metadata token protocol on loopback (or on
/// 169.254.169.254 where that address is local), for the tools that speak
/// it; callers are known by the kernel's word.
#[derive(Debug, Clone, PartialEq)]
pub struct Imds {
    pub listen: std::net::SocketAddr,
    /// The sources offered there.
    pub sources: Vec<String>,
}

/// One program allowed on the managed-identity endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct MiApp {
    pub name: String,
    /// Its `IDENTITY_HEADER` value.
    pub header: SecretRef,
    /// The sources it may get tokens from.
    pub sources: Vec<String>,
    /// Who may present its header (`None`: whoever has it).
    pub allow: Option<crate::acl::Allow>,
}

/// One problem (or warning), pinned to a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
            crate::text::path(&self.file),
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
    #[error("cannot read config file {}: {source}", crate::text::path(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: crate::files::ReadError,
    },
    #[error("config file {} is empty: the running configuration stays in force until it has content (a writer that truncates and writes again leaves it empty for a moment; an empty file is never read as \"no sources\")", crate::text::path(.path))]
    Empty { path: PathBuf },
    #[error("include directory {} is gone: the running configuration, its sources included, stays in force until it is back (to drop those sources, empty the directory or remove include_dir)", crate::text::path(.path))]
    IncludeDirGone { path: PathBuf },
    /// Every problem, and the files the config named that were read to
    /// judge it (a `ca_file`, a certificate): a reload that was refused is
    /// tried again when one of them changes or appears.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>, Vec<PathBuf>),
}

fn join_lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The files the refused config named and read (see [`ConfigError::Invalid`]).
    pub fn named_files(&self) -> &[PathBuf] {
        match self {
            ConfigError::Invalid(_, named) => named,
            _ => &[],
        }
    }

    /// The individual problems (one for a read error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Empty { .. }
            | ConfigError::IncludeDirGone { .. } => {
                vec![self.to_string()]
            }
            ConfigError::Invalid(d, _) => d.iter().map(ToString::to_string).collect(),
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

/// [`load`] for a running daemon: an empty (0-byte) main file is an error,
/// like a missing one, never a config without sources (docs/behaviour.md,
/// "Reload").
pub fn load_nonempty(path: &Path) -> Result<Config, ConfigError> {
    let main = diag::File::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if main.text.is_empty() {
        return Err(ConfigError::Empty {
            path: path.to_path_buf(),
        });
    }
    load::run(main)
}

/// What a file read for the digest holds: its bytes, and its mode, owner,
/// group and ACL when read from disk.
type Read<'a> = (&'a [u8], Option<&'a crate::trust::Facts>);

/// A hash of config files' paths, contents, modes, owners and ACLs, in
/// load order (`None` for a file that could not be read): a `chmod` that
/// makes a refused include acceptable, or one that makes an accepted one
/// unsafe, is a change.
fn digest<'a>(files: impl IntoIterator<Item = (&'a Path, Option<Read<'a>>)>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, read) in files {
        path.hash(&mut h);
        read.hash(&mut h);
    }
    h.finish()
}

/// The [`Config::digest`] that loading `main` now would give, with the
/// include directory `include_dir` (read as the loader reads it). Equal to
/// the running config's digest exactly when the files hold what was parsed.
pub fn disk_digest(main: &Path, include_dir: &Path) -> u64 {
    let mut files = vec![(main.to_path_buf(), diag::File::read(main).ok())];
    if let Ok(includes) = load::read_includes(include_dir) {
        files.extend(includes.files.into_iter().map(|(p, f)| (p, f.ok())));
    }
    digest(files.iter().map(|(p, f)| {
        (
            p.as_path(),
            f.as_ref().map(|f| (f.text.as_bytes(), f.attrs.as_ref())),
        )
    }))
}

/// Validates config text as if read from `path` (whose permission bits, if
/// known, decide whether an inline secret earns a warning: with no file,
/// there is no group to look at, so any group or other bit counts). An
/// include directory beside `path` is read from disk as usual.
pub fn load_str(text: &str, path: &Path, mode: Option<u32>) -> Result<Config, ConfigError> {
    load::run(diag::File::new(
        path.to_path_buf(),
        text.to_string(),
        mode.map(|m| m & 0o077 != 0),
        None,
    ))
}
