//! Access control with real other users: clients exec'd as uid/gid 65534
//! (nobody/nogroup) and as a uid with a supplementary group, against the
//! daemon's socket. Runs as root (as CI does), since it drops privileges.

mod common;

use common::others::*;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const OTHER: u32 = 4242;
/// Debian's `users` group.
const USERS_GID: u32 = 100;

/// `curl` over the socket as `uid`/`gid` with supplementary `groups`:
/// returns the HTTP status and body.
fn curl_blocking(
    uid: u32,
    gid: u32,
    groups: &[u32],
    socket: &Path,
    method: &str,
    path: &str,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"));
    let out = run_as(&mut cmd, uid, gid, groups)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The tokend binary as a command that runs as `uid`:`gid` with no
/// supplementary groups.
fn command_as(dir: &Path, uid: u32, gid: u32) -> Command {
    let mut cmd = tokend_for_others(dir);
    run_as(&mut cmd, uid, gid, &[]);
    cmd
}

/// [`curl_blocking`] off the async runtime.
async fn curl_as(
    uid: u32,
    gid: u32,
    groups: &'static [u32],
    socket: &Path,
    method: &'static str,
    path: &str,
) -> (u16, String) {
    let (socket, path) = (socket.to_path_buf(), path.to_string());
    tokio::task::spawn_blocking(move || curl_blocking(uid, gid, groups, &socket, method, &path))
        .await
        .unwrap()
}

#[tokio::test]
async fn allow_lists_by_uid_user_group_and_supplementary_group() {
    if !root_or_skip("allow_lists_by_uid_user_group_and_supplementary_group") {
        return;
    }
    let idp = idp(
        Duration::from_secs(3600),
        &["open", "by-uid", "by-user", "by-group", "root-only"],
    )
    .await;
    let body = [
        source("open", &idp, ""),
        source("by-uid", &idp, "allow = { uids = [65534] }"),
        source("by-user", &idp, "allow = { users = [\"nobody\"] }"),
        source("by-group", &idp, "allow = { groups = [\"users\"] }"),
        source("root-only", &idp, "allow = {}"),
        source_as(
            "failing",
            "unknown-client",
            &idp,
            "allow = { uids = [65534] }",
        ),
    ]
    .concat();
    let mut d = open_daemon(&body, "socket_mode = \"0666\"").await;
    let get = async |uid, gid, groups: &'static [u32], path: &str| {
        curl_as(uid, gid, groups, &d.socket, "GET", path).await
    };
    let mut tokens = Vec::new();

    // nobody:nogroup, no supplementary groups.
    for (name, want) in [
        ("open", 200),
        ("by-uid", 200),
        ("by-user", 200),
        ("by-group", 404),
        ("root-only", 404),
    ] {
        let (code, body) = get(
            NOBODY,
            NOBODY,
            &[],
            &format!("/v1/tokens/{name}?format=raw"),
        )
        .await;
        assert_eq!(code, want, "nobody reading {name}: {body}");
        if code == 200 {
            tokens.push(body);
        } else {
            // Worded as for a missing source: the name is not confirmed.
            assert!(
                body.contains("\"unknown_source\"")
                    && body.contains("or this caller may not read it"),
                "{body}"
            );
        }
    }
    // A source nobody may not read looks exactly like one that does not
    // exist, to the API and to `tokend token` (exit 2 for both).
    let (_, denied) = get(NOBODY, NOBODY, &[], "/v1/tokens/root-only").await;
    let (code, missing) = get(NOBODY, NOBODY, &[], "/v1/tokens/root-onlx").await;
    assert_eq!(code, 404);
    assert_eq!(denied.replace("root-only", "root-onlx"), missing);
    let cli = |name: &str| {
        let mut cmd = tokend_for_others(d.dir.path());
        cmd.args(["token", name, "--socket"]).arg(&d.socket);
        let out = run_as(&mut cmd, NOBODY, NOBODY, &[]).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (denied_code, denied_err) = cli("root-only");
    let (missing_code, missing_err) = cli("root-onlx");
    assert_eq!((denied_code, missing_code), (Some(2), Some(2)));
    assert!(
        denied_err.contains("or this caller may not read it"),
        "{denied_err}"
    );
    assert_eq!(denied_err.replace("root-only", "root-onlx"), missing_err);
    // Root is told which.
    let (code, body) = get(0, 0, &[], "/v1/tokens/root-onlx").await;
    assert_eq!(code, 404);
    assert!(!body.contains("may not read"), "{body}");

    // uid 4242 with `users` as a supplementary group.
    for (name, want) in [
        ("open", 200),
        ("by-uid", 404),
        ("by-group", 200),
        ("root-only", 404),
    ] {
        let (code, body) = get(
            OTHER,
            OTHER,
            &[USERS_GID],
            &format!("/v1/tokens/{name}?format=raw"),
        )
        .await;
        assert_eq!(code, want, "uid 4242 (+users) reading {name}: {body}");
    }
    // The same uid without the group is denied; with it as primary group, allowed.
    assert_eq!(get(OTHER, OTHER, &[], "/v1/tokens/by-group").await.0, 404);
    assert_eq!(
        get(OTHER, USERS_GID, &[], "/v1/tokens/by-group").await.0,
        200
    );

    // /v1/sources lists only what the caller may read.
    let (_, body) = get(NOBODY, NOBODY, &[], "/v1/sources").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = doc["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["by-uid", "by-user", "failing", "open"]);
    assert_eq!(
        get(NOBODY, NOBODY, &[], "/v1/sources/by-group").await.0,
        404
    );

    // Forced refresh follows the same rule.
    let (code, _) = curl_as(
        OTHER,
        OTHER,
        &[],
        &d.socket,
        "POST",
        "/v1/sources/by-uid/refresh",
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = curl_as(
        NOBODY,
        NOBODY,
        &[],
        &d.socket,
        "POST",
        "/v1/sources/by-uid/refresh",
    )
    .await;
    assert_eq!(code, 200);

    // Root (this process) reads everything.
    for name in ["open", "by-uid", "by-user", "by-group", "root-only"] {
        let r = d.get(&format!("/v1/tokens/{name}?format=raw")).await;
        assert_eq!(r.status(), 200, "root reading {name}");
        tokens.push(r.text());
    }
    wait_for_status(&d, "/v1/tokens/failing", 503).await;

    d.signal(libc::SIGTERM);
    d.wait_exit().await;
    let log = d.log();
    let denial = log
        .lines()
        .find(|l| {
            l.contains("WARN")
                && l.contains("access denied")
                && l.contains("source=root-only")
                && l.contains("uid=65534")
        })
        .unwrap_or_else(|| panic!("no denial WARN for nobody on root-only:\n{log}"));
    assert!(
        denial.contains("gid=65534") && denial.contains("pid="),
        "{denial}"
    );
    assert!(
        log.contains("source=by-group") && log.contains("uid=4242"),
        "{log}"
    );
    // A trace-level log of fetches, a refresh, denials and a failed fetch: no token, no secret.
    assert!(log.contains("TRACE") && log.contains("token fetch failed"));
    assert!(!log.contains(SECRET));
    for t in tokens {
        assert!(!t.is_empty() && !log.contains(&t), "token in log");
    }
}

#[tokio::test]
async fn socket_mode_and_group_as_configured_also_over_a_stale_socket() {
    if !root_or_skip("socket_mode_and_group_as_configured_also_over_a_stale_socket") {
        return;
    }
    let idp = idp(Duration::from_secs(3600), &["a"]).await;
    let server = "socket_mode = \"0660\"\nsocket_group = \"users\"";
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&source("a", &idp, ""))
        .server(server)
        .at(dir, socket.clone())
        .start()
        .await;
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, USERS_GID));
    // Group members may connect; others may not even connect.
    let (code, _) = curl_as(OTHER, OTHER, &[USERS_GID], &socket, "GET", "/v1/tokens/a").await;
    assert_eq!(code, 200);
    let (code, _) = curl_as(NOBODY, NOBODY, &[], &socket, "GET", "/v1/tokens/a").await;
    assert_eq!(code, 0, "connection refused by the socket's mode");
    // The client command says which group to join.
    let mut cmd = command_as(d.dir.path(), NOBODY, NOBODY);
    cmd.args(["token", "a", "--socket"]).arg(&socket);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "permission denied on {}: join group users",
            socket.display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // In a pod, where no usermod can help: the pod's securityContext.
    let mut cmd = command_as(d.dir.path(), NOBODY, NOBODY);
    cmd.args(["token", "a", "--socket"])
        .arg(&socket)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "permission denied on {}: this pod is not in the socket's group {USERS_GID} — add it to the pod's securityContext.supplementalGroups",
            socket.display()
        )) && !err.contains("usermod"),
        "{err}"
    );

    // Killed hard, the daemon leaves a stale socket; a new one replaces it with the same mode and group.
    let dir = d.kill_keep_dir();
    assert!(exists(&socket));
    let d2 = daemon(&source("a", &idp, ""))
        .server(server)
        .at(dir, socket.clone())
        .start()
        .await;
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, USERS_GID));
    assert_eq!(d2.get("/v1/tokens/a").await.status(), 200);
}

