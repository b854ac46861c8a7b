//! Certificate and federated credentials end to end, against a token
//! endpoint on 127.0.0.1 that checks client assertions as Entra ID does.

mod common;

use base64::Engine;
use common::entra::EntraDouble;
use common::*;
use std::path::Path;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// An Entra source named `name` for `client_id` with a certificate.
fn entra_cert_source(
    name: &str,
    client_id: &str,
    entra: &EntraDouble,
    cert: &Path,
    key: &Path,
) -> String {
    format!(
        "[sources.{name}]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"{}\"\nclient_id = \"{client_id}\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\n",
        entra.authority(),
        cert.display(),
        key.display()
    )
}

fn header_of(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_entra_certificate_source_gets_tokens_and_an_unregistered_one_gets_the_hint() {
    let entra = EntraDouble::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(keys.path(), "app", "rsa");
    let (stranger, stranger_key) = make_cert(keys.path(), "stranger", "rsa");
    entra.register("app-id", &cert);
    let body = [
        entra_cert_source("graph", "app-id", &entra, &cert, &key),
        entra_cert_source("unregistered", "app-id", &entra, &stranger, &stranger_key),
    ]
    .concat();
    let d = daemon(&body).start().await;
    let r = wait_for_status(&d, "/v1/tokens/graph", 200).await;
    assert!(r.json()["access_token"]
        .as_str()
        .unwrap()
        .starts_with("entra-token-"));
    let first = entra.assertions().into_iter().find(|a| {
        header_of(a)["x5t#S256"] == tokend::cert::Certificate::load(&cert).unwrap().x5t_s256()
    });
    let header = header_of(&first.unwrap());
    assert_eq!(header["alg"], "PS256", "Entra's default");
    assert!(header["x5t"].is_string(), "Entra reads x5t: {header}");

    // A certificate the app registration does not have: Entra's AADSTS700027, with its hint.
    let r = wait_for_status(&d, "/v1/tokens/unregistered", 503).await;
    let j = r.json();
    assert!(
        j["message"].as_str().unwrap().contains("AADSTS700027"),
        "{j}"
    );
    assert!(
        j["hint"]
            .as_str()
            .unwrap()
            .contains("the certificate is not registered on the app registration"),
        "{j}"
    );
    // A forced refresh signs a new assertion (a new jti), which Entra accepts.
    let r = d
        .request(hyper::Method::POST, "/v1/sources/graph/refresh")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(entra.issued(), 2);
    assert!(
        !d.log().contains("BEGIN"),
        "no key or certificate material in the log"
    );
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_a_clear_error_before_any_request() {
    let entra = EntraDouble::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (cert, _key) = make_cert(keys.path(), "app", "rsa");
    let (_other, other_key) = make_cert(keys.path(), "other", "rsa");
    entra.register("app-id", &cert);
    let d = daemon(&entra_cert_source(
        "graph", "app-id", &entra, &cert, &other_key,
    ))
    .start()
    .await;
    let st = wait_until(&d, |doc| !doc["sources"][0]["last_error"].is_null()).await;
    let e = &st["sources"][0]["last_error"];
    assert_eq!(e["error"], "credential_unusable", "{st}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "the key in file {} does not belong to certificate {}",
            other_key.display(),
            cert.display()
        )),
        "{msg}"
    );
    assert!(entra.assertions().is_empty(), "nothing was sent");
    // The certificate's notAfter is the credential's expiry.
    assert!(
        st["sources"][0]["credential_expires_at"].is_string(),
        "{st}"
    );
}

#[tokio::test]
async fn check_fetch_shows_the_certificate_and_probes_with_every_credential_kind() {
    let entra = EntraDouble::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(keys.path(), "tokend-check", "ec");
    entra.register("app-id", &cert);
    entra.federate("wi-app");
    let assertion = keys.path().join("assertion");
    write_private(&assertion, &federated_token(4_000_000_000, 1));
    let path = keys.path().join("tokend.toml");
    let probe = format!("probe_url = \"{}\"\n", entra.probe_url());
    write_private(
        &path,
        &format!(
            "{}{probe}[sources.wi]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"{}\"\nclient_id = \"wi-app\"\nclient_assertion = {{ file = \"{}\" }}\n{probe}",
            entra_cert_source("graph", "app-id", &entra, &cert, &key),
            entra.authority(),
            assertion.display()
        ),
    );
    let (code, out, err) = check_fetch(&path, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let c = tokend::cert::Certificate::load(&cert).unwrap();
    assert!(
        out.contains(&format!(
            "graph: certificate {}: CN=tokend-check, thumbprint {}, valid until {}",
            cert.display(),
            c.sha1_hex(),
            tokend::timefmt::rfc3339(c.not_after)
        )),
        "{out}"
    );
    assert!(out.contains("graph: ok, lifetime 59m 59s"), "{out}");
    // probe_url is called with the token, whatever the credential.
    assert_eq!(
        out.matches(&format!("probe {}: HTTP 200", entra.probe_url()))
            .count(),
        2,
        "{out}"
    );
}

/// A JWT as a Kubernetes projected service-account token looks, expiring at `exp`.
fn federated_token(exp: u64, n: u32) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig{n}",
        e.encode(r#"{"alg":"RS256","kid":"k8s"}"#),
        e.encode(format!(r#"{{"iss":"https://k8s.example","sub":"system:serviceaccount:ns:app","aud":"api://AzureADTokenExchange","exp":{exp}}}"#))
    )
}

#[tokio::test]
async fn a_federated_assertion_file_is_read_afresh_and_an_expired_one_is_refused() {
    let entra = EntraDouble::start().await;
    entra.federate("wi-app");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    write_private(&file, &federated_token(in_an_hour, 1));
    let body = format!(
        "[sources.wi]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"{}\"\nclient_id = \"wi-app\"\nclient_assertion = {{ file = \"{}\" }}\n",
        entra.authority(),
        file.display()
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/wi", 200).await;
    assert_eq!(entra.assertions(), vec![federated_token(in_an_hour, 1)]);

    // The projected token is rotated: the next fetch sends the new one.
    write_private(&file, &format!("{}\n", federated_token(in_an_hour + 60, 2)));
    eventually_within(S(10), "a fetch with the rotated assertion", async || {
        (entra.assertions().last() == Some(&federated_token(in_an_hour + 60, 2))).then_some(())
    })
    .await;

    // One whose exp has passed is refused with a clear error, not sent.
    write_private(&file, &federated_token(1_000_000_000, 3));
    let st = wait_until(&d, |doc| !doc["sources"][0]["last_error"].is_null()).await;
    let msg = st["sources"][0]["last_error"]["message"].as_str().unwrap();
    assert!(msg.contains("expired at 2001-09-09T01:46:40Z"), "{msg}");
    assert_eq!(
        entra.assertions().len(),
        2,
        "the expired assertion was not sent"
    );
    // The token from the good assertion is still served.
    assert_eq!(d.get("/v1/tokens/wi").await.status(), 200);
}
