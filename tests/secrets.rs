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

/// A token endpoint that answers 401 with everything it was sent echoed
/// into `error`, `error_description` and `trace_id`.
fn echoing_endpoint() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let echoed = String::from_utf8_lossy(&got)
                .replace("\r\n\r\n", " | body: ")
                .replace("\r\n", " | ");
            let body = serde_json::json!({
                "error": format!("invalid_client {echoed}"),
                "error_description": format!("you sent: {echoed}"),
                "trace_id": echoed,
            })
            .to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Whatever an endpoint echoes, the secret reaches neither status nor the
/// log: not raw, not form-encoded, not inside the Basic credential, not in
/// part.
#[tokio::test]
async fn an_echoed_secret_is_scrubbed_in_every_encoding_and_field() {
    use base64::Engine;
    let port = echoing_endpoint();
    let body = ["client_secret_basic", "client_secret_post"]
        .iter()
        .map(|m| {
            format!(
                "[sources.{}]\ntoken_url = \"http://127.0.0.1:{port}/t\"\nclient_id = \"echo\"\nclient_secret = {{ env = \"ECHO_SECRET\" }}\nauth_method = \"{m}\"\n",
                m.replace('_', "-")
            )
        })
        .collect::<String>();
    let d = daemon(&body).env("ECHO_SECRET", SECRET).start().await;
    let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("echo:{encoded}"));
    for name in ["client-secret-basic", "client-secret-post"] {
        wait_for_status(&d, &format!("/v1/tokens/{name}"), 503).await;
        let st = d.get(&format!("/v1/sources/{name}")).await.json();
        let shown = st.to_string();
        assert!(shown.contains("[REDACTED]"), "the echo arrived: {shown}");
        for leak in [SECRET, encoded.as_str(), basic.as_str(), "s3cr3t"] {
            assert!(!shown.contains(leak), "{leak} in {shown}");
            assert!(!d.log().contains(leak), "{leak} in the log");
        }
    }
}

/// The secret of the issue that found the gaps: a space, `+`, `/`, `:`,
/// `&`, `<`, `>`, `"`, `%` and a backslash, each a different escape.
const AWKWARD: &str = "Sup3r Secret+/:&<>\"%\\x-val";

