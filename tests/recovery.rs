//! Outages end promptly and stay on their own endpoint (docs/behaviour.md,
//! "Recovery" and "Bulkheads"): the daemon runs for real against dev IdPs
//! that fail on demand and a listener that never answers.

mod common;

use common::*;
use std::time::{Duration, Instant};

const S: fn(u64) -> Duration = Duration::from_secs;

fn states(doc: &serde_json::Value) -> Vec<(String, String, u64)> {
    doc["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["consecutive_failures"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// 32 sources on an endpoint that never answers hold their own endpoint's
/// fetch budget, not every endpoint's: a source on a healthy IdP gets its
/// token at once and keeps it fresh through its refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_idp_does_not_hold_up_a_healthy_one() {
    let hole = black_hole();
    let idp = idp(S(12), &["good"]).await;
    let mut body = String::new();
    for i in 0..32 {
        body += &format!(
            "[sources.stuck{i}]\ntoken_url = \"{hole}\"\nclient_id = \"c{i}\"\nclient_secret = \"{SECRET}\"\nfetch_timeout = \"60s\"\n"
        );
    }
    body += &source("good", &idp, "");
    let d = daemon(&body).start().await;
    let started = Instant::now();
    eventually("good's first token", async || {
        (d.get("/v1/tokens/good").await.status() == 200).then_some(())
    })
    .await;
    assert!(started.elapsed() < S(5), "{:?}", started.elapsed());

    // 12 s tokens refresh about every 6 s: two refreshes in 14 s, each
    // while all 32 fetches to the black hole are still in flight.
    let until = Instant::now() + S(14);
    while Instant::now() < until {
        let r = d.get("/v1/tokens/good").await;
        assert_eq!(r.status(), 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        idp.issued() >= 3,
        "refreshed: {} tokens issued",
        idp.issued()
    );
    let doc = d.get("/v1/sources").await.json();
    let stuck = states(&doc)
        .into_iter()
        .filter(|(n, st, _)| n.starts_with("stuck") && st == "fetching")
        .count();
    assert_eq!(stuck, 32, "the black hole still holds its own: {doc}");
}

/// After an outage that drove every source's backoff to seconds, the
/// first request makes an early attempt, and its success ends the backoff
/// of the endpoint's other sources: all are ready within seconds, not
/// each at its own backoff's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_success_after_an_outage_brings_every_source_back() {
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let clients: Vec<&str> = names.iter().map(String::as_str).collect();
    let idp = idp(S(3600), &clients).await;
    idp.fail_with(Some(tokend::dev::Failure {
        status: 503,
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        retry_after: None,
    }));
    let body: String = names.iter().map(|n| source(n, &idp, "")).collect();
    let d = daemon(&body).start().await;
    // Five failures each: the next backoff is drawn below 16 s.
    wait_until_within(&d, S(40), |doc| {
        states(doc).iter().all(|(_, _, failures)| *failures >= 5)
    })
    .await;

    idp.fail_with(None);
    let healed = Instant::now();
    let r = d.get("/v1/tokens/s0").await;
    assert_eq!(r.status(), 200, "an early attempt answers: {}", r.text());
    let doc = wait_until_within(&d, S(10), |doc| {
        states(doc).iter().all(|(_, state, _)| state == "ready")
    })
    .await;
    let took = healed.elapsed();
    assert!(
        took < S(5),
        "all 20 ready {took:?} after the IdP came back: {doc}"
    );
}

/// A `Retry-After` of 11 days is honoured as the 5 min backoff ceiling,
/// and requests made meanwhile do not call the IdP early.
#[tokio::test]
async fn a_huge_retry_after_waits_five_minutes_not_eleven_days() {
    let idp = idp(S(3600), &["a"]).await;
    idp.fail_with(Some(tokend::dev::Failure {
        status: 429,
        body: r#"{"error":"slow_down"}"#.into(),
        retry_after: Some("999999".into()),
    }));
    let d = daemon(&source("a", &idp, "")).start().await;
    wait_until(&d, |doc| doc["sources"][0]["consecutive_failures"] == 1).await;
    idp.fail_with(None);
    let r = d.get("/v1/tokens/a").await;
    assert_eq!(r.status(), 503, "{}", r.text());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((290..=300).contains(&wait), "Retry-After: {wait}");
    assert_eq!(idp.requests(), 1, "no early attempt inside Retry-After");
}

/// An `expires_in` of 10¹² s is capped at 366 days, not refused.
#[tokio::test]
async fn a_huge_expires_in_is_capped_at_366_days() {
    let idp = idp(S(1_000_000_000_000), &["a"]).await;
    let d = daemon(&source("a", &idp, "")).start().await;
    let r = wait_for_status(&d, "/v1/tokens/a", 200).await;
    let left = r.json()["expires_in"].as_u64().unwrap();
    let day = 86_400;
    assert!((365 * day..=366 * day).contains(&left), "expires_in {left}");
}
