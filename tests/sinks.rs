//! File sinks against the real binary and real files: formats and modes,
//! a reader of another user through `group`, atomic replacement under a
//! tight reader loop, unwritable directories, expiry, reloads and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;
use tempfile::TempDir;

const S: fn(u64) -> Duration = Duration::from_secs;

/// A directory for sinks that only its owner can write and anyone can
/// traverse (a reader of another user must reach the file).
fn sink_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn sink(path: &Path, extra: &str) -> String {
    format!("{{ path = \"{}\"{extra} }}", path.display())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

async fn file_text(path: &Path) -> String {
    let path = path.to_path_buf();
    eventually(&format!("{}", path.display()), async || {
        std::fs::read_to_string(&path).ok()
    })
    .await
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn raw_json_and_header_files_hold_what_the_api_serves() {
    let idp = idp(S(3600), &["a"]).await;
    let out = sink_dir();
    let (raw, json, header) = (
        out.path().join("a.token"),
        out.path().join("a.json"),
        out.path().join("a.header"),
    );
    let d = daemon(&source(
        "a",
        &idp,
        &format!(
            "sinks = [{}, {}, {}]",
            sink(&raw, ""),
            sink(&json, ", format = \"json\", mode = \"0640\""),
            sink(&header, ", format = \"header\""),
        ),
    ))
    .start()
    .await;
    let api = wait_for_status(&d, "/v1/tokens/a", 200).await.json();
    let token = api["access_token"].as_str().unwrap().to_string();

    assert_eq!(file_text(&raw).await, token, "raw: the token alone");
    let file: serde_json::Value = serde_json::from_str(&file_text(&json).await).unwrap();
    for key in ["access_token", "token_type", "expires_at", "source"] {
        assert_eq!(file[key], api[key], "json: {key} as the API says");
    }
    // A file is read later than it is written: a frozen expires_in would lie.
    assert!(file.get("expires_in").is_none(), "{file}");
    assert_eq!(
        file_text(&header).await,
        format!("Authorization: Bearer {token}\n")
    );
    assert_eq!(mode(&raw), 0o600, "default mode");
    assert_eq!(mode(&json), 0o640);
    assert_eq!(mode(&header), 0o600);
    assert_eq!(
        names_in(out.path()),
        ["a.header", "a.json", "a.token"],
        "no temporary file is left behind"
    );
    assert!(!d.log().contains(&token), "the token never reaches the log");
}

/// A reader running as `nobody` reads the file through the sink's group;
/// without that group it cannot. (Root only: it runs another user.)
#[tokio::test]
async fn another_user_reads_the_file_through_its_group_and_no_one_else_can() {
    if !is_root() {
        eprintln!("skipped: needs root to run a reader as another user");
        return;
    }
    let idp = idp(S(3600), &["a"]).await;
    let out = sink_dir();
    let path = out.path().join("a.token");
    // A gid no group has: the reader gets it with setpriv, nothing is
    // added to the system's group database.
    let gid = 4_000_123;
    let d = daemon(&source(
        "a",
        &idp,
        &format!(
            "sinks = [{}]",
            sink(&path, &format!(", group = {gid}, mode = \"0640\""))
        ),
    ))
    .start()
    .await;
    let token = file_text(&path).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (gid, 0o640));

    let read_as_nobody = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(groups)
            .arg("cat")
            .arg(&path)
            .output()
            .expect("setpriv runs (util-linux)")
    };
    let inside = read_as_nobody(&format!("--groups={gid}"));
    assert!(inside.status.success(), "{inside:?}");
    assert_eq!(String::from_utf8_lossy(&inside.stdout), token);
    let outside = read_as_nobody("--clear-groups");
    assert!(
        !outside.status.success(),
        "a user outside the group read the token"
    );
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("Permission denied"),
        "{outside:?}"
    );
    drop(d);
}

