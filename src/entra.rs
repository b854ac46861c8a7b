//! Microsoft Entra ID's rules, and the hints that turn an identity
//! provider's error into what to fix.
//!
//! A leaf both sides use: the config loader checks the rules Entra puts on
//! a client-credentials request (tenant, scope) when a file loads; the
//! token endpoint client turns an error body into a hint. Entra hints
//! follow the AADSTS codes in the body (`error_codes`, or the `AADSTSnnnn:`
//! prefix of `error_description`), whatever the source's provider; RFC 6749
//! §5.2 error codes get generic hints.

use crate::problem::Problem;
use url::Url;

/// Entra's public cloud authority.
pub const AUTHORITY: &str = "https://login.microsoftonline.com";
/// The scope a `provider = "azure"` source gets when it names none.
pub const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A tenant usable with client credentials: a tenant ID or domain, not one
/// of the multi-tenant aliases.
pub fn check_tenant(tenant: &str) -> Result<&str, Problem> {
    let t = tenant.trim();
    if ["common", "consumers", "organizations"].contains(&t.to_ascii_lowercase().as_str()) {
        return Err(Problem::new(
            format!("tenant `{t}` cannot be used with client credentials"),
            "use your tenant's ID or primary domain, e.g. contoso.onmicrosoft.com".to_string(),
        ));
    }
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(Problem::new(
            format!("tenant `{t}` is not a tenant ID or domain"),
            "use the directory (tenant) ID GUID or a domain such as contoso.onmicrosoft.com"
                .to_string(),
        ));
    }
    Ok(t)
}

/// `{authority}/{tenant}/oauth2/v2.0/token` for a checked tenant.
pub fn token_url(authority: &Url, tenant: &str) -> Option<Url> {
    Url::parse(&format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.as_str().trim_end_matches('/')
    ))
    .ok()
}

/// Entra's client-credentials scope rule: exactly one scope, ending in
/// `/.default`. The problem shows the corrected value.
pub fn scope_problem(scopes: &[String]) -> Option<Problem> {
    match scopes {
        [one] if one.ends_with("/.default") => None,
        [one] => {
            let fixed = default_scope(one);
            let note = if one.contains('/') {
                String::new()
            } else {
                "; application permissions are granted on the app registration, not requested"
                    .to_string()
            };
            Some(Problem::new(
                format!("Entra client credentials need a `/.default` scope, not {one:?}"),
                format!("use scopes = [\"{fixed}\"]{note}"),
            ))
        }
        _ => {
            let fixed = scopes
                .first()
                .map_or_else(|| DEFAULT_SCOPE.to_string(), |s| default_scope(s));
            Some(Problem::new(
                "Entra client credentials take exactly one scope",
                format!("use scopes = [\"{fixed}\"]; a token covers one resource, so use one source per resource"),
            ))
        }
    }
}

/// `https://graph.microsoft.com/User.Read` → `https://graph.microsoft.com/.default`;
/// a bare permission name → Graph's `.default`.
fn default_scope(scope: &str) -> String {
    match Url::parse(scope) {
        Ok(u) if u.host_str().is_some() => format!(
            "{}://{}/.default",
            u.scheme(),
            u.host_str().unwrap_or_default()
        ),
        _ => match scope.split_once('/') {
            // api://app-id/Permission → api://app-id/.default
            Some((resource, _)) if scope.starts_with("api:") => format!("{resource}/.default"),
            _ => DEFAULT_SCOPE.to_string(),
        },
    }
}

/// The hint for an Entra AADSTS code, if we know one.
pub fn aadsts_hint(code: u64) -> Option<&'static str> {
    Some(match code {
        7_000_215 => "the client secret is wrong: a common cause is pasting the secret's ID instead of its Value (Entra portal → App registrations → Certificates & secrets); put the Value in the secret file",
        7_000_222 => "the client secret has expired: create a new one under Certificates & secrets, update the source's secret, and set credential_expires to its new expiry",
        700_016 => "no application with this client_id exists in this tenant: check client_id (the Application (client) ID, not the Object ID) and tenant",
        90_002 => "the tenant was not found: check `tenant` (directory ID GUID or a verified domain) and, for sovereign clouds, `authority`",
        70_011 | 1_002_012 => "the scope is malformed: client credentials need `<resource>/.default`, e.g. https://graph.microsoft.com/.default",
        500_011 => "the resource in the scope was not found in this tenant: check the scope's resource URI, and that the API's service principal exists in the tenant",
        700_027 => "the client assertion's signature did not verify: the certificate is not registered on the app registration, or the key does not match it",
        7_000_218 => "the request has no client credential: set client_secret (Entra expects auth_method = client_secret_post)",
        50_034 | 50_126 => "this is a user sign-in error; client credentials need an app registration's client_id and secret",
        _ => return None,
    })
}

/// Generic hint for an RFC 6749 §5.2 error code.
pub fn oauth_hint(error: &str) -> Option<&'static str> {
    Some(match error {
        "invalid_client" => "the server rejected the client's credentials: check client_id and the secret, and auth_method (some servers expect client_secret_post, others client_secret_basic)",
        "unauthorized_client" => "this client may not use the client_credentials grant: enable it on the server (service account / machine-to-machine app)",
        "invalid_scope" => "the client may not request this scope, or it does not exist: check `scopes` against what the client is allowed on the server",
        "unsupported_grant_type" => "the server does not offer client_credentials at this endpoint: check token_url and the client's grant types",
        "invalid_request" => "the server found the request malformed: check `scopes` and `params`",
        "invalid_grant" => "the server refused the grant: check the client's grant types and `params`",
        _ => return None,
    })
}

/// The AADSTS code at the start of an Entra `error_description`.
pub fn aadsts_in(description: &str) -> Option<u64> {
    let rest = description.trim_start().strip_prefix("AADSTS")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_codes_have_hints() {
        for code in [
            7_000_215, 7_000_222, 700_016, 90_002, 70_011, 1_002_012, 500_011, 700_027,
        ] {
            assert!(aadsts_hint(code).is_some(), "{code}");
        }
        assert!(aadsts_hint(1).is_none());
    }

    #[test]
    fn code_from_description() {
        assert_eq!(
            aadsts_in("AADSTS7000215: Invalid client secret provided."),
            Some(7_000_215)
        );
        assert_eq!(aadsts_in("invalid"), None);
    }
}
