//! Secrets and where they come from.
//!
//! A [`SecretRef`] names a secret (a file, an environment variable, a systemd
//! credential, or an inline value); [`SecretRef::resolve`] reads it at fetch
//! time, so a rotated file is picked up without a reload. Values live in
//! [`secrecy::SecretString`] from the moment they are read: their `Debug` is
//! redacted and nothing here puts a value into an error message.

use crate::problem::Problem;
use secrecy::SecretString;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

pub use secrecy::ExposeSecret;

/// Where a secret comes from. `Debug` never shows an inline value.
#[derive(Clone)]
pub enum SecretRef {
    /// `{ file = PATH }`
    File(PathBuf),
    /// `{ env = NAME }`
    Env(String),
    /// `{ credential = NAME }`: `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`).
    Credential(String),
    /// A plain string in the config file.
    Inline(SecretString),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::File(p) => write!(f, "File({})", crate::text::path(p)),
            SecretRef::Env(n) => write!(f, "Env({n})"),
            SecretRef::Credential(n) => write!(f, "Credential({n})"),
            SecretRef::Inline(_) => f.write_str("Inline([REDACTED])"),
        }
    }
}

impl PartialEq for SecretRef {
    /// Inline values compare by content so a reload sees a rotated inline secret.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SecretRef::File(a), SecretRef::File(b)) => a == b,
            (SecretRef::Env(a), SecretRef::Env(b)) => a == b,
            (SecretRef::Credential(a), SecretRef::Credential(b)) => a == b,
            (SecretRef::Inline(a), SecretRef::Inline(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}

/// Largest secret file read: a client secret or key is a few KiB at most.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

impl SecretRef {
    /// A secret reference as written for `key`: a plain string, or a table
    /// naming exactly one of `file`, `env`, `credential`. The problem never
    /// quotes a value.
    pub fn parse(value: toml::Value, key: &str) -> Result<SecretRef, Problem> {
        let how = Self::how_to_write(key);
        match value {
            toml::Value::String(s) if s.is_empty() => {
                Err(Problem::new(format!("`{key}` is empty"), how))
            }
            toml::Value::String(s) => Ok(SecretRef::Inline(SecretString::from(s))),
            toml::Value::Table(t) => {
                let kinds: Vec<(&String, &toml::Value)> = t.iter().collect();
                match kinds.as_slice() {
                    [(k, toml::Value::String(val))] if !val.is_empty() => match k.as_str() {
                        "file" => Ok(SecretRef::File(PathBuf::from(val))),
                        "env" => Ok(SecretRef::Env(val.clone())),
                        "credential" => Ok(SecretRef::Credential(val.clone())),
                        other => Err(Problem::new(format!("unknown secret kind `{other}`"), how)),
                    },
                    [_] => Err(Problem::new(
                        "secret reference needs a non-empty string value",
                        how,
                    )),
                    [] => Err(Problem::new("secret reference is empty", how)),
                    _ => {
                        let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
                        Err(Problem::new(
                            format!(
                                "secret reference names {} kinds ({}); it must name exactly one",
                                names.len(),
                                names.join(", ")
                            ),
                            how,
                        ))
                    }
                }
            }
            _ => Err(Problem::new(
                format!("`{key}` must be a string or a table"),
                how,
            )),
        }
    }

    /// How to write a reference for `key`, for hints.
    pub fn how_to_write(key: &str) -> String {
        format!("write {key} = {{ file = \"/path\" }}, {{ env = \"NAME\" }} or {{ credential = \"NAME\" }}")
    }
}

/// Why a secret could not be read. Names the place, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {source}", crate::text::path(.path))]
    File {
        path: PathBuf,
        #[source]
        source: crate::files::ReadError,
    },
    #[error("secret file {} is not UTF-8 text", crate::text::path(.0))]
    NotText(PathBuf),
    /// Someone besides root and the daemon's user could change the file
    /// (docs/security.md, "What tokend trusts"): it is not read.
    #[error("{}", .0.message)]
    Untrusted(crate::problem::Problem),
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("credential {0} requested but $CREDENTIALS_DIRECTORY is not set (is the daemon running under systemd with LoadCredential=?)")]
    NoCredentialsDirectory(String),
    #[error("secret from {0} is empty")]
    Empty(String),
}

/// How secrets reach the outside world: environment lookups are injected so
/// tests never mutate the process environment.
#[derive(Clone)]
pub struct SecretEnv {
    lookup: Arc<Lookup>,
}

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Default for SecretEnv {
    fn default() -> Self {
        Self::process()
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretEnv")
    }
}

