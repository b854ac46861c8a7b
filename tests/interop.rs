//! Interop: tokend against a real, third-party OAuth 2.0 server
//! (oidc-provider), not against a double of our own.

mod common;

use common::oidc::{OidcServer, BASIC_SECRET, NARROW_SECRET, POST_SECRET, RESOURCE};
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn oidc_source(
    name: &str,
    server: &OidcServer,
    client: &str,
    secret_env: &str,
    extra: &str,
) -> String {
    format!(
        "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"{client}\"\nclient_secret = {{ env = \"{secret_env}\" }}\n{extra}\n",
        server.token_url()
    )
}

#[tokio::test]
async fn basic_and_post_clients_get_tokens_the_server_verifies() {
    let server = OidcServer::start(300).await;
    let body = format!(
        "{}{}",
        oidc_source("basic", &server, "basic", "BASIC_SECRET", "scopes = [\"read\", \"write\"]"),
        oidc_source(
            "post",
            &server,
            "post",
            "POST_SECRET",
            "scopes = [\"read\", \"write\"]\nauth_method = \"client_secret_post\"\nparams = { resource = \"https://api.tokend.test\" }"
        ),
    );
    let d = daemon(&body)
        .env("BASIC_SECRET", BASIC_SECRET)
        .env("POST_SECRET", POST_SECRET)
        .start()
        .await;
    for client in ["basic", "post"] {
        let r = wait_for_status(&d, &format!("/v1/tokens/{client}"), 200).await;
        let j = r.json();
        assert_eq!(j["scope"], "read write", "{j}");
        let claims = server
            .verify(j["access_token"].as_str().unwrap())
            .await
            .unwrap_or_else(|e| {
                panic!("{client}: the server rejects the token tokend serves: {e}")
            });
        assert_eq!(claims["client_id"], client);
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["aud"], RESOURCE);
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 300);
    }
}

#[tokio::test]
async fn short_ttl_is_refreshed_before_expiry_without_a_storm() {
    let server = OidcServer::start(10).await;
    let d = daemon(&oidc_source(
        "short",
        &server,
        "basic",
        "S",
        "min_ttl = \"2s\"",
    ))
    .env("S", BASIC_SECRET)
    .start()
    .await;
    wait_for_status(&d, "/v1/tokens/short", 200).await;
    let mut seen = BTreeSet::new();
    let window = Duration::from_secs(15);
    let start = std::time::Instant::now();
    while start.elapsed() < window {
        let r = d.get("/v1/tokens/short").await;
        assert_eq!(r.status(), 200, "a gap in service: {}", r.text());
        let j = r.json();
        // A served token always has more than 5 s left: the new one arrived in time.
        assert!(j["expires_in"].as_u64().unwrap() >= 5, "{j}");
        seen.insert(j["access_token"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let issued = server.issued().await;
    // 10 s tokens are served until 5 s before expiry, so each is refreshed
    // a tenth of its life before that, 3.5–4 s after issue: about 4 in 15 s
    // (and the first), never a storm.
    assert!(
        (4..=7).contains(&issued),
        "issued {issued} tokens in {window:?}"
    );
    assert!(seen.len() >= 3, "saw {} distinct tokens", seen.len());
}

#[tokio::test]
async fn wrong_secret_shows_invalid_client_while_other_sources_serve() {
    let server = OidcServer::start(300).await;
    let body = format!(
        "{}{}",
        oidc_source("good", &server, "basic", "GOOD", ""),
        oidc_source(
            "bad",
            &server,
            "post",
            "BAD",
            "auth_method = \"client_secret_post\""
        ),
    );
    let d = daemon(&body)
        .env("GOOD", BASIC_SECRET)
        .env("BAD", "not-the-secret")
        .start()
        .await;
    let st = wait_until(&d, |doc| {
        doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "bad" && s["state"] == "failed")
    })
    .await;
    let bad = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "bad")
        .unwrap()
        .clone();
    assert_eq!(bad["last_error"]["error"], "invalid_client", "{bad}");
    let msg = bad["last_error"]["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 401 invalid_client"), "{msg}");
    assert!(bad["last_error"]["hint"]
        .as_str()
        .unwrap()
        .contains("check client_id and the secret"));
    assert_eq!(d.get("/v1/tokens/good").await.status(), 200);
    assert_eq!(d.get("/v1/tokens/bad").await.status(), 503);
}

