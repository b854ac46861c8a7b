//! One `[sources.NAME]` table, `[defaults]` merged in, into a
//! [`SourceConfig`]: endpoint, client, credential, scopes and schedule.
//! Concept rules come from their owners (secret references from `secret`,
//! `allow` from `acl`, Entra's rules from `entra`); this module pins
//! their problems to the value they came from.

use super::diag::{At, Diagnostics};
use super::raw::RawSource;
use super::values::{date, duration, url};
use super::{
    AuthMethod, CaFile, ClientCertificate, Credential, Endpoint, Provider, SigningAlg, SourceConfig,
};
use crate::entra;
use crate::secret::SecretRef;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
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
    sink_claims: &mut Vec<(PathBuf, At)>,
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
    let provider = provider(d, file, raw.provider.as_ref());
    let endpoint = endpoint(d, name, header, &raw, provider);
    let client_id = client_id(d, name, header, raw.client_id.as_ref());
    let credential = credential(d, name, header, &raw, provider, inherited_secret);
    let auth_method = auth_method(
        d,
        file,
        raw.auth_method.as_ref(),
        credential.as_ref(),
        provider,
    );
    let scopes = scopes(d, provider, raw.scopes.as_ref(), header);
    let params = params(d, file, raw.params.as_ref());
    let refresh_ratio = refresh_ratio(d, file, raw.refresh_ratio.as_ref());
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
    let sinks = match raw.sinks {
        Some(list) => super::sink::sinks(d, file, name, list, sink_claims),
        None => Vec::new(),
    };
    // A sink is written without being asked: its source fetches at start.
    let eager = raw.eager.as_ref().is_none_or(|e| *e.get_ref()) || !sinks.is_empty();
    let credential_expires = raw
        .credential_expires
        .and_then(|v| date(d, file, v))
        .or_else(|| match &credential {
            Some(Credential::Certificate(c)) => Some(c.cert.not_after),
            _ => None,
        });
    let ca_file = raw.ca_file.as_ref().and_then(|p| ca_file(d, file, p));
    let probe_url = raw
        .probe_url
        .as_ref()
        .and_then(|u| url(d, file, u, "probe_url"));
    let allow = raw.allow.and_then(|a| allow(d, file, a));

    if d.errors.len() > before {
        return None;
    }
    Some(SourceConfig {
        name: name.to_string(),
        provider,
        endpoint: endpoint?,
        client_id,
        credential: credential?,
        auth_method: auth_method?,
        scopes,
        params,
        refresh_ratio,
        min_ttl,
        fetch_timeout,
        eager,
        credential_expires,
        probe_url,
        allow,
        ca_file,
        sinks,
    })
}

fn provider(d: &mut Diagnostics, file: usize, raw: Option<&Spanned<String>>) -> Provider {
    match raw {
        None => Provider::Generic,
        Some(p) if p.get_ref() == "azure" => Provider::Azure,
        Some(p) => {
            d.error(
                &At::of(file, p),
                "unknown provider",
                Some(
                    "the only provider is \"azure\"; for any other server set token_url"
                        .to_string(),
                ),
            );
            Provider::Generic
        }
    }
}

/// Where tokens come from: `token_url`, `issuer`, or Entra's `tenant`
/// (with `authority`); exactly one.
fn endpoint(
    d: &mut Diagnostics,
    name: &str,
    header: &At,
    raw: &RawSource,
    provider: Provider,
) -> Option<Endpoint> {
    let file = header.file;
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
    match (&raw.token_url, &raw.issuer, provider, &raw.tenant) {
        (Some(_), Some(i), _, _) => {
            d.error(
                &At::of(file, i),
                format!("source `{name}` has both `token_url` and `issuer`"),
                Some("keep token_url (used as is) or issuer (its discovery document names the token endpoint), not both".to_string()),
            );
            None
        }
        (Some(u), None, _, _) => url(d, file, u, "token_url").map(Endpoint::Url),
        (None, Some(i), _, _) => url(d, file, i, "issuer").map(Endpoint::Issuer),
        (None, None, Provider::Azure, Some(t)) => {
            azure_url(d, file, t, raw.authority.as_ref()).map(Endpoint::Url)
        }
        (None, None, Provider::Azure, None) => {
            d.error(
                header,
                format!("source `{name}` has provider = \"azure\" but no `tenant`"),
                Some("add tenant = \"contoso.onmicrosoft.com\" or the tenant GUID".to_string()),
            );
            None
        }
        (None, None, Provider::Generic, _) => {
            d.error(
                header,
                format!("source `{name}` has no `token_url`"),
                Some("set token_url (or issuer), or provider = \"azure\" with tenant".to_string()),
            );
            None
        }
    }
}