#[tokio::test]
async fn allow_changes_apply_to_the_next_request_without_a_new_token() {
    if !root_or_skip("allow_changes_apply_to_the_next_request_without_a_new_token") {
        return;
    }
    let idp = idp(Duration::from_secs(3600), &["a"]).await;
    let d = open_daemon(
        &source("a", &idp, "allow = { uids = [1] }"),
        "socket_mode = \"0666\"",
    )
    .await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    assert_eq!(
        curl_as(NOBODY, NOBODY, &[], &d.socket, "GET", "/v1/tokens/a")
            .await
            .0,
        404
    );
    write_private(
        &d.config,
        &d.config_text()
            .replace("allow = { uids = [1] }", "allow = { users = [\"nobody\"] }"),
    );
    let (_, body) = eventually("nobody to be allowed", async || {
        let r = curl_as(
            NOBODY,
            NOBODY,
            &[],
            &d.socket,
            "GET",
            "/v1/tokens/a?format=raw",
        )
        .await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(
        body, token,
        "the same token: an allow change does not refetch"
    );
    assert_eq!(idp.issued(), 1);
}

#[tokio::test]
async fn readyz_and_reload_errors_reveal_only_what_the_caller_may_read() {
    if !root_or_skip("readyz_and_reload_errors_reveal_only_what_the_caller_may_read") {
        return;
    }
    let idp = idp(Duration::from_secs(3600), &[]).await;
    let body = [
        source("visible", &idp, "allow = { users = [\"nobody\"] }"),
        source("hidden", &idp, "allow = {}"),
    ]
    .concat();
    let d = open_daemon(&body, "socket_mode = \"0666\"").await;
    // Both fail (the IdP knows neither client): neither is ready.
    let r = wait_for_status(&d, "/readyz", 503).await;
    let mut all: Vec<String> = serde_json::from_value(r.json()["not_ready"].clone()).unwrap();
    all.sort();
    assert_eq!(all, ["hidden", "visible"], "root sees every source");
    let (code, body) = curl_as(NOBODY, NOBODY, &[], &d.socket, "GET", "/readyz").await;
    assert_eq!(code, 503);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["not_ready"], serde_json::json!(["visible"]), "{body}");

    // A broken edit: its message names files and settings.
    let good = d.config_text();
    write_private(
        &d.config,
        &format!("{good}\n[sources.x]\nmin_ttl = \"soon\"\n"),
    );
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let full = doc["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(full.contains(&d.config.display().to_string()), "{full}");
    let redacted = "the last reload failed; details in the log";
    let (_, body) = curl_as(NOBODY, NOBODY, &[], &d.socket, "GET", "/readyz").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["config_error"], redacted, "{body}");
    let (_, body) = curl_as(NOBODY, NOBODY, &[], &d.socket, "GET", "/v1/sources").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["config"]["last_reload"]["error"], redacted, "{body}");
    assert!(
        !body.contains("min_ttl") && !body.contains("tokend.toml"),
        "{body}"
    );
    assert!(d.get("/readyz").await.json()["config_error"]
        .as_str()
        .unwrap()
        .contains("min_ttl"));
}

