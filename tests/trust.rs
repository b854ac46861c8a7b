//! What tokend trusts (docs/security.md, "What tokend trusts"): a config,
//! include or secret file is judged by the descriptor it was read from
//! (owner, mode, ACL), so neither a rename race, nor an ACL entry, nor a
//! group another user has as their primary group gets past the rule.
//! Users and groups are made for each test and removed after (root).

mod common;

use common::others::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// `tokend check -c config`: exit code and everything it printed.
fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "-c"])
        .arg(config)
        .env_remove("TOKEND_CONFIG")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn setfacl(args: &[&str], path: &Path) -> bool {
    Command::new("setfacl")
        .args(args)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// A main config (root, 0600) in a fresh directory: its path.
fn main_config(dir: &Path, body: &str) -> PathBuf {
    let main = dir.join("tokend.toml");
    write_private(
        &main,
        &format!(
            "[server]\nsocket = \"{}\"\n{body}",
            dir.join("tokend.sock").display()
        ),
    );
    main
}

/// As user U: swaps U's directories `cur` (which holds a link to a
/// root-owned file) and `other` (which holds U's own file) with
/// renameat2(RENAME_EXCHANGE) as fast as it can, so any two lookups of a
/// path through `cur` may see different files. Prints the swaps made.
/// Arguments: HOME SECONDS.
const RACER: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
home, secs = sys.argv[1], float(sys.argv[2])
cur, other = (os.path.join(home, d).encode() for d in ("cur", "other"))
end = time.monotonic() + secs
swaps = 0
while time.monotonic() < end:
    for _ in range(100):
        # AT_FDCWD, RENAME_EXCHANGE
        if libc.renameat2(-100, cur, -100, other, 2) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 100
print(swaps)
"#;

/// The layout of the reproduced attack: `sources.d/app.toml` links into
/// U's directory `cur`, whose `app.toml` links to a root-owned harmless
/// file; U's `other/app.toml` defines `evil`, which would send a root-only
/// secret to U's server. U swaps the two directories without pause while
/// the daemon reloads (SIGHUP every 25 ms). A judgement made by a second
/// lookup of the path (what tokend did) loses this race in about one
/// reload in four, so within a second; one made on the descriptor read
/// cannot, whatever the timing. The pass means something because the test
/// also sees reloads refused for U's file and reloads that succeeded: the
/// reads did see both sides of the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_race_can_refuse_a_reload_but_never_load_the_attackers_file() {
    if !root_or_skip("a_rename_race_can_refuse_a_reload_but_never_load_the_attackers_file") {
        return;
    }
    let u = TempUser::new("race", None);
    let healthy = idp(Duration::from_secs(600), &["main", "harmless"]).await;
    let attacker = idp(Duration::from_secs(600), &["evil"]).await;
    let base = tempfile::tempdir().unwrap();
    set_mode(base.path(), 0o755);
    let secret = base.path().join("root-only.secret");
    write_private(&secret, SECRET);
    let harmless = base.path().join("harmless.toml");
    std::fs::write(&harmless, source("harmless", &healthy, "")).unwrap();
    set_mode(&harmless, 0o644);
    let home = base.path().join("home");
    for d in [&home, &home.join("cur"), &home.join("other")] {
        std::fs::create_dir(d).unwrap();
        set_mode(d, 0o755);
        chown(d, u.uid, u.gid);
    }
    let cur_link = home.join("cur/app.toml");
    std::os::unix::fs::symlink(&harmless, &cur_link).unwrap();
    chown(&cur_link, u.uid, u.gid);
    let evil = home.join("other/app.toml");
    std::fs::write(
        &evil,
        format!(
            "[sources.evil]\ntoken_url = \"{}\"\nclient_id = \"evil\"\nclient_secret = {{ file = \"{}\" }}\n",
            attacker.token_url(),
            secret.display()
        ),
    )
    .unwrap();
    set_mode(&evil, 0o644);
    chown(&evil, u.uid, u.gid);

    let link_target = cur_link.clone();
    let d = daemon(&source("main", &healthy, ""))
        .layout(move |dir, text| {
            let main = dir.join("tokend.toml");
            write_private(&main, text);
            let inc = dir.join("sources.d");
            std::fs::create_dir(&inc).unwrap();
            set_mode(&inc, 0o755);
            std::os::unix::fs::symlink(&link_target, inc.join("app.toml")).unwrap();
            main
        })
        .start()
        .await;
    wait_until(&d, |doc| {
        doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "harmless")
    })
    .await;

    let race = Duration::from_secs(8);
    let mut racer = Command::new("python3");
    racer
        .args(["-c", RACER])
        .arg(&home)
        .arg(race.as_secs().to_string());
    let racer = run_as(&mut racer, u.uid, u.gid, &[])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < race {
        d.signal(libc::SIGHUP);
        let doc = d.get("/v1/sources").await.json();
        assert!(
            !doc["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "evil"),
            "the attacker's source was loaded: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = racer.wait_with_output().unwrap();
    assert!(out.status.success(), "the racer failed");
    let swaps: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(swaps > 1000, "only {swaps} swaps");
    assert_eq!(
        attacker.requests(),
        0,
        "the root-only secret went to U's server"
    );
    let doc = d.get("/v1/sources").await.json();
    let reloads = &doc["config"]["reloads"];
    assert!(
        reloads["error"].as_u64().unwrap() > 0 && reloads["success"].as_u64().unwrap() > 0,
        "the reloads did not see both sides of the swap, so the race was never run: {reloads}"
    );
    let refused = d.log_with(&format!("belongs to uid {}", u.uid)).await;
    assert!(refused.contains("app.toml"), "{refused}");
}

/// A named ACL entry that lets another user write a config or secret file
/// is refused like the same access through the group bits; one that lets
/// them read a secret file is a warning. Removing it, as the hint says,
/// makes the file acceptable.
#[test]
fn an_acl_entry_is_judged_like_the_mode_bits() {
    if !root_or_skip("an_acl_entry_is_judged_like_the_mode_bits") {
        return;
    }
    let u = TempUser::new("acl", None);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("app.secret");
    write_private(&secret, SECRET);
    let main = main_config(
        dir.path(),
        "[sources.app]\ntoken_url = \"https://login.example.com/token\"\nclient_id = \"app\"\nclient_secret = { file = \"SECRET\" }\n"
            .replace("SECRET", secret.to_str().unwrap())
            .as_str(),
    );
    let inc = dir.path().join("sources.d");
    std::fs::create_dir(&inc).unwrap();
    set_mode(&inc, 0o755);
    let app = inc.join("app.toml");
    std::fs::write(
        &app,
        "[sources.more]\ntoken_url = \"https://login.example.com/token\"\nclient_id = \"more\"\nclient_secret = { env = \"X\" }\n",
    )
    .unwrap();
    set_mode(&app, 0o644);
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");

    // The include: root:root 0644 plus user:U:rw.
    if !setfacl(&["-m", &format!("u:{}:rw", u.uid)], &app) {
        eprintln!("skipping the rest of an_acl_entry_is_judged_like_the_mode_bits: this filesystem takes no ACL");
        return;
    }
    // U really can write it: the entry is not a formality.
    let mut append = Command::new("sh");
    append
        .arg("-c")
        .arg(format!("echo '# U was here' >> {}", app.display()));
    assert!(run_as(&mut append, u.uid, u.gid, &[])
        .status()
        .unwrap()
        .success());
    let (code, out) = check(&main);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "config file {} can be written by uid {} through an ACL entry",
            app.display(),
            u.uid
        )) && out.contains(&format!("setfacl -x u:{} {}", u.uid, app.display())),
        "{out}"
    );
    assert!(setfacl(&["-x", &format!("u:{}", u.uid)], &app));
    assert_eq!(check(&main).0, 0);

    // The secret file: written through an ACL is refused, read a warning.
    assert!(setfacl(&["-m", &format!("u:{}:rw", u.uid)], &secret));
    let (code, out) = check(&main);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "secret file {} can be written by uid {} through an ACL entry",
            secret.display(),
            u.uid
        )),
        "{out}"
    );
    assert!(setfacl(&["-m", &format!("u:{}:r", u.uid)], &secret));
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "secret file {} can be read by uid {} through an ACL entry",
            secret.display(),
            u.uid
        )),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
}

