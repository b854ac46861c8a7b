//! `[managed_identity]`: the loopback endpoint that serves unmodified Azure
//! SDK programs (App Service managed-identity protocol), and the apps
//! allowed on it. Each app names its `IDENTITY_HEADER` (a secret reference)
//! and the sources it may use; a source is reachable through the endpoint
//! when its single scope is `RESOURCE/.default`.

use super::diag::{At, Diagnostics};
use super::raw::{RawManagedIdentity, RawMiApp};
use super::values::address;
use super::{ManagedIdentity, MiApp, SourceConfig};
use crate::secret::SecretRef;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use toml::Spanned;

/// The shortest inline `header` accepted: a value the app sends as its
/// password must not be guessable.
const MIN_HEADER: usize = 16;

/// Validates `[managed_identity]` (main file) against the sources: `valid`
/// are those that validated, `defined` every name declared (a source that
/// failed has its own error already).
pub(super) fn managed_identity(
    d: &mut Diagnostics,
    raw: RawManagedIdentity,
    valid: &BTreeMap<String, std::sync::Arc<SourceConfig>>,
    defined: &BTreeMap<String, At>,
) -> Option<ManagedIdentity> {
    let listen = listen(d, raw.listen.as_ref());
    let mut apps = BTreeMap::new();
    for (name, app) in raw.apps.unwrap_or_default() {
        if let Some(app) = mi_app(d, name, app, valid, defined) {
            apps.insert(app.name.clone(), app);
        }
    }
    Some(ManagedIdentity {
        listen: listen?,
        apps,
    })
}

/// `[managed_identity]` lives in the main file.
const MAIN: usize = 0;

/// `listen`: a loopback address and port.
fn listen(d: &mut Diagnostics, raw: Option<&Spanned<String>>) -> Option<SocketAddr> {
    let Some(l) = raw else {
        d.error(
            &At::new(MAIN, 0..0),
            "[managed_identity] has no `listen`",
            Some("add listen = \"127.0.0.1:42356\" (a loopback address and port)".to_string()),
        );
        return None;
    };
    match address(d, MAIN, l, "listen", "\"127.0.0.1:42356\"") {
        Some(a) if !a.ip().is_loopback() => {
            d.error(
                &At::of(MAIN, l),
                format!("`listen` {a} is not a loopback address"),
                Some(format!(
                    "use 127.0.0.1:{} (or [::1]): the endpoint hands out tokens to whoever has the header, so it must not be reachable from the network",
                    a.port()
                )),
            );
            None
        }
        a => a,
    }
}

/// One `[managed_identity.apps.NAME]`; `None` if its name or header is
/// unusable (its problems are reported).
fn mi_app(
    d: &mut Diagnostics,
    name: Spanned<String>,
    app: Spanned<RawMiApp>,
    valid: &BTreeMap<String, std::sync::Arc<SourceConfig>>,
    defined: &BTreeMap<String, At>,
) -> Option<MiApp> {
    let name_at = At::of(MAIN, &name);
    let name = name.into_inner();
    let app_at = At::of(MAIN, &app);
    let app = app.into_inner();
    if !super::valid_source_name(&name) {
        d.error(
            &name_at,
            format!("invalid app name `{name}`"),
            Some("names are 1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit".to_string()),
        );
        return None;
    }
    let header = header(d, &name, &app_at, app.header);
    let sources = match app.sources {
        None => {
            d.error(
                &app_at,
                format!("app `{name}` has no `sources`"),
                Some(
                    "add sources = [\"graph\"]: the sources this program may get tokens from"
                        .to_string(),
                ),
            );
            Vec::new()
        }
        Some(list) => list
            .into_inner()
            .into_iter()
            .map(|s| app_source(d, &name, s, valid, defined))
            .collect(),
    };
    let allow = app.allow.and_then(|a| super::source::allow(d, MAIN, a));
    Some(MiApp {
        name,
        header: header?,
        sources,
        allow,
    })
}

/// An app's `header`: a secret reference, not short if inline, in a file
/// only its owner may read.
fn header(
    d: &mut Diagnostics,
    name: &str,
    app_at: &At,
    raw: Option<Spanned<toml::Value>>,
) -> Option<SecretRef> {
    let Some(h) = raw else {
        d.error(
            app_at,
            format!("app `{name}` has no `header`"),
            Some(format!("add header = {{ file = \"/etc/tokend/mi/{name}.key\" }}: the secret the program sends as X-IDENTITY-HEADER (its IDENTITY_HEADER)")),
        );
        return None;
    };
    let at = At::of(MAIN, &h);
    let r = match SecretRef::parse(h.into_inner(), "header") {
        Ok(r) => r,
        Err(p) => {
            d.problem(&at, p);
            return None;
        }
    };
    match &r {
        SecretRef::Inline(v) if secrecy::ExposeSecret::expose_secret(v).len() < MIN_HEADER => d.error(
            &at,
            format!("app `{name}`'s inline header is shorter than {MIN_HEADER} bytes: it could be guessed"),
            Some(format!("use a random value of at least {MIN_HEADER} bytes (openssl rand -hex 32), better in a file: header = {{ file = \"/etc/tokend/mi/{name}.key\" }}")),
        ),
        SecretRef::Inline(_) => super::source::warn_if_readable(d, &at, "header"),
        SecretRef::File(p) => {
            super::source::judge_secret_file(d, &at, p);
        }
        _ => {}
    }
    Some(r)
}

/// One name in an app's `sources`: a defined source whose single scope is
/// `RESOURCE/.default`.
fn app_source(
    d: &mut Diagnostics,
    app: &str,
    s: Spanned<String>,
    valid: &BTreeMap<String, std::sync::Arc<SourceConfig>>,
    defined: &BTreeMap<String, At>,
) -> String {
    let at = At::of(MAIN, &s);
    let s = s.into_inner();
    if let Some(cfg) = valid.get(&s) {
        if resource_of(cfg).is_none() {
            d.error(
                &at,
                format!("source `{s}` cannot be served to Azure SDK programs: its scopes are {:?}", cfg.scopes),
                Some("an SDK asks for a resource R; tokend serves it from a source whose only scope is \"R/.default\"".to_string()),
            );
        }
    } else if !defined.contains_key(&s) {
        let close = defined
            .keys()
            .map(|k| (strsim::levenshtein(&s, k), k))
            .min()
            .filter(|(dist, _)| *dist <= 3);
        let hint = match close {
            Some((_, k)) => format!("did you mean `{k}`?"),
            None => "list sources defined in [sources.NAME] tables".to_string(),
        };
        d.error(
            &at,
            format!("app `{app}` names unknown source `{s}`"),
            Some(hint),
        );
    }
    s
}

/// The resource an SDK names to get `source`'s token: its single scope
/// without `/.default` (and without a trailing `/`).
pub fn resource_of(source: &SourceConfig) -> Option<&str> {
    match source.scopes.as_slice() {
        [one] => one
            .strip_suffix("/.default")
            .map(|r| r.trim_end_matches('/'))
            .filter(|r| !r.is_empty()),
        _ => None,
    }
}