fn client_id(
    d: &mut Diagnostics,
    name: &str,
    header: &At,
    raw: Option<&Spanned<String>>,
) -> String {
    match raw {
        Some(c) if !c.get_ref().trim().is_empty() => c.get_ref().clone(),
        Some(c) => {
            d.error(&At::of(header.file, c), "`client_id` is empty", None);
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
    }
}

/// Extra form parameters: any but those tokend sets itself.
fn params(
    d: &mut Diagnostics,
    file: usize,
    raw: Option<&Spanned<BTreeMap<String, String>>>,
) -> BTreeMap<String, String> {
    let Some(p) = raw else {
        return BTreeMap::new();
    };
    for k in p.get_ref().keys() {
        if RESERVED_PARAMS.contains(&k.as_str()) {
            d.error(
                &At::of(file, p),
                format!("`params` may not set `{k}`"),
                Some("tokend sets it from the source's other keys".to_string()),
            );
        }
    }
    p.get_ref().clone()
}

fn refresh_ratio(d: &mut Diagnostics, file: usize, raw: Option<&Spanned<f64>>) -> f64 {
    match raw {
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
    }
}

/// `allow`, a source's or a managed-identity app's.
pub(super) fn allow(
    d: &mut Diagnostics,
    file: usize,
    raw: Spanned<toml::Value>,
) -> Option<crate::acl::Allow> {
    let at = At::of(file, &raw);
    match crate::acl::parse_allow(raw.into_inner()) {
        Ok((allow, problems)) => {
            for p in problems {
                d.problem(&at, p);
            }
            Some(allow)
        }
        Err(p) => {
            d.problem(&at, p);
            None
        }
    }
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

/// The one credential a source names: `client_secret`, `client_certificate`
/// or `client_assertion`.
fn credential(
    d: &mut Diagnostics,
    name: &str,
    header: &At,
    raw: &RawSource,
    provider: Provider,
    inherited_secret: Option<At>,
) -> Option<Credential> {
    let file = header.file;
    let named: Vec<(&str, At)> = [
        (
            "client_secret",
            raw.client_secret.as_ref().map(Spanned::span),
        ),
        (
            "client_certificate",
            raw.client_certificate.as_ref().map(Spanned::span),
        ),
        (
            "client_assertion",
            raw.client_assertion.as_ref().map(Spanned::span),
        ),
    ]
    .into_iter()
    .filter_map(|(k, s)| Some((k, At::new(file, s?))))
    .collect();
    match named.as_slice() {
        [] => {
            d.error(
                header,
                format!("source `{name}` has no credential"),
                Some("add client_secret = { file = \"/path\" } (or env, credential), client_certificate = { cert = \"…\", key = { file = \"…\" } } or client_assertion = { file = \"…\" }".to_string()),
            );
            return None;
        }
        [_] => {}
        [(first, _), (second, at), ..] => {
            d.error(
                at,
                format!("source `{name}` has both `{first}` and `{second}`; a source authenticates one way"),
                Some("keep the one the app registration uses and remove the other (a certificate is the safer choice where the server takes one)".to_string()),
            );
            return None;
        }
    }
    if let Some(s) = &raw.client_secret {
        let value_at = At::of(file, s);
        let r = match SecretRef::parse(s.get_ref().clone(), "client_secret") {
            Ok(r) => r,
            Err(p) => {
                d.problem(&value_at, p);
                return None;
            }
        };
        if let SecretRef::Inline(_) = r {
            let origin = inherited_secret.unwrap_or(value_at.clone());
            warn_if_readable(d, &origin, "client_secret");
        }
        lint_secret(d, &value_at, &r, provider);
        return Some(Credential::Secret(r));
    }
    if let Some(a) = &raw.client_assertion {
        return match SecretRef::parse(a.get_ref().clone(), "client_assertion") {
            Ok(r) => {
                if let SecretRef::File(p) = &r {
                    judge_secret_file(d, &At::of(file, a), p);
                }
                Some(Credential::Assertion(r))
            }
            Err(p) => {
                d.problem(&At::of(file, a), p);
                None
            }
        };
    }
    let c = raw.client_certificate.as_ref()?;
    certificate(d, &At::of(file, c), c.get_ref().clone(), provider).map(Credential::Certificate)
}

/// `client_certificate = { cert = PATH, key = SECRETREF, alg = … }`.
fn certificate(
    d: &mut Diagnostics,
    at: &At,
    value: toml::Value,
    provider: Provider,
) -> Option<ClientCertificate> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        cert: String,
        key: toml::Value,
        alg: Option<String>,
    }
    let how = "write client_certificate = { cert = \"/etc/tokend/app.pem\", key = { file = \"/etc/tokend/app.key\" } } (alg = \"PS256\", \"RS256\" or \"ES256\" optional)".to_string();
    let raw: Raw = match serde::Deserialize::deserialize(value) {
        Ok(r) => r,
        Err(e) => {
            d.error(
                at,
                format!(
                    "`client_certificate` is malformed: {}",
                    e.to_string().trim()
                ),
                Some(how),
            );
            return None;
        }
    };
    let key = match SecretRef::parse(raw.key, "key") {
        Ok(k) => k,
        Err(p) => {
            d.problem(at, p);
            return None;
        }
    };
    let cert_path = PathBuf::from(&raw.cert);
    d.named.push(cert_path.clone());
    if let SecretRef::File(k) = &key {
        d.named.push(k.clone());
        judge_secret_file(d, at, k);
    }
    let cert = match crate::cert::Certificate::load(&cert_path) {
        Ok(c) => c,
        Err(p) => {
            d.problem(at, p);
            return None;
        }
    };
    use crate::cert::KeyKind;
    let alg = match (raw.alg.as_deref(), cert.key_kind) {
        (None, KeyKind::EcP256) | (Some("ES256"), KeyKind::EcP256) => SigningAlg::Es256,
        (None, KeyKind::Rsa) if provider == Provider::Azure => SigningAlg::Ps256,
        (None, KeyKind::Rsa) | (Some("RS256"), KeyKind::Rsa) => SigningAlg::Rs256,
        (Some("PS256"), KeyKind::Rsa) => SigningAlg::Ps256,
        (Some(other @ ("RS256" | "PS256" | "ES256")), kind) => {
            let (has, use_) = match kind {
                KeyKind::Rsa => ("an RSA", "PS256 or RS256"),
                KeyKind::EcP256 => ("an ECDSA P-256", "ES256"),
            };
            d.error(
                at,
                format!(
                    "alg {other} does not fit {}: it holds {has} key",
                    crate::text::path(&cert_path)
                ),
                Some(format!("use alg = {use_}, or leave alg out")),
            );
            return None;
        }
        (Some(_), _) => {
            d.error(
                at,
                "unknown alg in client_certificate",
                Some(
                    "use \"PS256\" or \"RS256\" for an RSA key, \"ES256\" for ECDSA P-256"
                        .to_string(),
                ),
            );
            return None;
        }
    };
    Some(ClientCertificate {
        cert_path,
        cert: Arc::new(cert),
        key,
        alg,
    })
}

