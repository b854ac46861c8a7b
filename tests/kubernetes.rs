//! The Kubernetes base (deploy/kubernetes, docs/kubernetes.md) with the
//! real tools: `kubectl kustomize` renders it, `kubernetes-validate
//! --strict` (PyPI, the Kubernetes OpenAPI schemas; pinned in
//! tests/kubernetes/requirements.txt) accepts every resource, the render
//! has the shape and hardening the page promises, and the config it ships
//! checks.

mod common;

use common::pinned_venv;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize deploy/kubernetes`, written to a file.
fn render(dir: &Path) -> PathBuf {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/kubernetes"))
        .output()
        .expect("run kubectl (with kustomize; on the test image)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("rendered.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn venv() -> PathBuf {
    pinned_venv(
        "kubernetes-validate",
        &root().join("tests/kubernetes/requirements.txt"),
    )
}

#[test]
fn the_base_renders_validates_strictly_and_has_the_promised_shape() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(dir.path());
    let python = venv();
    let validate = python.with_file_name("kubernetes-validate");
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.32.0"])
        .arg(&rendered)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate --strict: {text}");
    for kind in [
        "namespace/tokend",
        "serviceaccount/tokend",
        "configmap/tokend-config",
        "daemonset/tokend",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{text}"
        );
    }
    let out = Command::new(&python)
        .arg(root().join("tests/kubernetes/shape.py"))
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the render lacks what docs/kubernetes.md promises:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The config the base ships is valid as it stands (no sources yet).
#[test]
fn the_shipped_config_checks() {
    common::assert_checks_with_no_sources(&root().join("deploy/kubernetes/tokend.toml"));
}
