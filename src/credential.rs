//! `tokend credential KIND SOURCE`: a source's token in the format a
//! tool's credential program speaks (docs/credential-helpers.md):
//! client-go's ExecCredential (kubectl), git's credential-helper protocol,
//! Google's executable-sourced credential.
//!
//! A client of the running daemon, like `tokend token`: it asks the socket
//! for the token (so the caller's uid and groups and the source's `allow`
//! apply) and never reads the config or a secret. What it prints comes
//! from the daemon's answer, checked first: a token is visible ASCII.

use crate::cli::CredentialKind;
use crate::client::call_within;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// A token from the daemon, and when it expires.
#[derive(Debug)]
struct Issued {
    token: String,
    /// RFC 3339, as the daemon wrote it.
    expires_at: String,
    /// The same, in seconds since the epoch.
    expires_epoch: u64,
}

/// Why no token: the daemon's error code and message (or the client's).
#[derive(Debug)]
struct Refused {
    code: String,
    message: String,
}

/// Asks the daemon at `socket` for `source`'s token.
async fn fetch(socket: &Path, source: &str, timeout: Duration) -> Result<Issued, Refused> {
    let name: String = url::form_urlencoded::byte_serialize(source.as_bytes()).collect();
    let resp = call_within(
        socket,
        hyper::Method::GET,
        &format!("/v1/tokens/{name}"),
        timeout,
    )
    .await
    .map_err(|e| Refused {
        code: "daemon_unreachable".into(),
        message: e.to_string(),
    })?;
    let status = resp.status();
    let body: Value = serde_json::from_slice(resp.body()).map_err(|_| Refused {
        code: "bad_answer".into(),
        message: format!("the daemon's answer (HTTP {}) is not JSON", status.as_u16()),
    })?;
    if !status.is_success() {
        return Err(Refused {
            code: crate::text::clip(body["error"].as_str().unwrap_or("error"), 64),
            message: crate::text::clip(body["message"].as_str().unwrap_or(""), 500),
        });
    }
    let token = body["access_token"].as_str().unwrap_or_default();
    if !crate::token::is_token_text(token.as_bytes()) {
        return Err(Refused {
            code: "bad_answer".into(),
            message: "the daemon's answer holds no usable token".into(),
        });
    }
    let expires_at = body["expires_at"].as_str().unwrap_or_default();
    let expires = crate::timefmt::parse_rfc3339(expires_at).ok_or_else(|| Refused {
        code: "bad_answer".into(),
        message: "the daemon's answer has no expires_at".into(),
    })?;
    Ok(Issued {
        token: token.to_string(),
        expires_at: expires_at.to_string(),
        expires_epoch: expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// Runs `tokend credential KIND …` with `input` as its standard input and
/// `exec_info` as `$KUBERNETES_EXEC_INFO`; returns what to print on stdout,
/// on stderr, and the exit code.
pub async fn run(kind: CredentialKind, input: impl Read, exec_info: Option<String>) -> Output {
    match kind {
        CredentialKind::Kubectl { source, daemon } => {
            match fetch(&daemon.socket, &source, daemon.timeout).await {
                Ok(t) => Output::ok(exec_credential(exec_info.as_deref(), &t)),
                Err(e) => Output::error(&source, &e),
            }
        }
        CredentialKind::Git {
            source,
            username,
            hosts,
            action,
            daemon,
        } => {
            let request = read_git_request(input);
            if action != "get" || request.protocol.as_deref() != Some("https") {
                // store and erase: nothing to keep. Another protocol: not ours.
                return Output::ok(String::new());
            }
            if !hosts.is_empty()
                && !request
                    .host
                    .as_deref()
                    .is_some_and(|h| hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(h)))
            {
                // A host the token is not for: nothing, so git tries its
                // next helper and the token goes nowhere else.
                return Output::ok(String::new());
            }
            match fetch(&daemon.socket, &source, daemon.timeout).await {
                Ok(t) => Output::ok(git_answer(&request, &username, &t)),
                // Nothing on stdout: git tries its next helper.
                Err(e) => Output::error(&source, &e),
            }
        }
        CredentialKind::Gcp { source, daemon } => {
            match fetch(&daemon.socket, &source, daemon.timeout).await {
                Ok(t) => Output::ok(gcp_success(&t)),
                // google-auth reads stderr too: all of it goes to stdout.
                Err(e) => Output {
                    stdout: gcp_failure(&source, &e),
                    stderr: String::new(),
                    code: 1,
                },
            }
        }
    }
}

/// What a run prints, and its exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Output {
    fn ok(stdout: String) -> Output {
        Output {
            stdout,
            stderr: String::new(),
            code: 0,
        }
    }

    /// One line on stderr naming the source and the daemon's error code.
    fn error(source: &str, e: &Refused) -> Output {
        Output {
            stdout: String::new(),
            stderr: format!(
                "tokend credential: source {}: {}: {}\n",
                crate::text::clip(source, 64),
                e.code,
                e.message
            ),
            code: 1,
        }
    }
}

/// client-go's ExecCredential. Its `apiVersion` must be the one the caller
/// asked for in `$KUBERNETES_EXEC_INFO`; v1 when it names none.
fn exec_credential(exec_info: Option<&str>, t: &Issued) -> String {
    const V1: &str = "client.authentication.k8s.io/v1";
    const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";
    let asked = exec_info
        .and_then(|i| serde_json::from_str::<Value>(i).ok())
        .and_then(|v| v["apiVersion"].as_str().map(str::to_string));
    let api_version = match asked.as_deref() {
        Some(V1BETA1) => V1BETA1,
        _ => V1,
    };
    let doc = json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": { "token": t.token, "expirationTimestamp": t.expires_at },
    });
    format!("{doc}\n")
}

