//! The managed-identity setup the endpoint tests share: a free port and a
//! config with two apps.

use super::{source, write_private, DevIdp};

pub const GRAPH: &str = "https://graph.microsoft.com";
pub const VAULT: &str = "https://vault.azure.net";

/// A free port on 127.0.0.1 for the endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two apps: `jira` may use graph and vault, `billing` only vault2 (a
/// second identity for vault).
pub fn config(idp: &DevIdp, port: u16, dir: &std::path::Path) -> String {
    write_private(&dir.join("jira.key"), "jira-header-value\n");
    write_private(&dir.join("billing.key"), "billing-header-value\n");
    format!(
        "{}{}{}[managed_identity]\nlisten = \"127.0.0.1:{port}\"\n[managed_identity.apps.jira]\nheader = {{ file = \"{}\" }}\nsources = [\"graph\", \"vault\"]\n[managed_identity.apps.billing]\nheader = {{ file = \"{}\" }}\nsources = [\"vault\", \"vault2\"]\n",
        source("graph", idp, &format!("scopes = [\"{GRAPH}/.default\"]")),
        source("vault", idp, &format!("scopes = [\"{VAULT}/.default\"]")),
        source("vault2", idp, &format!("scopes = [\"{VAULT}/.default\"]")),
        dir.join("jira.key").display(),
        dir.join("billing.key").display(),
    )
}

/// The IMDS door on `port` offering graph, vault and vault2 (a second
/// identity for vault), with `extra` lines in each source.
pub fn imds_config(idp: &DevIdp, port: u16, extra: &str) -> String {
    format!(
        "{}{}{}[imds]\nlisten = \"127.0.0.1:{port}\"\nsources = [\"graph\", \"vault\", \"vault2\"]\n",
        source("graph", idp, &format!("scopes = [\"{GRAPH}/.default\"]\n{extra}")),
        source("vault", idp, &format!("scopes = [\"{VAULT}/.default\"]\n{extra}")),
        source("vault2", idp, &format!("scopes = [\"{VAULT}/.default\"]\n{extra}")),
    )
}

/// A GET on a TCP door at `url` with `headers`: the status and JSON body.
pub async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

/// The query `api-version=VERSION&resource=RESOURCE`, encoded.
pub fn query(version: &str, resource: &str) -> String {
    format!(
        "api-version={version}&resource={}",
        url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>()
    )
}