/// A secret or header file another user owns is refused: its owner could
/// write a value of their choosing (a managed-identity header they then
/// send). A world-readable one is a warning. At run time, a secret file
/// given away after start is not read: the fetch fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_or_header_file_someone_else_owns_is_refused() {
    if !root_or_skip("a_secret_or_header_file_someone_else_owns_is_refused") {
        return;
    }
    let u = TempUser::new("own", None);
    let dir = tempfile::tempdir().unwrap();
    let header = dir.path().join("jira.key");
    write_private(&header, "a-header-of-their-choosing-0123456789");
    chown(&header, u.uid, u.gid);
    let main = main_config(
        dir.path(),
        &format!(
            "[sources.graph]\ntoken_url = \"https://login.example.com/token\"\nclient_id = \"g\"\nclient_secret = {{ env = \"X\" }}\nscopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"127.0.0.1:1\"\n[managed_identity.apps.jira]\nheader = {{ file = \"{}\" }}\nsources = [\"graph\"]\n",
            header.display()
        ),
    );
    let (code, out) = check(&main);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "secret file {} belongs to uid {}, not to root or tokend's user",
            header.display(),
            u.uid
        )) && out.contains(&format!("chown root {}", header.display())),
        "{out}"
    );
    chown(&header, 0, 0);
    set_mode(&header, 0o644);
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "secret file {} can be read by anyone",
            header.display()
        )),
        "{out}"
    );

    // A running daemon: the secret file given away after the first token.
    let idp = idp(Duration::from_secs(600), &["app"]).await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("app.secret");
    write_private(&secret, SECRET);
    let d = daemon(&source_with_file_secret("app", &idp, &secret, ""))
        .start()
        .await;
    assert_eq!(d.get("/v1/tokens/app").await.status(), 200);
    chown(&secret, u.uid, u.gid);
    let before = idp.requests();
    d.request(hyper::Method::POST, "/v1/sources/app/refresh")
        .await;
    let doc = wait_until(&d, |doc| {
        doc["sources"][0]["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("belongs to uid"))
    })
    .await;
    let err = &doc["sources"][0]["last_error"];
    assert!(
        err["message"].as_str().unwrap().contains(&format!(
            "secret file {} belongs to uid {}",
            secret.display(),
            u.uid
        )),
        "{err}"
    );
    assert_eq!(idp.requests(), before, "the file was read and sent");
}

/// An inline secret in a config file whose group is the primary group of
/// two users (and lists no members) is readable by both: a warning. The
/// same file in a group no one else has, as the package's root:tokend is,
/// is quiet.
#[test]
fn a_group_that_is_other_users_primary_group_is_shared() {
    if !root_or_skip("a_group_that_is_other_users_primary_group_is_shared") {
        return;
    }
    let shared = TempGroup::new("shr");
    let _a = TempUser::new("a", Some(&shared));
    let _b = TempUser::new("b", Some(&shared));
    let lonely = TempGroup::new("own");
    let dir = tempfile::tempdir().unwrap();
    let main = main_config(
        dir.path(),
        &format!("[sources.app]\ntoken_url = \"https://login.example.com/token\"\nclient_id = \"app\"\nclient_secret = \"{SECRET}\"\n"),
    );
    chown(&main, 0, shared.gid);
    set_mode(&main, 0o640);
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plain client_secret in a config file that others can read"),
        "{out}"
    );
    chown(&main, 0, lonely.gid);
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("others can read"), "{out}");
}