/// The claims of a token the dev IdP issued to `client`, or why it is not one.
fn issued_by(token: &str, client: &str) -> Result<(), String> {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let [_, claims, ""] = parts[..] else {
        return Err(format!("not a whole unsigned JWT: {} parts", parts.len()));
    };
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|e| format!("claims: {e}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&claims).map_err(|e| format!("claims: {e}"))?;
    if claims["sub"] != client || claims["jti"].as_str().is_none() {
        return Err(format!("claims of another token: {claims}"));
    }
    Ok(())
}

/// 100 refreshes (each a rotated secret file, which fetches at once) while
/// a reader stats and reads the file in a tight loop: every read is a whole
/// token the IdP issued, and the mode never differs from the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_a_partial_empty_or_wider_file_across_100_refreshes() {
    let idp = idp(S(3600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_private(&secret, SECRET);
    let out = sink_dir();
    let path = out.path().join("a.token");
    let body = source_with_file_secret(
        "a",
        &idp,
        &secret,
        &format!("sinks = [{}]", sink(&path, ", mode = \"0640\"")),
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let mut current = file_text(&path).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (path, stop) = (path.clone(), stop.clone());
        move || {
            let mut reads = 0u64;
            let mut seen = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mode = std::fs::metadata(&path).map(|m| m.mode() & 0o7777);
                let text = std::fs::read_to_string(&path);
                let (Ok(mode), Ok(text)) = (mode, text) else {
                    return Err("the file was missing".to_string());
                };
                if mode != 0o640 {
                    return Err(format!("mode {mode:04o}"));
                }
                issued_by(&text, "a").map_err(|e| format!("read {text:?}: {e}"))?;
                seen.insert(text);
                reads += 1;
            }
            Ok((reads, seen.len()))
        }
    });

    for i in 0..100 {
        let new_secret = format!("secret-{i}");
        idp.add_client("a", &new_secret);
        let temp = secret.with_extension("new");
        write_private(&temp, &new_secret);
        std::fs::rename(&temp, &secret).unwrap();
        current = eventually_within(S(10), &format!("refresh {i}"), async || {
            let now = std::fs::read_to_string(&path).ok()?;
            (now != current).then_some(now)
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, distinct) = reader.join().unwrap().unwrap();
    println!("{reads} reads saw {distinct} distinct tokens");
    assert!(
        distinct >= 50,
        "the reader kept up with the refreshes: {distinct}"
    );
    assert_eq!(names_in(out.path()), ["a.token"], "no temporary file left");
    drop(d);
}

#[tokio::test]
async fn an_unwritable_sink_warns_in_log_status_and_metrics_while_the_socket_serves() {
    let idp = idp(S(3600), &["a"]).await;
    let out = sink_dir();
    let sinks = out.path().join("sinks");
    std::fs::create_dir(&sinks).unwrap();
    let path = sinks.join("a.token");
    let d = daemon(&source(
        "a",
        &idp,
        &format!("sinks = [{}]", sink(&path, "")),
    ))
    .start()
    .await;
    file_text(&path).await;

    // The directory goes away; the next fetch cannot write the file.
    std::fs::remove_dir_all(&sinks).unwrap();
    let r = d
        .request(hyper::Method::POST, "/v1/sources/a/refresh")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let status = wait_until(&d, |doc| {
        doc["sources"][0]["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().unwrap_or("").contains("a.token"))
        })
    })
    .await;
    let warning = status["sources"][0]["warnings"].to_string();
    assert!(warning.contains("could not be written"), "{warning}");
    assert_eq!(status["sources"][0]["state"], "ready");
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let log = d
        .log_when("a WARN that the sink cannot be written", |log| {
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("cannot write the sink file"))
        })
        .await;
    assert!(!log.contains(&token), "the token never reaches the log");
    let metrics = d.get("/metrics").await.text();
    assert!(
        metrics.contains("tokend_sink_writes_total{source=\"a\",outcome=\"error\"} 1"),
        "{metrics}"
    );
    // The next fetch tries again: once it can write, the warning is gone.
    std::fs::create_dir(&sinks).unwrap();
    eventually_within(S(15), "a second forced refresh", async || {
        let r = d
            .request(hyper::Method::POST, "/v1/sources/a/refresh")
            .await;
        (r.status() == 200).then_some(())
    })
    .await;
    let fresh = file_text(&path).await;
    assert_ne!(fresh, token, "the file holds the new token");
    // The warning goes once the write is recorded, just after the file is
    // in place: a status read between the two may still show it.
    let status = wait_until(&d, |doc| {
        doc["sources"][0]["warnings"] == serde_json::json!([])
    })
    .await;
    assert_eq!(status["sources"][0]["state"], "ready", "{status}");
}

