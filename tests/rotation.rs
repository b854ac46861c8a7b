//! Rotation as deploy tools, certbot-like renewals and admins do it: files
//! reached through chains of symbolic links re-pointed at any depth, a
//! certificate renewed with the same key, a relative `-c`, an empty main
//! file, a lazy source made eager, and a certificate about to expire.

mod common;

use common::entra::EntraDouble;
use common::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// Re-points `link` at `target` at once, as deploy tools do: a new link
/// beside it, renamed over it.
fn repoint(link: &Path, target: &str) {
    let tmp = link.with_extension("new-link");
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn mkdirs(dir: &Path, subdirs: &[&str]) {
    for s in subdirs {
        std::fs::create_dir_all(dir.join(s)).unwrap();
    }
}

/// `etc/tokend.toml -> data/tokend.toml`, `data -> v1`: an admin's layout.
/// Renaming a new `data -> v2` over the old link is a reload.
#[tokio::test]
async fn a_config_behind_a_file_link_and_a_directory_link_follows_the_directory_link() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, ""))
        .layout(|dir, text| {
            let etc = dir.join("etc");
            mkdirs(&etc, &["v1", "v2"]);
            write_private(&etc.join("v1/tokend.toml"), text);
            symlink("v1", etc.join("data")).unwrap();
            symlink("data/tokend.toml", etc.join("tokend.toml")).unwrap();
            etc.join("tokend.toml")
        })
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    let etc = d.dir.path().join("etc");
    let two = format!("{}{}", d.config_text(), source("b", &idp, ""));
    write_private(&etc.join("v2/tokend.toml"), &two);
    repoint(&etc.join("data"), "v2");
    wait_sources(&d, &["a", "b"]).await;
    wait_for_status(&d, "/v1/tokens/b", 200).await;
}

/// `current -> releases/1`, and inside it `conf -> ../../configs/a`: a link
/// two levels down is re-pointed (by delete and create), then the outer
/// one; each change is seen, and so is the next one in the new chain.
#[tokio::test]
async fn links_at_every_depth_are_followed_and_the_new_chain_is_watched() {
    let idp = idp(S(3600), &["a", "b", "c"]).await;
    let d = daemon(&source("a", &idp, ""))
        .layout(|dir, text| {
            mkdirs(
                dir,
                &[
                    "releases/1",
                    "releases/2",
                    "configs/a",
                    "configs/b",
                    "configs/c",
                ],
            );
            write_private(&dir.join("configs/a/tokend.toml"), text);
            symlink("../../configs/a", dir.join("releases/1/conf")).unwrap();
            symlink("../../configs/c", dir.join("releases/2/conf")).unwrap();
            symlink("releases/1", dir.join("current")).unwrap();
            dir.join("current/conf/tokend.toml")
        })
        .start()
        .await;
    let root = d.dir.path().to_path_buf();
    let base = d.config_text();
    write_private(
        &root.join("configs/b/tokend.toml"),
        &format!("{base}{}", source("b", &idp, "")),
    );
    write_private(
        &root.join("configs/c/tokend.toml"),
        &format!("{base}{}", source("c", &idp, "")),
    );
    // Depth 2: the link inside the linked directory, deleted and made anew.
    std::fs::remove_file(root.join("releases/1/conf")).unwrap();
    symlink("../../configs/b", root.join("releases/1/conf")).unwrap();
    wait_sources(&d, &["a", "b"]).await;
    // Depth 1: the outer link, to a release whose inner link leads elsewhere.
    repoint(&root.join("current"), "releases/2");
    wait_sources(&d, &["a", "c"]).await;
    // The new chain is watched: an edit where it now leads is applied.
    write_private(&root.join("configs/c/tokend.toml"), &base);
    wait_sources(&d, &["a"]).await;
}