/// An adversarial token endpoint: it takes the secret from what it was
/// sent (Basic or the form) and echoes it back transformed, split by a
/// newline, `%20`-encoded, with lowercase `%2b`, HTML-escaped, as
/// base64url, as hex, and its first half; on `/ok` in a 200's `scope`, on
/// any other path in a 401's `error_description`.
fn transforming_endpoint() -> u16 {
    use base64::Engine;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let (mut path, mut len, mut basic) = (String::new(), 0, None);
            while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                let l = line.trim_end().to_string();
                line.clear();
                if l.is_empty() {
                    break;
                }
                let lower = l.to_lowercase();
                if let Some(rest) = l.strip_prefix("POST ") {
                    path = rest.split(' ').next().unwrap_or_default().to_string();
                } else if let Some(v) = lower.strip_prefix("content-length: ") {
                    len = v.parse().unwrap_or(0);
                } else if lower.starts_with("authorization: basic ") {
                    basic = Some(l["authorization: basic ".len()..].to_string());
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let from_form = url::form_urlencoded::parse(&body)
                .find(|(k, _)| k == "client_secret")
                .map(|(_, v)| v.into_owned());
            let from_basic = basic.and_then(|b| {
                let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
                let pair = String::from_utf8(raw).ok()?;
                let (_, secret) = pair.split_once(':')?;
                Some(
                    url::form_urlencoded::parse(format!("s={secret}").as_bytes())
                        .next()?
                        .1
                        .into_owned(),
                )
            });
            let secret = from_form.or(from_basic).unwrap_or_default();
            let plus: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            let forms = [
                secret.replacen(' ', "\n", 1),
                plus.replace('+', "%20"),
                plus.replace("%2B", "%2b"),
                secret
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;"),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret),
                secret.bytes().map(|b| format!("{b:02x}")).collect(),
                secret[..secret.len() / 2].to_string(),
            ]
            .join(" ; ");
            let (status, answer) = if path == "/ok" {
                (
                    "200 OK",
                    serde_json::json!({"access_token": "t0k3n", "token_type": "Bearer", "expires_in": 600, "scope": forms}),
                )
            } else {
                (
                    "401 Unauthorized",
                    serde_json::json!({"error": "invalid_client", "error_description": format!("you sent: {forms}")}),
                )
            };
            let answer = answer.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    port
}

/// Whatever transform an endpoint applies to the secret it echoes, into
/// an error or into a success's `scope`, no run of 12 of its characters
/// reaches status or the log (docs/security.md).
#[tokio::test]
async fn a_transformed_echo_of_the_secret_is_scrubbed_too() {
    let port = transforming_endpoint();
    let body = [("ok", "client_secret_post"), ("fail", "client_secret_basic")]
        .iter()
        .map(|(path, m)| {
            format!(
                "[sources.{path}]\ntoken_url = \"http://127.0.0.1:{port}/{path}\"\nclient_id = \"echo\"\nclient_secret = {{ env = \"ECHO_SECRET\" }}\nauth_method = \"{m}\"\n"
            )
        })
        .collect::<String>();
    let d = daemon(&body).env("ECHO_SECRET", AWKWARD).start().await;
    wait_for_status(&d, "/v1/tokens/fail", 503).await;
    assert_eq!(d.get("/v1/tokens/ok").await.status(), 200);
    let runs: Vec<&[u8]> = AWKWARD.as_bytes().windows(12).collect();
    for name in ["ok", "fail"] {
        let shown = format!(
            "{}{}",
            d.get(&format!("/v1/sources/{name}")).await.text(),
            d.get(&format!("/v1/tokens/{name}")).await.text()
        );
        assert!(shown.contains("[REDACTED]"), "the echo arrived: {shown}");
        for w in &runs {
            let w = String::from_utf8_lossy(w);
            assert!(!shown.contains(&*w), "{w:?} in {shown}");
        }
    }
    let log = d.log_with("you sent").await;
    for w in &runs {
        let w = String::from_utf8_lossy(w);
        assert!(!log.contains(&*w), "{w:?} in the log");
    }
}

/// How many times `needle` is in the writable memory of process `pid`
/// (heap, stacks, anonymous mappings), read through /proc/PID/mem.
fn copies_in_memory(pid: i32, needle: &[u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut count = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        // Writable, and not a file's own pages.
        if !perms.starts_with("rw") || fields.get(5).is_some_and(|p| p.starts_with('/')) {
            continue;
        }
        let Some((from, to)) = range.split_once('-') else {
            continue;
        };
        let (from, to) = (
            u64::from_str_radix(from, 16).unwrap(),
            u64::from_str_radix(to, 16).unwrap(),
        );
        let mut buf = vec![0u8; usize::try_from(to - from).unwrap()];
        if mem.read_exact_at(&mut buf, from).is_err() {
            continue;
        }
        let first = needle[0];
        let mut at = 0;
        while let Some(i) = buf[at..].iter().position(|b| *b == first) {
            let start = at + i;
            if buf[start..].starts_with(needle) {
                count += 1;
            }
            at = start + 1;
        }
    }
    count
}

/// After fetches, rotations and reloads, no copy of a file secret, or of
/// its form encoding, is left in the daemon's memory: every buffer that
/// held one (the read, the change check, the config lint, the Basic pair)
/// is wiped. (Root only: it reads another process's memory.)
#[tokio::test]
async fn no_copy_of_a_file_secret_is_left_in_memory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: reading another process's memory needs root (CI runs as root)");
        return;
    }
    // Form-encoding changes it, so its raw bytes never go on the wire.
    // Long: free() overwrites the first 16 bytes of a chunk, so what a
    // freed, unwiped buffer keeps is the tail; that is what is looked for.
    let secret = "Mem+Secret/7f3a:9c2e-0123456789abcdefghijklmnopqrstuvwxyz-TAIL1";
    let rotated = "Mem+Secret/rot8:ed11-0123456789abcdefghijklmnopqrstuvwxyz-TAIL2";
    let idp = idp(S(3600), &[]).await;
    idp.add_client("mem", secret);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mem.secret");
    write_private(&file, &format!("{secret}\n"));
    let body = source_with_file_secret("mem", &idp, &file, "");
    let socket = dir.path().join("tokend.sock");
    let d = daemon(&body).at(dir, socket).start().await;
    wait_for_status(&d, "/v1/tokens/mem", 200).await;
    // A rotation (read, change check, lint, fetch) and a reload.
    idp.add_client("mem", rotated);
    write_private(&file, &format!("{rotated}\n"));
    eventually("a fetch with the rotated secret", async || {
        (idp.secrets_seen().last().map(String::as_str) == Some(rotated)).then_some(())
    })
    .await;
    // The rotation was one reload; SIGHUP makes the second.
    let before = d.get("/v1/sources").await.json()["config"]["reloads"]["success"]
        .as_u64()
        .unwrap();
    d.signal(libc::SIGHUP);
    wait_until(&d, |doc| {
        doc["config"]["reloads"]["success"].as_u64() > Some(before)
    })
    .await;
    let r = d
        .request(hyper::Method::POST, "/v1/sources/mem/refresh")
        .await;
    assert_eq!(r.status(), 200);
    // The scan works: the endpoint's URL, which the config holds, is found.
    assert!(copies_in_memory(d.pid(), idp.token_url().as_bytes()) > 0);
    for value in [secret, rotated] {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        for whole in [value.to_string(), encoded] {
            let tail = &whole[whole.len() - 32..];
            let n = copies_in_memory(d.pid(), tail.as_bytes());
            assert_eq!(n, 0, "{n} copies of {tail:?} in the daemon's memory");
        }
    }
}