/// With the IdP down, the file goes when the token stops being served
/// (5 s before it expires), not before and not long after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_disappears_when_the_token_stops_being_served() {
    let idp = idp(S(12), &["a"]).await;
    let out = sink_dir();
    let path = out.path().join("a.json");
    let d = daemon(&source(
        "a",
        &idp,
        &format!("sinks = [{}]", sink(&path, ", format = \"json\"")),
    ))
    .start()
    .await;
    let file: serde_json::Value = serde_json::from_str(&file_text(&path).await).unwrap();
    idp.fail_with(Some(Failure {
        status: 503,
        body: "{\"error\":\"temporarily_unavailable\"}".into(),
        retry_after: None,
    }));
    let expires_at = jiff::Timestamp::from_str(file["expires_at"].as_str().unwrap()).unwrap();
    let stops_serving = expires_at - jiff::SignedDuration::from_secs(5);
    eventually_within(S(15), "the sink file to go", async || {
        (!exists(&path)).then_some(())
    })
    .await;
    let gone_at = jiff::Timestamp::now();
    // expires_at is given in whole seconds: allow one either way.
    assert!(
        gone_at >= stops_serving - jiff::SignedDuration::from_secs(1),
        "removed at {gone_at}, before the token stopped being served ({stops_serving})"
    );
    assert!(
        gone_at <= stops_serving + jiff::SignedDuration::from_secs(2),
        "removed at {gone_at}, long after {stops_serving}"
    );
    assert_eq!(d.get("/v1/tokens/a").await.status(), 503);
    d.log_with("the file is removed so no reader picks up a dead token")
        .await;
}

/// A reload that adds a sink writes it at once with the current token (no
/// new fetch); one that removes it deletes the file; removing the source
/// deletes its files; SIGTERM leaves them for the restart to rewrite.
#[tokio::test]
async fn reloads_add_and_remove_sink_files_and_shutdown_keeps_them() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let out = sink_dir();
    let (a1, a2, b1) = (
        out.path().join("a1"),
        out.path().join("a2"),
        out.path().join("b1"),
    );
    let with = |a_sinks: &str, b: bool| {
        let mut text = source("a", &idp, &format!("sinks = [{a_sinks}]"));
        if b {
            text.push_str(&source("b", &idp, &format!("sinks = [{}]", sink(&b1, ""))));
        }
        text
    };
    let d = daemon(&with(&sink(&a1, ""), true)).start().await;
    let token = file_text(&a1).await;
    file_text(&b1).await;
    let fetches = idp.issued();
    let head = |d: &Daemon| {
        let t = d.config_text();
        t[..t.find("[sources.a]").unwrap()].to_string()
    };

    // Add a2: written at once, with the token a already holds.
    let both = format!("{}, {}", sink(&a1, ""), sink(&a2, ""));
    write_private(&d.config, &format!("{}{}", head(&d), with(&both, true)));
    assert_eq!(file_text(&a2).await, token);
    assert_eq!(idp.issued(), fetches, "adding a sink fetches nothing");

    // Remove a1 and the whole source b: their files go.
    write_private(
        &d.config,
        &format!("{}{}", head(&d), with(&sink(&a2, ""), false)),
    );
    eventually("a1 and b1 to be removed", async || {
        (!exists(&a1) && !exists(&b1)).then_some(())
    })
    .await;
    assert!(exists(&a2));

    // SIGTERM: the files stay.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().await.success());
    assert_eq!(std::fs::read_to_string(&a2).unwrap(), token);
}

/// Run as a user that is not root, `group` must be one of its groups and
/// `owner` cannot be given: `tokend check` says so, with the drop-in.
#[test]
fn an_unprivileged_daemon_is_told_it_cannot_give_files_away() {
    if !is_root() {
        eprintln!("skipped: needs root to run tokend check as nobody");
        return;
    }
    let out = sink_dir();
    let config = out.path().join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.a]\ntoken_url = \"https://idp.example/t\"\nclient_id = \"a\"\nclient_secret = {{ env = \"S\" }}\nsinks = [{}, {}]\n",
            sink(&out.path().join("g"), ", group = 4000123"),
            sink(&out.path().join("o"), ", owner = 0"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("setpriv runs (util-linux)");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tokend.toml:5:")
            && err.contains("sink group `4000123` is not one of tokend's groups")
            && err.contains("SupplementaryGroups=4000123"),
        "{err}"
    );
    assert!(
        err.contains("sink owner `0` needs tokend to run as root"),
        "{err}"
    );
}