/// What git sent a helper: `key=value` lines up to a blank line or EOF.
#[derive(Debug, Default)]
struct GitRequest {
    protocol: Option<String>,
    host: Option<String>,
    capabilities: Vec<String>,
}

/// Reads git's request (at most 64 KiB: git sends a few short lines).
fn read_git_request(input: impl Read) -> GitRequest {
    let mut text = String::new();
    let _ = input.take(64 * 1024).read_to_string(&mut text);
    let mut r = GitRequest::default();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some(("protocol", v)) => r.protocol = Some(v.to_string()),
            Some(("host", v)) => r.host = Some(v.to_string()),
            Some(("capability[]", v)) => r.capabilities.push(v.to_string()),
            _ => {}
        }
    }
    r
}

/// git's answer: a Bearer credential where git can take one (it offers
/// `capability[]=authtype`, git 2.46 and later), else the token as a
/// Basic password, which Azure DevOps and most git hosts accept.
fn git_answer(request: &GitRequest, username: &str, t: &Issued) -> String {
    let expiry = t.expires_epoch;
    if request.capabilities.iter().any(|c| c == "authtype") {
        format!(
            "capability[]=authtype\nauthtype=Bearer\ncredential={}\nephemeral=1\npassword_expiry_utc={expiry}\n",
            t.token
        )
    } else {
        // A user name that could start a line of its own is not sent.
        let username: String = username
            .chars()
            .filter(|c| !crate::text::hidden(*c))
            .collect();
        format!(
            "username={username}\npassword={}\npassword_expiry_utc={expiry}\n",
            t.token
        )
    }
}

/// Google's executable-sourced credential, version 1, for a JWT.
fn gcp_success(t: &Issued) -> String {
    let doc = json!({
        "version": 1,
        "success": true,
        "token_type": "urn:ietf:params:oauth:token-type:jwt",
        "id_token": t.token,
        "expiration_time": t.expires_epoch,
    });
    format!("{doc}\n")
}