#[tokio::test]
async fn scope_the_client_may_not_have_is_invalid_scope() {
    let server = OidcServer::start(300).await;
    let body = format!(
        "{}{}",
        oidc_source("narrow-ok", &server, "narrow", "N", "scopes = [\"read\"]"),
        oidc_source(
            "narrow-write",
            &server,
            "narrow",
            "N",
            "scopes = [\"read\", \"write\"]"
        ),
    );
    let d = daemon(&body).env("N", NARROW_SECRET).start().await;
    wait_for_status(&d, "/v1/tokens/narrow-ok", 200).await;
    let st = wait_until(&d, |doc| {
        doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "narrow-write" && s["last_error"].is_object())
    })
    .await;
    let s = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "narrow-write")
        .unwrap()
        .clone();
    assert_eq!(s["last_error"]["error"], "invalid_scope", "{s}");
    assert!(
        s["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("requested scope is not allowed"),
        "{s}"
    );
}

#[tokio::test]
async fn outage_serves_the_cached_token_then_recovers_by_itself() {
    let server = OidcServer::start(12).await;
    let d = daemon(&oidc_source(
        "api",
        &server,
        "basic",
        "S",
        "min_ttl = \"0s\"",
    ))
    .env("S", BASIC_SECRET)
    .start()
    .await;
    let first = wait_for_status(&d, "/v1/tokens/api", 200).await.json();
    let token = first["access_token"].as_str().unwrap().to_string();
    let mut server = server;
    server.stop();
    // Refresh is due at 9 s; until 7 s (12 s − 5 s) the cached token serves.
    let r = d.get("/v1/tokens/api").await.json();
    assert_eq!(
        r["access_token"],
        token.as_str(),
        "cached token served while the server is down"
    );
    // Past expiry − 5 s it is no longer served, and the failures show.
    eventually_within(
        Duration::from_secs(15),
        "the token to stop being served",
        async || (d.get("/v1/tokens/api").await.status() == 503).then_some(()),
    )
    .await;
    wait_until_within(&d, Duration::from_secs(20), |doc| {
        doc["sources"][0]["consecutive_failures"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(d.get("/v1/sources/api").await.json()["state"], "failed");

    let server = server.restart().await;
    let r = eventually_within(
        Duration::from_secs(60),
        "recovery after the server came back",
        async || {
            let r = d.get("/v1/tokens/api").await;
            (r.status() == 200).then_some(r)
        },
    )
    .await;
    let new = r.json()["access_token"].as_str().unwrap().to_string();
    assert_ne!(new, token);
    server.verify(&new).await.unwrap();
    let st = d.get("/v1/sources/api").await.json();
    assert_eq!(st["state"], "ready");
    assert_eq!(st["consecutive_failures"], 0);
    assert_eq!(st["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn check_fetch_prints_ok_and_the_decoded_claims() {
    let server = OidcServer::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(
        &path,
        oidc_source("api", &server, "basic", "S", "scopes = [\"read\"]"),
    )
    .unwrap();
    let (code, stdout, stderr) = check_fetch(&path, &[("S", BASIC_SECRET)]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("api: ok, lifetime 5m, scope read"),
        "{stdout}"
    );
    for line in [
        format!("aud: {RESOURCE}"),
        "scope: read".into(),
        "client_id: basic".into(),
        "exp: 20".into(),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains(BASIC_SECRET));
}

/// A source for client `client` of `server` with a certificate credential.
fn cert_source(
    name: &str,
    server: &OidcServer,
    client: &str,
    cert: &str,
    key: &str,
    extra: &str,
) -> String {
    let creds = server.creds.as_ref().unwrap();
    format!(
        "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"{client}\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }}{extra} }}\nscopes = [\"read\"]\n",
        server.token_url(),
        creds.path(cert).display(),
        creds.path(key).display()
    )
}

#[tokio::test]
async fn private_key_jwt_with_rs256_and_ps256_and_a_wrong_key_is_invalid_client() {
    let server = OidcServer::start_with_credentials(300).await;
    let body = [
        cert_source("rs", &server, "pkjwt-rs", "pkjwt.pem", "pkjwt.key", ""),
        cert_source(
            "ps",
            &server,
            "pkjwt-ps",
            "pkjwt.pem",
            "pkjwt.key",
            ", alg = \"PS256\"",
        ),
        // A certificate and key the server does not have for this client.
        cert_source(
            "wrong",
            &server,
            "pkjwt-rs",
            "stranger.pem",
            "stranger.key",
            "",
        ),
    ]
    .concat();
    let d = daemon(&body).start().await;
    for (name, client) in [("rs", "pkjwt-rs"), ("ps", "pkjwt-ps")] {
        let r = wait_for_status(&d, &format!("/v1/tokens/{name}"), 200).await;
        let claims = server
            .verify(r.json()["access_token"].as_str().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{name}: the server rejects the token tokend serves: {e}"));
        assert_eq!(claims["client_id"], client);
        assert_eq!(claims["aud"], RESOURCE);
    }
    // The server really checks the signature: a key it does not know is refused.
    let r = wait_for_status(&d, "/v1/tokens/wrong", 503).await;
    let st = d.get("/v1/sources/wrong").await.json();
    assert_eq!(
        st["last_error"]["error"],
        "invalid_client",
        "{st} {}",
        r.text()
    );
}

#[tokio::test]
async fn tls_client_auth_over_https_with_a_private_ca() {
    let server = OidcServer::start_with_credentials(300).await;
    let creds = server.creds.as_ref().unwrap();
    let tls_port = server.tls_port.expect("the HTTPS listener");
    let source = |name: &str, cert: &str, ca: Option<&str>| {
        format!(
            "[sources.{name}]\ntoken_url = \"https://127.0.0.1:{tls_port}/token\"\nclient_id = \"mtls\"\nauth_method = \"tls_client_auth\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\nscopes = [\"read\"]\n{}\n",
            creds.path(&format!("{cert}.pem")).display(),
            creds.path(&format!("{cert}.key")).display(),
            ca.map(|c| format!("ca_file = \"{}\"", creds.path(c).display())).unwrap_or_default()
        )
    };
    let body = [
        source("mtls", "mtls", Some("ca.pem")),
        source("untrusted", "mtls", None),
        // A certificate the server's CA did not issue: the server refuses it.
        source("impostor", "stranger", Some("ca.pem")),
    ]
    .concat();
    let d = daemon(&body).start().await;
    let r = wait_for_status(&d, "/v1/tokens/mtls", 200).await;
    let claims = server
        .verify(r.json()["access_token"].as_str().unwrap())
        .await
        .unwrap_or_else(|e| panic!("the server rejects the token tokend serves: {e}"));
    assert_eq!(claims["client_id"], "mtls");
    // Without ca_file the private CA is not trusted: a TLS error that says so.
    wait_for_status(&d, "/v1/tokens/untrusted", 503).await;
    let st = d.get("/v1/sources/untrusted").await.json();
    assert_eq!(st["last_error"]["error"], "connect_failed", "{st}");
    let msg = st["last_error"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("certificate"), "{msg}");
    wait_for_status(&d, "/v1/tokens/impostor", 503).await;
    let st = d.get("/v1/sources/impostor").await.json();
    assert_eq!(st["last_error"]["error"], "invalid_client", "{st}");
}

#[tokio::test]
async fn an_x509_v1_client_certificate_is_presented_and_the_server_judges_it() {
    let server = OidcServer::start_with_credentials(300).await;
    let creds = server.creds.as_ref().unwrap();
    let tls_port = server.tls_port.expect("the HTTPS listener");
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(creds.path("mtls-v1.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Version: 1 (0x0)"),
        "not a v1 certificate:\n{text}"
    );
    let source = |name: &str, cert: &str, key: &str| {
        format!(
            "[sources.{name}]\ntoken_url = \"https://127.0.0.1:{tls_port}/token\"\nclient_id = \"mtls\"\nauth_method = \"tls_client_auth\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\nscopes = [\"read\"]\nca_file = \"{}\"\n",
            creds.path(cert).display(),
            creds.path(key).display(),
            creds.path("ca.pem").display(),
        )
    };
    let body = [
        source("v1", "mtls-v1.pem", "mtls-v1.key"),
        // A key that is not the certificate's: named before any handshake.
        source("mismatch", "mtls-v1.pem", "stranger.key"),
    ]
    .concat();
    let d = daemon(&body).start().await;
    let r = wait_for_status(&d, "/v1/tokens/v1", 200).await;
    let claims = server
        .verify(r.json()["access_token"].as_str().unwrap())
        .await
        .unwrap_or_else(|e| panic!("the server rejects the token tokend serves: {e}"));
    assert_eq!(claims["client_id"], "mtls");
    wait_for_status(&d, "/v1/tokens/mismatch", 503).await;
    let st = d.get("/v1/sources/mismatch").await.json();
    assert_eq!(st["last_error"]["error"], "credential_unusable", "{st}");
    let msg = st["last_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("stranger.key")
            && msg.contains("mtls-v1.pem")
            && msg.contains("does not belong"),
        "{msg}"
    );
    assert!(!d.log().contains("builder error"), "{}", d.log());
}

/// `ca_file` behind a link re-pointed from a wrong CA to the right one:
/// the unknown-CA error names ca_file, and the rotation applies at once.
#[tokio::test]
async fn a_rotated_ca_file_applies_at_once_and_an_unknown_ca_names_ca_file() {
    let server = OidcServer::start_with_credentials(300).await;
    let creds = server.creds.as_ref().unwrap();
    let tls_port = server.tls_port.expect("the HTTPS listener");
    let trust = tempfile::tempdir().unwrap();
    for (dir, ca) in [("wrong", "stranger.pem"), ("right", "ca.pem")] {
        std::fs::create_dir(trust.path().join(dir)).unwrap();
        std::fs::copy(creds.path(ca), trust.path().join(dir).join("ca.pem")).unwrap();
    }
    std::os::unix::fs::symlink("wrong", trust.path().join("current")).unwrap();
    let body = format!(
        "[sources.rot]\ntoken_url = \"https://127.0.0.1:{tls_port}/token\"\nclient_id = \"mtls\"\nauth_method = \"tls_client_auth\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\nscopes = [\"read\"]\nca_file = \"{}\"\n",
        creds.path("mtls.pem").display(),
        creds.path("mtls.key").display(),
        trust.path().join("current/ca.pem").display(),
    );
    let d = daemon(&body).start().await;
    wait_for_status(&d, "/v1/tokens/rot", 503).await;
    let st = d.get("/v1/sources/rot").await.json();
    assert_eq!(st["last_error"]["error"], "connect_failed", "{st}");
    assert!(
        st["last_error"]["hint"]
            .as_str()
            .unwrap()
            .contains("set ca_file"),
        "{st}"
    );
    let tmp = trust.path().join("next");
    std::os::unix::fs::symlink("right", &tmp).unwrap();
    std::fs::rename(&tmp, trust.path().join("current")).unwrap();
    let r = wait_for_status(&d, "/v1/tokens/rot", 200).await;
    server
        .verify(r.json()["access_token"].as_str().unwrap())
        .await
        .expect("a token the server issued");
}

#[tokio::test]
async fn issuer_discovery_finds_the_token_endpoint() {
    let server = OidcServer::start(300).await;
    let body = format!(
        "[sources.found]\nissuer = \"{}\"\nclient_id = \"basic\"\nclient_secret = {{ env = \"S\" }}\nscopes = [\"read\"]\n",
        server.issuer
    );
    let d = daemon(&body).env("S", BASIC_SECRET).start().await;
    let r = wait_for_status(&d, "/v1/tokens/found", 200).await;
    server
        .verify(r.json()["access_token"].as_str().unwrap())
        .await
        .expect("a token the server issued");
    // check --fetch says where discovery led.
    let (code, out, err) = check_fetch(&d.config, &[("S", BASIC_SECRET)]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "found: token endpoint {} (discovered from issuer {}",
            server.token_url(),
            server.issuer
        )),
        "{out}"
    );
}
