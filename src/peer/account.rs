//! A TCP caller's groups: the kernel names only its socket's uid, so the
//! groups are that uid's in the user and group databases, as `id UID`
//! shows them (a uid with no entry has none). Looked up off the async
//! threads (NSS may ask a directory server), once at a time per uid however
//! many of its connections arrive together (a slow directory must not let
//! one uid's burst fill the blocking pool), and kept for [`KEEP`].

use super::Peer;
use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a uid's groups are used before they are looked up again: an
/// edit of /etc/group reaches TCP callers within this.
pub const KEEP: Duration = Duration::from_secs(10);

/// One uid's lookup: filled once, by whichever connection asked first.
type Lookup = Arc<tokio::sync::OnceCell<Arc<Peer>>>;

/// The uids seen lately and their groups.
#[derive(Debug, Default)]
pub struct Accounts {
    known: Mutex<HashMap<u32, (Instant, Lookup)>>,
}

impl Accounts {
    /// The caller with `uid`, its primary group and supplementary groups.
    pub async fn peer(&self, uid: u32) -> Arc<Peer> {
        let lookup = self.lookup(uid, Instant::now());
        lookup
            .get_or_init(|| async move {
                let looked = tokio::task::spawn_blocking(move || of_uid(uid)).await;
                Arc::new(looked.unwrap_or_else(|_| Peer::uid_only(uid)))
            })
            .await
            .clone()
    }

    /// `uid`'s lookup made since `now - KEEP`, or a new one (forgetting
    /// those older than that).
    fn lookup(&self, uid: u32, now: Instant) -> Lookup {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < KEEP;
        let mut known = self.known.locked();
        if let Some((at, lookup)) = known.get(&uid) {
            if fresh(at) {
                return lookup.clone();
            }
        }
        known.retain(|_, (at, _)| fresh(at));
        let lookup = Lookup::default();
        known.insert(uid, (now, lookup.clone()));
        lookup
    }
}

/// `uid` with its groups from the databases; no groups if it has no
/// entry or the databases cannot be read.
fn of_uid(uid: u32) -> Peer {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Peer::uid_only(uid);
    };
    let groups = std::ffi::CString::new(user.name.as_bytes())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    Peer {
        uid,
        gid: Some(user.gid.as_raw()),
        pid: None,
        groups,
        unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_its_groups_and_an_unknown_uid_none() {
        let root = of_uid(0);
        assert_eq!(root.gid, Some(0));
        assert!(root.groups.contains(&0), "{root:?}");
        let nobody_known = of_uid(3_999_999_999);
        assert_eq!(nobody_known, Peer::uid_only(3_999_999_999));
    }

    #[tokio::test(start_paused = true)]
    async fn groups_are_looked_up_again_after_a_while() {
        let accounts = Accounts::default();
        let first = accounts.peer(0).await;
        let again = accounts.peer(0).await;
        assert!(Arc::ptr_eq(&first, &again), "kept");
        tokio::time::advance(KEEP).await;
        let later = accounts.peer(0).await;
        assert!(!Arc::ptr_eq(&first, &later), "looked up again");
        assert_eq!(*first, *later);
    }

    /// Many connections of one uid arriving together share one lookup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_one_uid_is_one_lookup() {
        let accounts = Arc::new(Accounts::default());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let accounts = accounts.clone();
                tokio::spawn(async move { accounts.peer(0).await })
            })
            .collect();
        let mut peers = Vec::new();
        for t in tasks {
            peers.push(t.await.unwrap());
        }
        assert!(
            peers.iter().all(|p| Arc::ptr_eq(p, &peers[0])),
            "one lookup, shared"
        );
    }
}