impl SecretEnv {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self::with_lookup(|k| std::env::var(k).ok())
    }

    /// Reads from the given function instead of the process environment.
    pub fn with_lookup(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            lookup: Arc::new(f),
        }
    }

    pub fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }
}

impl SecretRef {
    /// Short description of where the secret lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::File(p) => format!("file {}", crate::text::path(p)),
            SecretRef::Env(n) => format!("environment variable {n}"),
            SecretRef::Credential(n) => format!("credential {n}"),
            SecretRef::Inline(_) => "the config file".to_string(),
        }
    }

    /// Reads the secret now. A single trailing newline (`\n` or `\r\n`) is stripped.
    pub async fn resolve(&self, env: &SecretEnv) -> Result<SecretString, SecretError> {
        match self {
            SecretRef::Inline(_) | SecretRef::Env(_) => self.resolve_now(env),
            // Files are read in the blocking pool.
            SecretRef::File(_) | SecretRef::Credential(_) => {
                let (r, moved) = (self.clone(), env.clone());
                tokio::task::spawn_blocking(move || r.resolve_now(&moved))
                    .await
                    .map_err(|e| SecretError::File {
                        path: self.path(env).unwrap_or_default(),
                        source: std::io::Error::other(e.to_string()).into(),
                    })?
            }
        }
    }

    /// [`SecretRef::resolve`] for a blocking context: reads a file here
    /// and now (a regular file of at most 64 KiB, never a blocking read).
    pub fn resolve_now(&self, env: &SecretEnv) -> Result<SecretString, SecretError> {
        // Every buffer that held the value is wiped when dropped; the
        // SecretString returned wipes its own.
        let raw = Zeroizing::new(match self {
            SecretRef::Inline(s) => return non_empty(s.expose_secret().to_string(), self),
            SecretRef::Env(name) => env
                .var(name)
                .ok_or_else(|| SecretError::Env(name.clone()))?,
            SecretRef::File(path) => read_file(path)?,
            SecretRef::Credential(name) => {
                let dir = env
                    .var("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                read_file(&PathBuf::from(dir).join(name))?
            }
        });
        non_empty(strip_newline(&raw).to_string(), self)
    }
}

impl SecretRef {
    /// A hash of the secret's current value (or of why it cannot be read),
    /// so a reload can tell a rotated secret from an unchanged one. Only the
    /// hash is kept; it never leaves the process.
    pub fn fingerprint(&self, env: &SecretEnv) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // The bytes read are wiped as soon as they are hashed.
        // A file refused for who may change it hashes as refused, so the
        // chown or chmod that fixes it is a change.
        let read =
            |p: PathBuf, h: &mut std::collections::hash_map::DefaultHasher| match read_file(&p)
                .map(Zeroizing::new)
            {
                Ok(text) => (0u8, text.as_bytes()).hash(h),
                Err(SecretError::File { source, .. }) => (1u8, source.kind()).hash(h),
                Err(SecretError::Untrusted(p)) => (2u8, p.message).hash(h),
                Err(_) => 3u8.hash(h),
            };
        match self {
            SecretRef::Inline(s) => s.expose_secret().hash(&mut h),
            SecretRef::Env(n) => env.var(n).map(Zeroizing::new).as_deref().hash(&mut h),
            SecretRef::File(p) => read(p.clone(), &mut h),
            SecretRef::Credential(n) => match env.var("CREDENTIALS_DIRECTORY") {
                Some(d) => read(PathBuf::from(d).join(n), &mut h),
                None => 2u8.hash(&mut h),
            },
        }
        h.finish()
    }

    /// The file this secret is read from, if any (to watch it).
    pub fn path(&self, env: &SecretEnv) -> Option<PathBuf> {
        match self {
            SecretRef::File(p) => Some(p.clone()),
            SecretRef::Credential(n) => env
                .var("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join(n)),
            SecretRef::Env(_) | SecretRef::Inline(_) => None,
        }
    }
}

/// The value without one trailing newline (`\n` or `\r\n`), as a secret
/// file is read.
pub fn strip_newline(raw: &str) -> &str {
    raw.strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(raw)
}

fn non_empty(s: String, from: &SecretRef) -> Result<SecretString, SecretError> {
    if s.is_empty() {
        Err(SecretError::Empty(from.describe()))
    } else {
        Ok(SecretString::from(s))
    }
}