/// `auth_method`, or the one the credential implies.
fn auth_method(
    d: &mut Diagnostics,
    file: usize,
    raw: Option<&Spanned<String>>,
    credential: Option<&Credential>,
    provider: Provider,
) -> Option<AuthMethod> {
    let inferred = match credential {
        Some(Credential::Secret(_)) if provider == Provider::Azure => AuthMethod::ClientSecretPost,
        Some(Credential::Secret(_)) => AuthMethod::ClientSecretBasic,
        Some(Credential::Certificate(_) | Credential::Assertion(_)) | None => {
            AuthMethod::PrivateKeyJwt
        }
    };
    let Some(m) = raw else {
        return Some(inferred);
    };
    let at = At::of(file, m);
    let method = match m.get_ref().as_str() {
        "client_secret_basic" => AuthMethod::ClientSecretBasic,
        "client_secret_post" => AuthMethod::ClientSecretPost,
        "private_key_jwt" => AuthMethod::PrivateKeyJwt,
        "tls_client_auth" => AuthMethod::TlsClientAuth,
        _ => {
            d.error(
                &at,
                "unknown auth_method",
                Some("use client_secret_basic, client_secret_post, private_key_jwt or tls_client_auth, or leave it out: tokend infers it from the credential".to_string()),
            );
            return None;
        }
    };
    let (fits, has) = match credential {
        None => return Some(method),
        Some(Credential::Secret(_)) => (
            matches!(
                method,
                AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
            ),
            "client_secret",
        ),
        Some(Credential::Certificate(_)) => (
            matches!(
                method,
                AuthMethod::PrivateKeyJwt | AuthMethod::TlsClientAuth
            ),
            "client_certificate",
        ),
        Some(Credential::Assertion(_)) => (method == AuthMethod::PrivateKeyJwt, "client_assertion"),
    };
    if !fits {
        let fix = match credential {
            Some(Credential::Secret(_)) => "client_secret_basic or client_secret_post",
            Some(Credential::Certificate(_)) => "private_key_jwt or tls_client_auth",
            _ => "private_key_jwt",
        };
        d.error(
            &at,
            format!("auth_method `{}` does not go with {has}", method.as_str()),
            Some(format!(
                "with {has}, use {fix}, or leave auth_method out (it is inferred: {})",
                inferred.as_str()
            )),
        );
        return None;
    }
    Some(method)
}

