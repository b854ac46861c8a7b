//! Hot reload with real files: the daemon follows in-place edits, editor
//! renames, ConfigMap symlink swaps, include files and rotated secrets, and a
//! bad edit never costs a request.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test]
async fn in_place_write_is_applied() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let text = d.config_text();
    // std::fs::write truncates and rewrites the same inode.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&d.config).unwrap());
    write_private(&d.config, &format!("{text}{}", source("b", &idp, "")));
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&d.config).unwrap()),
        inode
    );
    wait_sources(&d, &["a", "b"]).await;
    wait_for_status(&d, "/v1/tokens/b", 200).await;
}

#[tokio::test]
async fn editor_tmp_file_and_rename_is_applied() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let tmp = d.dir.path().join(".tokend.toml.swp");
    write_private(
        &tmp,
        &format!("{}{}", d.config_text(), source("b", &idp, "")),
    );
    std::fs::rename(&tmp, &d.config).unwrap();
    wait_sources(&d, &["a", "b"]).await;
}

/// The layout Kubernetes gives a mounted ConfigMap.
fn configmap(dir: &Path, version: &str, text: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    write_private(&data.join("tokend.toml"), text);
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn configmap_data_symlink_swap_is_applied() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, ""))
        .layout(|dir, text| {
            let cm = dir.join("cm");
            std::fs::create_dir(&cm).unwrap();
            configmap(&cm, "2026_11_29_v1", text);
            let main = cm.join("tokend.toml");
            std::os::unix::fs::symlink("..data/tokend.toml", &main).unwrap();
            main
        })
        .start()
        .await;
    let cm = d.dir.path().join("cm");
    let new = format!("{}{}", d.config_text(), source("b", &idp, ""));
    configmap(&cm, "2026_11_29_v2", &new);
    std::fs::remove_dir_all(cm.join("..2026_11_29_v1")).unwrap();
    wait_sources(&d, &["a", "b"]).await;
    wait_for_status(&d, "/v1/tokens/b", 200).await;
}

#[tokio::test]
async fn invalid_edit_keeps_serving_and_shows_the_error_then_a_fix_applies() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let good = d.config_text();
    write_private(
        &d.config,
        &format!("{good}\n[sources.b]\nclient_id = \"b\"\nmin_ttl = \"soon\"\n"),
    );
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let err = doc["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("{}:", d.config.display())) && err.contains("min_ttl"),
        "{err}"
    );
    assert_eq!(
        d.get("/v1/tokens/a?format=raw").await.text(),
        token,
        "the running config still serves"
    );
    let ready = d.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert!(ready.json()["config_error"]
        .as_str()
        .unwrap()
        .contains("min_ttl"));
    d.log_with("reload failed, keeping the running configuration")
        .await;
    let metrics = d.get("/metrics").await.text();
    assert!(
        metrics.contains("tokend_config_last_reload_successful 0\n")
            && metrics.contains("tokend_source_state{source=\"a\",state=\"ready\"} 1\n")
            && !metrics.contains("tokend_source_state{source=\"a\",state=\"failed\"}"),
        "{metrics}"
    );

    write_private(&d.config, &format!("{good}{}", source("b", &idp, "")));
    let doc = wait_sources(&d, &["a", "b"]).await;
    assert_eq!(doc["config"]["last_reload"]["ok"], true);
    let metrics = d.get("/metrics").await.text();
    assert!(
        metrics.contains("tokend_config_last_reload_successful 1\n"),
        "{metrics}"
    );
    assert_eq!(doc["config"]["reloads"]["error"], 1);
    assert_eq!(
        d.get("/readyz").await.json()["config_error"],
        serde_json::Value::Null
    );
    assert_eq!(
        d.get("/v1/tokens/a?format=raw").await.text(),
        token,
        "unchanged source kept its token"
    );
}

#[tokio::test]
async fn sources_are_added_and_removed() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let base = d.config_text();
    write_private(&d.config, &format!("{base}{}", source("b", &idp, "")));
    wait_sources(&d, &["a", "b"]).await;
    wait_for_status(&d, "/v1/tokens/b", 200).await;
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);
    let without_a = base.replace(&source("a", &idp, ""), "");
    write_private(&d.config, &format!("{without_a}{}", source("b", &idp, "")));
    wait_sources(&d, &["b"]).await;
    let r = d.get("/v1/tokens/a").await;
    assert_eq!(
        (r.status(), r.json()["error"].as_str().unwrap()),
        (404, "unknown_source")
    );
    // Its metric series went with it.
    let metrics = d.get("/metrics").await.text();
    assert!(metrics.contains("source=\"b\""), "{metrics}");
    assert!(!metrics.contains("source=\"a\""), "{metrics}");
}