/// A secret reached through `secrets/current -> gen1` and
/// `gen1/graph -> ../store/graph-1`: re-pointing either link rotates it.
#[tokio::test]
async fn a_secret_behind_two_links_rotates_when_either_is_re_pointed() {
    let idp = idp(S(3600), &["rot"]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("secrets");
    mkdirs(&s, &["gen1", "gen2", "store"]);
    write_private(&s.join("store/graph-1"), &format!("{SECRET}\n"));
    write_private(&s.join("store/graph-2"), "second-secret\n");
    write_private(&s.join("store/graph-3"), "third-secret\n");
    symlink("../store/graph-1", s.join("gen1/graph")).unwrap();
    symlink("../store/graph-2", s.join("gen2/graph")).unwrap();
    symlink("gen1", s.join("current")).unwrap();
    let body = source_with_file_secret("rot", &idp, &s.join("current/graph"), "");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/rot", 200).await;
    let last_secret = || idp.secrets_seen().last().cloned().unwrap_or_default();
    assert_eq!(last_secret(), SECRET);

    idp.add_client("rot", "second-secret");
    repoint(&s.join("current"), "gen2");
    eventually("a fetch with the secret gen2 leads to", async || {
        (last_secret() == "second-secret").then_some(())
    })
    .await;
    idp.add_client("rot", "third-secret");
    repoint(&s.join("gen2/graph"), "../store/graph-3");
    eventually(
        "a fetch with the secret the inner link leads to",
        async || (last_secret() == "third-secret").then_some(()),
    )
    .await;
}

/// An include file that is a link to a file elsewhere: an edit of the
/// file it leads to is seen, though only `sources.d` names it.
#[tokio::test]
async fn an_include_file_behind_a_link_is_followed() {
    let idp = idp(S(3600), &["a", "b", "c"]).await;
    let b = source("b", &idp, "");
    let d = daemon(&source("a", &idp, ""))
        .layout(move |dir, text| {
            mkdirs(dir, &["sources.d", "shared"]);
            write_private(&dir.join("tokend.toml"), text);
            write_private(&dir.join("shared/b.toml"), &b);
            symlink("../shared/b.toml", dir.join("sources.d/b.toml")).unwrap();
            dir.join("tokend.toml")
        })
        .start()
        .await;
    let root = d.dir.path().to_path_buf();
    wait_sources(&d, &["a", "b"]).await;
    // In place, in a directory only the link leads to.
    write_private(
        &root.join("shared/b.toml"),
        &format!("{}{}", source("b", &idp, ""), source("c", &idp, "")),
    );
    wait_sources(&d, &["a", "b", "c"]).await;
}

/// `tokend run -c tokend.toml` from the config's directory reloads too.
#[tokio::test]
async fn a_relative_config_path_is_reloaded() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).relative().start().await;
    write_private(
        &d.config,
        &format!("{}{}", d.config_text(), source("b", &idp, "")),
    );
    wait_sources(&d, &["a", "b"]).await;
}

/// An Entra source whose certificate and key sit in `pki/current`, a link
/// to a directory where `app.pem -> ../archive/app-1.pem` (certbot's
/// layout, two links deep).
fn entra_source(entra: &EntraDouble, pki: &Path) -> String {
    format!(
        "[sources.graph]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"{}\"\nclient_id = \"app-id\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\n",
        entra.authority(),
        pki.join("current/app.pem").display(),
        pki.join("current/app.key").display()
    )
}

/// A new certificate for the same key, made with openssl.
fn renew(key: &Path, out: &Path, cn: &str) {
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-days", "30", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-key")
        .arg(key)
        .arg("-out")
        .arg(out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

/// A certificate renewed with the same key is a credential change: seen
/// from the bytes on disk (the key file did not change), fetched with at
/// once, although the source was backing off after a permanent error.
#[tokio::test]
async fn a_certificate_renewed_with_the_same_key_is_used_at_once() {
    let entra = EntraDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    mkdirs(&pki, &["live", "archive"]);
    let (first, key) = make_cert(&pki.join("archive"), "app-1", "rsa");
    std::fs::rename(&key, pki.join("archive/app.key")).unwrap();
    let key = pki.join("archive/app.key");
    symlink("../archive/app-1.pem", pki.join("live/app.pem")).unwrap();
    symlink("../archive/app.key", pki.join("live/app.key")).unwrap();
    symlink("live", pki.join("current")).unwrap();
    // The registration has only the renewed certificate: the first is refused.
    let renewed = pki.join("archive/app-2.pem");
    renew(&key, &renewed, "app-renewed");
    entra.register("app-id", &renewed);
    assert_ne!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&renewed).unwrap()
    );
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&entra_source(&entra, &pki))
        .at(dir, socket)
        .start()
        .await;
    let r = wait_for_status(&d, "/v1/tokens/graph", 503).await;
    assert!(r.text().contains("AADSTS700027"), "{}", r.text());

    repoint(&pki.join("live/app.pem"), "../archive/app-2.pem");
    let r = wait_for_status(&d, "/v1/tokens/graph", 200).await;
    assert!(r.json()["access_token"]
        .as_str()
        .unwrap()
        .starts_with("entra-token-"));
}

