//! Who may read which source (docs/security.md).
//!
//! Each connection's caller ([`Peer`]) is known once, at accept (see
//! `peer`). A caller may read a
//! source if it is root, the daemon's own uid, or matches the source's
//! `allow` by uid, by primary or supplementary gid, or (on the socket) by
//! systemd unit; a source without `allow` is open to anyone who can reach
//! the door.

pub use crate::peer::Peer;
use crate::problem::Problem;
use std::collections::BTreeSet;

/// A source's `allow`, with user and group names resolved to ids at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
    /// systemd units (`nightly.service`), for socket callers.
    pub units: BTreeSet<String>,
}

/// The daemon's own uid: it may read everything, like root.
pub fn own_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// True if `peer` may read (and force-refresh) a source with `allow`.
pub fn permits(allow: Option<&Allow>, peer: Option<&Peer>, own_uid: u32) -> bool {
    let Some(allow) = allow else { return true };
    let Some(p) = peer else { return false };
    p.uid == 0
        || p.uid == own_uid
        || allow.uids.contains(&p.uid)
        || p.gid.is_some_and(|g| allow.gids.contains(&g))
        || p.groups.iter().any(|g| allow.gids.contains(g))
        || p.unit.as_ref().is_some_and(|u| allow.units.contains(u))
}

/// `allow = { users, groups, uids, gids }` as written: user and group names
/// are resolved now, so the running check compares numbers only. Unknown
/// names come back as problems next to what did resolve; a malformed table
/// is one problem.
pub fn parse_allow(value: toml::Value) -> Result<(Allow, Vec<Problem>), Problem> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawAllow {
        #[serde(default)]
        users: Vec<String>,
        #[serde(default)]
        groups: Vec<String>,
        #[serde(default)]
        uids: Vec<u32>,
        #[serde(default)]
        gids: Vec<u32>,
        #[serde(default)]
        units: Vec<String>,
    }
    let raw = <RawAllow as serde::Deserialize>::deserialize(value).map_err(|e| {
        Problem::new(
            format!("`allow` is malformed: {}", e.to_string().trim()),
            "write allow = { users = [\"name\"], groups = [\"name\"], uids = [1000], gids = [1000], units = [\"name.service\"] } (any of the five)".to_string(),
        )
    })?;
    let mut problems = Vec::new();
    let mut allow = Allow {
        uids: raw.uids.into_iter().collect(),
        gids: raw.gids.into_iter().collect(),
        units: BTreeSet::new(),
    };
    for unit in raw.units {
        if crate::peer::unit::is_process_unit(&unit) {
            allow.units.insert(unit);
        } else {
            problems.push(Problem::new(
                format!(
                    "`{}` in allow's units is not a service or scope unit name",
                    crate::text::clip(&unit, 80)
                ),
                "write the whole unit name, such as \"nightly.service\" (systemctl status PID names a process's unit)".to_string(),
            ));
        }
    }
    allow
        .uids
        .extend(resolve(&raw.users, "user", user_uid, &mut problems));
    allow
        .gids
        .extend(resolve(&raw.groups, "group", group_gid, &mut problems));
    Ok((allow, problems))
}

/// Resolves user or group names to ids; each unknown name is a problem.
fn resolve(
    names: &[String],
    kind: &str,
    lookup: fn(&str) -> Result<Option<u32>, LookupError>,
    problems: &mut Vec<Problem>,
) -> Vec<u32> {
    let mut ids = Vec::new();
    for name in names {
        match lookup(name) {
            Ok(Some(id)) => ids.push(id),
            Err(e) => problems.push(Problem::new(
                format!("cannot look up {kind} `{name}` in allow: {e}"),
                format!(
                    "check /etc/nsswitch.conf and the {kind} database, or use {}ids = [N]",
                    &kind[..1]
                ),
            )),
            Ok(None) => {
                let tool = if kind == "user" {
                    "useradd, or systemd-sysusers"
                } else {
                    "groupadd"
                };
                problems.push(Problem::new(
                    format!("unknown {kind} `{name}` in allow"),
                    format!("create the {kind} ({tool}) or use {}ids = [N]", &kind[..1]),
                ));
            }
        }
    }
    ids
}

/// The user or group database could not be read (not: the name is unknown).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {database} database: {source}")]
pub struct LookupError {
    database: &'static str,
    #[source]
    source: nix::Error,
}

/// Looks a user name up in the password database (any size of entry: the
/// buffer grows as needed). `Ok(None)`: no such user.
pub fn user_uid(name: &str) -> Result<Option<u32>, LookupError> {
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(|source| LookupError {
            database: "user",
            source,
        })
}

/// Looks a group name up in the group database (any number of members:
/// the buffer grows as needed). `Ok(None)`: no such group.
pub fn group_gid(name: &str) -> Result<Option<u32>, LookupError> {
    nix::unistd::Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|source| LookupError {
            database: "group",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid: Some(gid),
            pid: Some(1),
            groups: groups.to_vec(),
            unit: None,
        }
    }

    #[test]
    fn rules() {
        let allow = Allow {
            uids: [1000].into(),
            gids: [50].into(),
            units: ["nightly.service".to_string()].into(),
        };
        let a = Some(&allow);
        assert!(permits(None, None, 999), "no allow: open");
        assert!(permits(a, Some(&peer(0, 0, &[])), 999), "root");
        assert!(
            permits(a, Some(&peer(999, 999, &[])), 999),
            "the daemon's own uid"
        );
        assert!(permits(a, Some(&peer(1000, 1000, &[])), 999), "uid");
        assert!(permits(a, Some(&peer(1001, 50, &[])), 999), "primary gid");
        assert!(
            permits(a, Some(&peer(1001, 1001, &[7, 50])), 999),
            "supplementary gid"
        );
        assert!(!permits(a, Some(&peer(1001, 1001, &[7])), 999));
        assert!(!permits(a, None, 999), "unknown peer");
        let in_unit = |unit: &str| Peer {
            unit: Some(unit.to_string()),
            ..peer(61234, 61234, &[])
        };
        assert!(permits(a, Some(&in_unit("nightly.service")), 999), "unit");
        assert!(!permits(a, Some(&in_unit("other.service")), 999));
        assert!(
            !permits(Some(&Allow::default()), Some(&peer(1000, 50, &[])), 999),
            "empty allow: root and daemon only"
        );
    }

    #[test]
    fn name_lookup() {
        assert_eq!(user_uid("root").unwrap(), Some(0));
        assert_eq!(group_gid("root").unwrap(), Some(0));
        assert_eq!(user_uid("no-such-user-xyz").unwrap(), None);
        assert_eq!(group_gid("no-such-group-xyz").unwrap(), None);
    }
}