#[tokio::test]
async fn rotated_secret_file_keeps_the_token_and_the_next_fetch_uses_the_new_secret() {
    let idp = idp(S(3600), &["rot"]).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let file = secrets.join("rot");
    write_private(&file, &format!("{SECRET}\n"));
    let body = source_with_file_secret("rot", &idp, &file, "");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    let old = wait_for_status(&d, "/v1/tokens/rot?format=raw", 200)
        .await
        .text();

    // The IdP now takes only the new secret, and answers slowly.
    idp.add_client("rot", "rotated-secret");
    idp.set_delay(S(2));
    write_private(&file, "rotated-secret\n");
    eventually("a fetch with the new secret", async || {
        (idp.secrets_seen().last().map(String::as_str) == Some("rotated-secret")).then_some(())
    })
    .await;
    // While that fetch is in flight, the old token is still served.
    assert_eq!(d.get("/v1/tokens/rot?format=raw").await.text(), old);
    let new = eventually("the new token", async || {
        let t = d.get("/v1/tokens/rot?format=raw").await.text();
        (t != old).then_some(t)
    })
    .await;
    assert!(!new.is_empty());
    assert_eq!(
        d.get("/v1/sources/rot").await.json()["consecutive_failures"],
        0
    );
}

#[tokio::test]
async fn scope_change_fetches_a_new_token() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, "scopes = [\"read\"]"))
        .start()
        .await;
    let old = wait_for_status(&d, "/v1/tokens/a", 200).await.json();
    assert_eq!(old["scope"], "read");
    write_private(
        &d.config,
        &d.config_text()
            .replace("scopes = [\"read\"]", "scopes = [\"read\", \"write\"]"),
    );
    let new = eventually("a token with the new scope", async || {
        let j = d.get("/v1/tokens/a").await.json();
        (j["scope"] == "read write").then_some(j)
    })
    .await;
    assert_ne!(new["access_token"], old["access_token"]);
    assert_eq!(idp.scopes_seen().last().unwrap(), "read write");
}

#[tokio::test]
async fn sighup_reloads_an_unchanged_file_and_counts_it() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    d.signal(libc::SIGHUP);
    wait_until(&d, |doc| doc["config"]["reloads"]["success"] == 1).await;
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
    assert_eq!(idp.issued(), 1, "an unchanged source is not refetched");
}

#[tokio::test]
async fn same_source_name_in_main_file_and_sources_d_is_an_error_naming_both() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let inc = d.dir.path().join("sources.d");
    std::fs::create_dir(&inc).unwrap();
    write_private(&inc.join("dup.toml"), &source("a", &idp, ""));
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let err = doc["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(
        err.contains(&inc.join("dup.toml").display().to_string()),
        "{err}"
    );
    assert!(err.contains(&d.config.display().to_string()), "{err}");
    assert!(err.contains("defined twice"), "{err}");
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);

    // Renamed in the include file: both run.
    write_private(
        &inc.join("dup.toml"),
        &source("a2", &idp, "client_id = \"a\"").replacen("client_id = \"a2\"\n", "", 1),
    );
    wait_sources(&d, &["a", "a2"]).await;
}

#[tokio::test]
async fn a_hundred_rapid_writes_end_in_the_final_content_with_few_reloads() {
    let idp = idp(S(3600), &["a", "last"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let base = d.config_text();
    for i in 0..99 {
        write_private(&d.config, &format!("{base}# write {i}\n"));
    }
    write_private(
        &d.config,
        &format!("{base}# write 99\n{}", source("last", &idp, "")),
    );
    let doc = wait_sources(&d, &["a", "last"]).await;
    let reloads = doc["config"]["reloads"]["success"].as_u64().unwrap();
    println!("{reloads} reloads for 100 writes");
    // Writes that follow each other closely are read once they stop; none
    // of the truncated states in between is ever an error.
    assert!(reloads < 50, "{reloads} reloads for 100 writes: {doc}");
    assert_eq!(doc["config"]["reloads"]["error"], 0);
}

/// A writer that truncates the file, pauses, then writes the rest: the
/// truncated content (empty, valid, zero sources) is never applied.
#[tokio::test]
async fn a_half_written_file_is_never_applied() {
    use std::io::Write;
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let full = format!("{}{}", d.config_text(), source("b", &idp, ""));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&d.config)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Mid-way, the empty file has not removed anything.
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
    f.write_all(full.as_bytes()).unwrap();
    drop(f);
    let doc = wait_sources(&d, &["a", "b"]).await;
    assert_eq!(
        d.get("/v1/tokens/a?format=raw").await.text(),
        token,
        "a was never removed, so it kept its token"
    );
    assert_eq!(doc["config"]["reloads"]["success"], 1, "{doc}");
    assert!(!d.log().contains("removed=[\"a\"]"), "{}", d.log());
}

/// An edit made while the daemon starts (after it read the file, before
/// it could have watched it) is applied all the same.
#[tokio::test]
async fn an_edit_made_while_the_daemon_starts_is_applied() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let mut d = daemon(&source("a", &idp, "")).spawn();
    // Give the daemon a head start so the edit tends to land after its
    // read; wherever it lands, it must end up applied.
    for _ in 0..50 {
        if d.log().contains("tokend listening") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let text = d.config_text();
    write_private(&d.config, &format!("{text}{}", source("b", &idp, "")));
    d.wait_ready().await;
    wait_sources(&d, &["a", "b"]).await;
}

/// With the log written into the watched config directory at trace
/// level, the watcher's own lines must not feed back into more events.
#[tokio::test]
async fn a_trace_log_in_the_config_directory_does_not_feed_on_itself() {
    let idp = idp(S(3600), &["a"]).await;
    let mut d = daemon(&source("a", &idp, ""))
        .rust_log("trace")
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = d.log().lines().count();
    tokio::time::sleep(S(2)).await;
    let grown = d.log().lines().count() - before;
    // Idle, the daemon has next to nothing to say; a feedback loop writes
    // tens of thousands of lines a second.
    assert!(grown < 200, "{grown} log lines in 2 s of idling");
    let start = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().await.success());
    assert!(start.elapsed() < S(5), "SIGTERM took {:?}", start.elapsed());
}

