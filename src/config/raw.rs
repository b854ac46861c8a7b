//! The configuration as written: serde types that mirror the TOML, every field
//! optional and spanned so validation can point at the exact line and column.
//! Nothing outside `config` sees these types.

use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub socket: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<toml::Value>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_uid: Option<Spanned<i64>>,
    pub request_timeout: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub max_concurrent_fetches: Option<Spanned<i64>>,
    pub metrics_listen: Option<Spanned<String>>,
}

/// `[managed_identity]`: the Azure SDK drop-in endpoint.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManagedIdentity {
    pub listen: Option<Spanned<String>>,
    pub apps: Option<BTreeMap<Spanned<String>, Spanned<RawMiApp>>>,
}

/// `[imds]`: the instance-metadata door.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImds {
    pub listen: Option<Spanned<String>>,
    pub sources: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[managed_identity.apps.NAME]`: one consuming program.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMiApp {
    pub header: Option<Spanned<toml::Value>>,
    pub sources: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow: Option<Spanned<toml::Value>>,
}

/// One `[sources.NAME]` table, or `[defaults]` (which may hold any source key).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub token_url: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub provider: Option<Spanned<String>>,
    pub tenant: Option<Spanned<String>>,
    pub authority: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<toml::Value>>,
    pub client_certificate: Option<Spanned<toml::Value>>,
    pub client_assertion: Option<Spanned<toml::Value>>,
    pub auth_method: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub params: Option<Spanned<BTreeMap<String, String>>>,
    pub refresh_ratio: Option<Spanned<f64>>,
    pub min_ttl: Option<Spanned<String>>,
    pub fetch_timeout: Option<Spanned<String>>,
    pub eager: Option<Spanned<bool>>,
    pub credential_expires: Option<Spanned<toml::Value>>,
    pub allow: Option<Spanned<toml::Value>>,
    pub probe_url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    /// Never inherited from `[defaults]` (a path belongs to one source).
    pub sinks: Option<Spanned<Vec<Spanned<RawSink>>>>,
}

/// One element of a source's `sinks`: a file that holds its token.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<toml::Value>>,
    pub group: Option<Spanned<toml::Value>>,
}

impl RawSource {
    /// Fills every key the source leaves unset from `[defaults]`. With
    /// `respan`, inherited values are placed there (the source's header in
    /// an include file), so their diagnostics point into the right file.
    pub fn with_defaults(
        mut self,
        d: &RawSource,
        respan: Option<std::ops::Range<usize>>,
    ) -> RawSource {
        macro_rules! inherit {
            ($($f:ident),*) => { $(
                if self.$f.is_none() {
                    self.$f = d.$f.clone().map(|v| match &respan {
                        Some(at) => Spanned::new(at.clone(), v.into_inner()),
                        None => v,
                    });
                }
            )* };
        }
        // A source authenticates one way: one that names any credential
        // inherits none, so a [defaults] secret never clashes with its certificate.
        if self.client_secret.is_none()
            && self.client_certificate.is_none()
            && self.client_assertion.is_none()
        {
            inherit!(client_secret, client_certificate, client_assertion);
        }
        // Likewise for where the token endpoint is.
        if self.token_url.is_none() && self.issuer.is_none() {
            inherit!(token_url, issuer);
        }
        inherit!(
            provider,
            tenant,
            authority,
            client_id,
            auth_method,
            scopes,
            params,
            refresh_ratio,
            min_ttl,
            fetch_timeout,
            eager,
            credential_expires,
            allow,
            probe_url,
            ca_file
        );
        self
    }
}
