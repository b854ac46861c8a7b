//! `tokend check [--fetch]`: validate the config and, with `--fetch`, request
//! one token per source and show what it carries.

use crate::config::{self, Config, Credential, Endpoint, SourceConfig};
use crate::jwt;
use crate::oauth::TokenClient;
use crate::secret::{ExposeSecret, SecretEnv};
use std::path::Path;

/// Validates `path`; prints every problem to stderr. Returns the config if
/// valid; its warnings are left to the caller (the daemon logs them).
pub fn validate(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            for p in e.problems() {
                eprintln!("{p}");
            }
            None
        }
    }
}

/// Runs `tokend check`; returns the exit code.
pub async fn run(path: &Path, fetch: bool, env: SecretEnv) -> u8 {
    let Some(config) = validate(path) else {
        return 1;
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    for w in squattable_doors(&config, unprivileged_port_start()) {
        eprintln!("warning: {w}");
    }
    println!("{}: OK, {}", crate::text::path(path), source_list(&config));
    if !fetch {
        return 0;
    }
    let client = match TokenClient::new(env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            return 1;
        }
    };
    let mut failed = false;
    for src in config.sources.values() {
        failed |= !fetch_one(&client, src).await;
    }
    u8::from(failed)
}

/// `check --fetch` for one source: its certificate, discovered endpoint,
/// a token and its claims, and the probe. True if all went well.
async fn fetch_one(client: &TokenClient, src: &SourceConfig) -> bool {
    if let Credential::Certificate(c) = &src.credential {
        println!(
            "{}: certificate {}: {}, thumbprint {}, valid until {}{}",
            src.name,
            crate::text::path(&c.cert_path),
            crate::text::clip(&c.cert.subject, 500),
            c.cert.sha1_hex(),
            crate::timefmt::rfc3339(c.cert.not_after),
            if c.cert.expired_at(std::time::SystemTime::now()) {
                " (EXPIRED)"
            } else {
                ""
            }
        );
    }
    if let Endpoint::Issuer(issuer) = &src.endpoint {
        match client.token_endpoint(src).await {
            Ok(u) => println!(
                "{}: token endpoint {} (discovered from issuer {})",
                src.name,
                crate::text::url(&u),
                crate::text::url(issuer)
            ),
            Err(e) => println!("{}: discovery failed: {e}", src.name),
        }
    }
    let token = match client.fetch(src).await {
        Err(e) => {
            println!("{}: FAILED: {e}", src.name);
            if let Some(h) = e.hint() {
                println!("  hint: {h}");
            }
            return false;
        }
        Ok(token) => token,
    };
    println!(
        "{}: ok, lifetime {}{}",
        src.name,
        humantime::format_duration(crate::timefmt::whole_secs(token.lifetime())),
        token
            .scope
            .as_ref()
            .map(|s| format!(", scope {}", crate::text::clip(s, 500)))
            .unwrap_or_default()
    );
    let secret = token.access_token.expose_secret();
    show_claims(secret);
    match &src.probe_url {
        Some(url) => probe(client, src, url, secret).await,
        None => true,
    }
}

/// The claims a JWT's reader wants first, or that it is opaque.
fn show_claims(secret: &str) {
    let Some(c) = jwt::claims(secret) else {
        println!("  token is opaque (not a JWT): no claims to show");
        return;
    };
    for key in [
        "aud",
        "roles",
        "scp",
        "scope",
        "tid",
        "appid",
        "azp",
        "client_id",
        "exp",
    ] {
        if let Some(v) = c.get(key) {
            let mut shown = jwt::show(v);
            if key == "exp" {
                if let Some(t) = v.as_u64().and_then(|n| {
                    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(n))
                }) {
                    shown = crate::timefmt::rfc3339(t);
                }
            }
            println!("  {key}: {shown}");
        }
    }
    if let Some(w) = jwt::consent_warning(&c) {
        println!("  warning: {w}");
    }
}

