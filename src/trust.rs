//! Who could change, and who could read, a file tokend acts on
//! (docs/security.md, "What tokend trusts").
//!
//! Every judgement is made on [`Facts`] taken from the descriptor the file
//! was read through: `fstat` and the file's access ACL, never a second
//! lookup of its path, which a rename between the two could point at a
//! different file.

use crate::problem::Problem;
use crate::sync::Locked;
use std::os::fd::AsFd;
use std::path::Path;

/// What the kernel says about an open file: its mode, owner, group and
/// the named entries of its POSIX access ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    acl: Option<Acl>,
}

/// The parts of an access ACL that widen access beyond the mode bits,
/// with the mask already applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Acl {
    /// The owning group's own permissions (with an ACL the mode's group
    /// bits are the mask, not these).
    group_obj: u16,
    users: Vec<(u32, u16)>,
    groups: Vec<(u32, u16)>,
}

const READ: u16 = 4;
const WRITE: u16 = 2;

impl Facts {
    /// The facts of the open file `fd`.
    pub fn of(fd: impl AsFd) -> std::io::Result<Facts> {
        let fd = fd.as_fd();
        let st = rustix::fs::fstat(fd)?;
        Ok(Facts {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            acl: access_acl(fd)?,
        })
    }

    /// Facts with the mode bits alone (a file not read from disk).
    pub fn from_mode(mode: u32, uid: u32, gid: u32) -> Facts {
        Facts {
            mode,
            uid,
            gid,
            acl: None,
        }
    }

    /// The owning group's permissions.
    fn group_perms(&self) -> u16 {
        match &self.acl {
            Some(acl) => acl.group_obj,
            None => ((self.mode >> 3) & 7) as u16,
        }
    }

    fn other_perms(&self) -> u16 {
        (self.mode & 7) as u16
    }
}

/// The file's access ACL, if it has named entries; `None` on a
/// filesystem without ACLs.
fn access_acl(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<Acl>> {
    let name = "system.posix_acl_access";
    let mut buf = vec![0u8; 256];
    let len = loop {
        match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => {
                let want = rustix::fs::fgetxattr_query(fd, name)?;
                buf.resize(want.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    };
    parse_acl(&buf[..len]).map(Some).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "its ACL is in a form tokend does not know",
        )
    })
}

/// Parses the kernel's `posix_acl_xattr` form: a little-endian version 2
/// header, then (tag u16, perm u16, id u32) entries.
fn parse_acl(b: &[u8]) -> Option<Acl> {
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    let (version, entries) = b.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    let mut acl = Acl {
        group_obj: 0,
        users: Vec::new(),
        groups: Vec::new(),
    };
    let mut mask = 7;
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        match tag {
            USER => acl.users.push((id, perm)),
            GROUP_OBJ => acl.group_obj = perm,
            GROUP => acl.groups.push((id, perm)),
            MASK => mask = perm,
            _ => {}
        }
    }
    // The mask bounds every entry but the owner's and other's.
    acl.group_obj &= mask;
    for (_, p) in acl.users.iter_mut().chain(acl.groups.iter_mut()) {
        *p &= mask;
    }
    Some(acl)
}

/// Who may change a file tokend acts on, as sshd's StrictModes judges its
/// files: it must belong to root or the daemon's user, and no one else may
/// write it, through its mode or an ACL entry (a group only if it is
/// root's or the daemon's). `what` names the file ("config file", "secret
/// file"); `why` says what its writer could do.
pub fn untrusted(path: &Path, f: &Facts, what: &str, why: &str) -> Option<Problem> {
    let me = nix::unistd::geteuid().as_raw();
    let my_group = nix::unistd::getegid().as_raw();
    let shown = crate::text::path(path);
    let mode = f.mode & 0o7777;
    let trusted_group = |g: u32| g == 0 || g == my_group;
    if f.uid != 0 && f.uid != me {
        return Some(Problem::new(
            format!(
                "{what} {shown} belongs to uid {}, not to root or tokend's user: {why}",
                f.uid
            ),
            format!("chown root {shown}"),
        ));
    }
    if f.other_perms() & WRITE != 0 {
        return Some(Problem::new(
            format!("{what} {shown} can be written by anyone (mode {mode:04o}): {why}"),
            format!("chmod o-w {shown}"),
        ));
    }
    if f.group_perms() & WRITE != 0 && !trusted_group(f.gid) {
        return Some(Problem::new(
            format!(
                "{what} {shown} can be written by group {} (mode {mode:04o}), which is neither root's nor tokend's: {why}",
                f.gid
            ),
            format!("chmod g-w {shown}"),
        ));
    }
    let acl = f.acl.as_ref()?;
    if let Some((uid, _)) = acl
        .users
        .iter()
        .find(|(u, p)| p & WRITE != 0 && *u != 0 && *u != me)
    {
        return Some(Problem::new(
            format!("{what} {shown} can be written by uid {uid} through an ACL entry: {why}"),
            format!("setfacl -x u:{uid} {shown}"),
        ));
    }
    if let Some((gid, _)) = acl
        .groups
        .iter()
        .find(|(g, p)| p & WRITE != 0 && !trusted_group(*g))
    {
        return Some(Problem::new(
            format!("{what} {shown} can be written by group {gid} through an ACL entry: {why}"),
            format!("setfacl -x g:{gid} {shown}"),
        ));
    }
    None
}

