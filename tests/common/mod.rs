//! Test kit: runs the real `tokend` binary on a temporary socket, talks to it
//! over that socket, and captures its log.

#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use bytes::Bytes;
pub mod entra;
pub mod mi;
pub mod oidc;
pub mod others;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub use tokend::dev::{DevIdp, Failure};

pub const SECRET: &str = "s3cr3t-a+b/c:d%e";

/// A running daemon; killed on drop if still running.
pub struct Daemon {
    child: Child,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
}

pub struct Builder {
    body: String,
    server: String,
    env: Vec<(String, String)>,
    rust_log: String,
    socket: Option<PathBuf>,
    dir: Option<TempDir>,
    layout: Option<Layout>,
    relative: bool,
    piped_stderr: bool,
    netns: Option<PathBuf>,
}

/// Writes the config text into the temp dir and returns the path for `-c`.
type Layout = Box<dyn FnOnce(&Path, &str) -> PathBuf>;

/// A daemon whose config has `[server]` pointing at a temp socket plus `body`.
pub fn daemon(body: &str) -> Builder {
    Builder {
        body: body.to_string(),
        server: String::new(),
        env: Vec::new(),
        rust_log: "info".into(),
        socket: None,
        dir: None,
        layout: None,
        relative: false,
        netns: None,
        piped_stderr: false,
    }
}

/// A generic source named `name` against `idp` with the shared secret.
pub fn source(name: &str, idp: &DevIdp, extra: &str) -> String {
    source_as(name, name, idp, extra)
}

/// Like [`source`] with another client id.
pub fn source_as(name: &str, client_id: &str, idp: &DevIdp, extra: &str) -> String {
    format!(
        "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret = \"{SECRET}\"\n{extra}\n",
        idp.token_url()
    )
}

/// Like [`source`], its secret read from `file` (`{ file = … }`).
pub fn source_with_file_secret(name: &str, idp: &DevIdp, file: &Path, extra: &str) -> String {
    format!(
        "[sources.{name}]\ntoken_url = \"{}\"\nclient_id = \"{name}\"\nclient_secret = {{ file = \"{}\" }}\n{extra}\n",
        idp.token_url(),
        file.display()
    )
}