/// `/metrics` on the socket names, for a caller other than root and the
/// daemon, only the sources it may read (as `/readyz` does); global series
/// stay. A caller that may read none still gets 200.
#[tokio::test]
async fn metrics_on_the_socket_show_only_the_sources_the_caller_may_read() {
    if !root_or_skip("metrics_on_the_socket_show_only_the_sources_the_caller_may_read") {
        return;
    }
    let idp = idp(Duration::from_secs(3600), &["visible", "hidden"]).await;
    let body = [
        source("visible", &idp, "allow = { users = [\"nobody\"] }"),
        source("hidden", &idp, "allow = {}"),
    ]
    .concat();
    let d = open_daemon(&body, "socket_mode = \"0666\"").await;
    wait_for_status(&d, "/v1/tokens/visible", 200).await;
    wait_for_status(&d, "/v1/tokens/hidden", 200).await;
    let all = d.get("/metrics").await.text();
    assert!(
        all.contains("source=\"hidden\""),
        "root sees every source:\n{all}"
    );
    let (code, text) = curl_as(NOBODY, NOBODY, &[], &d.socket, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("source=\"visible\""), "{text}");
    assert!(!text.contains("hidden"), "{text}");
    assert!(
        text.contains("tokend_sources 2"),
        "global series stay:\n{text}"
    );
    let (code, text) = curl_as(OTHER, OTHER, &[], &d.socket, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(!text.contains("source=\""), "{text}");
    assert!(text.contains("tokend_build_info"), "{text}");
}

/// A group with thousands of members (an entry far larger than 16 KiB)
/// resolves like any other. The test sees such a group through a private
/// mount namespace with its own /etc/group, leaving the machine's alone.
#[tokio::test]
async fn a_group_with_thousands_of_members_resolves() {
    if !root_or_skip("a_group_with_thousands_of_members_resolves") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let members: Vec<String> = (0..4000).map(|i| format!("member{i:05}")).collect();
    let group = dir.path().join("group");
    let existing = std::fs::read_to_string("/etc/group").unwrap();
    std::fs::write(
        &group,
        format!("{existing}tokend-big:x:4343:{}\n", members.join(",")),
    )
    .unwrap();
    let config = dir.path().join("tokend.toml");
    write_private(
        &config,
        "[server]\nsocket_group = \"tokend-big\"\n[sources.a]\ntoken_url = \"https://sso.example.com/t\"\nclient_id = \"a\"\nclient_secret = { env = \"S\" }\nallow = { groups = [\"tokend-big\"] }\n",
    );
    let script = format!(
        "mount --bind {} /etc/group && exec {} check -c {}",
        group.display(),
        env!("CARGO_BIN_EXE_tokend"),
        config.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
    })
    .await
    .unwrap();
    let out = match out {
        Ok(o) if !String::from_utf8_lossy(&o.stderr).contains("mount:") => o,
        other => {
            eprintln!("skipping a_group_with_thousands_of_members_resolves: no private mount namespace here ({other:?})");
            return;
        }
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("OK, 1 source(s)"), "{stdout}");
}

