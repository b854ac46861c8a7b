//! The IMDS door (docs/imds.md): Azure's instance-metadata token protocol,
//! answered from tokend's sources, with every error as IMDS gives it. Real
//! clients (the Azure SDKs, MSAL) are in tests/azure_sdk.rs; callers of
//! other uids in tests/access.rs.

mod common;

use common::mi::{free_port, imds_config, GRAPH, VAULT};
use common::*;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// A request to the door: status and JSON body.
async fn imds_get(port: u16, path: &str, query: &str, metadata: bool) -> (u16, serde_json::Value) {
    let headers: &[(&str, &str)] = if metadata {
        &[("Metadata", "true")]
    } else {
        &[]
    };
    common::mi::get_json(&format!("http://127.0.0.1:{port}{path}?{query}"), headers).await
}

const PATH: &str = "/metadata/identity/oauth2/token";

fn q(resource: &str) -> String {
    common::mi::query("2018-02-01", resource)
}

/// A probe without `Metadata: true` is answered 400 at once, as IMDS
/// answers it, and fetches nothing: the lazy source's IdP, slowed to 30 s,
/// is never asked.
#[tokio::test]
async fn a_request_without_the_metadata_header_is_a_400_and_fetches_nothing() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    idp.set_delay(S(30));
    let port = free_port();
    let d = daemon(&imds_config(&idp, port, "eager = false"))
        .start()
        .await;
    wait_for_status(&d, "/readyz", 200).await;
    for path in [
        PATH,
        "/metadata/identity/oauth2/token/",
        "/metadata/instance",
    ] {
        let (status, j) = imds_get(port, path, &q(GRAPH), false).await;
        assert_eq!(status, 400, "{path}: {j}");
        assert_eq!(
            j,
            serde_json::json!({
                "error": "invalid_request",
                "error_description": "Required metadata header not specified"
            }),
            "{path}"
        );
    }
    assert_eq!(idp.requests(), 0, "nothing was fetched");
}

/// The answer has every field IMDS sends, each a string, for the token
/// tokend holds; the path with a trailing `/`, any api-version, and a
/// resource written as a scope or with a trailing `/` are all the same.
#[tokio::test]
async fn a_token_in_the_imds_shape() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let d = daemon(&imds_config(&idp, port, "")).start().await;
    let held = wait_for_status(&d, "/v1/tokens/graph", 200).await.json();

    let (status, j) = imds_get(port, PATH, &q(GRAPH), true).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["access_token"], held["access_token"]);
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["resource"], GRAPH);
    assert_eq!(j["client_id"], "graph");
    assert_eq!(j["refresh_token"], "");
    for field in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
        let v = j[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string: {j}"));
        assert!(v.parse::<u64>().is_ok(), "{field}: {v}");
    }
    let expires_on: u64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    let at = tokend::timefmt::parse_rfc3339(held["expires_at"].as_str().unwrap()).unwrap();
    let at = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expires_on.abs_diff(at) <= 1, "{expires_on} vs {at}");
    let expires_in: u64 = j["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(j["ext_expires_in"], j["expires_in"]);
    let not_before: u64 = j["not_before"].as_str().unwrap().parse().unwrap();
    assert!(not_before <= expires_on - 3500, "{not_before}");

    for (path, query) in [
        ("/metadata/identity/oauth2/token/", q(GRAPH)),
        (PATH, q(&format!("{GRAPH}/"))),
        (PATH, q(&format!("{GRAPH}/.default"))),
        (PATH, q(GRAPH).replace("2018-02-01", "2019-08-01")),
    ] {
        let (status, j) = imds_get(port, path, &query, true).await;
        assert_eq!(status, 200, "{path}?{query}: {j}");
        assert_eq!(j["access_token"], held["access_token"], "{path}?{query}");
    }
    // A second identity for a resource, chosen by client_id.
    let (status, j) = imds_get(port, PATH, &format!("{}&client_id=vault2", q(VAULT)), true).await;
    assert_eq!(
        (status, j["client_id"].as_str()),
        (200, Some("vault2")),
        "{j}"
    );
    assert!(d
        .get("/metrics")
        .await
        .text()
        .contains("tokend_token_requests_total{source=\"graph\",outcome=\"ok\"}"));
}

/// Every refusal is IMDS's `{"error", "error_description"}` with the
/// status IMDS gives it, and says what to change.
#[tokio::test]
async fn every_refusal_is_an_imds_error_that_says_what_to_change() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let d = daemon(&imds_config(&idp, port, "")).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    let cases: [(&str, String, u16, &str, &str); 6] = [
        (PATH, "api-version=2018-02-01".into(), 400, "invalid_request", "Required audience parameter not specified"),
        (PATH, format!("resource={GRAPH}"), 400, "invalid_request", "Required api-version parameter not specified"),
        (PATH, q("https://storage.azure.com"), 400, "invalid_resource", "this caller can get: https://graph.microsoft.com, https://vault.azure.net, https://vault.azure.net"),
        (PATH, q(VAULT), 400, "invalid_request", "pass client_id (AZURE_CLIENT_ID, ARM_CLIENT_ID) to choose one of vault, vault2"),
        (PATH, format!("{}&object_id=0000", q(GRAPH)), 400, "invalid_request", "Identity not found: tokend tells identities apart by client_id, not object_id"),
        ("/metadata/instance", "api-version=2021-02-01".into(), 404, "not_found", "the only path is /metadata/identity/oauth2/token"),
    ];
    for (path, query, status, error, says) in cases {
        let (got, j) = imds_get(port, path, &query, true).await;
        assert_eq!(got, status, "{path}?{query}: {j}");
        assert_eq!(j["error"], error, "{path}?{query}: {j}");
        let description = j["error_description"].as_str().unwrap();
        assert!(description.contains(says), "{path}?{query}: {description}");
        assert_eq!(
            j.as_object().unwrap().len(),
            2,
            "only IMDS's two fields: {j}"
        );
    }
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{PATH}?{}", q(GRAPH)))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // A page that rebinds a name to 127.0.0.1 gets nothing either.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{PATH}?{}", q(GRAPH)))
        .header("Metadata", "true")
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
}

/// A source that backs off answers 503 with Retry-After, which the SDKs
/// retry, rather than a 404 or 410 that would send them into long waits.
#[tokio::test]
async fn a_source_backing_off_is_a_503_with_retry_after() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    idp.fail_with(Some(Failure {
        status: 500,
        body: "{}".into(),
        retry_after: None,
    }));
    let port = free_port();
    let d = daemon(&imds_config(&idp, port, "")).start().await;
    wait_for_status(&d, "/readyz", 503).await;
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{PATH}?{}", q(GRAPH)))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let j: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(j.as_object().unwrap().len(), 2, "{j}");
}

/// `[imds] sources` change on reload, like the sources themselves.
#[tokio::test]
async fn offered_sources_change_on_reload() {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let d = daemon(&imds_config(&idp, port, "")).start().await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    assert_eq!(imds_get(port, PATH, &q(GRAPH), true).await.0, 200);
    write_private(
        &d.config,
        &d.config_text().replace(
            "sources = [\"graph\", \"vault\", \"vault2\"]",
            "sources = [\"vault\", \"vault2\"]",
        ),
    );
    let (status, j) = eventually("graph to be withdrawn", async || {
        let (status, j) = imds_get(port, PATH, &q(GRAPH), true).await;
        (status == 400).then_some((status, j))
    })
    .await;
    assert_eq!(status, 400);
    assert_eq!(j["error"], "invalid_resource", "{j}");
}
