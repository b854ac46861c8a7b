//! A token endpoint on 127.0.0.1 that checks client assertions the way
//! Microsoft Entra ID does, for the certificate-credential tests.
//!
//! For a certificate client it verifies: the `x5t#S256` or `x5t` header
//! names a certificate registered for the client, the signature verifies
//! with that certificate's key, `aud` is this endpoint's URL, `iss` and
//! `sub` are the `client_id`, the time window (`nbf` ≤ now < `exp` ≤ now +
//! 10 min), and that the `jti` was not used before. Anything else gets
//! Entra's answer: HTTP 401 `invalid_client` with AADSTS700027. A
//! federated client's assertion is only recorded (Entra would check it
//! against the issuer's keys). Tokens are opaque.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokend::cert::Certificate;

#[derive(Default)]
struct State {
    /// client_id → its registered certificates.
    certificates: HashMap<String, Vec<Certificate>>,
    /// client_ids that send federated assertions.
    federated: HashSet<String>,
    jtis: HashSet<String>,
    /// Every client_assertion received, in order.
    assertions: Vec<String>,
    issued: u64,
}

/// A running Entra-like token endpoint; stops when dropped.
pub struct EntraDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EntraDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EntraDouble {
    pub async fn start() -> EntraDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&st, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        EntraDouble { addr, state, task }
    }

    /// The token endpoint, `http://127.0.0.1:PORT/TENANT/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/contoso/oauth2/v2.0/token", self.addr)
    }

    /// An API URL that answers 200 to a token this endpoint issued, else 401.
    pub fn probe_url(&self) -> String {
        format!("http://{}/probe", self.addr)
    }

    /// The `authority` to configure with `tenant = "contoso"`.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers `cert` (a PEM file) for `client_id`, as uploading it in the portal does.
    pub fn register(&self, client_id: &str, cert: &std::path::Path) {
        let c = Certificate::load(cert).unwrap();
        self.state
            .lock()
            .unwrap()
            .certificates
            .entry(client_id.to_string())
            .or_default()
            .push(c);
    }

    /// Registers `client_id` as a federated (workload identity) client.
    pub fn federate(&self, client_id: &str) {
        self.state
            .lock()
            .unwrap()
            .federated
            .insert(client_id.to_string());
    }

    pub fn assertions(&self) -> Vec<String> {
        self.state.lock().unwrap().assertions.clone()
    }

    pub fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }
}

fn reply(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

fn aadsts700027(why: &str) -> Response<Full<Bytes>> {
    reply(
        401,
        serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS700027: Client assertion failed signature validation. ({why}) Trace ID: t Correlation ID: c Timestamp: 2026-11-29 10:00:00Z"),
            "error_codes": [700027],
            "trace_id": "t-700027",
            "correlation_id": "c-700027",
        }),
    )
}

fn part(jwt: &str, i: usize) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwt.split('.').nth(i)?)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn answer(
    state: &Mutex<State>,
    addr: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/probe" {
        // An API that accepts the tokens this endpoint issued.
        let ok = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer entra-token-"));
        return reply(if ok { 200 } else { 401 }, serde_json::json!({}));
    }
    let url = format!("http://{addr}{}", req.uri().path());
    let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
        return reply(400, serde_json::json!({"error": "invalid_request"}));
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(assertion) = form.get("client_assertion").cloned() else {
        return reply(
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000218: The request body must contain client_assertion or client_secret.", "error_codes": [7000218]}),
        );
    };
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return reply(400, serde_json::json!({"error": "invalid_request"}));
    }
    let mut st = state.lock().unwrap();
    st.assertions.push(assertion.clone());
    if !st.federated.contains(&client_id) {
        if let Err(why) = check(&st, &assertion, &client_id, &url) {
            return aadsts700027(&why);
        }
        let jti = part(&assertion, 1).unwrap()["jti"]
            .as_str()
            .unwrap()
            .to_string();
        if !st.jtis.insert(jti) {
            return aadsts700027("jti already used");
        }
    }
    st.issued += 1;
    let n = st.issued;
    reply(
        200,
        serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("entra-token-{n}")}),
    )
}

/// Entra's checks of a certificate client's assertion.
fn check(st: &State, jwt: &str, client_id: &str, url: &str) -> Result<(), String> {
    let header = part(jwt, 0).ok_or("not a JWT")?;
    let claims = part(jwt, 1).ok_or("not a JWT")?;
    let certs = st
        .certificates
        .get(client_id)
        .ok_or("no certificate registered for this application")?;
    let cert = certs
        .iter()
        .find(|c| {
            header["x5t#S256"].as_str() == Some(c.x5t_s256().as_str())
                || header["x5t"].as_str() == Some(c.x5t().as_str())
        })
        .ok_or("the thumbprint names no certificate registered for this application")?;
    let alg: jsonwebtoken::Algorithm = header["alg"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or("unknown alg")?;
    let (message, signature) = jwt.rsplit_once('.').ok_or("not a JWT")?;
    if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &cert.decoding_key(), alg)
        .unwrap_or(false)
    {
        return Err("signature does not verify with the registered certificate".into());
    }
    if claims["aud"].as_str() != Some(url) {
        return Err(format!("aud {} is not {url}", claims["aud"]));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err("iss and sub must be the client_id".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (nbf, exp) = (
        claims["nbf"].as_u64().ok_or("no nbf")?,
        claims["exp"].as_u64().ok_or("no exp")?,
    );
    if nbf > now + 60 || exp <= now || exp > now + Duration::from_secs(600).as_secs() + 60 {
        return Err("outside its validity window".into());
    }
    Ok(())
}
