//! The files the package installs that are generated from the clap
//! definitions: `dist/tokend.8` and the shell completions. They are
//! committed so `cargo deb` needs no extra step, and this test fails when
//! they differ from what `tokend::cli` renders. To regenerate:
//!
//!     TOKEND_REGENERATE=1 cargo test --test dist

use std::path::{Path, PathBuf};
use std::process::Command;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![(dist().join("tokend.8"), tokend::cli::man_page())];
    for (shell, name, _) in tokend::cli::SHELLS {
        files.push((
            dist().join("completions").join(name),
            tokend::cli::completion(*shell),
        ));
    }
    files
}

#[test]
fn generated_files_are_up_to_date() {
    let regenerate = std::env::var_os("TOKEND_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (path, want) in generated() {
        if regenerate {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read(&path).ok().as_ref() != Some(&want) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (never edit them; run TOKEND_REGENERATE=1 cargo test --test dist): {stale:?}"
    );
}

#[test]
fn the_man_page_renders_without_warnings_and_covers_every_command() {
    let page = dist().join("tokend.8");
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .expect("man runs (apt install man-db)");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man failed: {warnings}");
    assert!(warnings.trim().is_empty(), "man warns:\n{warnings}");
    // What a reader finds in it, with the overstrikes (bold is `x\bx`,
    // underline `_\bx`) taken out.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for command in ["run", "dev", "check", "token", "mi-env", "status"] {
        assert!(
            text.contains(&format!("tokend {command}")),
            "no section for `tokend {command}`"
        );
    }
    for needle in [
        "/etc/tokend/tokend.toml",
        "/run/tokend/tokend.sock",
        "--min-ttl",
        "TOKEND_CONFIG",
        "SIGHUP",
        "EXIT STATUS",
    ] {
        assert!(text.contains(needle), "the page does not mention {needle}");
    }
    // Each example is its command, indented, with no stray tag before it.
    let examples = text.split("EXAMPLES").nth(1).unwrap();
    let examples = examples.split("SEE ALSO").next().unwrap();
    for command in [
        "sudo -u tokend tokend check --fetch",
        "sudo usermod -aG tokend-clients nightly",
    ] {
        assert!(
            examples.lines().any(|l| l.trim() == command),
            "EXAMPLES lacks a line `{command}`:\n{examples}"
        );
    }
    assert!(
        !examples.lines().any(|l| l.trim().starts_with("4 ")),
        "a stray tag in EXAMPLES:\n{examples}"
    );
}

#[test]
fn completions_know_every_command() {
    for (shell, _, _) in tokend::cli::SHELLS {
        let script = String::from_utf8(tokend::cli::completion(*shell)).unwrap();
        for command in ["run", "check", "token", "mi-env", "status"] {
            assert!(script.contains(command), "{shell:?} lacks {command}");
        }
    }
}
