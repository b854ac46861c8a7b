//! Zero-code clients: real tools and SDKs that run a credential program get
//! their token from `tokend credential`, and send it to a loopback server
//! that records what arrived. kubectl (on this machine's image; skipped
//! with a message when absent), the PyPI `kubernetes` client, git (Debian's
//! 2.39 with Basic, and a git of 2.46 or later with Bearer when present),
//! google-auth, and boto3 (no helper: a raw file sink). Client versions are
//! pinned in tests/clients/*.txt; the servers are tests/clients/servers.py.

mod common;

use common::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A venv's python with the pinned requirements `reqs` of tests/clients.
fn python(name: &str, reqs: &str) -> PathBuf {
    pinned_venv(name, &clients_dir().join(reqs))
}

/// One of tests/clients/servers.py's servers; killed on drop.
struct Server {
    child: Child,
    port: u16,
    record: PathBuf,
}

impl Server {
    fn start(dir: &Path, mode: &str, args: &[&Path]) -> Server {
        let record = dir.join(format!("{mode}.jsonl"));
        let mut child = Command::new("python3")
            .arg(clients_dir().join("servers.py"))
            .arg(mode)
            .arg(&record)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"]
            .as_u64()
            .unwrap();
        Server {
            child,
            port: u16::try_from(port).unwrap(),
            record,
        }
    }

    /// Every request it recorded.
    fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon with source `k` (the dev IdP's JWT-shaped tokens) and its
/// current token.
async fn daemon_with_token() -> (Daemon, String) {
    let idp = Box::leak(Box::new(idp(S(3600), &["k"]).await));
    let d = daemon(&source("k", idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/k?format=raw", 200)
        .await
        .text();
    (d, token)
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn kubeconfig(dir: &Path, port: u16, api_version: &str, source: &str, socket: &Path) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{api_version}-{source}"));
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:{port}
    insecure-skip-tls-verify: true
users:
- name: tokend
  user:
    exec:
      apiVersion: client.authentication.k8s.io/{api_version}
      command: {}
      args: [credential, kubectl, {source}, --socket, {}]
      interactiveMode: Never
contexts:
- name: test
  context: {{cluster: test, user: tokend}}
current-context: test
",
        env!("CARGO_BIN_EXE_tokend"),
        socket.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// kubectl and the Python kubernetes client run `tokend credential kubectl`
/// as their exec plugin (v1 and v1beta1) and send its token; a source
/// tokend does not have makes them fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_the_kubernetes_client_send_the_daemons_token() {
    let (d, token) = daemon_with_token().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "apiserver", "rsa");
    let api = Server::start(dir.path(), "apiserver", &[&cert, &key]);
    let bearer = serde_json::json!(format!("Bearer {token}"));
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
    {
        let kubectl = |k: &Path| {
            tokio::task::block_in_place(|| {
                output(
                    Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(k)
                        .args(["get", "--raw", "/version"]),
                )
            })
        };
        for version in ["v1", "v1beta1"] {
            let (ok, out) = kubectl(&kubeconfig(dir.path(), api.port, version, "k", &d.socket));
            assert!(
                ok && out.contains("v1.32.0-tokend-test"),
                "kubectl {version}: {out}"
            );
            assert_eq!(api.seen().last().unwrap()["authorization"], bearer);
        }
        let (ok, out) = kubectl(&kubeconfig(dir.path(), api.port, "v1", "nope", &d.socket));
        assert!(!ok, "{out}");
        assert!(out.contains("source nope: unknown_source"), "{out}");
    } else {
        eprintln!("kubectl is not installed: its part of this test is skipped");
    }
    let python = python("kubernetes-google", "kubernetes-google.txt");
    let clients = clients_dir().join("clients.py");
    // The Python client with a kubeconfig for `source`.
    let client_with = |source: &str| {
        let k = kubeconfig(dir.path(), api.port, "v1", source, &d.socket);
        tokio::task::block_in_place(|| {
            output(
                Command::new(&python)
                    .arg(&clients)
                    .arg("kubernetes")
                    .arg(&k),
            )
        })
    };
    let before = api.seen().len();
    let (ok, out) = client_with("k");
    assert!(ok && out.contains("v1.32.0-tokend-test"), "{out}");
    let seen = api.seen();
    assert!(seen.len() > before);
    assert_eq!(seen.last().unwrap()["authorization"], bearer);
    let (ok, out) = client_with("nope");
    assert!(!ok, "{out}");
}

/// A bare repository with one commit, in `root/repo.git`.
fn bare_repo(root: &Path) {
    let work = root.join("work");
    let git = |args: &[&str], at: &Path| {
        let out = Command::new("/usr/bin/git")
            .args(args)
            .current_dir(at)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", root)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "cloned through tokend\n").unwrap();
    git(&["add", "README"], &work);
    git(
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "one",
        ],
        &work,
    );
    git(&["clone", "-q", "--bare", "work", "repo.git"], root);
}

/// `git clone` over https from a server that demands credentials, with
/// `tokend credential git` as the only helper.
fn clone_with(git: &str, port: u16, source: &str, socket: &Path, into: &Path) -> (bool, String) {
    let helper = format!(
        "!{} credential git {source} --socket {}",
        env!("CARGO_BIN_EXE_tokend"),
        socket.display()
    );
    output(
        Command::new(git)
            .args(["-c", "http.sslVerify=false", "-c", "credential.helper="])
            .arg("-c")
            .arg(format!("credential.helper={helper}"))
            .args(["clone", "-q"])
            .arg(format!("https://127.0.0.1:{port}/repo.git"))
            .arg(into)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", into.parent().unwrap())
            .stdin(Stdio::null()),
    )
}

fn git_version(git: &str) -> Option<(u32, u32)> {
    let out = Command::new(git).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut v = text.split_whitespace().nth(2)?.split('.');
    Some((v.next()?.parse().ok()?, v.next()?.parse().ok()?))
}

/// git clones through the helper: Debian's git 2.39 gets the token as a
/// Basic password, a git of 2.46 or later as a Bearer credential. A source
/// tokend does not have answers nothing, and the clone fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clones_with_the_daemons_token_as_basic_or_bearer() {
    let (d, token) = daemon_with_token().await;
    let dir = tempfile::tempdir().unwrap();
    bare_repo(dir.path());
    let (cert, key) = make_cert(dir.path(), "git-server", "rsa");
    let server = Server::start(
        dir.path(),
        "git",
        &[&cert, &key, dir.path(), Path::new(&token)],
    );
    let mut gits = vec![("/usr/bin/git", "Basic")];
    match git_version("/usr/local/bin/git") {
        Some(v) if v >= (2, 46) => gits.push(("/usr/local/bin/git", "Bearer")),
        _ => eprintln!("no git 2.46 or later at /usr/local/bin/git: the Bearer case is skipped"),
    }
    for (git, scheme) in gits {
        let into = dir.path().join(format!("clone-{scheme}"));
        let (ok, out) =
            tokio::task::block_in_place(|| clone_with(git, server.port, "k", &d.socket, &into));
        assert!(ok, "{git}: {out}");
        assert_eq!(
            std::fs::read_to_string(into.join("README")).unwrap(),
            "cloned through tokend\n"
        );
        let seen = server.seen();
        assert!(
            seen.iter()
                .any(|r| r["scheme"] == scheme && r["ok"] == true),
            "{git}: {seen:?}"
        );
        let into = dir.path().join(format!("refused-{scheme}"));
        let (ok, out) =
            tokio::task::block_in_place(|| clone_with(git, server.port, "nope", &d.socket, &into));
        assert!(!ok, "{git}: {out}");
    }
}

/// google-auth's executable-sourced credential runs `tokend credential gcp`
/// and exchanges its token at the (loopback) STS; a source tokend does not
/// have is a failure google-auth reports with tokend's error code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_auth_exchanges_the_daemons_token() {
    let (d, token) = daemon_with_token().await;
    let dir = tempfile::tempdir().unwrap();
    let sts = Server::start(dir.path(), "sts", &[]);
    let python = python("kubernetes-google", "kubernetes-google.txt");
    let config = |source: &str| {
        let path = dir.path().join(format!("external-account-{source}.json"));
        let doc = serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/tokend/providers/tokend",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("http://127.0.0.1:{}/v1/token", sts.port),
            "credential_source": { "executable": {
                "command": format!("{} credential gcp {source} --socket {}", env!("CARGO_BIN_EXE_tokend"), d.socket.display()),
                "timeout_millis": 10000,
            }},
        });
        std::fs::write(&path, doc.to_string()).unwrap();
        path
    };
    let run = |path: PathBuf| {
        let clients = clients_dir().join("clients.py");
        output(
            Command::new(&python)
                .arg(&clients)
                .arg("google")
                .arg(path)
                .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1"),
        )
    };
    let (ok, out) = tokio::task::block_in_place(|| run(config("k")));
    assert!(ok && out.contains("sts-access-token"), "{out}");
    let form = sts.seen().last().unwrap()["form"].clone();
    assert_eq!(form["subject_token"], token.as_str());
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    let (ok, out) = tokio::task::block_in_place(|| run(config("nope")));
    assert!(!ok, "{out}");
    assert!(out.contains("unknown_source"), "{out}");
}

