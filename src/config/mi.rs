//! `[managed_identity]`: the loopback endpoint that serves unmodified Azure
//! SDK programs (App Service managed-identity protocol), and the apps
//! allowed on it. Each app names its `IDENTITY_HEADER` (a secret reference)
//! and the sources it may use; a source is reachable through the endpoint
//! when its single scope is `RESOURCE/.default`.

use super::diag::{At, Diagnostics};
use super::raw::RawManagedIdentity;
use super::values::address;
use super::{ManagedIdentity, MiApp, SourceConfig};
use crate::secret::SecretRef;
use std::collections::BTreeMap;

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
    const MAIN: usize = 0;
    let listen = match &raw.listen {
        None => {
            d.error(
                &At::new(MAIN, 0..0),
                "[managed_identity] has no `listen`",
                Some("add listen = \"127.0.0.1:42356\" (a loopback address and port)".to_string()),
            );
            None
        }
        Some(l) => match address(d, MAIN, l, "listen", "\"127.0.0.1:42356\"") {
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
        },
    };
    let mut apps = BTreeMap::new();
    for (name, app) in raw.apps.unwrap_or_default() {
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
            continue;
        }
        let header = match app.header {
            None => {
                d.error(
                    &app_at,
                    format!("app `{name}` has no `header`"),
                    Some(format!("add header = {{ file = \"/etc/tokend/mi/{name}.key\" }}: the secret the program sends as X-IDENTITY-HEADER (its IDENTITY_HEADER)")),
                );
                None
            }
            Some(h) => match SecretRef::parse(h.get_ref().clone(), "header") {
                Ok(r) => {
                    let at = At::of(MAIN, &h);
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
                Err(p) => {
                    d.problem(&At::of(MAIN, &h), p);
                    None
                }
            },
        };
        let mut sources = Vec::new();
        match app.sources {
            None => d.error(
                &app_at,
                format!("app `{name}` has no `sources`"),
                Some(
                    "add sources = [\"graph\"]: the sources this program may get tokens from"
                        .to_string(),
                ),
            ),
            Some(list) => {
                for s in list.into_inner() {
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
                            format!("app `{name}` names unknown source `{s}`"),
                            Some(hint),
                        );
                    }
                    sources.push(s);
                }
            }
        }
        if let Some(header) = header {
            apps.insert(
                name.clone(),
                MiApp {
                    name,
                    header,
                    sources,
                },
            );
        }
    }
    Some(ManagedIdentity {
        listen: listen?,
        apps,
    })
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