/// One reload moves a file from source `b` to source `a` (whose name
/// comes first, so its write used to come before `b`'s clean-up): the file
/// holds `a`'s token and stays.
#[tokio::test]
async fn a_path_moved_between_sources_in_one_reload_holds_the_new_owners_token() {
    let idp = idp(S(3600), &["a", "b", "c"]).await;
    let out = sink_dir();
    let (moved, a_own, c_own) = (
        out.path().join("moved"),
        out.path().join("a-own"),
        out.path().join("c-own"),
    );
    let text = |a: &Path, b: Option<&Path>| {
        [
            source("a", &idp, &format!("sinks = [{}]", sink(a, ""))),
            source(
                "b",
                &idp,
                &b.map(|b| format!("sinks = [{}]", sink(b, "")))
                    .unwrap_or_default(),
            ),
            source("c", &idp, &format!("sinks = [{}]", sink(&c_own, ""))),
        ]
        .concat()
    };
    let d = daemon(&text(&a_own, Some(&moved))).start().await;
    let a_token = file_text(&a_own).await;
    let b_token = file_text(&moved).await;
    let c_token = file_text(&c_own).await;
    assert_ne!(a_token, b_token);
    let head = {
        let t = d.config_text();
        t[..t.find("[sources.a]").unwrap()].to_string()
    };
    write_private(&d.config, &format!("{head}{}", text(&moved, None)));
    wait_until(&d, |doc| doc["config"]["reloads"]["success"] == 1).await;
    // Everything the reload asked of the sinks is done once a later
    // event is: c's refresh is written after it, in order.
    let r = d
        .request(hyper::Method::POST, "/v1/sources/c/refresh")
        .await;
    assert_eq!(r.status(), 200);
    eventually("c's new token in its file", async || {
        (std::fs::read_to_string(&c_own).ok()? != c_token).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&moved).ok().as_deref(),
        Some(a_token.as_str()),
        "the moved file holds its new owner's token"
    );
    assert!(!exists(&a_own), "a's old file went");
}

