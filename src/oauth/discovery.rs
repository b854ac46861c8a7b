//! The token endpoint of an `issuer`, from its discovery document: OpenID
//! Connect Discovery (`{issuer}/.well-known/openid-configuration`), else
//! RFC 8414 (`/.well-known/oauth-authorization-server` before the issuer's
//! path). The document must name the configured issuer exactly (RFC 8414
//! §3.3), so a look-alike cannot point tokend elsewhere.

use std::time::Duration;
use url::Url;

/// The discovery URLs to try for `issuer`, in order.
fn candidates(issuer: &Url) -> Vec<Url> {
    let base = issuer.as_str().trim_end_matches('/');
    let mut out: Vec<Url> = Url::parse(&format!("{base}/.well-known/openid-configuration"))
        .into_iter()
        .collect();
    let mut rfc8414 = issuer.clone();
    let path = issuer.path().trim_end_matches('/').to_string();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    rfc8414.set_query(None);
    out.push(rfc8414);
    out
}

/// Reads `issuer`'s discovery document and returns its `token_endpoint`.
/// The error text says what was tried and what each answered.
pub async fn token_endpoint(
    http: &reqwest::Client,
    issuer: &Url,
    timeout: Duration,
) -> Result<Url, String> {
    let mut tried = Vec::new();
    for url in candidates(issuer) {
        match document(http, &url, timeout).await {
            Ok(doc) => return endpoint_in(&doc, issuer, &url),
            Err(why) => tried.push(format!("{} ({why})", crate::text::url(&url))),
        }
    }
    Err(format!(
        "no discovery document for issuer {}: tried {}",
        crate::text::url(issuer),
        tried.join(", ")
    ))
}

async fn document(
    http: &reqwest::Client,
    url: &Url,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let resp = http
        .get(url.clone())
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| super::transport_detail(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let body = super::read_limited(resp).await.map_err(|e| match e {
        super::ReadError::Transport(e) => super::transport_detail(&e),
        super::ReadError::TooLarge => "larger than 1 MiB".to_string(),
    })?;
    serde_json::from_slice(&body).map_err(|_| "not JSON".to_string())
}

fn endpoint_in(doc: &serde_json::Value, issuer: &Url, from: &Url) -> Result<Url, String> {
    let from = crate::text::url(from);
    let named = doc["issuer"].as_str().unwrap_or_default();
    if named.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "the discovery document at {from} names issuer {:?}, not {}: set issuer to exactly what the server calls itself",
            crate::text::clip(named, 200),
            crate::text::url(issuer)
        ));
    }
    let endpoint = doc["token_endpoint"]
        .as_str()
        .ok_or_else(|| format!("the discovery document at {from} has no token_endpoint"))?;
    let url = Url::parse(endpoint).map_err(|e| {
        format!("the discovery document at {from} has an unusable token_endpoint ({e})")
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let shown = crate::text::url(&url);
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the discovery document at {from} names token endpoint {shown} with a user name, password or fragment"
        ));
    }
    // Plain http only to loopback, and only for an issuer that is itself
    // plain http: an https issuer's document cannot send the secret to
    // whoever listens on a local port.
    if url.scheme() == "https" || (url.scheme() == "http" && loopback && issuer.scheme() == "http")
    {
        Ok(url)
    } else {
        Err(format!(
            "the discovery document at {from} names token endpoint {shown}, which is not https"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_to_look() {
        let c = candidates(&Url::parse("https://sso.example.com/realms/main").unwrap());
        let c: Vec<&str> = c.iter().map(Url::as_str).collect();
        assert_eq!(
            c,
            [
                "https://sso.example.com/realms/main/.well-known/openid-configuration",
                "https://sso.example.com/.well-known/oauth-authorization-server/realms/main"
            ]
        );
        let c = candidates(&Url::parse("https://login.example.com/").unwrap());
        assert_eq!(
            c[1].as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn the_document_must_name_the_issuer_and_an_https_endpoint() {
        let issuer = Url::parse("https://sso.example.com/realms/main").unwrap();
        let from = Url::parse("https://sso.example.com/x").unwrap();
        let ok = serde_json::json!({"issuer": "https://sso.example.com/realms/main", "token_endpoint": "https://sso.example.com/t"});
        assert_eq!(
            endpoint_in(&ok, &issuer, &from).unwrap().as_str(),
            "https://sso.example.com/t"
        );
        let other = serde_json::json!({"issuer": "https://evil.example.com", "token_endpoint": "https://evil.example.com/t"});
        assert!(endpoint_in(&other, &issuer, &from)
            .unwrap_err()
            .contains("names issuer"));
        let http = serde_json::json!({"issuer": "https://sso.example.com/realms/main", "token_endpoint": "http://sso.example.com/t"});
        assert!(endpoint_in(&http, &issuer, &from)
            .unwrap_err()
            .contains("not https"));
        // An https issuer cannot downgrade to a local http endpoint.
        let local = serde_json::json!({"issuer": "https://sso.example.com/realms/main", "token_endpoint": "http://localhost:8080/t"});
        assert!(endpoint_in(&local, &issuer, &from)
            .unwrap_err()
            .contains("not https"));
        let plain_issuer = Url::parse("http://127.0.0.1:9/i").unwrap();
        let local = serde_json::json!({"issuer": "http://127.0.0.1:9/i", "token_endpoint": "http://127.0.0.1:9/t"});
        assert!(endpoint_in(&local, &plain_issuer, &from).is_ok());
        let creds = serde_json::json!({"issuer": "https://sso.example.com/realms/main", "token_endpoint": "https://u:p@sso.example.com/t"});
        let e = endpoint_in(&creds, &issuer, &from).unwrap_err();
        assert!(e.contains("user name") && !e.contains("u:p"), "{e}");
        let none = serde_json::json!({"issuer": "https://sso.example.com/realms/main"});
        assert!(endpoint_in(&none, &issuer, &from)
            .unwrap_err()
            .contains("no token_endpoint"));
    }
}
