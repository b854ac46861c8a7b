//! A socket caller's systemd unit, from its cgroup (docs/security.md,
//! "Callers by unit"): for `DynamicUser=` services, whose uid is not
//! stable, `allow = { units = ["nightly.service"] }` names the service
//! instead.
//!
//! The process is pinned first, so a pid reused between connect and read
//! cannot lend its unit: through SO_PEERPIDFD (Linux 6.5 and later) the
//! pidfd names the process, and its pid is read from the pidfd's fdinfo
//! before and after the cgroup (a pid cannot be reused while the process
//! it names has not been reaped); on older kernels, the pid SO_PEERCRED
//! gave must belong to a process that started before the connection was
//! accepted and still the same one after the read.
//!
//! Only the system manager's unit counts: below the manager's own cgroup
//! (PID 1's, without its `init.scope`; not the root where tokend runs in a
//! container without a cgroup namespace), the first path component that is
//! not a slice. A user's own units live below `user@UID.service`, so a
//! user cannot name one of them `nightly.service` and pass.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The unit kinds a process can run in.
const PROCESS_UNITS: [&str; 2] = [".service", ".scope"];

/// The system unit of the process on the other end of `socket`, if it
/// can be told for certain.
pub fn of_socket(socket: &impl AsFd, pid: Option<i32>) -> Option<String> {
    let accepted = boot_ticks();
    let cgroup = match nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerPidfd) {
        Ok(pidfd) => cgroup_by_pidfd(&pidfd),
        Err(_) => cgroup_by_pid(pid?, accepted?),
    };
    unit_of_cgroup(&cgroup?, manager_root()?)
}

/// The `/proc/PID/cgroup` of the process a pidfd names: the pid before
/// and after the read must be the same live process.
fn cgroup_by_pidfd(pidfd: &OwnedFd) -> Option<String> {
    let pid = pidfd_pid(pidfd)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    (pidfd_pid(pidfd)? == pid).then_some(cgroup)
}

/// The system manager's root cgroup: PID 1's, without its `init.scope`.
fn manager_root() -> Option<&'static str> {
    static ROOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/1/cgroup").ok()?;
        let path = cgroup_path(&text)?;
        Some(path.strip_suffix("/init.scope").unwrap_or(path).to_string())
    })
    .as_deref()
}

/// The pid a pidfd names, from its fdinfo; `None` once it has exited.
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// The `/proc/PID/cgroup` of `pid` alone: the process must have started
/// before the connection was accepted (`accepted`, in clock ticks since
/// boot) and be the same one after the read.
fn cgroup_by_pid(pid: i32, accepted: u64) -> Option<String> {
    let started = start_ticks(pid)?;
    if started > accepted {
        return None;
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    (start_ticks(pid)? == started).then_some(cgroup)
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold anything.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Now, in clock ticks since boot (suspend included, as the start times are).
fn boot_ticks() -> Option<u64> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let hz = rustix::param::clock_ticks_per_second();
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    Some(secs * hz + nanos * hz / 1_000_000_000)
}

/// The system unit a `/proc/PID/cgroup` names, below the manager's
/// `root` cgroup.
pub fn unit_of_cgroup(text: &str, root: &str) -> Option<String> {
    let path = cgroup_path(text)?;
    let below = path.strip_prefix(root.trim_end_matches('/'))?;
    if !below.starts_with('/') {
        return None;
    }
    unit_of_path(below)
}

/// The cgroup path a `/proc/PID/cgroup` gives: the unified hierarchy's
/// (`0::PATH`) where it is in use, else systemd's own v1 hierarchy's
/// (`N:name=systemd:PATH`).
fn cgroup_path(text: &str) -> Option<&str> {
    let path_of = |prefix: &str| {
        text.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            rest.strip_prefix(prefix)
        })
    };
    path_of(":")
        .filter(|p| *p != "/")
        .or_else(|| path_of("name=systemd:"))
        .or_else(|| path_of(":"))
}

/// The first component of a cgroup path that is not a slice, if it is a
/// service or a scope (systemd escapes a name that could clash with the
/// kernel's with a leading `_`).
fn unit_of_path(path: &str) -> Option<String> {
    let first = path
        .split('/')
        .filter(|c| !c.is_empty())
        .find(|c| !c.ends_with(".slice"))?;
    let name = first.strip_prefix('_').unwrap_or(first);
    PROCESS_UNITS
        .iter()
        .any(|kind| name.len() > kind.len() && name.ends_with(kind))
        .then(|| name.to_string())
}

