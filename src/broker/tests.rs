//! The refresh engine on tokio's paused clock: a scripted fetcher stands in
//! for the IdP so schedules, backoff and single-flight are measured exactly.

use super::*;
use crate::oauth::response::EndpointError;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// What the scripted IdP answers.
#[derive(Clone)]
enum Answer {
    Token {
        lifetime: Duration,
        refresh_in: Option<Duration>,
    },
    Fail {
        status: u16,
        error: &'static str,
        retry_after: Option<Duration>,
    },
}

fn ok(lifetime: u64) -> Answer {
    Answer::Token {
        lifetime: S(lifetime),
        refresh_in: None,
    }
}

fn fail(status: u16) -> Answer {
    Answer::Fail {
        status,
        error: "temporarily_unavailable",
        retry_after: None,
    }
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    /// Answer once the script runs out.
    then: Mutex<Option<Answer>>,
    delay: Mutex<Duration>,
    calls: Mutex<Vec<Instant>>,
    serial: std::sync::atomic::AtomicU64,
}

impl Script {
    fn new(answers: Vec<Answer>, then: Answer) -> Arc<Script> {
        Arc::new(Script {
            answers: Mutex::new(answers.into()),
            then: Mutex::new(Some(then)),
            ..Script::default()
        })
    }
    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }
    fn set_then(&self, a: Answer) {
        *self.then.lock().unwrap() = Some(a);
    }
}

impl Fetcher for Script {
    fn fetch(
        &self,
        _source: Arc<SourceConfig>,
    ) -> Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>> {
        let start = Instant::now();
        self.calls.lock().unwrap().push(start);
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.then.lock().unwrap().clone())
            .unwrap();
        let delay = *self.delay.lock().unwrap();
        let n = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            // Polled only once the fetch holds a max_concurrent_fetches permit.
            let start = Instant::now();
            tokio::time::sleep(delay).await;
            match answer {
                Answer::Token {
                    lifetime,
                    refresh_in,
                } => Ok(Token {
                    access_token: SecretString::from(format!("token-{n}")),
                    token_type: "Bearer".into(),
                    scope: None,
                    issued_at: start,
                    expires_at: start + lifetime,
                    refresh_in,
                }),
                Answer::Fail {
                    status,
                    error,
                    retry_after,
                } => Err(FetchError::Endpoint(
                    EndpointError {
                        status,
                        error: Some(error.into()),
                        ..EndpointError::default()
                    },
                    retry_after,
                )),
            }
        })
    }
}

fn config(extra: &str) -> Config {
    let text = format!(
        "[sources.s]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = \"x\"\n{extra}\n"
    );
    crate::config::load_str(&text, Path::new("t"), None).unwrap()
}

async fn start(script: &Arc<Script>, extra: &str) -> (Arc<Broker>, Arc<SourceHandle>) {
    let broker = Broker::new(script.clone(), 8, Arc::new(crate::metrics::Metrics::new()));
    broker.apply(&config(extra), &BTreeMap::new());
    let h = broker.get("s").unwrap();
    (broker, h)
}