/// Who besides root, the file's owner and the daemon's user may read it,
/// in words ("anyone", "group 1001", "uid 1001 through an ACL entry"), if
/// anyone. A group counts when some other user is in it, as a listed
/// member or by having it as their primary group; a group with no one but
/// those three (a user private group, such as the `tokend` group the
/// package makes) shares nothing.
pub fn other_readers(f: &Facts) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    let ours = |u: u32| u == 0 || u == f.uid || u == me;
    if f.other_perms() & READ != 0 {
        return Some("anyone".to_string());
    }
    if f.group_perms() & READ != 0 && !group_is_ours(f.gid, &ours) {
        return Some(format!("group {}", f.gid));
    }
    let acl = f.acl.as_ref()?;
    if let Some((uid, _)) = acl.users.iter().find(|(u, p)| p & READ != 0 && !ours(*u)) {
        return Some(format!("uid {uid} through an ACL entry"));
    }
    acl.groups
        .iter()
        .find(|(g, p)| p & READ != 0 && !group_is_ours(*g, &ours))
        .map(|(g, _)| format!("group {g} through an ACL entry"))
}

/// Whether every user in group `gid`, listed or by primary group, is one
/// of `ours`. A group that cannot be looked up counts as shared.
fn group_is_ours(gid: u32, ours: &dyn Fn(u32) -> bool) -> bool {
    let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) else {
        return false;
    };
    let listed_ours = group.mem.iter().all(
        |name| matches!(nix::unistd::User::from_name(name), Ok(Some(u)) if ours(u.uid.as_raw())),
    );
    listed_ours && primary_members(gid).into_iter().all(ours)
}

/// The uids whose primary group is `gid`, from the user database.
fn primary_members(gid: u32) -> Vec<u32> {
    // getpwent walks one cursor per process: one walk at a time.
    static WALK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _walk = WALK.locked();
    let mut uids = Vec::new();
    // SAFETY: setpwent/getpwent/endpwent share a process-wide cursor that
    // the lock above keeps to this walk; each entry is read before the
    // next call, which may reuse its storage.
    unsafe {
        libc::setpwent();
        loop {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            if (*p).pw_gid == gid {
                uids.push((*p).pw_uid);
            }
        }
        libc::endpwent();
    }
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut b = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            b.extend(tag.to_le_bytes());
            b.extend(perm.to_le_bytes());
            b.extend(id.to_le_bytes());
        }
        b
    }

    fn root_file(mode: u32, entries: &[(u16, u16, u32)]) -> Facts {
        Facts {
            acl: Some(parse_acl(&acl(entries)).unwrap()),
            ..Facts::from_mode(mode, 0, 0)
        }
    }

    #[test]
    fn a_named_acl_entry_that_may_write_is_judged_like_a_group_bit() {
        // user::rw- user:4321:rw- group::r-- mask::rw- other::r--
        let f = root_file(
            0o100664,
            &[
                (0x01, 6, u32::MAX),
                (0x02, 6, 4321),
                (0x04, 4, u32::MAX),
                (0x10, 6, u32::MAX),
                (0x20, 4, u32::MAX),
            ],
        );
        let p = untrusted(Path::new("/etc/tokend/x.toml"), &f, "config file", "why").unwrap();
        assert!(p.message.contains("uid 4321 through an ACL entry"), "{p:?}");
        assert_eq!(p.hint.unwrap(), "setfacl -x u:4321 /etc/tokend/x.toml");
        // The same entry masked down to reading is no writer, but a reader.
        let f = root_file(
            0o100644,
            &[
                (0x01, 6, u32::MAX),
                (0x02, 6, 4321),
                (0x04, 4, u32::MAX),
                (0x10, 4, u32::MAX),
                (0x20, 0, u32::MAX),
            ],
        );
        assert_eq!(untrusted(Path::new("/x"), &f, "config file", "why"), None);
        assert_eq!(
            other_readers(&Facts {
                mode: 0o100640,
                ..f
            })
            .as_deref(),
            Some("uid 4321 through an ACL entry")
        );
    }

    #[test]
    fn a_named_group_entry_that_may_write_is_refused_unless_it_is_roots() {
        let entries = |gid| {
            [
                (0x01, 6, u32::MAX),
                (0x04, 4, u32::MAX),
                (0x08, 6, gid),
                (0x10, 6, u32::MAX),
                (0x20, 0, u32::MAX),
            ]
        };
        let f = root_file(0o100660, &entries(4321));
        let p = untrusted(Path::new("/x"), &f, "config file", "why").unwrap();
        assert_eq!(p.hint.unwrap(), "setfacl -x g:4321 /x");
        assert_eq!(
            untrusted(Path::new("/x"), &root_file(0o100660, &entries(0)), "f", "w"),
            None
        );
    }

    #[test]
    fn an_acl_in_an_unknown_form_is_not_guessed_at() {
        assert!(parse_acl(&[1, 0, 0, 0]).is_none());
        assert!(parse_acl(&[2, 0, 0, 0, 1]).is_none());
        assert!(parse_acl(&[]).is_none());
    }
}