/// README's secret-file recipe, as the daemon's user reads it: a
/// `root:tokend` directory 0750 and file 0640 work; the old recipe's
/// root-only 0700 directory was "Permission denied" for the daemon.
/// (uid 4242 in group 4242 stands for the tokend user and group.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_secret_recipe_is_readable_by_the_daemons_user() {
    if !root_or_skip("the_readme_secret_recipe_is_readable_by_the_daemons_user") {
        return;
    }
    let idp = idp(Duration::from_secs(3600), &["graph"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let check_as_daemon = |secrets_mode: u32, file_mode: u32| {
        let secrets = dir.path().join(format!("secrets-{secrets_mode:o}"));
        let run = |args: &[&str]| {
            let out = Command::new("install").args(args).output().unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        // The recipe's commands, with 4242 for tokend.
        run(&[
            "-d",
            "-m",
            &format!("{secrets_mode:o}"),
            "-o",
            "root",
            "-g",
            "4242",
            secrets.to_str().unwrap(),
        ]);
        let file = secrets.join("graph");
        run(&[
            "-m",
            &format!("{file_mode:o}"),
            "-o",
            "root",
            "-g",
            "4242",
            "/dev/null",
            file.to_str().unwrap(),
        ]);
        std::fs::write(&file, SECRET).unwrap();
        let config = dir.path().join(format!("tokend-{secrets_mode:o}.toml"));
        std::fs::write(&config, source_with_file_secret("graph", &idp, &file, "")).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = command_as(dir.path(), 4242, 4242);
        cmd.args(["check", "--fetch", "-c"]).arg(&config);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The modes README's recipe gives the directory and the file.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let recipe = readme.split("## First token").nth(1).unwrap();
    let mode_in = |prefix: &str| {
        let line = recipe
            .lines()
            .map(|l| l.trim_start().trim_start_matches("sudo "))
            .find(|l| l.starts_with(prefix))
            .unwrap();
        let m = line
            .split_whitespace()
            .skip_while(|w| *w != "-m")
            .nth(1)
            .unwrap();
        u32::from_str_radix(m, 8).unwrap()
    };
    let (dir_mode, file_mode) = (mode_in("install -d "), mode_in("install -m "));
    let (code, out) = tokio::task::block_in_place(|| check_as_daemon(dir_mode, file_mode));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("graph: ok"), "{out}");
    // What the recipe used to say: root only, and the daemon cannot read it.
    let (code, out) = tokio::task::block_in_place(|| check_as_daemon(0o700, 0o600));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
}

/// `curl` with `args`, forked as `uid`:`gid` with no other groups by
/// `setpriv`, as an admin tries another user: the HTTP status and body.
fn curl_tcp_as(uid: u32, gid: u32, args: &[String]) -> (u16, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "curl", "-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run setpriv and curl (apt-get install util-linux curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// [`curl_tcp_as`] to the managed-identity endpoint on `port` for
/// `resource` (and what follows it in the query), presenting `header`.
fn curl_mi_as(uid: u32, gid: u32, port: u16, resource: &str, header: &str) -> (u16, String) {
    curl_tcp_as(
        uid,
        gid,
        &[
            "-H".into(),
            format!("X-IDENTITY-HEADER: {header}"),
            format!("http://127.0.0.1:{port}/msi/token?api-version=2019-08-01&resource={resource}"),
        ],
    )
}

/// An app with `allow` answers its header only to the callers it admits,
/// as the kernel names them: a header read by another user is useless to
/// that user. An app without `allow` still answers whoever has its header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_identity_apps_allow_admits_only_its_callers() {
    if !root_or_skip("a_managed_identity_apps_allow_admits_only_its_callers") {
        return;
    }
    use common::mi::{free_port, GRAPH};
    let idp = idp(Duration::from_secs(3600), &["graph", "vault", "vault2"]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let body = common::mi::config(&idp, port, dir.path()).replace(
        "sources = [\"graph\", \"vault\"]\n",
        "sources = [\"graph\", \"vault\"]\nallow = { users = [\"nobody\"] }\n",
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).rust_log("info").at(dir, socket).start().await;
    let ask = |uid, resource: &'static str, header: &'static str| {
        tokio::task::spawn_blocking(move || curl_mi_as(uid, uid, port, resource, header))
    };
    let (code, body) = ask(NOBODY, GRAPH, "jira-header-value").await.unwrap();
    assert_eq!(code, 200, "nobody is admitted: {body}");
    let (code, body) = ask(OTHER, GRAPH, "jira-header-value").await.unwrap();
    assert_eq!(code, 403, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = j["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("uid {OTHER} may not use app jira"))
            && message.contains("[managed_identity.apps.jira] allow"),
        "says whom and what to change: {body}"
    );
    assert!(!body.contains("eyJ"), "no token: {body}");
    // Root, as on the socket, is admitted everywhere.
    let (code, _) = ask(0, GRAPH, "jira-header-value").await.unwrap();
    assert_eq!(code, 200);
    // billing has no allow: its header is the credential, for any uid.
    const VAULT2: &str = "https://vault.azure.net&client_id=vault2";
    let (code, body) = ask(OTHER, VAULT2, "billing-header-value").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let log = d
        .log_with("the app's allow does not admit the caller")
        .await;
    assert!(
        log.contains("uid=4242") && log.contains("app=jira"),
        "{log}"
    );
}

/// [`curl_tcp_as`] as `uid`:`uid` to the IMDS door on `port` for
/// `resource`, with `Metadata: true`.
fn curl_imds_as(uid: u32, port: u16, resource: &str) -> (u16, String) {
    curl_tcp_as(
        uid,
        uid,
        &[
            "-H".into(),
            "Metadata: true".into(),
            format!("http://127.0.0.1:{port}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}"),
        ],
    )
}

/// The IMDS door knows its callers only by the kernel's word: a source's
/// `allow` decides there as on the socket, and a uid it does not admit
/// gets nothing, told only what it can get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imds_door_serves_each_uid_only_what_its_allow_admits() {
    if !root_or_skip("the_imds_door_serves_each_uid_only_what_its_allow_admits") {
        return;
    }
    use common::mi::{free_port, GRAPH, VAULT};
    let idp = idp(Duration::from_secs(3600), &["graph", "vault"]).await;
    let port = free_port();
    let body = format!(
        "{}{}[imds]\nlisten = \"127.0.0.1:{port}\"\nsources = [\"graph\", \"vault\"]\n",
        source(
            "graph",
            &idp,
            &format!("scopes = [\"{GRAPH}/.default\"]\nallow = {{ users = [\"nobody\"] }}")
        ),
        source(
            "vault",
            &idp,
            &format!("scopes = [\"{VAULT}/.default\"]\nallow = {{ uids = [{OTHER}] }}")
        ),
    );
    let d = daemon(&body).rust_log("info").start().await;
    let graph = wait_for_status(&d, "/v1/tokens/graph?format=raw", 200)
        .await
        .text();
    let ask = |uid, resource: &'static str| {
        tokio::task::spawn_blocking(move || curl_imds_as(uid, port, resource))
    };
    let (code, body) = ask(NOBODY, GRAPH).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["access_token"].as_str(), Some(graph.as_str()));
    // 4242 may read vault only: graph is refused, and what it can get named.
    let (code, body) = ask(OTHER, GRAPH).await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(!body.contains(&graph), "no token: {body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["error"], "invalid_resource", "{body}");
    let description = j["error_description"].as_str().unwrap();
    assert!(
        description.contains(&format!("to uid {OTHER}"))
            && description.contains(&format!("this caller can get: {VAULT} (")),
        "only what it may read: {description}"
    );
    let (code, _) = ask(OTHER, VAULT).await.unwrap();
    assert_eq!(code, 200);
    // A uid no source admits gets nothing at all.
    let (code, body) = ask(4343, GRAPH).await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("this caller can get: nothing"), "{body}");
    let log = d
        .log_with("no offered source serves the resource to this caller")
        .await;
    assert!(log.contains(&format!("uid={OTHER}")), "{log}");
}