/// Whether `name` is a unit a process can run in, as `allow.units` takes
/// it: `NAME.service` or `NAME.scope`, in systemd's unit-name characters.
pub fn is_process_unit(name: &str) -> bool {
    name.len() <= 255
        && PROCESS_UNITS
            .iter()
            .any(|kind| name.len() > kind.len() && name.ends_with(kind))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_real_cgroup_files() {
        let cases: [(&str, Option<&str>); 9] = [
            // cgroup v2 (unified), a system service.
            ("0::/system.slice/nightly.service\n", Some("nightly.service")),
            // A service that delegates and made its own subgroups.
            ("0::/system.slice/nightly.service/worker/1\n", Some("nightly.service")),
            // A template instance in a slice of its own.
            ("0::/system.slice/system-backup.slice/backup@db.service\n", Some("backup@db.service")),
            // A login session.
            ("0::/user.slice/user-1000.slice/session-3.scope\n", Some("session-3.scope")),
            // A user's own unit: only the system manager's unit counts.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nightly.service\n",
                Some("user@1000.service"),
            ),
            // cgroup v1 with systemd's named hierarchy.
            (
                "12:pids:/system.slice/nightly.service\n5:cpu,cpuacct:/system.slice/nightly.service\n1:name=systemd:/system.slice/nightly.service\n",
                Some("nightly.service"),
            ),
            // Hybrid: v1 controllers, and the unified hierarchy beside them.
            (
                "11:memory:/system.slice/nightly.service\n1:name=systemd:/system.slice/nightly.service\n0::/system.slice/nightly.service\n",
                Some("nightly.service"),
            ),
            // A container's root, and the root itself: no unit.
            ("0::/\n", None),
            ("0::/system.slice\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(unit_of_cgroup(text, "/").as_deref(), want, "{text:?}");
            assert_eq!(unit_of_cgroup(text, "").as_deref(), want, "{text:?}");
        }
        // A manager whose root is not the hierarchy's (a container without
        // a cgroup namespace): units are below it, and nothing else is one.
        let root = "/docker/0123abcd";
        assert_eq!(
            unit_of_cgroup("0::/docker/0123abcd/system.slice/nightly.service\n", root).as_deref(),
            Some("nightly.service")
        );
        assert_eq!(
            unit_of_cgroup("0::/system.slice/nightly.service\n", root),
            None
        );
        assert_eq!(
            unit_of_cgroup("0::/docker/0123abcdX/system.slice/n.service\n", root),
            None
        );
        assert_eq!(
            unit_of_path("/system.slice/_cpu.service"),
            Some("cpu.service".into())
        );
        assert_eq!(unit_of_path("/system.slice/tokend.socket"), None);
    }

    #[test]
    fn unit_names_as_allow_takes_them() {
        for good in [
            "nightly.service",
            "backup@db.service",
            "session-3.scope",
            "a\\x2db.service",
        ] {
            assert!(is_process_unit(good), "{good}");
        }
        for bad in [
            "nightly",
            ".service",
            "nightly.timer",
            "night ly.service",
            "../x.service",
        ] {
            assert!(!is_process_unit(bad), "{bad}");
        }
    }

    /// Both ways of pinning the caller read this process's own cgroup
    /// file (the unit in it is the matcher's business, above), and a pid
    /// that started after the connection was accepted is not read at all.
    #[tokio::test]
    async fn the_pinned_caller_is_this_process() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let pidfd = nix::sys::socket::getsockopt(&a, nix::sys::socket::sockopt::PeerPidfd)
            .expect("SO_PEERPIDFD (Linux 6.5 and later)");
        assert_eq!(pidfd_pid(&pidfd), Some(pid));
        assert_eq!(cgroup_by_pidfd(&pidfd).as_deref(), Some(mine.as_str()));
        let now = boot_ticks().unwrap();
        let started = start_ticks(pid).unwrap();
        assert!(started <= now, "{started} > {now}");
        assert_eq!(cgroup_by_pid(pid, now).as_deref(), Some(mine.as_str()));
        assert_eq!(
            cgroup_by_pid(pid, started.saturating_sub(1)),
            None,
            "started after the accept"
        );
        let expected = manager_root().and_then(|root| unit_of_cgroup(&mine, root));
        assert_eq!(of_socket(&a, Some(pid)), expected);
    }
}
