//! The reference docs cannot drift from the code or from each other: every
//! key the config parser accepts is in docs/config.md, every route the
//! server answers is in docs/api.md, the project cites only its own docs,
//! every link between the pages resolves, README stays a landing page that
//! maps every page, and no paragraph is written in two pages.

mod common;

use common::anchors;
use std::path::{Path, PathBuf};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// What the real parser says about an unknown key in `toml` (the key is
/// `zzzzzzzzzz`, far from every real one, so the hint lists them all).
fn problems(toml: &str) -> Vec<String> {
    match tokend::config::load_str(toml, Path::new("docs-test.toml"), Some(0o600)) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.problems(),
    }
}

/// The keys the parser lists in its hint for an unknown key in `toml`.
fn accepted_keys(toml: &str) -> Vec<String> {
    let text = problems(toml).join("\n");
    let list = ["valid keys here: ", "top-level keys are "]
        .iter()
        .find_map(|p| {
            text.split_once(p)
                .map(|(_, rest)| rest.lines().next().unwrap())
        })
        .map(|l| l.split(", ").map(str::to_string).collect::<Vec<_>>())
        .or_else(|| {
            // serde's own wording, for the inline tables.
            let (_, rest) = text.split_once("expected one of ")?;
            let rest = rest.split(" — ").next()?;
            Some(
                rest.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect(),
            )
        })
        .unwrap_or_else(|| panic!("no key list in:\n{text}"));
    assert!(list.len() > 1, "{text}");
    list
}

const SOURCE: &str = "token_url = \"https://idp.example/t\"\nclient_id = \"a\"\n";

/// Every table the parser knows, with an unknown key in it.
fn probes() -> Vec<(&'static str, String)> {
    vec![
        ("top level", "zzzzzzzzzz = 1\n".to_string()),
        ("[server]", "[server]\nzzzzzzzzzz = 1\n".to_string()),
        ("[sources.NAME]", format!("[sources.a]\n{SOURCE}zzzzzzzzzz = 1\n")),
        ("[defaults]", "[defaults]\nzzzzzzzzzz = 1\n".to_string()),
        (
            "client_certificate",
            format!("[sources.a]\n{SOURCE}client_certificate = {{ zzzzzzzzzz = 1 }}\n"),
        ),
        (
            "allow",
            format!("[sources.a]\n{SOURCE}client_secret = \"s\"\nallow = {{ zzzzzzzzzz = [] }}\n"),
        ),
        (
            "sinks",
            format!("[sources.a]\n{SOURCE}sinks = [{{ path = \"/x\", zzzzzzzzzz = 1 }}]\n"),
        ),
        (
            "[managed_identity]",
            "[managed_identity]\nlisten = \"127.0.0.1:1\"\nzzzzzzzzzz = 1\n".to_string(),
        ),
        (
            "[imds]",
            "[imds]\nlisten = \"127.0.0.1:1\"\nzzzzzzzzzz = 1\n".to_string(),
        ),
        (
            "[managed_identity.apps.NAME]",
            "[managed_identity]\nlisten = \"127.0.0.1:1\"\n[managed_identity.apps.x]\nzzzzzzzzzz = 1\n"
                .to_string(),
        ),
    ]
}

