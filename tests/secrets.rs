//! Where a secret can go: never through a proxy to a loopback endpoint,
//! never echoed back into status or the log in any encoding, and never
//! printed as part of a URL.

mod common;

use common::*;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

/// A proxy on loopback that records what each connection sends (the
/// request head, and a little more) and answers 502.
struct RecordingProxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    fn start() -> RecordingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = vec![0u8; 16 * 1024];
                let n = conn.read(&mut buf).unwrap_or(0);
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = conn.write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        RecordingProxy { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// With every proxy variable set, a loopback token endpoint is reached
/// directly: the proxy (another host, it could be) never sees the Basic
/// header. Other destinations still go through the proxy.
#[tokio::test]
async fn a_loopback_token_endpoint_never_goes_through_a_proxy() {
    let proxy = RecordingProxy::start();
    let idp = idp(S(3600), &["local"]).await;
    let body = format!(
        "{}[sources.remote]\ntoken_url = \"https://idp.remote.example/token\"\nclient_id = \"remote\"\nclient_secret = \"{SECRET}\"\n",
        source("local", &idp, "")
    );
    let mut builder = daemon(&body);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        builder = builder.env(var, &proxy.url());
    }
    let d = builder.start().await;
    wait_for_status(&d, "/v1/tokens/local", 200).await;
    eventually("the remote source's request at the proxy", async || {
        proxy
            .seen()
            .iter()
            .any(|r| r.starts_with("CONNECT idp.remote.example:443"))
            .then_some(())
    })
    .await;
    for request in proxy.seen() {
        assert!(
            !request.contains("127.0.0.1:"),
            "loopback went to the proxy: {request}"
        );
        assert!(
            !request.to_lowercase().contains("authorization"),
            "{request}"
        );
    }
}

/// An unreachable token endpoint with a query (an API key, say) is named
/// without it, in status and in the log.
#[tokio::test]
async fn an_unreachable_endpoint_is_named_without_its_query() {
    let port = common::mi::free_port();
    let body = format!(
        "[sources.q]\ntoken_url = \"http://127.0.0.1:{port}/t?api_key=qu3ry-k3y\"\nclient_id = \"q\"\nclient_secret = \"{SECRET}\"\n"
    );
    let d = daemon(&body).start().await;
    wait_for_status(&d, "/v1/tokens/q", 503).await;
    let st = d.get("/v1/sources/q").await.json();
    let message = st["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("http://127.0.0.1:{port}/t?…")),
        "{message}"
    );
    assert!(!st.to_string().contains("qu3ry-k3y"), "{st}");
    assert!(!d.log().contains("qu3ry-k3y"), "{}", d.log());
}