/// Lets the actor run until it is idle (the paused clock advances only when all tasks wait).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn gaps(calls: &[Instant]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_ratio_of_lifetime_within_jitter() {
    let script = Script::new(vec![], ok(100));
    let (_b, _h) = start(&script, "min_ttl = \"0s\"").await;
    tokio::time::sleep(S(400)).await;
    let g = gaps(&script.calls());
    assert!(g.len() >= 4, "{g:?}");
    for gap in g {
        // 75 s ± 5 %
        assert!(
            gap >= Duration::from_millis(71_250) && gap <= Duration::from_millis(78_751),
            "{gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_in_takes_precedence_over_ratio() {
    let script = Script::new(
        vec![],
        Answer::Token {
            lifetime: S(3600),
            refresh_in: Some(S(600)),
        },
    );
    let (_b, _h) = start(&script, "").await;
    tokio::time::sleep(S(1300)).await;
    let g = gaps(&script.calls());
    assert_eq!(g.len(), 2, "{g:?}");
    for gap in g {
        assert!(gap >= S(570) && gap <= S(631), "{gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_full_jitter_and_caps_at_five_minutes() {
    let script = Script::new(vec![], fail(500));
    let (_b, h) = start(&script, "").await;
    tokio::time::sleep(S(3600)).await;
    let g = gaps(&script.calls());
    assert!(g.len() >= 12, "{g:?}");
    for (i, gap) in g.iter().enumerate() {
        let ceiling = policy::backoff_ceiling(u32::try_from(i).unwrap() + 1);
        assert!(
            *gap <= ceiling + Duration::from_millis(2),
            "attempt {i}: {gap:?} > {ceiling:?}"
        );
        assert!(*gap >= policy::BACKOFF_FLOOR, "attempt {i}: {gap:?}");
    }
    // Growth: later attempts are spread over minutes, not seconds.
    assert!(g[7..].iter().any(|gap| *gap > S(16)), "{g:?}");
    assert_eq!(h.snapshot().consecutive_failures as usize, g.len() + 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_respected_to_the_second() {
    let script = Script::new(
        vec![Answer::Fail {
            status: 503,
            error: "temporarily_unavailable",
            retry_after: Some(S(42)),
        }],
        ok(3600),
    );
    let (_b, h) = start(&script, "").await;
    settle().await;
    // While backing off with no token, a request is answered at once with the retry time.
    match h.token(None).await {
        Err(ServeError::Unavailable {
            retry_after: Some(r),
            ..
        }) => assert!(r <= S(42) && r > S(41), "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        script.calls().len(),
        1,
        "a request during backoff must not fetch"
    );
    tokio::time::sleep(S(60)).await;
    let g = gaps(&script.calls());
    assert!(
        g[0] >= S(42) && g[0] <= S(42) + Duration::from_millis(2),
        "{g:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cached_token_served_through_an_outage_until_five_seconds_before_expiry() {
    let script = Script::new(vec![ok(100)], fail(503));
    let (_b, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let first = h.token(None).await.unwrap();
    let t0 = first.issued_at;
    tokio::time::sleep_until(t0 + S(90)).await;
    let now = Instant::now();
    assert_eq!(h.snapshot().state(now), source::State::Degraded);
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    tokio::time::sleep_until(t0 + Duration::from_millis(94_900)).await;
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    tokio::time::sleep_until(t0 + Duration::from_millis(95_001)).await;
    let e = h.token(None).await.unwrap_err();
    assert!(matches!(e, ServeError::Unavailable { .. }), "{e:?}");
    assert_eq!(h.snapshot().state(Instant::now()), source::State::Failed);
    // Retries go on after expiry, and the source heals once the IdP does.
    script.set_then(ok(100));
    tokio::time::sleep(S(400)).await;
    assert_eq!(h.snapshot().state(Instant::now()), source::State::Ready);
    assert!(!Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_a_lazy_source_share_one_fetch() {
    let script = Script::new(vec![], ok(3600));
    *script.delay.lock().unwrap() = S(1);
    let (_b, h) = start(&script, "eager = false").await;
    settle().await;
    assert_eq!(h.snapshot().state(Instant::now()), source::State::Idle);
    assert!(
        script.calls().is_empty(),
        "a lazy source fetches on first request"
    );
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.token(None).await.unwrap() })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    assert_eq!(script.calls().len(), 1);
    assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));
}

#[tokio::test(start_paused = true)]
async fn min_ttl_forces_a_fetch_unless_the_token_is_fresh() {
    let script = Script::new(vec![], ok(100));
    let (_b, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let first = h.token(None).await.unwrap();
    // Fresh token (< 10 s old) that cannot meet 200 s: 422 without a fetch.
    match h.token(Some(S(200))).await {
        Err(ServeError::MinTtlUnsatisfiable { lifetime }) => assert_eq!(lifetime, S(100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(script.calls().len(), 1);
    // At t=60 s, 40 s remain; asking for 50 s forces a new token.
    tokio::time::sleep_until(first.issued_at + S(60)).await;
    let second = h.token(Some(S(50))).await.unwrap();
    assert_eq!(script.calls().len(), 2);
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(second.remaining_at(Instant::now()) >= S(50));
}

#[tokio::test(start_paused = true)]
async fn reading_a_cached_token_does_not_wait_on_a_refresh() {
    let script = Script::new(vec![ok(100)], ok(100));
    let (_b, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let first = h.token(None).await.unwrap();
    *script.delay.lock().unwrap() = S(20);
    tokio::time::sleep_until(first.issued_at + S(80)).await;
    assert_eq!(
        h.snapshot().state(Instant::now()),
        source::State::Refreshing
    );
    let t = tokio::time::timeout(Duration::from_millis(1), h.token(None))
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&t, &first));
}

#[tokio::test(start_paused = true)]
async fn forced_refresh_skips_backoff_and_reports_the_outcome() {
    let script = Script::new(vec![fail(500)], ok(100));
    let (_b, h) = start(&script, "").await;
    settle().await;
    assert_eq!(script.calls().len(), 1);
    h.claim_forced_refresh().unwrap();
    let snap = h.force_refresh().await.unwrap();
    assert!(snap.last_fetch_ok);
    assert_eq!(script.calls().len(), 2);
    let wait = h.claim_forced_refresh().unwrap_err();
    assert!(wait <= S(10) && wait > S(9));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_retry_at_the_slow_end() {
    let script = Script::new(
        vec![],
        Answer::Fail {
            status: 401,
            error: "invalid_client",
            retry_after: None,
        },
    );
    let (_b, _h) = start(&script, "").await;
    tokio::time::sleep(S(1000)).await;
    for gap in gaps(&script.calls()) {
        assert!(
            gap >= S(150) && gap <= S(300) + Duration::from_millis(2),
            "{gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_fetches_bounds_the_burst() {
    let script = Script::new(vec![], ok(3600));
    *script.delay.lock().unwrap() = S(1);
    let mut extra = String::new();
    for i in 0..5 {
        extra.push_str(&format!("[sources.s{i}]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = \"x\"\n"));
    }
    let broker = Broker::new(script.clone(), 2, Arc::new(crate::metrics::Metrics::new()));
    broker.apply(&config(&extra), &BTreeMap::new());
    tokio::time::sleep(S(10)).await;
    assert_eq!(script.calls().len(), 6);
    // The script records when a fetch is requested; the semaphore spaces out
    // when it runs, which the tokens' issue times show.
    let mut issued: Vec<Instant> = broker
        .list()
        .iter()
        .map(|h| h.snapshot().token.unwrap().expires_at)
        .collect();
    issued.sort();
    let per_second = issued.windows(3).all(|w| w[2] - w[0] >= S(1));
    assert!(
        per_second,
        "at most 2 fetches may complete per second: {issued:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn removed_source_stops_and_waiters_see_it_gone() {
    let script = Script::new(vec![], ok(100));
    *script.delay.lock().unwrap() = S(5);
    let (broker, h) = start(&script, "eager = false").await;
    let waiter = tokio::spawn({
        let h = h.clone();
        async move { h.token(None).await }
    });
    settle().await;
    broker.apply(&config("").clone_without_sources(), &BTreeMap::new());
    assert_eq!(waiter.await.unwrap().unwrap_err(), ServeError::Gone);
    assert!(broker.get("s").is_none());
}

fn fps(n: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("s".to_string(), n)])
}

#[tokio::test(start_paused = true)]
async fn reload_diff_keeps_refetches_or_restarts() {
    let script = Script::new(vec![], ok(3600));
    *script.delay.lock().unwrap() = S(2);
    let broker = Broker::new(script.clone(), 8, Arc::new(crate::metrics::Metrics::new()));
    broker.apply(&config(""), &fps(1));
    tokio::time::sleep(S(5)).await;
    let h = broker.get("s").unwrap();
    let first = h.token(None).await.unwrap();
    let next_refresh = h.snapshot().next_refresh_at;

    // Same config, same credential: nothing happens.
    assert!(broker.apply(&config(""), &fps(1)).is_empty());
    settle().await;
    assert_eq!(script.calls().len(), 1);
    assert_eq!(h.snapshot().next_refresh_at, next_refresh, "schedule kept");

    // A setting that is not identity: applied in place, token and schedule kept.
    let s = broker.apply(&config("fetch_timeout = \"20s\""), &fps(1));
    assert_eq!(s.updated, vec!["s".to_string()]);
    settle().await;
    assert_eq!(script.calls().len(), 1);
    assert_eq!(h.config().fetch_timeout, S(20));
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));

    // The secret file's content changed: the old token serves while a fetch starts at once.
    let s = broker.apply(&config("fetch_timeout = \"20s\""), &fps(2));
    assert_eq!(s.credential_changed, vec!["s".to_string()]);
    settle().await;
    assert_eq!(script.calls().len(), 2);
    assert_eq!(
        h.snapshot().state(Instant::now()),
        source::State::Refreshing
    );
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    tokio::time::sleep(S(3)).await;
    let second = h.token(None).await.unwrap();
    assert!(!Arc::ptr_eq(&second, &first));

    // Identity (scopes) changed: restarted, the old token is gone.
    let s = broker.apply(
        &config("fetch_timeout = \"20s\"\nscopes = [\"other\"]"),
        &fps(2),
    );
    assert_eq!(s.restarted, vec!["s".to_string()]);
    let h2 = broker.get("s").unwrap();
    assert!(h2.snapshot().token.is_none());
    assert_eq!(h.token(None).await.unwrap_err(), ServeError::Gone);
    let third = h2.token(None).await.unwrap();
    assert!(!Arc::ptr_eq(&third, &second));
}

trait WithoutSources {
    fn clone_without_sources(&self) -> Config;
}

impl WithoutSources for Config {
    fn clone_without_sources(&self) -> Config {
        let mut c = self.clone();
        c.sources.clear();
        c
    }
}