#[test]
fn every_config_key_is_in_docs_config_md() {
    let doc = read("docs/config.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for (table, toml) in &probes() {
        for key in accepted_keys(toml) {
            seen += 1;
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("{table}: {key}"));
            }
        }
    }
    // Secret references: the kinds the parser names when given another.
    let text = problems(&format!(
        "[sources.a]\n{SOURCE}client_secret = {{ zzzzzzzzzz = \"x\" }}\n"
    ))
    .join("\n");
    let kinds: Vec<&str> = text
        .split("{ ")
        .skip(1)
        .filter_map(|s| s.split(" =").next())
        .collect();
    assert_eq!(kinds, ["file", "env", "credential"], "{text}");
    for kind in kinds {
        if !doc.contains(&format!("{{ {kind} = ")) {
            missing.push(format!("secret reference: {kind}"));
        }
    }
    assert!(seen > 40, "only {seen} keys found: the probe broke");
    assert!(
        missing.is_empty(),
        "keys the parser accepts but docs/config.md does not mention:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_route_is_in_docs_api_md() {
    let doc = read("docs/api.md");
    let routes: Vec<String> = tokend::server::routes::routes().collect();
    assert!(routes.len() >= 7, "{routes:?}");
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !doc.contains(&format!("`{r}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/api.md: {missing:?}"
    );
    let mi = format!("`GET {}", tokend::server::mi::PATH);
    assert!(doc.contains(&mi), "docs/api.md lacks {mi}");
}

/// The project's text, code and tests cite `docs/`, never a document
/// that is not part of it.
#[test]
fn nothing_cites_an_outside_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = vec![root.join("README.md")];
    for dir in [
        "docs", "src", "tests", "config", "systemd", "benches", "examples",
    ] {
        collect(&root.join(dir), &mut files);
    }
    let needle = ["SPEC", ".md"].concat();
    let section = ["SPEC", " §"].concat();
    let citing: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.contains(&needle) || t.contains(&section))
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(citing.is_empty(), "cite docs/ instead: {citing:?}");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "node_modules") {
            continue;
        }
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The configuration the Debian package installs as a conffile defines no
/// sources, so the daemon starts healthy, and shows every key, commented.
#[test]
fn the_packaged_config_defines_no_sources_and_shows_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/tokend.toml");
    common::assert_checks_with_no_sources(&path);
    let text = read("debian/tokend.toml");
    assert!(
        text.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "every line of the packaged config is a comment"
    );
    let mut missing = Vec::new();
    for (table, toml) in &probes() {
        for key in accepted_keys(toml) {
            let shown = [
                format!("{key} ="),
                format!("[{key}]"),
                format!("[{key}."),
                format!(".{key}."),
            ];
            if !shown.iter().any(|s| text.contains(s.as_str())) {
                missing.push(format!("{table}: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "debian/tokend.toml does not show: {missing:?}"
    );
}

/// README and every page under docs/.
fn pages() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    collect(&root.join("docs"), &mut files);
    files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .map(|f| {
            (
                f.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read_to_string(&f).unwrap(),
            )
        })
        .collect()
}

/// Every relative link in README and docs/ reaches a file that exists, and
/// its `#anchor`, if any, a heading in that file.
#[test]
fn every_link_between_the_pages_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    for (page, text) in pages() {
        let dir = root.join(&page).parent().unwrap().to_path_buf();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                root.join(&page)
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{page}: {target} (no such file)"));
                continue;
            }
            if !anchor.is_empty() && path.is_file() {
                let heads = anchors(&std::fs::read_to_string(&path).unwrap());
                if !heads.iter().any(|h| h == anchor) {
                    broken.push(format!("{page}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// README is a landing page: short, and its documentation map names every
/// page under docs/.
#[test]
fn the_readme_is_a_landing_page_that_maps_every_doc() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; reference belongs in docs/"
    );
    let map = readme.split("## Documentation").nth(1).unwrap();
    let map = map.split("\n## ").next().unwrap();
    for (page, _) in pages() {
        if page.starts_with("docs/") {
            assert!(
                map.contains(&format!("]({page})")),
                "README's map lacks {page}"
            );
        }
    }
}

/// A rule lives in one page: no paragraph of reference text appears in two
/// pages (the README included), so an edit cannot update one copy and
/// leave the other.
#[test]
fn no_paragraph_is_written_twice_across_the_pages() {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut twice = Vec::new();
    for (page, text) in pages() {
        let mut fenced = false;
        let mut para = String::new();
        let mut flush = |para: &mut String, page: &str| {
            let p = para.split_whitespace().collect::<Vec<_>>().join(" ");
            para.clear();
            if p.len() < 120 {
                return;
            }
            match seen.get(&p) {
                Some(other) if other != page => {
                    twice.push(format!(
                        "{other} and {page}: {}…",
                        p.chars().take(80).collect::<String>()
                    ));
                }
                _ => {
                    seen.insert(p, page.to_string());
                }
            }
        };
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                flush(&mut para, &page);
            } else if fenced || line.trim().is_empty() || line.starts_with('#') {
                flush(&mut para, &page);
            } else {
                para.push_str(line);
                para.push('\n');
            }
        }
        flush(&mut para, &page);
    }
    assert!(twice.is_empty(), "written twice:\n{}", twice.join("\n"));
}
