//! The house rule made executable: imports run one way, from the commands
//! down to the leaves (docs/architecture.md). Every `crate::` path in
//! `src/` (and `tokend::` in `main.rs`) is an edge from the module it is
//! written in to the top-level module it names; an edge to a higher layer,
//! or a cycle among modules of one layer, fails with the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top to bottom, and the top-level modules in each. A module
/// may use modules of its own layer (without a cycle) and of layers below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "commands",
        &[
            "main",
            "cli",
            "client",
            "credential",
            "check",
            "dev",
            "mi_env",
            "socket_dir",
        ],
    ),
    ("wiring", &["daemon"]),
    ("doors", &["server", "reload"]),
    ("running state", &["broker"]),
    ("sinks", &["sink"]),
    ("token answer", &["answer"]),
    ("IdP client", &["oauth"]),
    ("config", &["config"]),
    (
        "leaves",
        &[
            "token", "problem", "text", "acl", "trust", "cert", "secret", "entra", "expiry",
            "files", "heap", "timefmt", "clock", "jwt", "logging", "metrics", "systemd", "cores",
            "sync", "peer",
        ],
    ),
];

/// Edges that would run downward but cross a boundary, with the reason.
const BOUNDARIES: &[(&str, &str, &str)] = &[
    (
        "server",
        "oauth",
        "the API serves the broker's view of a token (`token`), not the token endpoint's",
    ),
    (
        "sink",
        "oauth",
        "sinks write the broker's view of a token (`token`), not the token endpoint's",
    ),
];

/// One `crate::MODULE` path in a file.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

impl Edge {
    /// An import of `to` in `file` (absolute), at `line`, by module `from`.
    fn new(from: &str, to: String, file: &Path, line: usize) -> Edge {
        Edge {
            from: from.to_string(),
            to,
            file: relative(file),
            line,
        }
    }
}

/// `file` (absolute) as a path from the crate's root.
fn relative(file: &Path) -> PathBuf {
    file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_path_buf()
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, mods))| mods.contains(&module))
        .map(|(i, (name, _))| (i, *name))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs,
/// which only declares them).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first.to_string()),
    }
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every module `text` names after `prefix` (`crate::x`, `crate::{x, y::z}`),
/// with its line; comments are skipped.
fn imports(text: &str, prefix: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        if text[line_start..at].contains("//") {
            continue;
        }
        // A path ending in `crate::x` only, not `foo_crate::x`.
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each top-level item of the group.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        let line = line + group[..i].matches('\n').count();
                        found.push((name.to_string(), line));
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((name.to_string(), line));
            }
        }
    }
    found
}

fn edges() -> Vec<Edge> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = Vec::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let mut found = imports(&text, "crate::");
        if from == "main" {
            found.extend(imports(&text, "tokend::"));
        }
        for (to, line) in found {
            // `crate::` alone (a macro path, `crate::Foo` re-export) names no module.
            if to == from || to.chars().next().is_some_and(char::is_uppercase) {
                continue;
            }
            edges.push(Edge::new(&from, to, &file, line));
        }
    }
    edges
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let unlayered: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unlayered.is_empty(),
        "modules missing from LAYERS in tests/layers.rs (and from docs/architecture.md): {unlayered:?}"
    );
    let listed: BTreeSet<&str> = LAYERS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    let stale: Vec<&&str> = listed.iter().filter(|m| !modules.contains(**m)).collect();
    assert!(
        stale.is_empty(),
        "LAYERS lists modules that do not exist: {stale:?}"
    );
}

#[test]
fn imports_never_run_upward() {
    let upward: Vec<String> = edges()
        .into_iter()
        .filter_map(|e| {
            let (from, from_name) = layer_of(&e.from)?;
            let (to, to_name) = layer_of(&e.to)?;
            (to < from).then(|| {
                format!(
                    "{}:{}: `{}` ({from_name}) uses `{}` ({to_name}), a layer above it",
                    e.file.display(),
                    e.line,
                    e.from,
                    e.to
                )
            })
        })
        .collect();
    assert!(
        upward.is_empty(),
        "imports must run downward (docs/architecture.md):\n{}",
        upward.join("\n")
    );
}

#[test]
fn boundaries_hold() {
    let crossed: Vec<String> = edges()
        .into_iter()
        .filter_map(|e| {
            let (_, _, why) = BOUNDARIES
                .iter()
                .find(|(from, to, _)| *from == e.from && *to == e.to)?;
            Some(format!(
                "{}:{}: `{}` uses `{}`: {why}",
                e.file.display(),
                e.line,
                e.from,
                e.to
            ))
        })
        .collect();
    assert!(crossed.is_empty(), "{}", crossed.join("\n"));
}