#[tokio::test]
async fn deleted_main_file_keeps_the_running_config() {
    let idp = idp(S(3600), &["a"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let text = d.config_text();
    std::fs::remove_file(&d.config).unwrap();
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    assert!(doc["config"]["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("cannot read config file"));
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
    write_private(&d.config, &text);
    wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == true).await;
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
}

/// A reader that only opens and reads the config and a secret file, every
/// 20 ms, never holds an edit back: reads are not changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_polling_the_files_never_holds_a_reload_back() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_private(&secret, SECRET);
    let d = daemon(&source_with_file_secret("a", &idp, &secret, ""))
        .start()
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, files) = (stop.clone(), [d.config.clone(), secret.clone()]);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for f in &files {
                    let _ = std::fs::read(f);
                    reads += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            reads
        })
    };
    let base = d.config_text();
    write_private(&d.config, &format!("{base}{}", source("b", &idp, "")));
    let applied = wait_sources(&d, &["a", "b"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 10, "the reader was reading");
    assert_eq!(applied["config"]["last_reload"]["ok"], true);
}

/// An include refused for its mode is applied once the mode is fixed as
/// the message says: the chmod is the event, and the digest sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_include_is_applied_once_its_mode_is_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let inc = d.dir.path().join("sources.d");
    std::fs::create_dir(&inc).unwrap();
    let file = inc.join("b.toml");
    std::fs::write(&file, source("b", &idp, "")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let err = doc["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("chmod"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let doc = wait_sources(&d, &["a", "b"]).await;
    assert_eq!(doc["config"]["last_reload"]["ok"], true);

    // And the other way: an accepted include made writable by others is
    // noticed without an edit, and refused.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
}

/// A reload refused for a `ca_file` that does not exist yet is applied
/// when the file appears (Kubernetes updates a ConfigMap and the Secret
/// holding the CA independently, in either order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refused_for_a_missing_file_is_applied_when_it_appears() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let certs = tempfile::tempdir().unwrap();
    let ca = certs.path().join("ca.pem");
    let base = d.config_text();
    write_private(
        &d.config,
        &format!(
            "{base}{}",
            source("b", &idp, &format!("ca_file = \"{}\"", ca.display()))
        ),
    );
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    assert!(
        doc["config"]["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("ca_file"),
        "{doc}"
    );
    let made = tempfile::tempdir().unwrap();
    let (pem, _) = make_cert(made.path(), "ca", "ec");
    std::fs::rename(pem, &ca).unwrap();
    let doc = wait_sources(&d, &["a", "b"]).await;
    assert_eq!(doc["config"]["last_reload"]["ok"], true);
}

/// A deploy that replaces `sources.d` non-atomically (remove, pause, copy)
/// never drops the included sources for the moment between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_d_replaced_non_atomically_keeps_its_sources() {
    let idp = idp(S(3600), &["a", "b", "c"]).await;
    let d = daemon(&source("a", &idp, ""))
        .layout(|dir, text| {
            let inc = dir.join("sources.d");
            std::fs::create_dir(&inc).unwrap();
            write_private(&inc.join("b.toml"), "");
            let main = dir.join("tokend.toml");
            write_private(&main, text);
            main
        })
        .start()
        .await;
    let inc = d.dir.path().join("sources.d");
    write_private(&inc.join("b.toml"), &source("b", &idp, ""));
    wait_sources(&d, &["a", "b"]).await;
    let token = wait_for_status(&d, "/v1/tokens/b?format=raw", 200)
        .await
        .text();
    let issued = idp.issued();

    std::fs::remove_dir_all(&inc).unwrap();
    let ready = eventually("the gap to be noticed", async || {
        let r = d.get("/readyz").await.json();
        r["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("is gone"))
            .then_some(r)
    })
    .await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(d.get("/v1/tokens/b?format=raw").await.text(), token);

    let new = d.dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    write_private(&new.join("b.toml"), &source("b", &idp, ""));
    write_private(&new.join("c.toml"), &source("c", &idp, ""));
    std::fs::rename(&new, &inc).unwrap();
    wait_sources(&d, &["a", "b", "c"]).await;
    assert_eq!(
        d.get("/v1/tokens/b?format=raw").await.text(),
        token,
        "b kept its token through the gap"
    );
    wait_for_status(&d, "/v1/tokens/c", 200).await;
    assert_eq!(idp.issued(), issued + 1, "only c was fetched");
}
