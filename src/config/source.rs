//! One `[sources.NAME]` table, `[defaults]` merged in, into a
//! [`SourceConfig`]: endpoint, client, credential, scopes and schedule.
//! Concept rules come from their owners (secret references from `secret`,
//! `allow` from `acl`, Entra's rules from `oauth::entra`); this module pins
//! their problems to the value they came from.

use super::diag::{At, Diagnostics};
use super::raw::RawSource;
use super::values::{date, duration, url};
use super::{AuthMethod, Provider, SourceConfig};
use crate::oauth::entra;
use crate::secret::SecretRef;
use std::time::Duration;
use toml::Spanned;
use url::Url;

const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
];

/// Validates source `name`, declared at `header`, with `defaults` merged
/// in. Keys inherited from `[defaults]` live in the main file; for a source
/// in an include file their problems point at the source's header.
pub(super) fn source(
    d: &mut Diagnostics,
    name: &str,
    header: &At,
    raw: RawSource,
    defaults: &RawSource,
) -> Option<SourceConfig> {
    let file = header.file;
    // An inherited plain secret lives in the main file: that file's
    // permissions decide the warning, and the warning names it.
    let inherited_secret = match (&raw.client_secret, &defaults.client_secret) {
        (None, Some(s)) => Some(At::of(0, s)),
        _ => None,
    };
    let raw = raw.with_defaults(defaults, (file != 0).then(|| header.span.clone()));
    let before = d.errors.len();
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
            d.error(
                &At::new(file, s),
                format!("`{key}` is not supported by this version"),
                Some("remove it; see README for what this version supports".to_string()),
            );
        }
    }

    let provider = match &raw.provider {
        None => Provider::Generic,
        Some(p) if p.get_ref() == "azure" => Provider::Azure,
        Some(p) => {
            d.error(
                &At::of(file, p),
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
        (Some(u), _, _) => url(d, file, u, "token_url"),
        (None, Provider::Azure, Some(t)) => azure_url(d, file, t, raw.authority.as_ref()),
        (None, Provider::Azure, None) => {
            d.error(
                header,
                format!("source `{name}` has provider = \"azure\" but no `tenant`"),
                Some("add tenant = \"contoso.onmicrosoft.com\" or the tenant GUID".to_string()),
            );
            None
        }
        (None, Provider::Generic, _) => {
            d.error(
                header,
                format!("source `{name}` has no `token_url`"),
                Some("set token_url, or provider = \"azure\" with tenant".to_string()),
            );
            None
        }
    };
    if provider == Provider::Generic {
        for (v, key) in [(&raw.tenant, "tenant"), (&raw.authority, "authority")] {
            if let Some(v) = v {
                d.error(
                    &At::of(file, v),
                    format!("`{key}` only applies to provider = \"azure\""),
                    Some("add provider = \"azure\" or remove the key".to_string()),
                );
            }
        }
    }

    let client_id = match &raw.client_id {
        Some(c) if !c.get_ref().trim().is_empty() => c.get_ref().clone(),
        Some(c) => {
            d.error(&At::of(file, c), "`client_id` is empty", None);
            String::new()
        }
        None => {
            d.error(
                header,
                format!("source `{name}` has no `client_id`"),
                Some("add client_id = \"…\" (the application/client ID)".to_string()),
            );
            String::new()
        }
    };

    let client_secret = match raw.client_secret {
        Some(s) => {
            let value_at = At::of(file, &s);
            match SecretRef::parse(s.into_inner(), "client_secret") {
                Ok(r) => {
                    if matches!(r, SecretRef::Inline(_)) {
                        let origin = inherited_secret.unwrap_or(value_at);
                        if d.mode(&origin).is_some_and(|m| m & 0o077 != 0) {
                            d.warn(
                                &origin,
                                "plain client_secret in a config file that group or others can read",
                                Some(format!(
                                    "chmod 600 the file, or {}",
                                    SecretRef::how_to_write("client_secret")
                                )),
                            );
                        }
                    }
                    Some(r)
                }
                Err(p) => {
                    d.problem(&value_at, p);
                    None
                }
            }
        }
        None => {
            if raw.client_certificate.is_none() && raw.client_assertion.is_none() {
                d.error(
                    header,
                    format!("source `{name}` has no credential"),
                    Some(
                        "add client_secret = { file = \"/path\" } (or env, credential)".to_string(),
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
                d.error(
                    &At::of(file, m),
                    format!(
                        "auth_method `{}` is not supported by this version",
                        m.get_ref()
                    ),
                    Some("use client_secret_basic or client_secret_post".to_string()),
                );
                AuthMethod::ClientSecretBasic
            }
            other => {
                d.error(
                    &At::of(file, m),
                    format!("unknown auth_method `{other}`"),
                    Some("use client_secret_basic or client_secret_post".to_string()),
                );
                AuthMethod::ClientSecretBasic
            }
        },
    };

    let scopes = scopes(d, provider, raw.scopes.as_ref(), header);

    let params = raw
        .params
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_default();
    if let Some(p) = &raw.params {
        for k in p.get_ref().keys() {
            if RESERVED_PARAMS.contains(&k.as_str()) {
                d.error(
                    &At::of(file, p),
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
            d.error(
                &At::of(file, r),
                format!("`refresh_ratio` {} is out of range", r.get_ref()),
                Some("use a value from 0.5 to 0.95 (0.75 refreshes at three quarters of the lifetime)".to_string()),
            );
            0.75
        }
    };
    let min_ttl = duration(
        d,
        file,
        &raw.min_ttl,
        "min_ttl",
        Duration::from_secs(120),
        Duration::ZERO,
    );
    let fetch_timeout = duration(
        d,
        file,
        &raw.fetch_timeout,
        "fetch_timeout",
        Duration::from_secs(15),
        Duration::from_millis(100),
    );
    let eager = raw.eager.as_ref().is_none_or(|e| *e.get_ref());
    let credential_expires = raw.credential_expires.and_then(|v| date(d, file, v));
    let probe_url = raw
        .probe_url
        .as_ref()
        .and_then(|u| url(d, file, u, "probe_url"));
    let allow = raw.allow.and_then(|a| {
        let a_at = At::of(file, &a);
        match crate::acl::parse_allow(a.into_inner()) {
            Ok((allow, problems)) => {
                for p in problems {
                    d.problem(&a_at, p);
                }
                Some(allow)
            }
            Err(p) => {
                d.problem(&a_at, p);
                None
            }
        }
    });

    if d.errors.len() > before {
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

/// Entra's token URL from `tenant` and `authority`, with Entra's tenant rule.
fn azure_url(
    d: &mut Diagnostics,
    file: usize,
    tenant: &Spanned<String>,
    authority: Option<&Spanned<String>>,
) -> Option<Url> {
    let t = match entra::check_tenant(tenant.get_ref()) {
        Ok(t) => t,
        Err(p) => {
            d.problem(&At::of(file, tenant), p);
            return None;
        }
    };
    let base = match authority {
        Some(a) => url(d, file, a, "authority")?,
        None => Url::parse(entra::AUTHORITY).ok()?,
    };
    entra::token_url(&base, t)
}

/// Scope tokens as RFC 6749 allows them, and Entra's rule for Entra.
fn scopes(
    d: &mut Diagnostics,
    provider: Provider,
    raw: Option<&Spanned<Vec<String>>>,
    header: &At,
) -> Vec<String> {
    let scopes: Vec<String> = match (raw, provider) {
        (Some(s), _) => s.get_ref().clone(),
        (None, Provider::Azure) => vec![entra::DEFAULT_SCOPE.to_string()],
        (None, Provider::Generic) => Vec::new(),
    };
    let at = raw.map_or_else(|| header.clone(), |s| At::of(header.file, s));
    for s in &scopes {
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        {
            d.error(
                &at,
                format!("scope {s:?} is not a valid scope token"),
                Some(
                    "scopes are non-empty and without spaces; list several as separate strings"
                        .to_string(),
                ),
            );
        }
    }
    if provider == Provider::Azure {
        if let Some(p) = entra::scope_problem(&scopes) {
            d.problem(&at, p);
        }
    }
    scopes
}