/// A new key and certificate in a new directory, `current` re-pointed at
/// it: the next assertion carries the new certificate's thumbprint.
#[tokio::test]
async fn a_new_key_and_certificate_behind_a_re_pointed_link_are_used() {
    let entra = EntraDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    mkdirs(&pki, &["gen1", "gen2"]);
    for gen in ["gen1", "gen2"] {
        let (c, k) = make_cert(&pki.join(gen), gen, "rsa");
        std::fs::rename(c, pki.join(gen).join("app.pem")).unwrap();
        std::fs::rename(k, pki.join(gen).join("app.key")).unwrap();
        entra.register("app-id", &pki.join(gen).join("app.pem"));
    }
    symlink("gen1", pki.join("current")).unwrap();
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&entra_source(&entra, &pki))
        .at(dir, socket)
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/graph", 200).await;
    let thumbprint = |gen: &str| {
        tokend::cert::Certificate::load(&pki.join(gen).join("app.pem"))
            .unwrap()
            .x5t_s256()
    };
    let last_x5t = || {
        let a = entra.assertions().last().cloned().unwrap();
        let header = a.split('.').next().unwrap().to_string();
        let json =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()["x5t#S256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(last_x5t(), thumbprint("gen1"));
    repoint(&pki.join("current"), "gen2");
    eventually("an assertion signed with the new certificate", async || {
        (last_x5t() == thumbprint("gen2")).then_some(())
    })
    .await;
    assert_eq!(d.get("/v1/tokens/graph").await.status(), 200);
}

/// A writer that truncates in one open and appends in another (`: > f;
/// cat new >> f`): the empty file between the two is never applied.
#[tokio::test]
async fn an_empty_main_file_keeps_the_running_config() {
    let idp = idp(S(3600), &["a", "b"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let token = wait_for_status(&d, "/v1/tokens/a?format=raw", 200)
        .await
        .text();
    let full = format!("{}{}", d.config_text(), source("b", &idp, ""));
    // Truncated and closed: a settled, empty file.
    std::fs::File::create(&d.config).unwrap();
    let doc = wait_until(&d, |doc| doc["config"]["last_reload"]["ok"] == false).await;
    let err = doc["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("is empty"), "{err}");
    assert_eq!(d.get("/v1/tokens/a?format=raw").await.text(), token);
    d.log_with("is empty").await;
    // The rest arrives in a second open.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&d.config)
            .unwrap();
        f.write_all(full.as_bytes()).unwrap();
    }
    let doc = wait_sources(&d, &["a", "b"]).await;
    assert_eq!(doc["config"]["last_reload"]["ok"], true);
    assert!(!d.log().contains("removed=[\"a\"]"), "{}", d.log());
    assert_eq!(
        d.get("/v1/tokens/a?format=raw").await.text(),
        token,
        "a was never removed, so it kept its token"
    );
}

/// A lazy source that a reload makes eager (`eager = true`, or sinks)
/// fetches at once: readiness does not wait for a first request.
#[tokio::test]
async fn a_lazy_source_made_eager_by_a_reload_starts_at_once() {
    let idp = idp(S(3600), &["lazy", "sunk"]).await;
    let d = daemon(&format!(
        "{}{}",
        source("lazy", &idp, "eager = false"),
        source("sunk", &idp, "eager = false")
    ))
    .start()
    .await;
    // Lazy sources start no task until asked: idle, nothing fetched.
    for name in ["lazy", "sunk"] {
        let st = d.get(&format!("/v1/sources/{name}")).await.json();
        assert_eq!(st["state"], "idle", "{st}");
    }
    assert_eq!(idp.issued(), 0, "lazy sources fetch nothing at start");
    // Sinks make "sunk" eager (whatever its `eager` says).
    let sink = d.dir.path().join("sunk.token");
    let text = d.config_text().replace(
        "[sources.sunk]",
        &format!(
            "[sources.sunk]\nsinks = [{{ path = \"{}\" }}]",
            sink.display()
        ),
    );
    write_private(&d.config, &text);
    eventually("the sink file of the source sinks made eager", async || {
        exists(&sink).then_some(())
    })
    .await;
    assert!(d.get("/v1/sources/lazy").await.json()["state"] == "idle");
    write_private(
        &d.config,
        &d.config_text().replacen("eager = false", "eager = true", 1),
    );
    eventually("the source made eager to fetch", async || {
        (d.get("/v1/sources/lazy").await.json()["state"] == "ready").then_some(())
    })
    .await;
    assert_eq!(d.get("/readyz").await.status(), 200);
    assert_eq!(idp.issued(), 2, "each started once, asked by no one");
}

/// From 30 days before a certificate's notAfter, the source's status
/// warns, not only the daily log line.
#[tokio::test]
async fn a_certificate_near_its_expiry_shows_in_status_warnings() {
    let entra = EntraDouble::start().await;
    let keys = tempfile::tempdir().unwrap();
    // make_cert's certificates live 30 days: inside the warning window.
    let (cert, key) = make_cert(keys.path(), "app", "rsa");
    entra.register("app-id", &cert);
    let body = format!(
        "[sources.graph]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"{}\"\nclient_id = \"app-id\"\nclient_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }} }}\n{}",
        entra.authority(),
        cert.display(),
        key.display(),
        source("far", &DevIdp::start(S(3600)).await.unwrap(), "credential_expires = \"2099-01-01\"")
    );
    let d = daemon(&body).start().await;
    let st = d.get("/v1/sources/graph").await.json();
    let warnings = st["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("expires in 29 days")),
        "{st}"
    );
    let far = d.get("/v1/sources/far").await.json();
    assert_eq!(far["warnings"], serde_json::json!([]), "{far}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("graph: warning: the client credential of source graph expires in 29 days"),
        "{text}"
    );
}
