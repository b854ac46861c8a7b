//! Time that jumps, as a running daemon sees it (docs/behaviour.md,
//! "Clocks"): the release-built binary under libfaketime with
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`, which is what a process sees after a
//! suspend or a paused VM (its wall clock moved, its monotonic clock did
//! not). The test moves the daemon's wall clock by rewriting the file
//! libfaketime reads on every clock call, and the IdP's clock with it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Debian's libfaketime (`apt install faketime`), if installed; else
/// says `test` is skipped.
fn libfaketime_or_skip(test: &str) -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipping {test}: libfaketime is not installed (apt install faketime)");
    }
    found
}

/// A daemon whose wall clock is `offset` seconds from the real one, as
/// written in `clock` (libfaketime's "+N"/"-N" form).
fn faked(builder: Builder, lib: &Path, clock: &Path) -> Builder {
    builder
        .env("LD_PRELOAD", lib.to_str().unwrap())
        .env("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap())
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

/// Moves the daemon's wall clock (and the IdP's, which lives in the same
/// world) to `offset` seconds from the real one.
fn set_clock(clock: &Path, idp: &DevIdp, offset: i64) {
    // Written whole and renamed: libfaketime reads the file on every call.
    let tmp = clock.with_extension("new");
    std::fs::write(&tmp, format!("{offset:+}\n")).unwrap();
    std::fs::rename(&tmp, clock).unwrap();
    idp.set_clock_offset(offset);
}

fn real_now_secs() -> i64 {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(s).unwrap()
}

fn epoch_secs(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_second()
}

/// A resume after the wall clock moved past a token's expiry: the dead
/// token is never served or reported; the daemon notices the jump within
/// seconds with no request and refetches; a clock stepped back changes
/// nothing (no refetch, no early death).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_never_serves_a_dead_token_and_a_step_back_changes_nothing() {
    let Some(lib) =
        libfaketime_or_skip("a_suspend_never_serves_a_dead_token_and_a_step_back_changes_nothing")
    else {
        return;
    };
    let idp = idp(S(600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    set_clock(&clock, &idp, 0);
    let d = faked(daemon(&source("a", &idp, "")), &lib, &clock)
        .start()
        .await;
    let first = wait_for_status(&d, "/v1/tokens/a", 200).await.json();
    assert_eq!(idp.requests(), 1);

    // A 700 s suspend: the 600 s token died 100 s ago by the wall clock,
    // while tokio's clock says it has almost ten minutes left.
    set_clock(&clock, &idp, 700);
    let r = d.get("/v1/tokens/a").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let after = r.json();
    assert_ne!(
        after["access_token"], first["access_token"],
        "the token the wall clock says is dead was served"
    );
    let faked_now = real_now_secs() + 700;
    let expires_at = epoch_secs(after["expires_at"].as_str().unwrap());
    assert!(
        (faked_now + 590..=faked_now + 601).contains(&expires_at),
        "expires_at {} is not 600 s after the daemon's now",
        after["expires_at"]
    );
    assert!(after["expires_in"].as_u64().unwrap() > 590, "{after}");
    let status = d.get("/v1/sources/a").await.json();
    assert_eq!(status["state"], "ready", "{status}");

    // A two-hour suspend with no request at all: noticed within seconds.
    let before = idp.requests();
    set_clock(&clock, &idp, 700 + 7200);
    eventually_within(
        S(8),
        "a refetch after the jump, with no request",
        async || (idp.requests() > before).then_some(()),
    )
    .await;
    let faked_now = real_now_secs() + 7900;
    let status = wait_until(&d, |doc| doc["sources"][0]["state"] == "ready").await;
    let expires_at = epoch_secs(status["sources"][0]["expires_at"].as_str().unwrap());
    assert!(
        expires_at > faked_now + 590,
        "the status reports a dead token: {status}"
    );
    d.log_with("the wall clock jumped ahead").await;

    // NTP steps the clock back an hour: nothing is fetched, nothing dies.
    let token = d.get("/v1/tokens/a").await.json();
    let before = idp.requests();
    set_clock(&clock, &idp, 700 + 7200 - 3600);
    eventually_within(S(8), "the step back to be noticed", async || {
        d.log()
            .contains("the wall clock was stepped back")
            .then_some(())
    })
    .await;
    let same = d.get("/v1/tokens/a").await.json();
    assert_eq!(same["access_token"], token["access_token"]);
    assert!(same["expires_in"].as_u64().unwrap() > 580, "{same}");
    assert_eq!(idp.requests(), before, "a step back refetched");
    assert_eq!(d.get("/v1/sources/a").await.json()["state"], "ready");
}

/// A sink file whose token the wall clock says is dead goes at once after
/// a resume, even while the IdP is down and no new token can be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_removes_a_sink_file_whose_token_is_dead_by_the_wall_clock() {
    let Some(lib) =
        libfaketime_or_skip("a_resume_removes_a_sink_file_whose_token_is_dead_by_the_wall_clock")
    else {
        return;
    };
    let idp = idp(S(600), &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    set_clock(&clock, &idp, 0);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("a.token");
    let d = faked(
        daemon(&source(
            "a",
            &idp,
            &format!("sinks = [{{ path = \"{}\" }}]", path.display()),
        )),
        &lib,
        &clock,
    )
    .start()
    .await;
    eventually("the sink file", async || exists(&path).then_some(())).await;
    idp.fail_with(Some(Failure {
        status: 503,
        body: "{\"error\":\"temporarily_unavailable\"}".into(),
        retry_after: None,
    }));
    set_clock(&clock, &idp, 900);
    eventually_within(S(8), "the dead token's file to go", async || {
        (!exists(&path)).then_some(())
    })
    .await;
    assert_eq!(d.get("/v1/tokens/a").await.status(), 503);
}