#[test]
fn modules_form_no_cycle() {
    let cycles = cycles(edges(), |m| {
        layer_of(m).map_or("?".to_string(), |(_, n)| n.to_string())
    });
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

/// Inside a folder too: no two files of `src/FOLDER/` import each other,
/// directly or round a loop (`super::x`, `crate::FOLDER::x`). The folder's
/// `mod.rs` is its front room and `tests.rs` its test bench: both may use
/// every room, and are left out.
#[test]
fn no_folder_has_a_cycle_inside() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let folder = entry.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap().to_str().unwrap().to_string();
        let mut files = Vec::new();
        rust_files(&folder, &mut files);
        let rooms: BTreeMap<String, PathBuf> = files
            .into_iter()
            .filter(|f| f.parent() == Some(folder.as_path()))
            .filter_map(|f| {
                let stem = f.file_stem()?.to_str()?.to_string();
                (stem != "mod" && stem != "tests").then_some((stem, f))
            })
            .collect();
        let mut edges = Vec::new();
        for (from, file) in &rooms {
            let text = std::fs::read_to_string(file).unwrap();
            let mut found = imports(&text, "super::");
            found.extend(imports(&text, &format!("crate::{name}::")));
            for (to, line) in found {
                if &to != from && rooms.contains_key(&to) {
                    edges.push(Edge::new(from, to, file, line));
                }
            }
        }
        all.extend(cycles(edges, |_| name.clone()));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

/// Every cycle among `edges`, each once, as text naming the place of each
/// step (with `group` of each end).
fn cycles(edges: Vec<Edge>, group: impl Fn(&str) -> String) -> Vec<String> {
    // The first place each module uses each other one.
    let mut graph: BTreeMap<String, BTreeMap<String, Edge>> = BTreeMap::new();
    for e in edges {
        graph
            .entry(e.from.clone())
            .or_default()
            .entry(e.to.clone())
            .or_insert(e);
    }
    let mut cycles = Vec::new();
    let mut seen = BTreeSet::new();
    // Each module: is there a path from one it uses back to it?
    for (start, out) in &graph {
        for first in out.values() {
            if let Some(path) = path_between(&graph, &first.to, start) {
                let mut steps = vec![first.clone()];
                steps.extend(path);
                // Each cycle once, whichever module it was found from.
                let members: BTreeSet<&str> = steps.iter().map(|e| e.from.as_str()).collect();
                if !seen.insert(members.into_iter().map(str::to_string).collect::<Vec<_>>()) {
                    break;
                }
                let text: Vec<String> = steps
                    .iter()
                    .map(|e| {
                        format!(
                            "  {}:{}: `{}` ({}) uses `{}` ({})",
                            e.file.display(),
                            e.line,
                            e.from,
                            group(&e.from),
                            e.to,
                            group(&e.to)
                        )
                    })
                    .collect();
                cycles.push(format!("cycle through `{start}`:\n{}", text.join("\n")));
                break;
            }
        }
    }
    cycles
}

/// The edges of a shortest path from `from` to `to`, if there is one.
fn path_between(
    graph: &BTreeMap<String, BTreeMap<String, Edge>>,
    from: &str,
    to: &str,
) -> Option<Vec<Edge>> {
    let mut came_by: BTreeMap<String, Edge> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from.to_string()]);
    let mut seen = BTreeSet::from([from.to_string()]);
    while let Some(m) = queue.pop_front() {
        if m == to {
            let mut path = Vec::new();
            let mut at = m;
            while let Some(e) = came_by.get(&at) {
                path.push(e.clone());
                at = e.from.clone();
            }
            path.reverse();
            return Some(path);
        }
        for (next, e) in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                came_by.insert(next.clone(), e.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

#[test]
fn the_parser_sees_grouped_and_inline_paths() {
    let text = "use crate::a::B;\nuse crate::{b, c::{D, E}};\n// crate::commented\nlet x = crate::d::f(tokend_crate::z);\n";
    let found = imports(text, "crate::");
    assert_eq!(
        found,
        [("a", 1), ("b", 2), ("c", 2), ("d", 4)].map(|(m, l)| (m.to_string(), l))
    );
}

#[test]
fn the_layers_are_documented() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let missing: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, mods)| mods.iter().copied())
        .filter(|m| !doc.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules: {missing:?}"
    );
}

/// A function longer than this is several steps that want names.
const MAX_FN_LINES: usize = 100;

/// Each non-test function's name and length in lines, from its `fn` line
/// to its closing brace (strings, characters and comments skipped).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    // A file's unit tests are not held to it.
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let head = line[..at].trim();
        let words_ok = head
            .split_whitespace()
            .all(|w| ["pub", "async", "const", "unsafe"].contains(&w) || w.starts_with("pub("));
        if !words_ok || line.trim_start().starts_with("//") {
            continue;
        }
        let name = ident(&line[at + 3..]).to_string();
        let (mut depth, mut started) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let code = code_of(l);
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        started = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if started && depth == 0 {
                out.push((name.clone(), j - i + 1));
                break;
            }
            if !started && code.trim_end().ends_with(';') {
                break;
            }
        }
    }
    out
}

/// `line` without its strings, character literals and comment.
fn code_of(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => break,
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            // A character literal ('x', '\n'), not a lifetime ('a).
            '\'' if chars.get(i + 2) == Some(&'\'') || chars.get(i + 1) == Some(&'\\') => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[test]
fn no_function_grows_past_100_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = BTreeSet::new();
    for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = relative(file).display().to_string();
        for (name, n) in function_lengths(&text) {
            if n > MAX_FN_LINES {
                long.insert((format!("{rel}:{name}"), n));
            }
        }
    }
    let long: Vec<String> = long
        .iter()
        .map(|(f, n)| format!("{f} is {n} lines; split it into named steps"))
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}