fn gcp_failure(source: &str, e: &Refused) -> String {
    let doc = json!({
        "version": 1,
        "success": false,
        "code": e.code,
        "message": format!("source {}: {}", crate::text::clip(source, 64), e.message),
    });
    format!("{doc}\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn issued() -> Issued {
        Issued {
            token: "eyJ.tok.en".into(),
            expires_at: "2026-12-01T18:00:00Z".into(),
            expires_epoch: 1_796_148_000,
        }
    }

    #[test]
    fn exec_credential_echoes_the_api_version_asked_for() {
        let v = |info: Option<&str>| {
            let out: Value = serde_json::from_str(&exec_credential(info, &issued())).unwrap();
            assert_eq!(out["kind"], "ExecCredential");
            assert_eq!(out["status"]["token"], "eyJ.tok.en");
            assert_eq!(out["status"]["expirationTimestamp"], "2026-12-01T18:00:00Z");
            out["apiVersion"].as_str().unwrap().to_string()
        };
        assert_eq!(v(None), "client.authentication.k8s.io/v1");
        let beta = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}"#;
        assert_eq!(v(Some(beta)), "client.authentication.k8s.io/v1beta1");
        assert_eq!(v(Some("not json")), "client.authentication.k8s.io/v1");
    }

    #[test]
    fn git_gets_bearer_when_it_offers_authtype_else_a_password() {
        let old = read_git_request("protocol=https\nhost=dev.azure.com\n".as_bytes());
        assert_eq!(
            git_answer(&old, "tokend", &issued()),
            "username=tokend\npassword=eyJ.tok.en\npassword_expiry_utc=1796148000\n"
        );
        let new = read_git_request(
            "capability[]=authtype\ncapability[]=state\nprotocol=https\nhost=h\n\nignored=1\n"
                .as_bytes(),
        );
        assert_eq!(new.protocol.as_deref(), Some("https"));
        assert_eq!(
            git_answer(&new, "tokend", &issued()),
            "capability[]=authtype\nauthtype=Bearer\ncredential=eyJ.tok.en\nephemeral=1\npassword_expiry_utc=1796148000\n"
        );
    }

    fn daemon_args() -> crate::cli::DaemonArgs {
        crate::cli::DaemonArgs {
            socket: "/nonexistent/tokend.sock".into(),
            timeout: Duration::from_secs(1),
        }
    }

    /// git: nothing for http, nothing for store or erase, and an error
    /// prints nothing on stdout (so git tries its next helper).
    #[tokio::test]
    async fn git_answers_only_https_gets() {
        let git = |action: &str| CredentialKind::Git {
            source: "ado".into(),
            username: "tokend".into(),
            hosts: Vec::new(),
            action: action.into(),
            daemon: daemon_args(),
        };
        let out = run(git("get"), "protocol=http\nhost=h\n".as_bytes(), None).await;
        assert_eq!(out, Output::ok(String::new()));
        let out = run(
            git("store"),
            "protocol=https\nhost=h\npassword=x\n".as_bytes(),
            None,
        )
        .await;
        assert_eq!(out, Output::ok(String::new()));
        let out = run(git("get"), "protocol=https\nhost=h\n".as_bytes(), None).await;
        assert_eq!((out.stdout.as_str(), out.code), ("", 1));
        assert!(
            out.stderr
                .starts_with("tokend credential: source ado: daemon_unreachable: "),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1);
    }

    /// With --host, another host gets nothing (not even a call to the
    /// daemon), so an unscoped helper cannot hand the token to any server
    /// a repository names.
    #[tokio::test]
    async fn git_with_hosts_answers_only_those_hosts() {
        let git = || CredentialKind::Git {
            source: "ado".into(),
            username: "tokend".into(),
            hosts: vec!["dev.azure.com".into()],
            action: "get".into(),
            daemon: daemon_args(),
        };
        let out = run(
            git(),
            "protocol=https\nhost=evil.example.com\n".as_bytes(),
            None,
        )
        .await;
        assert_eq!(out, Output::ok(String::new()));
        let out = run(git(), "protocol=https\n".as_bytes(), None).await;
        assert_eq!(out, Output::ok(String::new()));
        // The host it is for: the daemon is asked (and is not there).
        let out = run(
            git(),
            "protocol=https\nhost=Dev.Azure.com\n".as_bytes(),
            None,
        )
        .await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("daemon_unreachable"), "{out:?}");
    }

    /// Google reads stdout and stderr as one: a failure is JSON on stdout.
    #[tokio::test]
    async fn a_gcp_failure_is_json_on_stdout_and_nothing_on_stderr() {
        let kind = CredentialKind::Gcp {
            source: "fed".into(),
            daemon: daemon_args(),
        };
        let out = run(kind, std::io::empty(), None).await;
        assert_eq!((out.stderr.as_str(), out.code), ("", 1));
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(doc["success"], false);
        assert_eq!(doc["code"], "daemon_unreachable");
    }

    #[test]
    fn gcp_speaks_version_1_either_way() {
        let ok: Value = serde_json::from_str(&gcp_success(&issued())).unwrap();
        assert_eq!(ok["success"], true);
        assert_eq!(ok["expiration_time"], 1_796_148_000u64);
        assert_eq!(ok["id_token"], "eyJ.tok.en");
        let e = Refused {
            code: "token_unavailable".into(),
            message: "the IdP is down".into(),
        };
        let bad: Value = serde_json::from_str(&gcp_failure("graph", &e)).unwrap();
        assert_eq!(bad["success"], false);
        assert_eq!(bad["code"], "token_unavailable");
        assert_eq!(bad["message"], "source graph: the IdP is down");
    }
}