impl Builder {
    pub fn server(mut self, lines: &str) -> Self {
        self.server = lines.to_string();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn rust_log(mut self, level: &str) -> Self {
        self.rust_log = level.into();
        self
    }
    /// Runs in `dir` with the socket at `socket` (for stale-socket tests).
    pub fn at(mut self, dir: TempDir, socket: PathBuf) -> Self {
        self.dir = Some(dir);
        self.socket = Some(socket);
        self
    }

    /// Lays the config out with `f` (given the temp dir and the text; it
    /// returns the path to pass to `-c`) instead of a plain `tokend.toml`.
    pub fn layout(mut self, f: impl FnOnce(&Path, &str) -> PathBuf + 'static) -> Self {
        self.layout = Some(Box::new(f));
        self
    }

    /// Logs to a pipe the test holds (see [`Daemon::take_stderr`]), not to
    /// the log file.
    /// Runs the daemon in the network namespace at `path`
    /// (`/run/netns/NAME`).
    pub fn netns(mut self, path: &Path) -> Self {
        self.netns = Some(path.to_path_buf());
        self
    }

    pub fn piped_stderr(mut self) -> Self {
        self.piped_stderr = true;
        self
    }

    /// Runs in the temp dir with a relative `-c` (as `tokend run -c tokend.toml`).
    pub fn relative(mut self) -> Self {
        self.relative = true;
        self
    }

    /// Writes the config and starts the process without waiting for it.
    pub fn spawn(self) -> Daemon {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let socket = self
            .socket
            .unwrap_or_else(|| dir.path().join("tokend.sock"));
        let mode = if self.server.contains("socket_mode") {
            ""
        } else {
            "socket_mode = \"0600\"\n"
        };
        let text = format!(
            "[server]\nsocket = \"{}\"\n{mode}{}\n{}",
            socket.display(),
            self.server,
            self.body
        );
        let config = match self.layout {
            Some(f) => f(dir.path(), &text),
            None => {
                let config = dir.path().join("tokend.toml");
                write_private(&config, &text);
                config
            }
        };
        let log = std::fs::File::create(dir.path().join("tokend.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
        if self.relative {
            cmd.current_dir(dir.path());
        }
        let given = match self.relative {
            true => config.strip_prefix(dir.path()).unwrap().to_path_buf(),
            false => config.clone(),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&given)
            .env("RUST_LOG", &self.rust_log)
            .env_remove("TOKEND_CONFIG")
            // Each daemon records its sink files in its own directory.
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if self.piped_stderr {
                Stdio::piped()
            } else {
                Stdio::from(log)
            });
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(ns) = &self.netns {
            others::enter_netns(&mut cmd, ns);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            dir,
            socket,
            config,
        }
    }

    /// Starts the daemon and waits until it answers `/healthz`.
    pub async fn start(self) -> Daemon {
        let mut d = self.spawn();
        d.wait_ready().await;
        d
    }
}

impl Daemon {
    /// Polls until the socket answers, failing with the log if it never does.
    pub async fn wait_ready(&mut self) {
        for _ in 0..500 {
            if let Ok(r) = tokend::client::call(&self.socket, hyper::Method::GET, "/healthz").await
            {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tokend exited with {status}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tokend did not start within 10 s:\n{}", self.log());
    }

    /// The log as written so far. Lines reach it through the daemon's log
    /// thread, a moment after what they report: to see a line the test
    /// just caused, use [`Daemon::log_with`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tokend.log")).unwrap_or_default()
    }

    /// The log once it holds `needle` (up to 5 s); the panic shows it.
    pub async fn log_with(&self, needle: &str) -> String {
        self.log_when(needle, |log| log.contains(needle)).await
    }

    /// The log once `pred` holds for it (up to 5 s); the panic shows it.
    pub async fn log_when(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match poll_within(Duration::from_secs(5), async || {
            let log = self.log();
            pred(&log).then_some(log)
        })
        .await
        {
            Some(log) => log,
            None => panic!("the log never showed {what}:\n{}", self.log()),
        }
    }

    /// The daemon's stderr, with [`Builder::piped_stderr`].
    pub fn take_stderr(&mut self) -> std::process::ChildStderr {
        self.child.stderr.take().unwrap()
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit (at most 10 s).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..500 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tokend did not exit:\n{}", self.log());
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(hyper::Method::GET, path).await
    }

    pub async fn request(&self, method: hyper::Method, path: &str) -> Resp {
        Resp(
            tokend::client::call(&self.socket, method, path)
                .await
                .unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with helpers.
pub struct Resp(pub hyper::Response<Bytes>);

impl Resp {
    pub fn status(&self) -> u16 {
        self.0.status().as_u16()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.0.body())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.0.body()).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.0
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Starts a dev IdP with the shared secret registered for `clients`.
pub async fn idp(lifetime: Duration, clients: &[&str]) -> DevIdp {
    let idp = DevIdp::start(lifetime).await.unwrap();
    for c in clients {
        idp.add_client(c, SECRET);
    }
    idp
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Polls `probe` every 20 ms for up to 5 s until it yields a value.
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(Duration::from_secs(5), what, probe).await
}

/// Polls `probe` every 20 ms for up to `limit` until it yields a value.
pub async fn eventually_within<T>(
    limit: Duration,
    what: &str,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    match poll_within(limit, probe).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `probe` every 20 ms for up to `limit`; `None` if it never yields.
pub async fn poll_within<T>(
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(v) = probe().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Polls `path` for up to 5 s until it answers `want`; the panic shows the last answer.
pub async fn wait_for_status(d: &Daemon, path: &str, want: u16) -> Resp {
    let mut last = String::new();
    let found = poll_within(Duration::from_secs(5), async || {
        let r = d.get(path).await;
        if r.status() == want {
            return Some(r);
        }
        last = format!("{} {}", r.status(), r.text());
        None
    })
    .await;
    found.unwrap_or_else(|| panic!("{path} never answered {want}; last answer: {last}"))
}

/// Waits (up to 5 s) until `/v1/sources` lists exactly `names`.
pub async fn wait_sources(d: &Daemon, names: &[&str]) -> serde_json::Value {
    wait_until(d, |doc| {
        let have: Vec<&str> = doc["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        have == names
    })
    .await
}

/// Polls `/v1/sources` for up to 5 s until `pred` holds for it.
pub async fn wait_until(
    d: &Daemon,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until_within(d, Duration::from_secs(5), pred).await
}

/// Polls `/v1/sources` for up to `limit` until `pred` holds for it.
pub async fn wait_until_within(
    d: &Daemon,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually_within(limit, "a /v1/sources condition", async || {
        let doc = d.get("/v1/sources").await.json();
        pred(&doc).then_some(doc)
    })
    .await
}

/// Runs `tokend check --fetch -c path` (with `env` added) off the async
/// runtime; returns the exit code, stdout and stderr.
pub async fn check_fetch(path: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
    cmd.args(["check", "--fetch", "-c"])
        .arg(path)
        .env_remove("TOKEND_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Makes a self-signed certificate and its unencrypted key with openssl in
/// `dir`: `{name}.pem` and `{name}.key` (`kind`: "rsa" or "ec").
pub fn make_cert(dir: &Path, name: &str, kind: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-newkey");
    if kind == "rsa" {
        cmd.arg("rsa:2048");
    } else {
        cmd.args(["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    }
    let out = cmd
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Creates a FIFO at `path`: a file whose plain open for reading waits for
/// a writer that never comes.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Writes `text` to `path` in place (same inode if it exists), mode 0600.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Daemon {
    /// Kills the daemon (SIGKILL: nothing cleaned up) and keeps its directory.
    pub fn kill_keep_dir(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The config text as the harness wrote it (for edits).
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }
}

/// The python of a venv `NAME-venv` in the target directory with exactly
/// the pinned `requirements` installed from PyPI (made once; made again
/// when the pins change). The SDK tests share it, one install at a time.
pub fn pinned_venv(name: &str, requirements: &Path) -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-venv"));
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.txt");
    if std::fs::read(&stamp).ok() != std::fs::read(requirements).ok() {
        let _ = std::fs::remove_dir_all(&venv);
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{what}: {e} (install python3 with venv and pip)"));
            assert!(
                out.status.success(),
                "{what} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(requirements),
            &format!("pip install -r {}", requirements.display()),
        );
        std::fs::copy(requirements, &stamp).unwrap();
    }
    python
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, most
/// punctuation dropped.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page's headings, outside code blocks.
pub fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// A token endpoint that accepts connections and never answers; they are
/// held until the test ends.
pub fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

/// `tokend check -c PATH` passes and says the file defines no sources
/// (a shipped config, ready to be filled in).
pub fn assert_checks_with_no_sources(path: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK, no sources"), "{stdout}");
}