/// A sink directory that does not exist yet is no reason to refuse a
/// start or a reload: the source shows a warning, the socket serves, and
/// the file comes with the next fetch once the directory exists.
#[tokio::test]
async fn a_missing_sink_directory_is_a_warning_until_it_appears() {
    let idp = idp(S(3600), &["a"]).await;
    let out = sink_dir();
    let later = out.path().join("later");
    let file = later.join("a.token");
    let d = daemon(&source(
        "a",
        &idp,
        &format!("sinks = [{}]", sink(&file, "")),
    ))
    .start()
    .await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let st = eventually("a sink warning", async || {
        let st = d.get("/v1/sources/a").await.json();
        (!st["warnings"].as_array()?.is_empty()).then_some(st)
    })
    .await;
    assert!(
        st["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not exist (yet)"),
        "{st}"
    );
    d.log_with("does not exist (yet)").await;
    std::fs::create_dir(&later).unwrap();
    std::fs::set_permissions(&later, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = d
        .request(hyper::Method::POST, "/v1/sources/a/refresh")
        .await;
    assert_eq!(r.status(), 200);
    let written = file_text(&file).await;
    assert_ne!(written, token, "the refreshed token");
    eventually("the warning to clear", async || {
        let st = d.get("/v1/sources/a").await.json();
        st["warnings"].as_array()?.is_empty().then_some(())
    })
    .await;
}

/// A sink directory swapped for a link after the config loaded: writes
/// and removals are refused, never followed into where the link leads.
#[tokio::test]
async fn a_sink_directory_swapped_for_a_link_is_never_followed() {
    let idp = idp(S(3600), &["a"]).await;
    let out = sink_dir();
    let (dir, elsewhere) = (out.path().join("sinks"), out.path().join("elsewhere"));
    for d in [&dir, &elsewhere] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = dir.join("a.token");
    let d = daemon(&source(
        "a",
        &idp,
        &format!("sinks = [{}]", sink(&file, "")),
    ))
    .start()
    .await;
    file_text(&file).await;
    std::fs::rename(&dir, out.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let r = d
        .request(hyper::Method::POST, "/v1/sources/a/refresh")
        .await;
    assert_eq!(r.status(), 200);
    let st = eventually("a sink warning", async || {
        let st = d.get("/v1/sources/a").await.json();
        (!st["warnings"].as_array()?.is_empty()).then_some(st)
    })
    .await;
    assert!(
        st["warnings"][0]
            .as_str()
            .unwrap()
            .contains("is now a symbolic link"),
        "{st}"
    );
    assert!(
        names_in(&elsewhere).is_empty(),
        "nothing written through the link"
    );
}

/// Killed (SIGKILL: nothing cleaned up), then started with `b` gone and
/// `a` under another client id: the next start removes b's file, a's file
/// of the earlier identity, and the temporary a killed write left.
#[tokio::test]
async fn the_next_start_removes_what_a_killed_run_left_stale() {
    let idp = idp(S(3600), &["a", "b", "keep"]).await;
    let out = sink_dir();
    let (a, b, keep) = (
        out.path().join("a.token"),
        out.path().join("b.token"),
        out.path().join("keep.token"),
    );
    let body = |a_client: &str, with_b: bool| {
        let mut t = source_as("a", a_client, &idp, &format!("sinks = [{}]", sink(&a, "")));
        if with_b {
            t.push_str(&source("b", &idp, &format!("sinks = [{}]", sink(&b, ""))));
        }
        t.push_str(&source(
            "keep",
            &idp,
            &format!("sinks = [{}]", sink(&keep, "")),
        ));
        t
    };
    let d = daemon(&body("a", true)).start().await;
    for f in [&a, &b, &keep] {
        file_text(f).await;
    }
    let temp = out.path().join(".a.token.tokend-0123456789abcdef");
    std::fs::write(&temp, "half-written").unwrap();
    let socket = d.socket.clone();
    let dir = d.kill_keep_dir();

    // `a` now authenticates as a client the IdP does not know: it never
    // gets a token, so only the start-up clean-up can remove its old file.
    let d = daemon(&body("stranger", false))
        .at(dir, socket)
        .start()
        .await;
    eventually(
        "b's and a's stale files and the temporary to go",
        async || (!exists(&b) && !exists(&a) && !exists(&temp)).then_some(()),
    )
    .await;
    wait_for_status(&d, "/v1/tokens/keep", 200).await;
    assert!(exists(&keep), "a file still configured stays");
    d.log_with("removing a sink file the last run left").await;
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop; or
/// why not (mounting needs root and a mount namespace that allows it).
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = sink_dir();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The disk fills: refreshes succeed but the sink cannot be written. The
/// file keeps the token it held, and goes when that token stops being
/// served; the socket serves the new token all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_the_old_token_whose_death_removes_the_file() {
    let fs = match Tmpfs::mount("64k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // Refreshed after 5.8 s, served until 7 s.
    let idp = idp(S(12), &["a"]).await;
    let path = fs.path().join("a.token");
    let d = daemon(&source(
        "a",
        &idp,
        &format!("sinks = [{}]", sink(&path, "")),
    ))
    .start()
    .await;
    let first = file_text(&path).await;
    // The first token is served until 5 s before it expires.
    let held = d.get("/v1/tokens/a").await.json();
    assert_eq!(held["access_token"].as_str(), Some(first.as_str()));
    let expires = tokend::timefmt::parse_rfc3339(held["expires_at"].as_str().unwrap()).unwrap();
    let served_until = expires - S(5);
    fs.fill();
    // The socket serves the refreshed token, which the sink cannot write.
    eventually_within(S(8), "the refreshed token on the socket", async || {
        let served = d.get("/v1/tokens/a?format=raw").await.text();
        (served != first).then_some(())
    })
    .await;
    wait_until(&d, |doc| {
        doc["sources"][0]["warnings"]
            .to_string()
            .contains("could not be written")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        first,
        "the failed write left the old token"
    );
    eventually_within(S(8), "the file of the dead first token to go", async || {
        (!exists(&path)).then_some(())
    })
    .await;
    // Not before: while the first token was still served, its file stayed
    // (expires_at is whole seconds, rounded down, so this errs early).
    assert!(
        std::time::SystemTime::now() >= served_until,
        "the file went before its token stopped being served"
    );
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
}
