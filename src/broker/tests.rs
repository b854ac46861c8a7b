//! The refresh engine on tokio's paused clock: a scripted fetcher stands in
//! for the IdP so schedules, backoff and single-flight are measured exactly.

use super::*;
use crate::oauth::response::EndpointError;
use crate::oauth::FetchError;
use crate::secret::ExposeSecret;
use crate::token::Token;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

const S: fn(u64) -> Duration = Duration::from_secs;

/// A token endpoint's 200 body, built per fetch from the fetch's serial
/// number and the (simulated) wall clock.
type BodyFn = Arc<dyn Fn(u64, SystemTime) -> String + Send + Sync>;

/// What the scripted IdP answers.
#[derive(Clone)]
enum Answer {
    /// A raw body, run through the real response parser and lifetime rules.
    Body(BodyFn),
    /// The fetch panics (a bug somewhere below the actor).
    Panic,
    Token {
        lifetime: Duration,
        refresh_in: Option<Duration>,
    },
    /// A token fetched `wall_behind` ago by the wall clock, now by tokio's:
    /// what a source holds after a suspend the wall clock counted.
    Skewed {
        lifetime: Duration,
        wall_behind: Duration,
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
    /// The settings each fetch was given.
    seen: Mutex<Vec<Arc<SourceConfig>>>,
    serial: std::sync::atomic::AtomicU64,
    /// When the first fetch started, on both clocks: time zero of [`sim_wall`].
    epoch: std::sync::OnceLock<Moment>,
    /// Hosts that accept a request and never answer (a black hole).
    stalled: Mutex<Vec<String>>,
    /// The host of each fetch, when it started running (held a permit).
    running: Arc<Mutex<Vec<String>>>,
}

/// The wall clock the scripted IdP and the lifetime rules see: the real
/// one at the first fetch, moving on with tokio's (paused) clock. (The
/// broker reads the real wall clock, which stands still meanwhile: a token's
/// wall-clock deadline is then never the earlier one, unless a test makes
/// it so.)
fn sim_wall(epoch: Moment) -> SystemTime {
    epoch.wall + (Instant::now() - epoch.mono)
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
        source: Arc<SourceConfig>,
    ) -> Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>> {
        let start = Instant::now();
        self.calls.lock().unwrap().push(start);
        self.seen.lock().unwrap().push(source);
        let epoch = *self.epoch.get_or_init(Moment::now);
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
        let host = match &self.seen.lock().unwrap().last().unwrap().endpoint {
            crate::config::Endpoint::Url(u) | crate::config::Endpoint::Issuer(u) => {
                u.host_str().unwrap_or_default().to_string()
            }
        };
        let stalled = self.stalled.lock().unwrap().contains(&host);
        let running = self.running.clone();
        Box::pin(async move {
            // Polled only once the fetch holds a max_concurrent_fetches permit.
            running.lock().unwrap().push(host);
            if stalled {
                std::future::pending::<()>().await;
            }
            let start = Instant::now();
            tokio::time::sleep(delay).await;
            match answer {
                Answer::Body(body) => {
                    let body = body(n, sim_wall(epoch));
                    let parsed =
                        crate::oauth::response::parse_token(body.as_bytes()).map_err(|detail| {
                            FetchError::BadResponse {
                                url: "scripted".into(),
                                detail,
                            }
                        })?;
                    crate::oauth::token_from_response(
                        parsed,
                        None,
                        Moment {
                            mono: start,
                            wall: epoch.wall + (start - epoch.mono),
                        },
                        Moment {
                            mono: Instant::now(),
                            wall: sim_wall(epoch),
                        },
                    )
                    .map_err(|detail| FetchError::Expired {
                        url: "scripted".into(),
                        detail,
                    })
                }
                Answer::Panic => panic!("scripted panic inside a fetch"),
                Answer::Token {
                    lifetime,
                    refresh_in,
                } => Ok(Token {
                    access_token: crate::token::AccessToken::new(format!("token-{n}")),
                    rendered: Default::default(),
                    token_type: "Bearer".into(),
                    scope: None,
                    issued: Moment {
                        mono: start,
                        wall: SystemTime::now(),
                    },
                    expires: Moment {
                        mono: start + lifetime,
                        wall: SystemTime::now() + lifetime,
                    },
                    refresh_in,
                }),
                Answer::Skewed {
                    lifetime,
                    wall_behind,
                } => {
                    let issued = Moment {
                        mono: start,
                        wall: SystemTime::now() - wall_behind,
                    };
                    Ok(Token {
                        access_token: crate::token::AccessToken::new(format!("token-{n}")),
                        rendered: Default::default(),
                        token_type: "Bearer".into(),
                        scope: None,
                        issued,
                        expires: issued.later(lifetime),
                        refresh_in: None,
                    })
                }
                Answer::Fail {
                    status,
                    error,
                    retry_after,
                } => Err(FetchError::Endpoint(
                    Box::new(EndpointError {
                        status,
                        error: Some(error.into()),
                        ..EndpointError::default()
                    }),
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
    let t0 = first.issued.mono;
    tokio::time::sleep_until(t0 + S(90)).await;
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Degraded);
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    tokio::time::sleep_until(t0 + Duration::from_millis(94_900)).await;
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    tokio::time::sleep_until(t0 + Duration::from_millis(95_001)).await;
    let e = h.token(None).await.unwrap_err();
    assert!(matches!(e, ServeError::Unavailable { .. }), "{e:?}");
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Failed);
    // Retries go on after expiry, and the source heals once the IdP does.
    script.set_then(ok(100));
    tokio::time::sleep(S(400)).await;
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Ready);
    assert!(!Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_a_lazy_source_share_one_fetch() {
    let script = Script::new(vec![], ok(3600));
    *script.delay.lock().unwrap() = S(1);
    let (_b, h) = start(&script, "eager = false").await;
    settle().await;
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Idle);
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
    tokio::time::sleep_until(first.issued.mono + S(60)).await;
    let second = h.token(Some(S(50))).await.unwrap();
    assert_eq!(script.calls().len(), 2);
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(second.remaining_at(Moment::now()) >= S(50));
}

#[tokio::test(start_paused = true)]
async fn reading_a_cached_token_does_not_wait_on_a_refresh() {
    let script = Script::new(vec![ok(100)], ok(100));
    let (_b, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let first = h.token(None).await.unwrap();
    *script.delay.lock().unwrap() = S(20);
    tokio::time::sleep_until(first.issued.mono + S(80)).await;
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Refreshing);
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
        .map(|h| h.snapshot().token.unwrap().expires.mono)
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
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Refreshing);
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

fn jwt_with_exp(exp: &str, serial: u64) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"RS256"}"#),
        e.encode(format!(r#"{{"exp":{exp},"jti":"{serial}"}}"#))
    )
}

/// A body whose token is a JWT with `exp` and no `expires_in`.
fn body_with_exp(exp: &'static str) -> Answer {
    Answer::Body(Arc::new(move |n, _| {
        format!(r#"{{"access_token":"{}"}}"#, jwt_with_exp(exp, n))
    }))
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_task_is_restarted_with_its_cached_token() {
    let script = Script::new(vec![ok(100)], Answer::Panic);
    let (broker, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let first = h.token(None).await.unwrap();
    // The refresh at ~75 s panics inside the fetch, and so do the retries.
    tokio::time::sleep_until(first.issued.mono + S(85)).await;
    let calls = script.calls().len();
    assert!(calls >= 2, "{calls}");
    let restarts = broker
        .metrics()
        .source_restarts
        .get_or_create(&crate::metrics::SourceLabel { source: "s".into() })
        .get();
    assert_eq!(restarts, calls as u64 - 1, "every panic is counted");
    // Still listed, still serving the cached token, and it says what happened.
    assert!(Arc::ptr_eq(&broker.get("s").unwrap(), &h));
    assert!(Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    let snap = h.snapshot();
    assert_eq!(snap.state(Moment::now()), source::State::Degraded);
    assert_eq!(snap.last_error.unwrap().error, "internal_error");
    // The restarted actor keeps retrying at the backoff's pace and heals.
    script.set_then(ok(100));
    tokio::time::sleep(S(120)).await;
    assert_eq!(h.snapshot().state(Moment::now()), source::State::Ready);
    assert!(!Arc::ptr_eq(&h.token(None).await.unwrap(), &first));
    assert!(broker.metrics().encode().contains(&format!(
        "tokend_source_restarts_total{{source=\"s\"}} {restarts}"
    )));
}

#[tokio::test(start_paused = true)]
async fn a_panic_on_every_fetch_restarts_at_the_backoffs_pace() {
    let script = Script::new(vec![], Answer::Panic);
    let (_b, h) = start(&script, "").await;
    tokio::time::sleep(S(600)).await;
    let g = gaps(&script.calls());
    assert!(g.len() >= 5, "the source keeps trying: {g:?}");
    assert!(g.len() < 40, "restarts follow the backoff, no spin: {g:?}");
    assert!(matches!(
        h.token(None).await,
        Err(ServeError::Unavailable { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_reconfigure_is_never_lost_behind_pending_fetch_requests() {
    let script = Script::new(vec![], ok(3600));
    *script.delay.lock().unwrap() = S(1);
    let (broker, h) = start(&script, "eager = false").await;
    // Hundreds of callers ask for a token before the actor gets to run…
    let waiters: Vec<_> = (0..300)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.token(None).await })
        })
        .collect();
    settle().await;
    // …and a reload rotates the secret while they wait.
    let s = broker.apply(
        &config("eager = false").with_secret("rotated"),
        &BTreeMap::new(),
    );
    assert_eq!(s.credential_changed, vec!["s".to_string()]);
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    tokio::time::sleep(S(5)).await;
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one fetch for the waiters, one with the new secret"
    );
    assert_eq!(
        seen[1].credential,
        config("").with_secret("rotated").sources["s"].credential
    );
    // A settings-only change reaches the actor too.
    broker.apply(
        &config("eager = false\nfetch_timeout = \"42s\"").with_secret("rotated"),
        &BTreeMap::new(),
    );
    settle().await;
    h.claim_forced_refresh().unwrap();
    h.force_refresh().await.unwrap();
    assert_eq!(script.seen.lock().unwrap()[2].fetch_timeout, S(42));
}

#[tokio::test(start_paused = true)]
async fn refreshes_land_before_the_token_stops_being_served() {
    // A 60 s token with min_ttl 0 and ratio 0.95 would refresh at 57 s,
    // after it stopped being served (55 s): the schedule is capped there.
    let script = Script::new(vec![], ok(60));
    let (broker, h) = start(&script, "min_ttl = \"0s\"\nrefresh_ratio = 0.95").await;
    settle().await;
    for _ in 0..6000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Moment::now();
        assert!(h.snapshot().is_servable(now), "not servable at {now:?}");
        assert!(broker.not_ready().is_empty());
    }
    let n = script.calls().len();
    assert!(
        (11..=13).contains(&n),
        "{n} fetches in 10 minutes of 60 s tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_that_are_already_dead_are_fetch_errors_retried_with_backoff() {
    let script = Script::new(vec![], body_with_exp("1000"));
    let (_b, h) = start(&script, "").await;
    settle().await;
    match h.token(None).await {
        Err(ServeError::Unavailable {
            last_error: Some(e),
            retry_after: Some(_),
        }) => {
            assert_eq!(e.error, "token_expired");
            assert!(
                e.message.contains("exp (1000) is already past"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(S(120)).await;
    let g = gaps(&script.calls());
    assert!(g.len() >= 3 && g.len() < 30, "retried with backoff: {g:?}");
    assert!(h.snapshot().token.is_none());
}

#[tokio::test(start_paused = true)]
async fn far_future_expiry_is_capped_and_status_still_renders() {
    for exp in ["18446744073709551000", "253402300900"] {
        let script = Script::new(vec![], body_with_exp(exp));
        let (broker, h) = start(&script, "").await;
        settle().await;
        let t = h.token(None).await.unwrap();
        assert_eq!(t.lifetime(), crate::oauth::MAX_LIFETIME, "exp {exp}");
        let status = broker.status(&h);
        assert_eq!(status.state, State::Ready);
        let expires_at = status.snapshot.token.unwrap().expires_at_text();
        assert!(expires_at.ends_with('Z'), "{expires_at}");
        // The refresh comes at 75 % of the capped lifetime, not never.
        let next = h.snapshot().next_refresh_at.unwrap();
        assert!(next.mono - t.issued.mono <= crate::oauth::MAX_LIFETIME.mul_f64(0.79));
    }
}

trait WithSecret {
    fn with_secret(self, secret: &str) -> Config;
}

impl WithSecret for Config {
    fn with_secret(mut self, secret: &str) -> Config {
        for s in self.sources.values_mut() {
            Arc::make_mut(s).credential = crate::config::Credential::Secret(
                crate::secret::SecretRef::Inline(SecretString::from(secret.to_string())),
            );
        }
        self
    }
}

/// Property: whatever the token endpoint answers (`expires_in`, `exp` and
/// `refresh_in` in any form, absent, huge, zero, negative, past) and
/// whenever callers ask, nothing panics and no token is ever served at or
/// after its real expiry minus 5 s. The real response parser and lifetime
/// rules run behind the scripted endpoint; the expected expiry is modelled
/// here independently from the generated answer.
mod served_tokens_are_never_dead {
    use super::*;
    use crate::secret::ExposeSecret;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A numeric field as an IdP might send it.
    #[derive(Debug, Clone)]
    enum Field {
        Absent,
        Null,
        Int(i64),
        Huge,
        Float(f64),
        Text(String),
    }

    impl Field {
        fn json(&self) -> Option<String> {
            Some(match self {
                Field::Absent => return None,
                Field::Null => "null".into(),
                Field::Int(n) => n.to_string(),
                Field::Huge => "18446744073709551000".into(),
                Field::Float(f) => format!("{f:?}"),
                Field::Text(t) => format!("{t:?}"),
            })
        }
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::Absent),
            Just(Field::Null),
            Just(Field::Huge),
            (-10i64..10).prop_map(Field::Int),
            (0i64..100_000).prop_map(Field::Int),
            any::<i64>().prop_map(Field::Int),
            (-1e12f64..1e12).prop_map(Field::Float),
            "[0-9]{1,12}".prop_map(Field::Text),
            "[a-z -]{0,6}".prop_map(Field::Text),
        ]
    }

    /// `exp` relative to the wall clock at the answer, or absolute.
    #[derive(Debug, Clone)]
    enum Exp {
        None,
        In(i64),
        At(Field),
    }

    fn exp() -> impl Strategy<Value = Exp> {
        prop_oneof![
            Just(Exp::None),
            (-100_000i64..100_000).prop_map(Exp::In),
            (-1_000i64..40_000_000).prop_map(Exp::In),
            field().prop_map(Exp::At),
            Just(Exp::At(Field::Int(1000))),
            Just(Exp::At(Field::Int(253_402_300_900))),
        ]
    }

    #[derive(Debug, Clone)]
    struct Reply {
        fail: bool,
        expires_in: Field,
        refresh_in: Field,
        exp: Exp,
    }

    fn reply() -> impl Strategy<Value = Reply> {
        (prop::bool::weighted(0.15), field(), field(), exp()).prop_map(
            |(fail, expires_in, refresh_in, exp)| Reply {
                fail,
                expires_in,
                refresh_in,
                exp,
            },
        )
    }

    /// A caller: waits `after`, then asks with `min_ttl`.
    fn ask() -> impl Strategy<Value = (Duration, Option<Duration>)> {
        let after = prop_oneof![
            (0u64..2_000).prop_map(Duration::from_millis),
            (0u64..600).prop_map(S),
            (0u64..7_200).prop_map(S),
        ];
        let min_ttl = prop_oneof![Just(None), (0u64..7_200).prop_map(|s| Some(S(s))),];
        (after, min_ttl)
    }

    /// The latest instant the model allows the token of `reply` to be
    /// valid, for an answer at `at` with wall clock `wall`; `None` if it
    /// must never be served.
    fn deadline(reply: &Reply, at: Instant, wall: SystemTime) -> Option<Instant> {
        let wall_secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let number = |f: &Field| -> Option<f64> {
            match f {
                Field::Int(n) => Some(*n as f64),
                Field::Huge => Some(18_446_744_073_709_551_000.0),
                Field::Float(x) => Some(*x),
                Field::Text(t) => t.trim().parse().ok(),
                Field::Absent | Field::Null => None,
            }
        };
        let mut limit = at + crate::oauth::MAX_LIFETIME;
        let mut known = false;
        if let Some(e) = number(&reply.expires_in) {
            known = true;
            limit = limit.min(at + Duration::from_secs_f64(e.clamp(0.0, 4e7)));
        }
        let exp = match &reply.exp {
            Exp::None => None,
            Exp::In(d) => Some(wall_secs.floor() + *d as f64),
            // Only a JSON number is an exp; a string is ignored.
            Exp::At(f @ (Field::Int(_) | Field::Huge | Field::Float(_))) => number(f),
            Exp::At(_) => None,
        };
        if let Some(e) = exp {
            if e <= wall_secs {
                return None;
            }
            known = true;
            limit = limit.min(at + Duration::from_secs_f64((e - wall_secs).min(4e7)));
        }
        if !known {
            limit = limit.min(at + crate::oauth::DEFAULT_LIFETIME);
        }
        Some(limit)
    }

    /// The token the reply carries, and the IdP's body with it.
    fn body(reply: &Reply, n: u64, wall: SystemTime) -> (String, String) {
        let wall_secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = match &reply.exp {
            Exp::None => format!("opaque-{n}"),
            Exp::In(d) => jwt_with_exp(&(wall_secs as i64 + d).to_string(), n),
            Exp::At(f) => jwt_with_exp(&f.json().unwrap_or_else(|| "\"x\"".into()), n),
        };
        let mut fields = vec![format!(r#""access_token":"{token}""#)];
        for (k, v) in [
            ("expires_in", &reply.expires_in),
            ("refresh_in", &reply.refresh_in),
        ] {
            if let Some(j) = v.json() {
                fields.push(format!(r#""{k}":{j}"#));
            }
        }
        let body = format!("{{{}}}", fields.join(","));
        (token, body)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn holds(replies in prop::collection::vec(reply(), 1..6), asks in prop::collection::vec(ask(), 1..25), lazy in any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                // token text → the instant it must be dead by (None: never servable)
                let expiry: Arc<Mutex<HashMap<String, Option<Instant>>>> = Arc::default();
                let served = expiry.clone();
                // The replies repeat, in order, for as long as the source fetches;
                // a failing one is a 200 without a token.
                let answer = Answer::Body(Arc::new(move |n, wall| {
                    let r = &replies[usize::try_from(n).unwrap() % replies.len()];
                    if r.fail {
                        return "{}".into();
                    }
                    let (token, b) = body(r, n, wall);
                    expiry.lock().unwrap().insert(token, deadline(r, Instant::now(), wall));
                    b
                }));
                let script = Script::new(vec![], answer);
                let extra = if lazy { "eager = false\nmin_ttl = \"0s\"" } else { "min_ttl = \"0s\"" };
                let (broker, h) = start(&script, extra).await;
                for (after, min_ttl) in &asks {
                    tokio::time::sleep(*after).await;
                    if let Ok(Ok(t)) = tokio::time::timeout(S(30), h.token(*min_ttl)).await {
                        let now = Instant::now();
                        let text = t.access_token.expose_secret().to_string();
                        let dead_by = served.lock().unwrap().get(&text).cloned();
                        let dead_by = dead_by.unwrap_or_else(|| panic!("served a token the IdP never issued: {t:?}"));
                        let dead_by = dead_by.unwrap_or_else(|| panic!("served a token that was dead on arrival: {t:?}"));
                        assert!(now + crate::token::SERVE_MARGIN < dead_by, "served {t:?} at {now:?}, dead by {dead_by:?}");
                    }
                    let _ = broker.status(&h);
                }
                let restarts = broker
                    .metrics()
                    .source_restarts
                    .get_or_create(&crate::metrics::SourceLabel { source: "s".into() })
                    .get();
                assert_eq!(restarts, 0, "the source's task panicked");
            });
        }
    }
}

/// The metric's list of states is the lifecycle's: a new state cannot be
/// left out of `tokend_source_state`'s clean-up.
#[test]
fn the_state_metric_knows_every_state_by_its_api_name() {
    assert_eq!(
        source::State::ALL.map(source::State::name),
        crate::metrics::SOURCE_STATES
    );
}

/// `tokend_credential_expiry_timestamp_seconds` follows the config: set
/// with `credential_expires`, gone when a reload drops the key or the source.
#[tokio::test(start_paused = true)]
async fn the_credential_expiry_gauge_follows_reloads() {
    let series = "tokend_credential_expiry_timestamp_seconds{source=\"s\"}";
    let script = Script::new(vec![], ok(3600));
    let (broker, _) = start(&script, "eager = false\ncredential_expires = 2030-01-01").await;
    assert!(broker.metrics().encode().contains(series));
    broker.apply(&config("eager = false"), &BTreeMap::new());
    assert!(!broker.metrics().encode().contains(series));
    broker.apply(
        &config("eager = false\ncredential_expires = 2030-01-01"),
        &BTreeMap::new(),
    );
    assert!(broker.metrics().encode().contains(series));
    broker.apply(&config("").clone_without_sources(), &BTreeMap::new());
    assert!(!broker.metrics().encode().contains(series));
}

fn skewed(lifetime: u64, wall_behind: u64) -> Answer {
    Answer::Skewed {
        lifetime: S(lifetime),
        wall_behind: S(wall_behind),
    }
}

/// After a suspend the wall clock counted, a token it says is dead is not
/// served, whatever tokio's clock says: a request fetches a new one.
#[tokio::test(start_paused = true)]
async fn a_token_dead_by_the_wall_clock_is_never_served() {
    let script = Script::new(vec![skewed(120, 180)], ok(3600));
    let (broker, h) = start(&script, "").await;
    settle().await;
    assert_eq!(script.calls().len(), 1);
    assert_ne!(h.snapshot().state(Moment::now()), source::State::Ready);
    assert!(
        h.with_token(None, Moment::now(), |_| ()).is_none(),
        "not on the hot path either"
    );
    let t = h.token(None).await.unwrap();
    assert_eq!(t.access_token.expose_secret(), "token-1");
    assert_eq!(script.calls().len(), 2);
    let status = broker.status(&h);
    assert_eq!(status.state, State::Ready);
    let expires_at = status.snapshot.token.unwrap().expires_at_text();
    let expires = crate::timefmt::parse_rfc3339(&expires_at).unwrap();
    assert!(expires > SystemTime::now() + S(3000), "{expires_at}");
}

/// A wall-clock jump starts at once every refresh it made due, with no
/// request; `expires_in` meanwhile counts on the clock that says less.
#[tokio::test(start_paused = true)]
async fn a_wall_clock_jump_starts_the_refreshes_it_made_due() {
    // A 600 s token from 500 s ago by the wall clock: 100 s left, and its
    // refresh (at 75 %) due 50 s ago; tokio's timer says 450 s from now.
    let script = Script::new(vec![skewed(600, 500)], ok(3600));
    let (broker, h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    let t = h.token(None).await.unwrap();
    let left = t.remaining_at(Moment::now());
    assert!(left <= S(100) && left > S(99), "{left:?}");
    tokio::time::sleep(S(10)).await;
    assert_eq!(script.calls().len(), 1, "tokio's timer alone waits");
    broker.clock_jumped(S(500));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(script.calls().len(), 2, "the jump started the refresh");
    assert_eq!(
        h.token(None).await.unwrap().access_token.expose_secret(),
        "token-1"
    );
}

/// A jump that leaves the refresh in the future moves its timer to where
/// the wall clock puts it.
#[tokio::test(start_paused = true)]
async fn a_wall_clock_jump_moves_a_refresh_to_its_wall_clock_time() {
    // Refresh at 427.5–472.5 s after issue; issued 300 s ago by the wall
    // clock: due in 127.5–172.5 s, not 427.5–472.5.
    let script = Script::new(vec![skewed(600, 300)], ok(3600));
    let (broker, _h) = start(&script, "min_ttl = \"0s\"").await;
    settle().await;
    broker.clock_jumped(S(300));
    tokio::time::sleep(S(120)).await;
    assert_eq!(script.calls().len(), 1, "not due yet");
    tokio::time::sleep(S(60)).await;
    assert_eq!(script.calls().len(), 2, "due by the wall clock");
}

/// An IdP that accepts requests and never answers holds its own
/// `max_concurrent_fetches` permits, never another endpoint's.
#[tokio::test(start_paused = true)]
async fn a_black_holed_endpoint_does_not_starve_another() {
    let script = Script::new(vec![], ok(3600));
    script.stalled.lock().unwrap().push("127.0.0.2".into());
    let mut text = String::new();
    for i in 0..8 {
        text.push_str(&format!("[sources.hole{i}]\ntoken_url = \"http://127.0.0.2:9/t\"\nclient_id = \"c\"\nclient_secret = \"x\"\n"));
    }
    text.push_str("[sources.good]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = \"x\"\n");
    let broker = Broker::new(script.clone(), 2, Arc::new(crate::metrics::Metrics::new()));
    broker.apply(
        &crate::config::load_str(&text, Path::new("t"), None).unwrap(),
        &BTreeMap::new(),
    );
    tokio::time::sleep(S(1)).await;
    let good = broker.get("good").unwrap();
    assert!(
        good.snapshot().is_servable(Moment::now()),
        "the healthy IdP's source never waits"
    );
    let running = script.running.lock().unwrap().clone();
    let holes = running.iter().filter(|h| *h == "127.0.0.2").count();
    assert_eq!(
        holes, 2,
        "the black hole holds its own two permits: {running:?}"
    );
    assert_eq!(broker.endpoints.len(), 2);
}

/// A request during a long backoff makes one early attempt, at most one
/// per 10 s per source; the rest are answered at once.
#[tokio::test(start_paused = true)]
async fn a_request_during_backoff_makes_one_early_attempt_per_ten_seconds() {
    let script = Script::new(vec![], fail(503));
    let (_b, h) = start(&script, "").await;
    // Two minutes of failures: the backoff ceiling is over a minute now.
    tokio::time::sleep(S(120)).await;
    let before = script.calls().len();
    assert!(matches!(
        h.token(None).await,
        Err(ServeError::Unavailable { .. })
    ));
    assert_eq!(script.calls().len(), before + 1, "one early attempt");
    for _ in 0..20 {
        assert!(matches!(
            h.token(None).await,
            Err(ServeError::Unavailable { .. })
        ));
    }
    assert_eq!(
        script.calls().len(),
        before + 1,
        "no second one within 10 s"
    );
    // The IdP is back: the next request after 10 s gets a token at once.
    script.set_then(ok(3600));
    tokio::time::sleep(S(10)).await;
    let t = h.token(None).await;
    assert!(t.is_ok(), "{t:?}");
}

/// One success on an endpoint ends the backoff of its other sources: 50
/// sources three minutes into an outage all hold a token within seconds
/// of the IdP's return, once any one of them gets through.
#[tokio::test(start_paused = true)]
async fn one_success_ends_the_backoff_of_the_endpoints_other_sources() {
    let script = Script::new(vec![], fail(503));
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!("[sources.s{i}]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = \"x\"\n"));
    }
    let broker = Broker::new(script.clone(), 8, Arc::new(crate::metrics::Metrics::new()));
    broker.apply(
        &crate::config::load_str(&text, Path::new("t"), None).unwrap(),
        &BTreeMap::new(),
    );
    tokio::time::sleep(S(180)).await;
    script.set_then(ok(3600));
    // One request gets through (its early attempt) ...
    let first = broker.get("s0").unwrap();
    assert!(first.token(None).await.is_ok());
    let back = Instant::now();
    // ... and every other source follows within the spread.
    tokio::time::sleep(actor::RECOVERY_SPREAD + Duration::from_millis(10)).await;
    let now = Moment::now();
    let waiting: Vec<String> = broker
        .list()
        .iter()
        .filter(|h| !h.snapshot().is_servable(now))
        .map(|h| h.name().to_string())
        .collect();
    assert!(
        waiting.is_empty(),
        "still backing off {:?} after the IdP's return: {waiting:?}",
        back.elapsed()
    );
}
