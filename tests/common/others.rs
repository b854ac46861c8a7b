//! Clients as other users: the access-control and bulkhead tests run them
//! with another uid, gid and groups (which needs root; CI runs as root).

use super::{daemon, Daemon};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The uid (and gid) `nobody`: a caller with no rights.
pub const NOBODY: u32 = 65534;

/// True when running as root; else says `test` is skipped (it switches to
/// other users) and the caller returns without running it.
#[must_use]
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "skipping {test}: it runs clients as other users, which needs root (CI runs as root)"
    );
    false
}

/// Makes `cmd` run as `uid`:`gid` with exactly the supplementary `groups`.
pub fn run_as<'c>(cmd: &'c mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'c mut Command {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Makes `cmd` run in the network namespace at `ns` (`/run/netns/NAME`).
pub fn enter_netns(cmd: &mut Command, ns: &Path) {
    let fd = std::fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setns, which is async-signal-safe, on a descriptor opened before
    // the fork and kept open by the closure.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// A network namespace made for one test (`ip netns add`), with `lo` up
/// and 169.254.169.254/32 on it, as on a host where tokend's IMDS door
/// answers at Azure's address; deleted when dropped (needs root).
pub struct NetNs {
    pub name: String,
    pub path: PathBuf,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("tokend-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (apt-get install iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        ns
    }

    /// A listener on `addr` inside the namespace (a socket stays in the
    /// namespace it was made in), made on a thread that enters it.
    pub fn listen(&self, addr: &str) -> std::net::TcpListener {
        let (path, addr) = (self.path.clone(), addr.to_string());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a valid descriptor.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            std::net::TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }

    /// The prefix that runs a command inside: `ip netns exec NAME`.
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.name.as_str()]
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The tokend binary, copied where any user can run it (the checkout may
/// be private, as a clone made with mktemp -d is), as a command.
pub fn tokend_for_others(dir: &Path) -> Command {
    let binary = dir.join("tokend-as-other");
    if !binary.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_tokend"), &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new(binary)
}

/// A daemon whose socket other users can reach (0666 in a 0711 directory).
pub async fn open_daemon(body: &str, server: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("tokend.sock");
    daemon(body)
        .server(server)
        .rust_log("trace")
        .at(dir, socket)
        .start()
        .await
}

/// Opens `n` connections to `socket` (a path, or `tcp:HOST:PORT`) as `uid`
/// and holds them; reports how many the daemon left open and how many it
/// closed at once, then holds what is open until its stdin closes.
pub const HOLDER: &str = r#"
import select, socket, sys, time
path, n, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    if path.startswith("tcp:"):
        host, port = path[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
    socks.append(s)
closed = set()
deadline = time.monotonic() + 10
while len(closed) < n - keep and time.monotonic() < deadline:
    ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.2)
    for s in ready:
        if s.recv(1) == b"":
            closed.add(s)
print(n - len(closed), len(closed), flush=True)
sys.stdin.read()
"#;

/// Asks `socket` for source NAME's token as fast as it answers, 200 a
/// connection, until COUNT requests are answered or SECONDS have passed;
/// prints how many were denied (404: a source the caller may not read
/// looks missing). Arguments: SOCKET NAME COUNT SECONDS.
pub const FLOOD: &str = r#"
import socket, sys, time
path, name, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
request = b"GET /v1/tokens/" + name.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
end = time.monotonic() + secs
sent = denied = 0
while sent < n and time.monotonic() < end:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        f = s.makefile("rb")
        for _ in range(min(200, n - sent)):
            s.sendall(request)
            status = f.readline()
            length = 0
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            f.read(length)
            sent += 1
            denied += b" 404 " in status
        s.close()
    except OSError:
        time.sleep(0.01)
print(denied)
"#;

/// A group made for one test, removed when dropped (needs root).
pub struct TempGroup {
    pub name: String,
    pub gid: u32,
}

/// A user made for one test, removed when dropped (needs root): no home,
/// no login shell.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn account_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    // At most 32 characters, as useradd wants.
    format!(
        "tkd{}{}{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sbin(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TempGroup {
    pub fn new(tag: &str) -> TempGroup {
        let name = account_name(tag);
        sbin("groupadd", &["--system", &name]);
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

impl TempUser {
    /// A user whose primary group is `group` (else `nogroup`).
    pub fn new(tag: &str, group: Option<&TempGroup>) -> TempUser {
        let name = account_name(tag);
        let primary = group.map_or("nogroup", |g| g.name.as_str());
        sbin(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                primary,
                &name,
            ],
        );
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TempUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