/// Reads a secret file: a regular file of at most [`MAX_SECRET_FILE`]
/// bytes. A FIFO, a device or a huge file is an error at once, never a read
/// that blocks.
fn read_file(path: &std::path::Path) -> Result<String, SecretError> {
    let failed = |source| SecretError::File {
        path: path.to_path_buf(),
        source,
    };
    let opened = crate::files::open_regular(path).map_err(failed)?;
    let facts = crate::trust::Facts::of(opened.fd()).map_err(|e| failed(e.into()))?;
    if let Some(p) = untrusted(path, &facts) {
        return Err(SecretError::Untrusted(p));
    }
    let bytes = opened.read(MAX_SECRET_FILE).map_err(failed)?;
    String::from_utf8(bytes).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        SecretError::NotText(path.to_path_buf())
    })
}

/// Who could change a secret file, if anyone should not (see
/// [`crate::trust::untrusted`]).
pub fn untrusted(path: &Path, facts: &crate::trust::Facts) -> Option<crate::problem::Problem> {
    crate::trust::untrusted(
        path,
        facts,
        "secret file",
        "whoever can change it decides what tokend sends as the secret",
    )
}

/// Fingerprints secrets for one look at the configuration, reading each
/// file or variable once however many sources share it (thousands of
/// sources often share one secret).
pub struct Fingerprinter<'a> {
    env: &'a SecretEnv,
    seen: HashMap<(u8, &'a OsStr), u64>,
}

impl<'a> Fingerprinter<'a> {
    pub fn new(env: &'a SecretEnv) -> Self {
        Fingerprinter {
            env,
            seen: HashMap::new(),
        }
    }

    /// [`SecretRef::fingerprint`], remembered by where the secret is.
    pub fn of(&mut self, r: &'a SecretRef) -> u64 {
        let key = match r {
            SecretRef::File(p) => (0, p.as_os_str()),
            SecretRef::Env(n) => (1, OsStr::new(n.as_str())),
            SecretRef::Credential(n) => (2, OsStr::new(n.as_str())),
            SecretRef::Inline(_) => return r.fingerprint(self.env),
        };
        *self
            .seen
            .entry(key)
            .or_insert_with(|| r.fingerprint(self.env))
    }

    /// A hash of the bytes of the file at `path` now (at most `limit` of
    /// them), or of why it cannot be read: a certificate or a `ca_file`,
    /// whose change on disk is a change even when what the running config
    /// holds in memory is not. Remembered by path.
    pub fn file(&mut self, path: &'a Path, limit: u64) -> u64 {
        *self.seen.entry((3, path.as_os_str())).or_insert_with(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            match crate::files::read_regular(path, limit).map(zeroize::Zeroizing::new) {
                Ok(bytes) => (0u8, bytes.as_slice()).hash(&mut h),
                Err(e) => (1u8, e.kind()).hash(&mut h),
            }
            h.finish()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_secret_strips_one_newline_and_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "first\n").unwrap();
        let r = SecretRef::File(p.clone());
        let env = SecretEnv::with_lookup(|_| None);
        assert_eq!(r.resolve(&env).await.unwrap().expose_secret(), "first");
        std::fs::write(&p, "second\r\n").unwrap();
        assert_eq!(r.resolve(&env).await.unwrap().expose_secret(), "second");
    }

    #[tokio::test]
    async fn credential_reads_from_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("graph"), "v").unwrap();
        let d = dir.path().to_string_lossy().to_string();
        let env =
            SecretEnv::with_lookup(move |k| (k == "CREDENTIALS_DIRECTORY").then(|| d.clone()));
        let r = SecretRef::Credential("graph".into());
        assert_eq!(r.resolve(&env).await.unwrap().expose_secret(), "v");
        let none = SecretEnv::with_lookup(|_| None);
        let err = r.resolve(&none).await.unwrap_err().to_string();
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
    }

    #[tokio::test]
    async fn a_device_or_a_huge_file_is_an_error_naming_it() {
        // (files.rs checks every kind of file; this is what a fetch reports.)
        let env = SecretEnv::with_lookup(|_| None);
        let e = SecretRef::File("/dev/zero".into())
            .resolve(&env)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "cannot read secret file /dev/zero: it is a device, not a regular file"
        );
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 65 * 1024]).unwrap();
        let e = SecretRef::File(big)
            .resolve(&env)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 65536 bytes"), "{e}");
    }

    #[test]
    fn debug_is_redacted() {
        let r = SecretRef::Inline(SecretString::from("hunter2"));
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
