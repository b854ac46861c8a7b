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
    let listen = listen(d, raw.listen.as_ref(), &MI_DOOR);
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

/// `[managed_identity]` and `[imds]` live in the main file.
const MAIN: usize = 0;

/// What a door's `listen` may be.
struct DoorRules {
    table: &'static str,
    example: &'static str,
    /// Whether the door may listen on `ip`.
    allowed: fn(std::net::IpAddr) -> bool,
    /// The fix for an address it may not, given the port.
    fix: fn(u16) -> String,
}

const MI_DOOR: DoorRules = DoorRules {
    table: "[managed_identity]",
    example: "\"127.0.0.1:42356\"",
    allowed: |ip| ip.is_loopback(),
    fix: |port| {
        format!("use 127.0.0.1:{port} (or [::1]): the endpoint hands out tokens to whoever has the header, so it must not be reachable from the network")
    },
};

/// Azure's instance-metadata address, which the tools that speak IMDS
/// ask with no setting at all.
pub const IMDS_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

const IMDS_DOOR: DoorRules = DoorRules {
    table: "[imds]",
    example: "\"127.0.0.1:42357\"",
    allowed: |ip| ip.is_loopback() || ip == IMDS_ADDRESS,
    fix: |port| {
        format!("use 127.0.0.1:{port} (or [::1]), or 169.254.169.254:80 with that address on lo (docs/imds.md): the door must not be reachable from the network")
    },
};

/// A door's `listen`: an address and port its rules allow.
fn listen(
    d: &mut Diagnostics,
    raw: Option<&Spanned<String>>,
    rules: &DoorRules,
) -> Option<SocketAddr> {
    let Some(l) = raw else {
        d.error(
            &At::new(MAIN, 0..0),
            format!("{} has no `listen`", rules.table),
            Some(format!(
                "add listen = {} (a loopback address and port)",
                rules.example
            )),
        );
        return None;
    };
    match address(d, MAIN, l, "listen", rules.example) {
        Some(a) if !(rules.allowed)(a.ip()) => {
            d.error(
                &At::of(MAIN, l),
                format!("`listen` {a} is not a loopback address"),
                Some((rules.fix)(a.port())),
            );
            None
        }
        a => a,
    }
}

/// Validates `[imds]` (main file) against the sources, as
/// [`managed_identity`] does.
pub(super) fn imds(
    d: &mut Diagnostics,
    raw: super::raw::RawImds,
    valid: &BTreeMap<String, std::sync::Arc<SourceConfig>>,
    defined: &BTreeMap<String, At>,
) -> Option<super::Imds> {
    let listen = listen(d, raw.listen.as_ref(), &IMDS_DOOR);
    let sources = match raw.sources {
        None => {
            d.error(
                &At::new(MAIN, 0..0),
                "[imds] has no `sources`",
                Some("add sources = [\"graph\"]: the sources offered to the tools that speak IMDS (each caller gets only those whose allow admits it)".to_string()),
            );
            Vec::new()
        }
        Some(list) => list
            .into_inner()
            .into_iter()
            .map(|s| offered_source(d, "[imds]", s, valid, defined))
            .collect(),
    };
    Some(super::Imds {
        listen: listen?,
        sources,
    })
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
            .map(|s| offered_source(d, &format!("app `{name}`"), s, valid, defined))
            .collect(),
    };
    let allow = app.allow.and_then(|a| {
        let at = At::of(MAIN, &a);
        let allow = super::source::allow(d, MAIN, a)?;
        if !allow.units.is_empty() {
            d.error(
                &at,
                format!("app `{name}`'s allow names units, which the managed-identity endpoint cannot know"),
                Some("a TCP door knows its caller by uid only: use users, groups, uids or gids".to_string()),
            );
        }
        Some(allow)
    });
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

/// One name in an app's or `[imds]`'s `sources` (`by`): a defined source
/// whose single scope is `RESOURCE/.default`.
fn offered_source(
    d: &mut Diagnostics,
    by: &str,
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
        d.error(&at, format!("{by} names unknown source `{s}`"), Some(hint));
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
