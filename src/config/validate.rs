//! Raw config → validated [`Config`], collecting every problem with its place.

use super::raw::{RawServer, RawSource};
use super::{
    AuthMethod, Config, ConfigError, Diagnostic, LogFormat, Provider, ServerConfig, SourceConfig,
    AZURE_AUTHORITY, AZURE_DEFAULT_SCOPE,
};
use crate::acl::Allow;
use crate::files::{read_regular, ReadError};
use crate::secret::SecretRef;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;
use url::{Host, Url};

const TOP_LEVEL_KEYS: &[&str] = &["server", "defaults", "sources", "include_dir"];
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
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

/// One file of the configuration: the main file or an include.
pub(super) struct File {
    pub path: PathBuf,
    pub text: String,
    /// Permission bits, when read from disk (decides the inline-secret warning).
    pub mode: Option<u32>,
}

/// Largest config file read.
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

impl File {
    /// Reads `path` from disk: a regular file of at most [`MAX_CONFIG_FILE`].
    pub fn read(path: &Path) -> Result<File, ReadError> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = read_regular(path, MAX_CONFIG_FILE)?;
        let mode = std::fs::metadata(path)?.permissions().mode();
        let text = String::from_utf8(bytes).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text")
        })?;
        Ok(File {
            path: path.to_path_buf(),
            text,
            mode: Some(mode),
        })
    }
}

/// The `*.toml` files of an include directory, in name order.
pub(super) fn include_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// The main file's top-level keys other than `sources`.
#[derive(Default)]
struct MainParts {
    server: Option<RawServer>,
    defaults: Option<RawSource>,
    include_dir: Option<Result<Spanned<String>, ()>>,
}

/// A source as written, with the file it came from.
struct Found {
    file: usize,
    name: String,
    span: Range<usize>,
    raw: RawSource,
}

pub(super) struct Validator {
    files: Vec<File>,
    /// The file diagnostics are reported against.
    cur: usize,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Validator {
    pub fn new(main: File) -> Self {
        Validator {
            files: vec![main],
            cur: 0,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diag_in(
        &self,
        file: usize,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let f = &self.files[file];
        let upto = f
            .text
            .get(..span.start.min(f.text.len()))
            .unwrap_or_default();
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Diagnostic {
            file: f.path.clone(),
            line,
            col,
            message,
            hint,
        }
    }

    fn err(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let d = self.diag_in(self.cur, span, message.into(), hint.into());
        self.errors.push(d);
    }

    fn warn(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let d = self.diag_in(self.cur, span, message.into(), hint.into());
        self.warnings.push(d);
    }

    /// Deserializes one table, turning a serde error into a diagnostic.
    fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let whole = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(whole);
                let (msg, hint) = explain_serde_error(e.message().trim());
                self.err(span, msg, hint);
                None
            }
        }
    }

    /// Parses file `idx` and takes what it holds: `[sources.*]` into
    /// `found`, and for the main file its other top-level keys. Everything
    /// returned is owned, so the parsed text need not outlive this call.
    fn process_file(&mut self, idx: usize, found: &mut Vec<Found>) -> MainParts {
        self.cur = idx;
        let mut parts = MainParts::default();
        let text = self.files[idx].text.clone();
        let (doc, parse_errors) = DeTable::parse_recoverable(&text);
        if !parse_errors.is_empty() {
            for e in parse_errors {
                let span = e.span().unwrap_or(0..0);
                let mut msg = e.message().trim().to_string();
                if let Some(what) = text
                    .get(span.clone())
                    .filter(|t| !t.is_empty() && t.len() < 80 && !t.contains('\n'))
                {
                    msg = format!("{msg} `{what}`");
                }
                self.err(span, msg, Some("fix the TOML syntax".to_string()));
            }
            return parts;
        }
        for (key, value) in doc.into_inner() {
            let key_span = key.span();
            match (key.get_ref().as_ref(), idx == 0) {
                ("sources", _) => self.collect_sources(idx, value, found),
                ("server", true) => parts.server = self.deserialize(value),
                ("defaults", true) => parts.defaults = self.deserialize(value),
                ("include_dir", true) => {
                    parts.include_dir = Some(self.deserialize::<Spanned<String>>(value).ok_or(()));
                }
                (other, true) => {
                    let msg = format!("unknown key `{other}`");
                    self.err(
                        key_span,
                        msg,
                        Some(format!("top-level keys are {}", TOP_LEVEL_KEYS.join(", "))),
                    );
                }
                (other, false) => {
                    let msg = format!("`{other}` is not allowed in an include file");
                    self.err(key_span, msg, Some("include files hold only [sources.NAME] tables; put [server] and [defaults] in the main file".to_string()));
                }
            }
        }
        parts
    }