/// AWS needs no helper: a raw file sink is the web identity token file,
/// and boto3's AssumeRoleWithWebIdentity carries the daemon's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_assumes_a_role_with_the_sinks_token() {
    let idp = idp(S(3600), &["aws"]).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("aws.token");
    let d = daemon(&source(
        "aws",
        &idp,
        &format!("sinks = [{{ path = \"{}\" }}]", file.display()),
    ))
    .start()
    .await;
    let token = wait_for_status(&d, "/v1/tokens/aws?format=raw", 200)
        .await
        .text();
    eventually("the sink file", async || {
        std::fs::read_to_string(&file).ok()
    })
    .await;
    let sts = Server::start(out.path(), "sts", &[]);
    let python = python("aws", "aws.txt");
    let (ok, printed) = tokio::task::block_in_place(|| {
        output(
            Command::new(&python)
                .arg(clients_dir().join("clients.py"))
                .arg("aws")
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", &file)
                .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/tokend-test")
                .env("AWS_ROLE_SESSION_NAME", "tokend-test")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env(
                    "AWS_ENDPOINT_URL_STS",
                    format!("http://127.0.0.1:{}", sts.port),
                )
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_PROFILE"),
        )
    });
    assert!(ok && printed.contains("ASIATOKENDTEST"), "{printed}");
    let form = sts.seen().last().unwrap()["form"].clone();
    assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(form["WebIdentityToken"], token.as_str());
    assert_eq!(
        form["RoleArn"],
        "arn:aws:iam::123456789012:role/tokend-test"
    );
}