/// `ca_file`: PEM certificates, read and checked now.
fn ca_file(d: &mut Diagnostics, file: usize, v: &Spanned<String>) -> Option<CaFile> {
    let at = At::of(file, v);
    let path = PathBuf::from(v.get_ref());
    d.named.push(path.clone());
    let hint = "give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)".to_string();
    let pem = match crate::files::read_regular(&path, crate::cert::MAX_CERT_FILE) {
        Ok(p) => p,
        Err(e) => {
            d.error(
                &at,
                format!("cannot read ca_file {}: {e}", crate::text::path(&path)),
                Some(hint),
            );
            return None;
        }
    };
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Some(CaFile {
            path,
            pem: Arc::new(pem),
        }),
        _ => {
            d.error(
                &at,
                format!(
                    "ca_file {} holds no PEM certificate",
                    crate::text::path(&path)
                ),
                Some(hint),
            );
            None
        }
    }
}

/// Judges a secret file as the daemon will when it reads it: refused if
/// someone besides root and the daemon's user could change it, a warning
/// if someone else could read it. Its text if it could be read (a file
/// not there yet is the daemon's business when it runs).
pub(super) fn judge_secret_file(
    d: &mut Diagnostics,
    at: &At,
    path: &std::path::Path,
) -> Option<zeroize::Zeroizing<String>> {
    let opened = crate::files::open_regular(path).ok()?;
    let facts = crate::trust::Facts::of(opened.fd()).ok()?;
    if let Some(p) = crate::secret::untrusted(path, &facts) {
        d.problem(at, p);
        return None;
    }
    if let Some(who) = crate::trust::other_readers(&facts) {
        let shown = crate::text::path(path);
        d.warn(
            at,
            format!("secret file {shown} can be read by {who}"),
            Some(format!("let only root and the daemon read it: chmod 600 {shown} (or 640 with a group only the daemon is in, such as root:tokend)")),
        );
    }
    let bytes = zeroize::Zeroizing::new(opened.read(crate::secret::MAX_SECRET_FILE).ok()?);
    std::str::from_utf8(&bytes)
        .ok()
        .map(|v| zeroize::Zeroizing::new(v.to_string()))
}

/// Warnings, before any request, for secrets that a copy-paste got wrong:
/// an Entra secret shaped like a GUID is the secret's ID, not its Value;
/// surrounding whitespace or quotes came along with the value.
fn lint_secret(d: &mut Diagnostics, at: &At, r: &SecretRef, provider: Provider) {
    // Looked at, then wiped: the lint keeps no copy of the secret.
    let value: Option<zeroize::Zeroizing<String>> = match r {
        SecretRef::Inline(s) => Some(secrecy::ExposeSecret::expose_secret(s).to_string().into()),
        SecretRef::File(p) => {
            judge_secret_file(d, at, p).map(|v| crate::secret::strip_newline(&v).to_string().into())
        }
        // Not readable before the daemon runs (or not this user's to read).
        SecretRef::Env(_) | SecretRef::Credential(_) => None,
    };
    let Some(value) = value else { return };
    let place = r.describe();
    if provider == Provider::Azure && looks_like_guid(&value) {
        d.warn(
            at,
            format!("the client secret in {place} looks like a GUID: this looks like the secret's ID, not its Value"),
            Some("in the Entra portal (App registrations → Certificates & secrets) copy the Value column; it is shown only once, right after the secret is created".to_string()),
        );
    }
    let trimmed = value.trim();
    if trimmed.len() != value.len() {
        d.warn(
            at,
            format!("the client secret in {place} starts or ends with whitespace"),
            Some(
                "a copy-paste may have brought it in: remove it unless the secret really has it"
                    .to_string(),
            ),
        );
    } else if value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')))
    {
        d.warn(
            at,
            format!("the client secret in {place} is wrapped in quotes"),
            Some("a copy-paste may have brought them in: remove them unless the secret really has them".to_string()),
        );
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits.
fn looks_like_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Warns about a plain (inline) secret `key` at `at` when the file it is
/// written in can be read by others than root and the daemon.
pub(super) fn warn_if_readable(d: &mut Diagnostics, at: &At, key: &str) {
    if d.shared(at) {
        d.warn(
            at,
            format!("plain {key} in a config file that others can read"),
            Some(format!(
                "let only root and the daemon read the file (chmod 600, or 640 with a group only the daemon is in, as the package installs it: root:tokend), or {}",
                SecretRef::how_to_write(key)
            )),
        );
    }
}
