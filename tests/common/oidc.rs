//! A real third-party OAuth 2.0 server for the interop tests: panva's
//! oidc-provider, run by `tests/interop/server.mjs` under Node.js.
//!
//! The harness installs the npm dependencies when they are missing (`npm ci`),
//! starts the server on a loopback port, waits for its discovery document, and
//! stops it by PID. Without Node.js or npm the tests fail saying what to install.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Client secrets registered in `server.mjs` (kept in step with it).
pub const BASIC_SECRET: &str = "basic-s3cret+/:%&=?";
pub const POST_SECRET: &str = "post-s3cret+/:%&=?";
pub const NARROW_SECRET: &str = "narrow-s3cret";
/// The resource (audience) of every access token it issues.
pub const RESOURCE: &str = "https://api.tokend.test";

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

static INSTALL: Mutex<()> = Mutex::new(());

fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the interop tests need `{tool}`: install Node.js 20 or later with npm \
         (Debian: apt-get install nodejs npm) and run the tests again"
    );
}

/// Runs `npm ci` in tests/interop once if oidc-provider is not installed.
fn ensure_installed() {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    require("node");
    let dir = interop_dir();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    require("npm");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running oidc-provider; killed when dropped.
pub struct OidcServer {
    child: Option<Child>,
    pub port: u16,
    pub issuer: String,
    ttl: u64,
    /// The credentials the test made for it (see [`Credentials`]), if any.
    pub creds: Option<Credentials>,
    /// The HTTPS listener for `tls_client_auth`, with [`Credentials`].
    pub tls_port: Option<u16>,
}

/// Keys and certificates made with openssl for the credential interop tests:
/// `pkjwt.pem`/`.key` (the private_key_jwt clients' key), `stranger.pem`/
/// `.key` (a key the server does not know), and a test CA (`ca.pem`) that
/// signed `server.pem` (for 127.0.0.1), `mtls.pem` (CN=tokend-mtls) and
/// `mtls-v1.pem` (the same subject, an X.509 v1 certificate).
pub struct Credentials {
    pub dir: tempfile::TempDir,
}

impl Credentials {
    pub fn make() -> Credentials {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        super::make_cert(d, "pkjwt", "rsa");
        super::make_cert(d, "stranger", "rsa");
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tokend test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for (name, subject, ext) in [
            ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
            ("mtls", "/CN=tokend-mtls", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
            openssl(d, &["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", &format!("{name}.pem"), "-extfile", &format!("{name}.ext")]);
        }
        // What `openssl x509 -req` without -extfile makes: an X.509 v1
        // certificate, the most common how-to's client certificate.
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=tokend-mtls",
                "-keyout",
                "mtls-v1.key",
                "-out",
                "mtls-v1.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "mtls-v1.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                "mtls-v1.pem",
            ],
        );
        Credentials { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OidcServer {
    /// Starts on a free port, issuing tokens that live `ttl` seconds.
    pub async fn start(ttl: u64) -> OidcServer {
        Self::start_on(0, ttl, None).await
    }

    /// Starts with private_key_jwt clients and an mTLS listener, using
    /// credentials made for it now.
    pub async fn start_with_credentials(ttl: u64) -> OidcServer {
        let creds = tokio::task::spawn_blocking(Credentials::make)
            .await
            .unwrap();
        Self::start_on(0, ttl, Some(creds)).await
    }

    async fn start_on(port: u16, ttl: u64, creds: Option<Credentials>) -> OidcServer {
        tokio::task::spawn_blocking(ensure_installed).await.unwrap();
        let mut cmd = Command::new("node");
        if let Some(c) = &creds {
            cmd.env("CRED_DIR", c.dir.path());
        }
        let mut child = cmd
            .arg("server.mjs")
            .current_dir(interop_dir())
            .env("PORT", port.to_string())
            .env("TTL", ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        )
        .await
        .expect("oidc-provider did not start within 30 s")
        .unwrap()
        .unwrap();
        let info: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("oidc-provider printed {line:?} instead of its port ({e})"));
        let port = u16::try_from(info["port"].as_u64().unwrap()).unwrap();
        let server = OidcServer {
            child: Some(child),
            port,
            issuer: info["issuer"].as_str().unwrap().to_string(),
            ttl,
            creds,
            tls_port: info["tls_port"].as_u64().map(|p| u16::try_from(p).unwrap()),
        };
        let discovery = format!("{}/.well-known/openid-configuration", server.issuer);
        super::eventually("the discovery document", async || {
            let r = reqwest::get(&discovery).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        server
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Stops the server (SIGKILL to its PID).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it and starts it again on the same port (new signing keys).
    pub async fn restart(mut self) -> OidcServer {
        self.stop();
        let creds = self.creds.take();
        Self::start_on(self.port, self.ttl, creds).await
    }

    /// Checks `token`'s signature, issuer and audience with the server; the claims if valid.
    pub async fn verify(&self, token: &str) -> Result<serde_json::Value, serde_json::Value> {
        let mut url = url::Url::parse(&format!("{}/_test/verify", self.issuer)).unwrap();
        url.query_pairs_mut().append_pair("token", token);
        let r = reqwest::get(url).await.unwrap();
        let ok = r.status().is_success();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if ok {
            Ok(body["claims"].clone())
        } else {
            Err(body)
        }
    }

    /// Tokens the server has issued since it started.
    pub async fn issued(&self) -> u64 {
        let r = reqwest::get(format!("{}/_test/stats", self.issuer))
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        body["issued"].as_u64().unwrap()
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        self.stop();
    }
}