/// Calls the source's `probe_url` with the token. True if it answered 2xx.
async fn probe(client: &TokenClient, src: &SourceConfig, url: &url::Url, secret: &str) -> bool {
    let shown = crate::text::url(url);
    let sent = client
        .http()
        .get(url.clone())
        .bearer_auth(secret)
        .timeout(src.fetch_timeout)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            println!("  probe {shown}: HTTP {}", r.status().as_u16());
            return true;
        }
        Ok(r) => {
            let s = r.status().as_u16();
            println!("  probe {shown}: FAILED, HTTP {s}");
            if s == 401 || s == 403 {
                println!("  hint: the API refused the token: the app likely lacks the application permission for this call, or admin consent was not granted");
            }
        }
        Err(e) if e.is_timeout() => println!(
            "  probe {shown}: FAILED: no answer within {} (the source's fetch_timeout)",
            humantime::format_duration(src.fetch_timeout)
        ),
        Err(e) => println!("  probe {shown}: FAILED: {e}"),
    }
    false
}

/// "no sources", or "2 source(s): a, b", naming at most 20.
fn source_list(config: &Config) -> String {
    const SHOWN: usize = 20;
    let n = config.sources.len();
    if n == 0 {
        return "no sources".to_string();
    }
    let names: Vec<&str> = config
        .sources
        .keys()
        .take(SHOWN)
        .map(String::as_str)
        .collect();
    let more = n.saturating_sub(SHOWN);
    let rest = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{n} source(s): {}{rest}", names.join(", "))
}

/// The first port any user may bind (`net.ipv4.ip_unprivileged_port_start`,
/// 1024 unless changed).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// The TCP doors on a port any local user could bind while tokend is
/// stopped (a boot, an upgrade, the seconds before a restart), and so
/// receive what clients send there.
fn squattable_doors(config: &Config, first_free: u16) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(mi) = &config.managed_identity {
        let port = mi.listen.port();
        if port >= first_free {
            out.push(format!("[managed_identity] listen {} is on port {port}, which any local user may bind while tokend is stopped (ports from {first_free} up need no privilege here) and so capture the X-IDENTITY-HEADER apps send — socket-activate the endpoint so the port stays systemd's: set tokend-mi.socket's ListenStream= to this address and systemctl enable --now tokend-mi.socket (docs/managed-identity.md)", mi.listen));
        }
    }
    if let Some(imds) = &config.imds {
        let port = imds.listen.port();
        if port >= first_free {
            out.push(format!("[imds] listen {} is on port {port}, which any local user may bind while tokend is stopped (ports from {first_free} up need no privilege here) and so answer the tools that speak IMDS with tokens of their choosing — socket-activate the door so the port stays systemd's: set tokend-imds.socket's ListenStream= to this address and systemctl enable --now tokend-imds.socket (docs/imds.md)", imds.listen));
        }
    }
    if let Some(addr) = config.server.metrics_listen {
        let port = addr.port();
        if port >= first_free {
            out.push(format!("[server] metrics_listen {addr} is on port {port}, which any local user may bind while tokend is stopped (ports from {first_free} up need no privilege here) and so feed Prometheus false figures — if that matters, alert on tokend's absence (up == 0) rather than on its figures alone"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_door_on_a_port_anyone_may_bind_is_a_warning() {
        let text = "[server]\nsocket = \"/tmp/t.sock\"\nmetrics_listen = \"127.0.0.1:9464\"\n[sources.api]\ntoken_url = \"https://sso.example.com/token\"\nclient_id = \"api\"\nclient_secret = { env = \"X\" }\nscopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"127.0.0.1:42356\"\n[managed_identity.apps.jira]\nheader = { env = \"H\" }\nsources = [\"api\"]\n";
        let c = config::load_str(text, Path::new("t"), Some(0o600)).unwrap();
        let w = squattable_doors(&c, 1024);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("port 42356") && w[0].contains("tokend-mi.socket"),
            "{w:?}"
        );
        assert!(w[1].contains("port 9464"), "{w:?}");
        // Where only root may bind them, nothing to say.
        assert!(squattable_doors(&c, 65535).is_empty());
    }
}
