//! The real Azure SDKs as clients of the managed-identity endpoint and of
//! the IMDS door: azure-identity and MSAL (Python, from PyPI, in a venv the
//! harness makes) and @azure/identity (JavaScript, from npm), each run as
//! an unmodified program with only the variables its users set
//! (IDENTITY_ENDPOINT and IDENTITY_HEADER for App Service's protocol,
//! AZURE_POD_IDENTITY_AUTHORITY_HOST or nothing at all for IMDS).
//! Versions are pinned in tests/azure/requirements.txt and
//! package-lock.json.

mod common;

use common::mi::{config, free_port, GRAPH, VAULT};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

fn azure_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azure")
}

static INSTALL: Mutex<()> = Mutex::new(());

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: {e} (install python3 with venv and pip, and Node.js with npm)")
    });
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, with azure-identity as pinned.
fn python() -> PathBuf {
    pinned_venv("azure-identity", &azure_dir().join("requirements.txt"))
}

/// Installs @azure/identity (npm ci) once.
fn node_sdk() {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !azure_dir()
        .join("node_modules/@azure/identity/package.json")
        .exists()
    {
        run_ok(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(azure_dir()),
            "npm ci in tests/azure",
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    JavaScript,
}

/// What the SDK returned: `Ok((token, expires_on))` or `Err((class, message))`.
type Got = Result<(String, u64), (String, String)>;

/// Runs the SDK script as an unmodified program would run: a clean
/// environment with only the managed-identity variables.
async fn get_token(
    sdk: Sdk,
    port: u16,
    header: &str,
    credential: &str,
    scope: &str,
    client_id: Option<&str>,
) -> Got {
    let env = [
        (
            "IDENTITY_ENDPOINT",
            format!("http://127.0.0.1:{port}/msi/token"),
        ),
        ("IDENTITY_HEADER", header.to_string()),
    ];
    run_sdk(sdk, &[], &env, &[credential, scope], client_id).await
}

/// Runs the SDK script with `args` (and `client_id`) in a clean
/// environment holding only `env`, inside `wrap` (a command prefix such as
/// `ip netns exec NS`, or none).
async fn run_sdk(
    sdk: Sdk,
    wrap: &[&str],
    env: &[(&str, String)],
    args: &[&str],
    client_id: Option<&str>,
) -> Got {
    let (program, script) = match sdk {
        Sdk::Python => {
            let python = tokio::task::spawn_blocking(python).await.unwrap();
            (python, azure_dir().join("sdk.py"))
        }
        Sdk::JavaScript => {
            tokio::task::spawn_blocking(node_sdk).await.unwrap();
            (PathBuf::from("node"), azure_dir().join("sdk.mjs"))
        }
    };
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.arg(script)
        .args(args)
        .args(client_id)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let j: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{sdk:?} printed {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match j["token"].as_str() {
        Some(t) => Ok((t.to_string(), j["expires_on"].as_u64().unwrap())),
        None => Err((
            j["error"].as_str().unwrap_or_default().to_string(),
            j["message"].as_str().unwrap_or_default().to_string(),
        )),
    }
}

async fn sdk_cases(sdk: Sdk) {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&idp, port, dir.path());
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let held = |name: &'static str| {
        let d = &d;
        async move {
            let j = wait_for_status(d, &format!("/v1/tokens/{name}"), 200)
                .await
                .json();
            let at = tokend::timefmt::parse_rfc3339(j["expires_at"].as_str().unwrap()).unwrap();
            let at = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            (j["access_token"].as_str().unwrap().to_string(), at)
        }
    };
    let graph_scope = format!("{GRAPH}/.default");
    let (graph, graph_exp) = held("graph").await;

    // ManagedIdentityCredential and DefaultAzureCredential: the token tokend holds.
    for credential in ["managed", "default"] {
        let got = get_token(
            sdk,
            port,
            "jira-header-value",
            credential,
            &graph_scope,
            None,
        )
        .await;
        let (token, expires_on) = got.unwrap_or_else(|e| panic!("{sdk:?} {credential}: {e:?}"));
        assert_eq!(token, graph, "{sdk:?} {credential}");
        assert!(
            expires_on.abs_diff(graph_exp) <= 2,
            "{sdk:?} {credential}: {expires_on} vs {graph_exp}"
        );
    }
    // A user-assigned identity, chosen by client_id.
    let (vault2, _) = held("vault2").await;
    let got = get_token(
        sdk,
        port,
        "billing-header-value",
        "managed",
        &format!("{VAULT}/.default"),
        Some("vault2"),
    )
    .await;
    assert_eq!(got.map(|g| g.0), Ok(vault2), "{sdk:?} user-assigned");

    // A wrong header: the SDK raises its credential error.
    let got = get_token(sdk, port, "not-the-header", "managed", &graph_scope, None).await;
    let (class, message) = got.expect_err("a wrong header must not get a token");
    assert!(
        class.contains("Credential") || class.contains("Authentication"),
        "{sdk:?}: {class}: {message}"
    );
    // billing may not have graph: an error that names what it can get.
    let got = get_token(
        sdk,
        port,
        "billing-header-value",
        "managed",
        &graph_scope,
        None,
    )
    .await;
    let (class, message) = got.expect_err("app billing must not get graph's token");
    assert!(
        message.contains("app billing can get"),
        "{sdk:?}: {class}: {message}"
    );

    // A resource no source serves: the same kind of error.
    let got = get_token(
        sdk,
        port,
        "jira-header-value",
        "managed",
        "https://storage.azure.com/.default",
        None,
    )
    .await;
    let (class, message) = got.expect_err("no source serves storage");
    assert!(
        message.contains(&format!("app jira can get: {GRAPH}, {VAULT}")),
        "{sdk:?}: {class}: {message}"
    );

    // The IdP down with a cached token: the SDK still gets it.
    idp.fail_with(Some(Failure {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    }));
    assert_eq!(
        d.request(hyper::Method::POST, "/v1/sources/graph/refresh")
            .await
            .status(),
        502
    );
    let got = get_token(
        sdk,
        port,
        "jira-header-value",
        "managed",
        &graph_scope,
        None,
    )
    .await;
    assert_eq!(got.map(|g| g.0), Ok(graph), "{sdk:?} while the IdP is down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity() {
    sdk_cases(Sdk::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_azure_identity() {
    sdk_cases(Sdk::JavaScript).await;
}

/// The token of `name` tokend holds, and its expiry in epoch seconds.
async fn held(d: &Daemon, name: &str) -> (String, u64) {
    let j = wait_for_status(d, &format!("/v1/tokens/{name}"), 200)
        .await
        .json();
    let at = tokend::timefmt::parse_rfc3339(j["expires_at"].as_str().unwrap()).unwrap();
    let at = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    (j["access_token"].as_str().unwrap().to_string(), at)
}

/// The SDK's credentials against the IMDS door, reached through
/// `wrap` with `env`: the token tokend holds for the system-assigned
/// case, a user-assigned identity by client_id, and an unknown resource
/// refused with what can be got.
async fn imds_cases(
    sdk: Sdk,
    credentials: &[&str],
    d: &Daemon,
    wrap: &[&str],
    env: &[(&str, String)],
) {
    let graph_scope = format!("{GRAPH}/.default");
    let (graph, graph_exp) = held(d, "graph").await;
    for credential in credentials {
        let got = run_sdk(sdk, wrap, env, &[credential, &graph_scope], None).await;
        let (token, expires_on) = got.unwrap_or_else(|e| panic!("{sdk:?} {credential}: {e:?}"));
        assert_eq!(token, graph, "{sdk:?} {credential}");
        assert!(
            expires_on.abs_diff(graph_exp) <= 2,
            "{sdk:?} {credential}: {expires_on} vs {graph_exp}"
        );
    }
    let (vault2, _) = held(d, "vault2").await;
    let vault_scope = format!("{VAULT}/.default");
    for credential in credentials.iter().filter(|c| **c != "default") {
        let got = run_sdk(sdk, wrap, env, &[credential, &vault_scope], Some("vault2")).await;
        assert_eq!(
            got.map(|g| g.0),
            Ok(vault2.clone()),
            "{sdk:?} {credential} user-assigned"
        );
    }
    let got = run_sdk(
        sdk,
        wrap,
        env,
        &[credentials[0], "https://storage.azure.com/.default"],
        None,
    )
    .await;
    let (class, message) = got.expect_err("no source serves storage");
    assert!(
        message.contains("this caller can get"),
        "{sdk:?}: {class}: {message}"
    );
}

/// The IMDS door with graph, vault and vault2 on 127.0.0.1.
async fn imds_daemon() -> (DevIdp, Daemon, u16) {
    let idp = idp(S(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let d = daemon(&common::mi::imds_config(&idp, port, ""))
        .start()
        .await;
    (idp, d, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_and_msal_through_the_imds_door() {
    let (_idp, d, port) = imds_daemon().await;
    let env = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://127.0.0.1:{port}"),
    )];
    imds_cases(Sdk::Python, &["managed", "default", "msal"], &d, &[], &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_azure_identity_through_the_imds_door() {
    let (_idp, d, port) = imds_daemon().await;
    let env = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://127.0.0.1:{port}"),
    )];
    imds_cases(Sdk::JavaScript, &["managed", "default"], &d, &[], &env).await;
}

/// As on an Azure VM: in a network namespace where 169.254.169.254 is on
/// `lo` and the door listens there (tokend and its IdP inside), the SDKs
/// find tokend with no setting at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_setting_at_all_where_169_254_169_254_is_local() {
    if !common::others::root_or_skip("with_no_setting_at_all_where_169_254_169_254_is_local") {
        return;
    }
    let ns = common::others::NetNs::new("imds");
    let listener = ns.listen("127.0.0.1:0");
    listener.set_nonblocking(true).unwrap();
    let idp = DevIdp::serve(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        S(3600),
    )
    .unwrap();
    for client in ["graph", "vault", "vault2"] {
        idp.add_client(client, SECRET);
    }
    let body = common::mi::imds_config(&idp, 80, "").replace("127.0.0.1:80", "169.254.169.254:80");
    let d = daemon(&body).netns(&ns.path).start().await;
    let wrap = ns.exec();
    imds_cases(Sdk::Python, &["managed", "default", "msal"], &d, &wrap, &[]).await;
    imds_cases(Sdk::JavaScript, &["managed"], &d, &wrap, &[]).await;
}
