//! The command line: `check`, `check --fetch`, `token` and `status` as a
//! sysadmin runs them.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn tokend(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .env_remove("TOKEND_CONFIG")
        .env_remove("TOKEND_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_example_config_checks_ok() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tokend.toml");
    let (code, out, err) = tokend(&["check", "-c", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK, 2 source(s): graph, inventory"), "{out}");
}

#[test]
fn misspelled_key_exits_1_naming_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(
        &path,
        "[sources.api]\ntoken_url = \"https://sso.example.com/t\"\nclient_id = \"a\"\nclient_secert = { file = \"/s\" }\n\n[sources.two]\ntoken_url = \"http://sso.example.com/t\"\nclient_id = \"b\"\nclient_secret = { env = \"B\" }\n",
    )
    .unwrap();
    let (code, _, err) = tokend(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let want = format!(
        "{}:4:1: unknown key `client_secert` — did you mean `client_secret`?",
        path.display()
    );
    assert!(err.contains(&want), "{err}");
    // Every problem in one run: the second source's http URL too.
    assert!(
        err.contains(&format!(
            "{}:7:13: `token_url` must use https",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let (code, _, err) = tokend(&["check", "-c", "/nonexistent/tokend.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /nonexistent/tokend.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn check_fetch_prints_ok_lifetime_and_claims() {
    let idp = idp(Duration::from_secs(600), &["api"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(&path, source("api", &idp, "scopes = [\"read\"]")).unwrap();
    let (code, out, err) = check_fetch(&path, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("api: ok, lifetime 10m, scope read"), "{out}");
    assert!(
        out.contains("aud: api://tokend-dev")
            && out.contains("azp: api")
            && out.contains("exp: 20"),
        "{out}"
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    // A wrong client: failed, with the hint, exit 1.
    std::fs::write(&path, source_as("api", "nobody", &idp, "")).unwrap();
    let (code, out, _) = check_fetch(&path, &[]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("api: FAILED: token endpoint answered HTTP 401 invalid_client"),
        "{out}"
    );
    assert!(out.contains("hint: "), "{out}");
}

#[tokio::test]
async fn check_fetch_gives_up_on_a_probe_url_that_never_answers() {
    let idp = idp(Duration::from_secs(600), &["api"]).await;
    // Connections are accepted by the kernel, and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = format!("http://{}/v1/me", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(
        &path,
        source(
            "api",
            &idp,
            &format!("probe_url = \"{probe}\"\nfetch_timeout = \"1s\""),
        ),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let (code, out, err) = check_fetch(&path, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        out.contains(&format!("probe {probe}: FAILED: no answer within 1s")),
        "{out}"
    );
    drop(silent);
}

#[tokio::test]
async fn token_and_status_commands() {
    let idp = idp(Duration::from_secs(3600), &["api"]).await;
    let d = daemon(&format!(
        "{}{}",
        source("api", &idp, ""),
        source_as("down", "nobody", &idp, "")
    ))
    .start()
    .await;
    let sock = d.socket.to_str().unwrap().to_string();
    // Runs `tokend ARGS… --socket SOCK` off the runtime.
    let run = |args: &[&str], sock: &str| {
        let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
        args.extend(["--socket".to_string(), sock.to_string()]);
        tokio::task::spawn_blocking(move || {
            tokend(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (code, out, err) = run(&["token", "api"], &sock).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let direct = d.get("/v1/tokens/api?format=raw").await.text();
    assert_eq!(out.trim_end(), direct);

    let (code, out, _) = run(&["token", "api", "--json"], &sock).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["source"],
        "api"
    );

    let (code, _, err) = run(&["token", "nope"], &sock).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no source named"), "{err}");

    let (code, _, err) = run(&["token", "down"], &sock).await.unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("invalid_client") && err.contains("hint:"),
        "{err}"
    );

    let (code, out, _) = run(&["status"], &sock).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("api ") && l.contains("ready")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("down ") && l.contains("failed")),
        "{out}"
    );
    assert!(out.contains("down: hint:"), "{out}");

    let (code, out, _) = run(&["status", "--json"], &sock).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["sources"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let (code, _, err) = run(&["status"], "/nonexistent.sock").await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("is tokend running?"), "{err}");
}

/// `tokend socket-dir`, an init container's one job: a root-owned 0700
/// directory is handed to the daemon's uid and gid with mode 0755, by root
/// holding CAP_CHOWN and no other capability; a second run changes
/// nothing; a symbolic link is refused, and a caller without CAP_CHOWN is
/// told what it needs.
#[test]
fn socket_dir_hands_the_directory_over_with_cap_chown_alone() {
    if !common::others::root_or_skip("socket_dir_hands_the_directory_over_with_cap_chown_alone") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = top.path().join("run-tokend");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let binary = top.path().join("tokend");
    std::fs::copy(env!("CARGO_BIN_EXE_tokend"), &binary).unwrap();
    let only_chown = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all,+chown", "--"])
            .arg(&binary)
            .args(args)
            .output()
            .expect("run setpriv (util-linux)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let (code, out, err) = only_chown(&["socket-dir", d, "--owner", "10001", "--group", "10002"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("{d}: now owned by 10001:10002, mode 0755\n"));
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (10001, 10002, 0o755));
    let (code, out, _) = only_chown(&["socket-dir", d, "--owner", "10001", "--group", "10002"]);
    assert_eq!(
        (code, out),
        (0, format!("{d}: already owned by 10001:10002, mode 0755\n"))
    );

    let link = top.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let (code, _, err) = tokend(&[
        "socket-dir",
        link.to_str().unwrap(),
        "--owner",
        "1",
        "--group",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a symbolic link"), "{err}");

    // Without CAP_CHOWN: refused, with what it needs.
    let other = top.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(&binary)
        .args([
            "socket-dir",
            other.to_str().unwrap(),
            "--owner",
            "4242",
            "--group",
            "4242",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("capabilities: {drop: [ALL], add: [CHOWN]}"),
        "{err}"
    );
}