    /// The `[sources.*]` tables of one parsed file.
    fn collect_sources(
        &mut self,
        file: usize,
        value: Spanned<DeValue<'_>>,
        found: &mut Vec<Found>,
    ) {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(t) => {
                for (name, v) in t {
                    let name_span = name.span();
                    let name = name.into_inner().into_owned();
                    if let Some(raw) = self.deserialize::<RawSource>(v) {
                        found.push(Found {
                            file,
                            name,
                            span: name_span,
                            raw,
                        });
                    }
                }
            }
            _ => self.err(
                span,
                "`sources` must be a table",
                Some("write sources as [sources.NAME] tables".to_string()),
            ),
        }
    }

    /// The include directory: `include_dir` (relative to the main file), else
    /// `sources.d` beside the main file if it exists.
    fn include_dir(&mut self, key: Option<Result<Spanned<String>, ()>>) -> Option<PathBuf> {
        self.cur = 0;
        let base = self.files[0]
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match key {
            None => {
                let d = base.join("sources.d");
                d.is_dir().then_some(d)
            }
            Some(Err(())) => None,
            Some(Ok(v)) => {
                let d = base.join(v.get_ref());
                if d.is_dir() {
                    Some(d)
                } else {
                    self.err(
                        v.span(),
                        format!("include_dir {} is not a directory", d.display()),
                        Some("create it or remove include_dir".to_string()),
                    );
                    None
                }
            }
        }
    }

    /// Loads every `*.toml` in `dir`, in name order, into `found`.
    fn load_includes(&mut self, dir: &Path, found: &mut Vec<Found>) -> Vec<PathBuf> {
        let paths: Vec<PathBuf> = match include_files(dir) {
            Ok(p) => p,
            Err(e) => {
                self.cur = 0;
                self.err(
                    0..0,
                    format!("cannot read include directory {}: {e}", dir.display()),
                    None,
                );
                return Vec::new();
            }
        };
        for path in &paths {
            let file = match File::read(path) {
                Ok(f) => f,
                Err(e) => {
                    self.errors.push(Diagnostic {
                        file: path.clone(),
                        line: 1,
                        col: 1,
                        message: format!("cannot read: {e}"),
                        hint: Some("check the file's permissions".to_string()),
                    });
                    continue;
                }
            };
            self.files.push(file);
            let idx = self.files.len() - 1;
            self.process_file(idx, found);
        }
        paths
    }

    pub fn run(mut self) -> Result<Config, ConfigError> {
        let mut found = Vec::new();
        let main = self.process_file(0, &mut found);
        if !self.errors.is_empty()
            && main.server.is_none()
            && main.defaults.is_none()
            && found.is_empty()
        {
            // A syntax error in the main file: nothing else is worth checking.
            return Err(ConfigError::Invalid(self.errors));
        }
        let raw_server = main.server.unwrap_or_default();
        let defaults = main.defaults.unwrap_or_default();
        let include_key = main.include_dir;
        let server = self.server(raw_server);
        let include_dir = self.include_dir(include_key);
        let include_files = match &include_dir {
            Some(d) => self.load_includes(d, &mut found),
            None => Vec::new(),
        };
        let mut sources = BTreeMap::new();
        let mut defined: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
        for Found {
            file,
            name,
            span,
            raw,
        } in found
        {
            self.cur = file;
            if !valid_source_name(&name) {
                self.err(
                    span.clone(),
                    format!("invalid source name `{name}`"),
                    Some("names are 1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit".to_string()),
                );
                continue;
            }
            if let Some((f, s)) = defined.get(&name) {
                let first = self.diag_in(*f, s.clone(), String::new(), None);
                self.err(
                    span.clone(),
                    format!(
                        "source `{name}` is defined twice: here and at {}:{}:{}",
                        first.file.display(),
                        first.line,
                        first.col
                    ),
                    Some("rename or remove one of them".to_string()),
                );
                continue;
            }
            defined.insert(name.clone(), (file, span.clone()));
            // Keys inherited from [defaults] live in the main file; in an
            // include file their errors point at the source's header.
            let respan = (file != 0).then(|| span.clone());
            let raw = raw.with_defaults(&defaults, respan);
            if let Some(s) = self.source(&name, span, raw) {
                sources.insert(name, s);
            }
        }
        if self.errors.is_empty() {
            let digest = super::digest(
                self.files
                    .iter()
                    .map(|f| (f.path.as_path(), Some(f.text.as_bytes()))),
            );
            Ok(Config {
                digest,
                path: self.files[0].path.clone(),
                server,
                sources,
                include_dir,
                include_files,
                warnings: self.warnings,
            })
        } else {
            self.errors
                .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
            Err(ConfigError::Invalid(self.errors))
        }
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                self.err(
                    v.span(),
                    format!("`{key}` is too short"),
                    Some(format!("use at least {}", humantime::format_duration(min))),
                );
                default
            }
            Err(e) => {
                self.err(
                    v.span(),
                    format!("`{key}` is not a duration: {e}"),
                    Some("write it like \"30s\", \"5m\" or \"1h30m\"".to_string()),
                );
                default
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let d = ServerConfig::default();
        let socket = match raw.socket {
            Some(s) if s.get_ref().is_empty() => {
                self.err(
                    s.span(),
                    "`socket` is empty",
                    Some("give a path such as /run/tokend/tokend.sock".to_string()),
                );
                d.socket.clone()
            }
            Some(s) => PathBuf::from(s.into_inner()),
            None => d.socket.clone(),
        };
        let socket_mode = match raw.socket_mode {
            None => d.socket_mode,
            Some(m) => match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => v,
                _ => {
                    self.err(
                        m.span(),
                        format!("`socket_mode` {:?} is not an octal permission", m.get_ref()),
                        Some("write it as an octal string such as \"0660\"".to_string()),
                    );
                    d.socket_mode
                }
            },
        };
        let socket_group = raw.socket_group.and_then(|g| self.group(g));
        let count = |this: &mut Self, v: Option<Spanned<i64>>, key: &str, default: usize| match v {
            None => default,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(x) if x >= 1 => x,
                _ => {
                    this.err(n.span(), format!("`{key}` must be at least 1"), None);
                    default
                }
            },
        };
        let max_connections = count(
            self,
            raw.max_connections,
            "max_connections",
            d.max_connections,
        );
        let max_concurrent_fetches = count(
            self,
            raw.max_concurrent_fetches,
            "max_concurrent_fetches",
            d.max_concurrent_fetches,
        );
        let request_timeout = self.duration(
            &raw.request_timeout,
            "request_timeout",
            d.request_timeout,
            Duration::from_millis(100),
        );
        let log_format = match raw.log_format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.err(
                        f.span(),
                        format!("unknown log_format `{other}`"),
                        Some("use \"text\" or \"json\"".to_string()),
                    );
                    LogFormat::Text
                }
            },
        };
        ServerConfig {
            socket,
            socket_mode,
            socket_group,
            max_connections,
            request_timeout,
            log_format,
            max_concurrent_fetches,
        }
    }

    fn group(&mut self, g: Spanned<toml::Value>) -> Option<u32> {
        let span = g.span();
        match g.into_inner() {
            toml::Value::Integer(n) => match u32::try_from(n) {
                Ok(gid) => Some(gid),
                Err(_) => {
                    self.err(span, format!("`socket_group` {n} is not a valid gid"), None);
                    None
                }
            },
            toml::Value::String(s) => {
                if let Ok(gid) = s.parse::<u32>() {
                    return Some(gid);
                }
                match crate::acl::group_gid(&s) {
                    Ok(Some(gid)) => Some(gid),
                    Ok(None) => {
                        self.err(
                            span,
                            format!("unknown group `{s}`"),
                            Some("create the group (groupadd) or use a numeric gid".to_string()),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            span,
                            format!("cannot look up group `{s}`: {e}"),
                            Some("check /etc/nsswitch.conf and the group database, or use a numeric gid".to_string()),
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(span, "`socket_group` must be a group name or gid", None);
                None
            }
        }
    }

    fn url(&mut self, v: &Spanned<String>, key: &str) -> Option<Url> {
        match Url::parse(v.get_ref()) {
            Err(e) => {
                self.err(
                    v.span(),
                    format!("`{key}` is not a URL: {e}"),
                    Some("write a full URL such as https://sso.example.com/token".to_string()),
                );
                None
            }
            Ok(u) if u.scheme() == "https" => Some(u),
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => Some(u),
            Ok(u) => {
                let mut fixed = u.clone();
                let hint = match fixed.set_scheme("https") {
                    Ok(()) => {
                        format!("use https ({fixed}); plain http is only allowed to localhost")
                    }
                    Err(()) => "use an https URL".to_string(),
                };
                self.err(v.span(), format!("`{key}` must use https: {u}"), Some(hint));
                None
            }
        }
    }

    fn source(&mut self, name: &str, span: Range<usize>, raw: RawSource) -> Option<SourceConfig> {
        let before = self.errors.len();
        for (present, key) in [
            (raw.issuer.as_ref().map(Spanned::span), "issuer"),
            (
                raw.client_certificate.as_ref().map(Spanned::span),
                "client_certificate",
            ),
            (
                raw.client_assertion.as_ref().map(Spanned::span),
                "client_assertion",
            ),
            (raw.ca_file.as_ref().map(Spanned::span), "ca_file"),
        ] {
            if let Some(s) = present {
                self.err(
                    s,
                    format!("`{key}` is not supported by this version"),
                    Some("remove it; see README for what this version supports".to_string()),
                );
            }
        }

        let provider = match &raw.provider {
            None => Provider::Generic,
            Some(p) if p.get_ref() == "azure" => Provider::Azure,
            Some(p) => {
                self.err(
                    p.span(),
                    format!("unknown provider `{}`", p.get_ref()),
                    Some(
                        "the only provider is \"azure\"; for any other server set token_url"
                            .to_string(),
                    ),
                );
                Provider::Generic
            }
        };

        let token_url = match (&raw.token_url, provider, &raw.tenant) {
            (Some(u), _, _) => self.url(u, "token_url"),
            (None, Provider::Azure, Some(t)) => self.azure_url(t, raw.authority.as_ref()),
            (None, Provider::Azure, None) => {
                self.err(
                    span.clone(),
                    format!("source `{name}` has provider = \"azure\" but no `tenant`"),
                    Some("add tenant = \"contoso.onmicrosoft.com\" or the tenant GUID".to_string()),
                );
                None
            }
            (None, Provider::Generic, _) => {
                self.err(
                    span.clone(),
                    format!("source `{name}` has no `token_url`"),
                    Some("set token_url, or provider = \"azure\" with tenant".to_string()),
                );
                None
            }
        };
        if provider == Provider::Generic {
            for (v, key) in [(&raw.tenant, "tenant"), (&raw.authority, "authority")] {
                if let Some(v) = v {
                    self.err(
                        v.span(),
                        format!("`{key}` only applies to provider = \"azure\""),
                        Some("add provider = \"azure\" or remove the key".to_string()),
                    );
                }
            }
        }

        let client_id = match &raw.client_id {
            Some(c) if !c.get_ref().trim().is_empty() => c.get_ref().clone(),
            Some(c) => {
                self.err(c.span(), "`client_id` is empty", None);
                String::new()
            }
            None => {
                self.err(
                    span.clone(),
                    format!("source `{name}` has no `client_id`"),
                    Some("add client_id = \"…\" (the application/client ID)".to_string()),
                );
                String::new()
            }
        };

        let client_secret = match raw.client_secret {
            Some(s) => self.secret_ref(s),
            None => {
                if raw.client_certificate.is_none() && raw.client_assertion.is_none() {
                    self.err(
                        span.clone(),
                        format!("source `{name}` has no credential"),
                        Some(
                            "add client_secret = { file = \"/path\" } (or env, credential)"
                                .to_string(),
                        ),
                    );
                }
                None
            }
        };

        let auth_method = match &raw.auth_method {
            None if provider == Provider::Azure => AuthMethod::ClientSecretPost,
            None => AuthMethod::ClientSecretBasic,
            Some(m) => match m.get_ref().as_str() {
                "client_secret_basic" => AuthMethod::ClientSecretBasic,
                "client_secret_post" => AuthMethod::ClientSecretPost,
                "private_key_jwt" | "tls_client_auth" => {
                    self.err(
                        m.span(),
                        format!(
                            "auth_method `{}` is not supported by this version",
                            m.get_ref()
                        ),
                        Some("use client_secret_basic or client_secret_post".to_string()),
                    );
                    AuthMethod::ClientSecretBasic
                }
                other => {
                    self.err(
                        m.span(),
                        format!("unknown auth_method `{other}`"),
                        Some("use client_secret_basic or client_secret_post".to_string()),
                    );
                    AuthMethod::ClientSecretBasic
                }
            },
        };

        let scopes = self.scopes(provider, raw.scopes.as_ref(), &span);

        let params = raw
            .params
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_default();
        if let Some(p) = &raw.params {
            for k in p.get_ref().keys() {
                if RESERVED_PARAMS.contains(&k.as_str()) {
                    self.err(
                        p.span(),
                        format!("`params` may not set `{k}`"),
                        Some("tokend sets it from the source's other keys".to_string()),
                    );
                }
            }
        }

        let refresh_ratio = match &raw.refresh_ratio {
            None => 0.75,
            Some(r) if (0.5..=0.95).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                self.err(r.span(), format!("`refresh_ratio` {} is out of range", r.get_ref()), Some("use a value from 0.5 to 0.95 (0.75 refreshes at three quarters of the lifetime)".to_string()));
                0.75
            }
        };
        let min_ttl = self.duration(
            &raw.min_ttl,
            "min_ttl",
            Duration::from_secs(120),
            Duration::ZERO,
        );
        let fetch_timeout = self.duration(
            &raw.fetch_timeout,
            "fetch_timeout",
            Duration::from_secs(15),
            Duration::from_millis(100),
        );
        let eager = raw.eager.as_ref().is_none_or(|e| *e.get_ref());
        let credential_expires = raw.credential_expires.and_then(|v| self.date(v));
        let probe_url = raw
            .probe_url
            .as_ref()
            .and_then(|u| self.url(u, "probe_url"));
        let allow = raw.allow.and_then(|a| self.allow(a));

        if self.errors.len() > before {
            return None;
        }
        Some(SourceConfig {
            name: name.to_string(),
            provider,
            token_url: token_url?,
            client_id,
            client_secret: client_secret?,
            auth_method,
            scopes,
            params,
            refresh_ratio,
            min_ttl,
            fetch_timeout,
            eager,
            credential_expires,
            probe_url,
            allow,
        })
    }

    /// `allow = { users, groups, uids, gids }`, names resolved now.
    fn allow(&mut self, v: Spanned<toml::Value>) -> Option<Allow> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawAllow {
            #[serde(default)]
            users: Vec<String>,
            #[serde(default)]
            groups: Vec<String>,
            #[serde(default)]
            uids: Vec<u32>,
            #[serde(default)]
            gids: Vec<u32>,
        }
        let span = v.span();
        let raw = match RawAllow::deserialize(v.into_inner()) {
            Ok(r) => r,
            Err(e) => {
                self.err(span, format!("`allow` is malformed: {}", e.to_string().trim()), Some("write allow = { users = [\"name\"], groups = [\"name\"], uids = [1000], gids = [1000] } (any of the four)".to_string()));
                return None;
            }
        };
        let mut allow = Allow {
            uids: raw.uids.into_iter().collect(),
            gids: raw.gids.into_iter().collect(),
        };
        let users = self.resolve(&raw.users, "user", crate::acl::user_uid, &span);
        let groups = self.resolve(&raw.groups, "group", crate::acl::group_gid, &span);
        allow.uids.extend(users);
        allow.gids.extend(groups);
        Some(allow)
    }

    /// Resolves user or group names to ids; an unknown name is an error at `span`.
    fn resolve(
        &mut self,
        names: &[String],
        kind: &str,
        lookup: fn(&str) -> Result<Option<u32>, crate::acl::LookupError>,
        span: &Range<usize>,
    ) -> Vec<u32> {
        let mut ids = Vec::new();
        for name in names {
            match lookup(name) {
                Ok(Some(id)) => ids.push(id),
                Err(e) => self.err(
                    span.clone(),
                    format!("cannot look up {kind} `{name}` in allow: {e}"),
                    Some(format!(
                        "check /etc/nsswitch.conf and the {kind} database, or use {}ids = [N]",
                        &kind[..1]
                    )),
                ),
                Ok(None) => {
                    let tool = if kind == "user" {
                        "useradd, or systemd-sysusers"
                    } else {
                        "groupadd"
                    };
                    let fix = format!("create the {kind} ({tool}) or use {}ids = [N]", &kind[..1]);
                    self.err(
                        span.clone(),
                        format!("unknown {kind} `{name}` in allow"),
                        Some(fix),
                    );
                }
            }
        }
        ids
    }

    fn azure_url(
        &mut self,
        tenant: &Spanned<String>,
        authority: Option<&Spanned<String>>,
    ) -> Option<Url> {
        let t = tenant.get_ref().trim();
        if ["common", "consumers", "organizations"].contains(&t.to_ascii_lowercase().as_str()) {
            self.err(
                tenant.span(),
                format!("tenant `{t}` cannot be used with client credentials"),
                Some(
                    "use your tenant's ID or primary domain, e.g. contoso.onmicrosoft.com"
                        .to_string(),
                ),
            );
            return None;
        }
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            self.err(tenant.span(), format!("tenant `{t}` is not a tenant ID or domain"), Some("use the directory (tenant) ID GUID or a domain such as contoso.onmicrosoft.com".to_string()));
            return None;
        }
        let base = match authority {
            Some(a) => self.url(a, "authority")?,
            None => Url::parse(AZURE_AUTHORITY).ok()?,
        };
        let text = format!(
            "{}/{t}/oauth2/v2.0/token",
            base.as_str().trim_end_matches('/')
        );
        Url::parse(&text).ok()
    }

    fn scopes(
        &mut self,
        provider: Provider,
        raw: Option<&Spanned<Vec<String>>>,
        span: &Range<usize>,
    ) -> Vec<String> {
        let scopes: Vec<String> = match (raw, provider) {
            (Some(s), _) => s.get_ref().clone(),
            (None, Provider::Azure) => vec![AZURE_DEFAULT_SCOPE.to_string()],
            (None, Provider::Generic) => Vec::new(),
        };
        let at = raw.map_or_else(|| span.clone(), Spanned::span);
        for s in &scopes {
            if s.is_empty()
                || s.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\')
            {
                self.err(
                    at.clone(),
                    format!("scope {s:?} is not a valid scope token"),
                    Some(
                        "scopes are non-empty and without spaces; list several as separate strings"
                            .to_string(),
                    ),
                );
            }
        }
        if provider == Provider::Azure {
            match scopes.as_slice() {
                [one] if one.ends_with("/.default") => {}
                [one] => {
                    let fixed = azure_default_scope(one);
                    let note = if one.contains('/') {
                        String::new()
                    } else {
                        "; application permissions are granted on the app registration, not requested".to_string()
                    };
                    self.err(
                        at.clone(),
                        format!("Entra client credentials need a `/.default` scope, not {one:?}"),
                        Some(format!("use scopes = [\"{fixed}\"]{note}")),
                    );
                }
                _ => {
                    let fixed = scopes.first().map_or_else(
                        || AZURE_DEFAULT_SCOPE.to_string(),
                        |s| azure_default_scope(s),
                    );
                    self.err(at.clone(), "Entra client credentials take exactly one scope", Some(format!("use scopes = [\"{fixed}\"]; a token covers one resource, so use one source per resource")));
                }
            }
        }
        scopes
    }

    fn secret_ref(&mut self, v: Spanned<toml::Value>) -> Option<SecretRef> {
        let span = v.span();
        let how = "write client_secret = { file = \"/path\" }, { env = \"NAME\" } or { credential = \"NAME\" }".to_string();
        match v.into_inner() {
            toml::Value::String(s) => {
                if s.is_empty() {
                    self.err(span, "`client_secret` is empty", Some(how));
                    return None;
                }
                if self.files[self.cur].mode.is_some_and(|m| m & 0o077 != 0) {
                    self.warn(
                        span,
                        "plain client_secret in a config file that group or others can read",
                        Some(format!("chmod 600 the file, or {how}")),
                    );
                }
                Some(SecretRef::Inline(SecretString::from(s)))
            }
            toml::Value::Table(t) => {
                let kinds: Vec<(&String, &toml::Value)> = t.iter().collect();
                match kinds.as_slice() {
                    [(k, toml::Value::String(val))] if !val.is_empty() => match k.as_str() {
                        "file" => Some(SecretRef::File(PathBuf::from(val))),
                        "env" => Some(SecretRef::Env(val.clone())),
                        "credential" => Some(SecretRef::Credential(val.clone())),
                        other => {
                            self.err(span, format!("unknown secret kind `{other}`"), Some(how));
                            None
                        }
                    },
                    [_] => {
                        self.err(
                            span,
                            "secret reference needs a non-empty string value",
                            Some(how),
                        );
                        None
                    }
                    [] => {
                        self.err(span, "secret reference is empty", Some(how));
                        None
                    }
                    _ => {
                        let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
                        self.err(
                            span,
                            format!(
                                "secret reference names {} kinds ({}); it must name exactly one",
                                names.len(),
                                names.join(", ")
                            ),
                            Some(how),
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    span,
                    "`client_secret` must be a string or a table",
                    Some(how),
                );
                None
            }
        }
    }

    fn date(&mut self, v: Spanned<toml::Value>) -> Option<SystemTime> {
        let span = v.span();
        let dt = match v.into_inner() {
            toml::Value::Datetime(d) => Some(d),
            toml::Value::String(s) => s.parse::<toml::value::Datetime>().ok(),
            _ => None,
        };
        let when = dt.and_then(|d| {
            let date = d.date?;
            let date = jiff::civil::Date::new(
                i16::try_from(date.year).ok()?,
                i8::try_from(date.month).ok()?,
                i8::try_from(date.day).ok()?,
            )
            .ok()?;
            let time = match d.time {
                Some(t) => jiff::civil::Time::new(
                    i8::try_from(t.hour).ok()?,
                    i8::try_from(t.minute).ok()?,
                    i8::try_from(t.second.min(59)).ok()?,
                    0,
                )
                .ok()?,
                None => jiff::civil::Time::midnight(),
            };
            let offset = match d.offset {
                Some(toml::value::Offset::Custom { minutes }) => {
                    jiff::tz::Offset::from_seconds(i32::from(minutes) * 60).ok()?
                }
                _ => jiff::tz::Offset::UTC,
            };
            let ts = offset.to_timestamp(date.to_datetime(time)).ok()?;
            (ts >= jiff::Timestamp::UNIX_EPOCH)
                .then(|| SystemTime::try_from(ts).ok())
                .flatten()
        });
        if when.is_none() {
            self.err(
                span,
                "`credential_expires` is not a date",
                Some("write it as 2027-05-01 or 2027-05-01T12:00:00Z".to_string()),
            );
        }
        when
    }
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a
/// short message and a did-you-mean hint.
fn explain_serde_error(msg: &str) -> (String, Option<String>) {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return (msg.to_string(), None);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return (msg.to_string(), None);
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = known
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3);
    let hint = match closest {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => format!("valid keys here: {}", known.join(", ")),
    };
    (format!("unknown key `{field}`"), Some(hint))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `https://graph.microsoft.com/User.Read` → `https://graph.microsoft.com/.default`;
/// a bare permission name → Graph's `.default`.
fn azure_default_scope(scope: &str) -> String {
    match Url::parse(scope) {
        Ok(u) if u.host_str().is_some() => format!(
            "{}://{}/.default",
            u.scheme(),
            u.host_str().unwrap_or_default()
        ),
        _ => match scope.split_once('/') {
            // api://app-id/Permission → api://app-id/.default
            Some((resource, _)) if scope.starts_with("api:") => format!("{resource}/.default"),
            _ => AZURE_DEFAULT_SCOPE.to_string(),
        },
    }
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{load_str, ConfigError, Diagnostic};
    use super::*;

    const GOOD: &str = r#"
[sources.api]
token_url = "https://sso.example.com/token"
client_id = "api"
client_secret = { file = "/run/secret" }
"#;

    fn problems(text: &str) -> Vec<Diagnostic> {
        match load_str(text, Path::new("t.toml"), Some(0o600)) {
            Err(ConfigError::Invalid(d)) => d,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    fn one(text: &str) -> Diagnostic {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:#?}");
        p.into_iter().next().unwrap()
    }

    #[test]
    fn good_config_gets_defaults() {
        let c = load_str(GOOD, Path::new("t.toml"), Some(0o600)).unwrap();
        let s = &c.sources["api"];
        assert_eq!(s.auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(s.refresh_ratio, 0.75);
        assert_eq!(s.min_ttl, Duration::from_secs(120));
        assert_eq!(s.fetch_timeout, Duration::from_secs(15));
        assert!(s.eager);
        assert_eq!(c.server.socket_mode, 0o660);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let d = one(&GOOD.replace("client_id =", "clent_id = \"x\"\nclient_id ="));
        assert_eq!((d.line, d.col), (4, 1));
        assert_eq!(d.message, "unknown key `clent_id`");
        assert_eq!(d.hint.as_deref(), Some("did you mean `client_id`?"));
        assert!(d.to_string().starts_with("t.toml:4:1: "), "{d}");
    }

    #[test]
    fn unknown_server_key_and_top_level_key() {
        let p = problems(&format!("[server]\nsokcet = \"/x\"\n[servre]\n{GOOD}"));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert_eq!((p[0].line, p[0].col), (2, 1));
        assert!(p[1].message.contains("unknown key `servre`"));
    }

    #[test]
    fn syntax_error_has_position() {
        let d = one("[sources.api\nclient_id = 1");
        assert_eq!(d.line, 1);
        assert!(d.hint.as_deref().unwrap_or_default().contains("TOML"));
    }

    #[test]
    fn bad_names() {
        let d = one(&GOOD.replace("[sources.api]", "[sources.Bad_Name]"));
        assert_eq!((d.line, d.col), (2, 10));
        assert!(d.message.contains("invalid source name"));
    }

    #[test]
    fn http_only_to_loopback() {
        let d = one(&GOOD.replace("https://sso.example.com", "http://sso.example.com"));
        assert_eq!((d.line, d.col), (3, 13));
        assert!(d.hint.unwrap().contains("https://sso.example.com/token"));
        for ok in [
            "http://localhost:8080/t",
            "http://127.0.0.2/t",
            "http://[::1]:9/t",
        ] {
            load_str(
                &GOOD.replace("https://sso.example.com/token", ok),
                Path::new("t"),
                None,
            )
            .unwrap();
        }
    }

    #[test]
    fn two_secret_kinds() {
        let d = one(&GOOD.replace(
            r#"{ file = "/run/secret" }"#,
            r#"{ file = "/a", env = "B" }"#,
        ));
        assert_eq!(d.line, 5);
        assert!(d.message.contains("exactly one"), "{d}");
    }

    #[test]
    fn bad_duration_and_ratio_reported_together() {
        let p = problems(&format!(
            "{GOOD}min_ttl = \"2 parsecs\"\nrefresh_ratio = 1.5\nfetch_timeout = 30\n"
        ));
        assert_eq!(
            p.len(),
            1,
            "serde stops at the first type error within a table: {p:#?}"
        );
        let p = problems(&format!(
            "{GOOD}min_ttl = \"2 parsecs\"\nrefresh_ratio = 1.5\n"
        ));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert_eq!(p[0].line, 6);
        assert!(p[0].message.contains("min_ttl"));
        assert_eq!(p[1].line, 7);
        assert!(p[1].hint.as_deref().unwrap().contains("0.5 to 0.95"));
    }

    #[test]
    fn every_source_is_checked() {
        let text = format!("{GOOD}\n[sources.b]\nclient_id = \"b\"\n[sources.c]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = {{ nope = \"x\" }}\n");
        let p = problems(&text);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].message.contains("no `token_url`"));
        assert!(p[1].message.contains("no credential"));
        assert!(p[2].message.contains("unknown secret kind"));
    }

    #[test]
    fn defaults_apply_and_sources_override() {
        let c = load_str(
            &format!("[defaults]\nmin_ttl = \"5m\"\neager = false\n{GOOD}refresh_ratio = 0.8\n"),
            Path::new("t"),
            None,
        )
        .unwrap();
        let s = &c.sources["api"];
        assert_eq!(s.min_ttl, Duration::from_secs(300));
        assert!(!s.eager);
        assert_eq!(s.refresh_ratio, 0.8);
    }

    #[test]
    fn azure_fills_in_and_checks_scopes() {
        let base = "[sources.graph]\nprovider = \"azure\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"x\"\nclient_secret = { env = \"S\" }\n";
        let c = load_str(base, Path::new("t"), None).unwrap();
        let g = &c.sources["graph"];
        assert_eq!(
            g.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(g.auth_method, AuthMethod::ClientSecretPost);
        assert_eq!(g.scopes, vec![AZURE_DEFAULT_SCOPE.to_string()]);

        let d = one(&format!(
            "{base}scopes = [\"https://graph.microsoft.com/User.Read\"]\n"
        ));
        assert!(
            d.hint
                .as_deref()
                .unwrap()
                .contains("\"https://graph.microsoft.com/.default\""),
            "{d}"
        );
        let d = one(&format!("{base}scopes = [\"User.Read\"]\n"));
        assert!(
            d.hint
                .as_deref()
                .unwrap()
                .contains("granted on the app registration"),
            "{d}"
        );
        let d = one(&base.replace("contoso.onmicrosoft.com", "common"));
        assert!(d.message.contains("common"));
        let c = load_str(
            &format!("{base}authority = \"https://login.microsoftonline.us\"\n"),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert!(c.sources["graph"]
            .token_url
            .as_str()
            .starts_with("https://login.microsoftonline.us/contoso"));
    }

    #[test]
    fn inline_secret_in_readable_file_warns() {
        let text = GOOD.replace(r#"{ file = "/run/secret" }"#, r#""s3cret-value""#);
        let c = load_str(&text, Path::new("t"), Some(0o644)).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(!c.warnings[0].to_string().contains("s3cret-value"));
        assert!(!format!("{c:?}").contains("s3cret-value"));
        let c = load_str(&text, Path::new("t"), Some(0o600)).unwrap();
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn credential_expires_date_or_string() {
        let c = load_str(
            &format!("{GOOD}credential_expires = 2027-05-01\n"),
            Path::new("t"),
            None,
        )
        .unwrap();
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_809_129_600);
        assert_eq!(c.sources["api"].credential_expires, Some(want));
        let c = load_str(
            &format!("{GOOD}credential_expires = \"2027-05-01\"\n"),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert_eq!(c.sources["api"].credential_expires, Some(want));
        let d = one(&format!("{GOOD}credential_expires = \"soon\"\n"));
        assert_eq!(d.line, 6);
    }

    #[test]
    fn server_section() {
        let c = load_str(&format!("[server]\nsocket = \"/tmp/x.sock\"\nsocket_mode = \"0600\"\nsocket_group = 0\nlog_format = \"json\"\nrequest_timeout = \"3s\"\n{GOOD}"), Path::new("t"), None).unwrap();
        assert_eq!(c.server.socket_mode, 0o600);
        assert_eq!(c.server.socket_group, Some(0));
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.server.request_timeout, Duration::from_secs(3));
        let p = problems(&format!("[server]\nsocket_mode = \"999\"\nsocket_group = \"no-such-group-xyz\"\nmax_connections = 0\n{GOOD}"));
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[test]
    fn include_dir_adds_sources_and_duplicates_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("tokend.toml");
        std::fs::write(&main, format!("[defaults]\nmin_ttl = \"1m\"\n{GOOD}")).unwrap();
        std::fs::create_dir(dir.path().join("sources.d")).unwrap();
        let inc = |name: &str| {
            format!("[sources.{name}]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"E\" }}\n")
        };
        std::fs::write(dir.path().join("sources.d/b.toml"), inc("two")).unwrap();
        std::fs::write(dir.path().join("sources.d/a.toml"), inc("one")).unwrap();
        std::fs::write(dir.path().join("sources.d/notes.txt"), "ignored").unwrap();
        let c = super::super::load(&main).unwrap();
        assert_eq!(
            c.sources.keys().collect::<Vec<_>>(),
            vec!["api", "one", "two"]
        );
        assert_eq!(
            c.sources["one"].min_ttl,
            Duration::from_secs(60),
            "defaults apply to includes"
        );
        let names: Vec<_> = c
            .include_files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, vec!["a.toml", "b.toml"], "name order");

        std::fs::write(dir.path().join("sources.d/c.toml"), inc("api")).unwrap();
        let Err(ConfigError::Invalid(p)) = super::super::load(&main) else {
            panic!()
        };
        assert_eq!(p.len(), 1, "{p:#?}");
        let msg = p[0].to_string();
        assert!(
            msg.starts_with(&format!(
                "{}:1:10: source `api` is defined twice",
                dir.path().join("sources.d/c.toml").display()
            )),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}:4:10", main.display())), "{msg}");
    }

    #[test]
    fn include_files_hold_only_sources_and_report_their_own_positions() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("tokend.toml");
        std::fs::write(
            &main,
            format!("include_dir = \"more\"\n[defaults]\nmin_ttl = \"forever\"\n{GOOD}"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("more")).unwrap();
        let inc = dir.path().join("more/x.toml");
        std::fs::write(&inc, "[server]\nsocket = \"/x\"\n[sources.x]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = { env = \"E\" }\n").unwrap();
        let Err(ConfigError::Invalid(p)) = super::super::load(&main) else {
            panic!()
        };
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.starts_with(&format!(
                "{}:1:2: `server` is not allowed in an include file",
                inc.display()
            ))),
            "{text:#?}"
        );
        // The bad default shows in the main file for `api` and at the header of `x` in the include.
        assert!(
            text.iter()
                .any(|t| t.starts_with(&format!("{}:3:11: `min_ttl`", main.display()))),
            "{text:#?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with(&format!("{}:3:10: `min_ttl`", inc.display()))),
            "{text:#?}"
        );

        std::fs::write(&main, format!("include_dir = \"missing\"\n{GOOD}")).unwrap();
        let Err(ConfigError::Invalid(p)) = super::super::load(&main) else {
            panic!()
        };
        assert!(p[0].message.contains("is not a directory"), "{p:#?}");
    }

    #[test]
    fn allow_resolves_names_and_rejects_unknown_ones() {
        let c = load_str(&format!("{GOOD}allow = {{ users = [\"root\"], groups = [\"root\"], uids = [1000], gids = [2000] }}\n"), Path::new("t"), None).unwrap();
        let a = c.sources["api"].allow.clone().unwrap();
        assert_eq!(a.uids, [0, 1000].into());
        assert_eq!(a.gids, [0, 2000].into());
        let p = problems(&format!("{GOOD}allow = {{ users = [\"no-such-user-xyz\"], groups = [\"no-such-group-xyz\"] }}\n"));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert_eq!((p[0].line, p[0].col), (6, 9));
        assert!(p[0].message.contains("unknown user `no-such-user-xyz`"));
        assert!(p[1].message.contains("unknown group `no-such-group-xyz`"));
        let d = one(&format!("{GOOD}allow = {{ user = [\"root\"] }}\n"));
        assert!(d.message.contains("`allow` is malformed"), "{d}");
    }

    #[test]
    fn names() {
        assert!(valid_source_name("graph"));
        assert!(valid_source_name("a.b_c-1"));
        assert!(!valid_source_name(""));
        assert!(!valid_source_name("-x"));
        assert!(!valid_source_name("Graph"));
        assert!(!valid_source_name("../etc"));
        assert!(!valid_source_name(&"a".repeat(65)));
    }
}
