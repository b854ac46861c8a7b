//! The shipped alert rules and dashboard (config/monitoring/, see
//! docs/operations.md → Monitoring) against a real Prometheus: promtool
//! checks the rules and runs their unit tests, then a Prometheus server
//! scrapes a running tokend's metrics listener, an identity-provider outage
//! makes the refresh alert fire, and every dashboard query evaluates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{daemon, idp, source, wait_for_status, wait_until, Failure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration as S;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/monitoring")
        .join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring(""))
        .output()
        .expect("promtool runs (Debian: apt install prometheus; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let text = promtool(&["check", "rules", "tokend-alerts.yml"]);
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
    let text = promtool(&["test", "rules", "tokend-alerts.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every alert in the rules has a unit test, and every runbook link points
/// at a heading that exists.
#[test]
fn every_alert_has_a_unit_test_and_a_runbook_that_exists() {
    let rules = std::fs::read_to_string(monitoring("tokend-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring("tokend-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "no unit test expects {alert} to fire"
        );
    }
    for link in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: \""))
    {
        let (page, anchor) = link.trim_end_matches('"').split_once('#').unwrap();
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
        let found = common::anchors(&doc).iter().any(|s| s == anchor);
        assert!(found, "{page} has no heading for #{anchor}");
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Prometheus scraping `target` every second, with the shipped rules
    /// (each `for:` cut to 2 s) evaluated every second.
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = std::fs::read_to_string(monitoring("tokend-alerts.yml")).unwrap();
        let short: String = rules
            .lines()
            .map(|l| match l.split_once("for: ") {
                Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 2s\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(short, rules, "the test copy shortens every for:");
        std::fs::write(dir.path().join("rules.yml"), short).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: tokend\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = common::mi::free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus runs (Debian: apt install prometheus; .ci/run installs it)");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        p.eventually("Prometheus ready", async || {
            let r = reqwest::get(p.url("/-/ready")).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// The API's `data` for an instant query; panics on an error answer.
    async fn query(&self, expr: &str) -> Value {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = get_json(&self.url(&format!("/api/v1/query?query={encoded}"))).await;
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"].clone()
    }

    /// The alerts named `name`, as `/api/v1/alerts` lists them.
    async fn alerts(&self, name: &str) -> Vec<Value> {
        let r = get_json(&self.url("/api/v1/alerts")).await;
        r["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }

    async fn eventually<T>(&self, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        for _ in 0..300 {
            if let Some(t) = f().await {
                return t;
            }
            tokio::time::sleep(S::from_millis(100)).await;
        }
        panic!("{what}: not within 30 s; Prometheus log:\n{}", self.log());
    }
}

async fn get_json(url: &str) -> Value {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

#[tokio::test]
async fn prometheus_scrapes_tokend_fires_the_refresh_alert_and_runs_every_dashboard_query() {
    let idp = idp(S::from_secs(3600), &["a"]).await;
    let metrics_port = common::mi::free_port();
    let d = daemon(&source("a", &idp, "credential_expires = 2030-01-01"))
        .server(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .start()
        .await;
    wait_for_status(&d, "/v1/tokens/a", 200).await;
    let prom = Prometheus::start(&format!("127.0.0.1:{metrics_port}")).await;

    // Scraped, and the rules evaluated after that scrape, with the source
    // ready: the alert is not even pending.
    let scraped: f64 = prom
        .eventually("the ready state scraped", async || {
            let data = prom
                .query("timestamp(tokend_source_state{job=\"tokend\",source=\"a\",state=\"ready\"} == 1)")
                .await;
            data["result"][0]["value"][1].as_str()?.parse().ok()
        })
        .await;
    prom.eventually("a rule evaluation after that scrape", async || {
        let rules = get_json(&prom.url("/api/v1/rules")).await;
        let at: jiff::Timestamp = rules["data"]["groups"][0]["lastEvaluation"]
            .as_str()?
            .parse()
            .ok()?;
        (at.as_millisecond() as f64 / 1000.0 > scraped).then_some(())
    })
    .await;
    assert!(prom.alerts("TokendRefreshFailing").await.is_empty());

    // The IdP fails; a forced refresh fails; the token still serves.
    idp.fail_with(Some(Failure {
        status: 503,
        body: "{\"error\":\"temporarily_unavailable\"}".into(),
        retry_after: None,
    }));
    d.request(hyper::Method::POST, "/v1/sources/a/refresh")
        .await;
    wait_until(&d, |doc| doc["sources"][0]["state"] == "degraded").await;
    assert_eq!(d.get("/v1/tokens/a").await.status(), 200);

    let alert = prom
        .eventually("TokendRefreshFailing firing", async || {
            prom.alerts("TokendRefreshFailing")
                .await
                .into_iter()
                .find(|a| a["state"] == "firing")
        })
        .await;
    assert_eq!(alert["labels"]["source"], "a", "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"],
        format!("tokend on 127.0.0.1:{metrics_port} cannot refresh source a"),
        "{alert}"
    );
    assert!(
        prom.alerts("TokendSourceHasNoToken").await.is_empty(),
        "a served token is not a missing one"
    );

    // Every dashboard query, with its variables filled in as Grafana would.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring("tokend-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".+")
                .replace("$__rate_interval", "1m");
            let data = prom.query(&expr).await;
            let title = panel["title"].as_str().unwrap();
            // No sink, so no sink write error series; the rest have data.
            if title != "Sink write errors" {
                assert!(
                    !data["result"].as_array().unwrap().is_empty(),
                    "{title}: {expr} returned nothing"
                );
            }
        }
    }
    let up = prom.query("up{job=\"tokend\"}").await;
    assert_eq!(up["result"][0]["value"][1], "1", "{up}");
}
