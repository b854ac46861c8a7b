//! Who asks, and what a door's routes answer with: the [`Caller`] of a
//! connection as the kernel vouched for it, and the [`Ctx`] every route
//! function takes with its request.

use super::ServerSettings;
use crate::acl::{self, Allow, Peer};
use crate::broker::Broker;
use crate::clock::Moment;
use crate::config::SourceConfig;
use crate::peer::Unknown;
use std::sync::Arc;
use tokio::time::Instant;

/// The caller of a connection, as the kernel vouched for it at accept: on
/// the socket, its peer credentials; on a loopback TCP door, the uid of
/// the client's socket and that uid's groups. A caller the kernel did not
/// name is kept with the reason, and may read only sources open to all.
#[derive(Debug, Clone)]
pub struct Caller {
    peer: Result<Arc<Peer>, Unknown>,
    own_uid: u32,
}

impl Caller {
    /// A socket caller with `peer`'s credentials (`None`: they could not
    /// be read), on a daemon running as `own_uid`.
    pub fn socket(peer: Option<Arc<Peer>>, own_uid: u32) -> Caller {
        Caller {
            peer: peer.ok_or(Unknown::NoCredentials),
            own_uid,
        }
    }

    /// A TCP door's caller: the peer the kernel named, or why it did not.
    pub fn tcp(peer: Result<Arc<Peer>, Unknown>, own_uid: u32) -> Caller {
        Caller { peer, own_uid }
    }

    /// The caller of a door that does not ask (the metrics listener).
    pub fn anonymous() -> Caller {
        Caller {
            peer: Err(Unknown::NotAsked),
            own_uid: u32::MAX,
        }
    }

    /// Root and the daemon's own uid: they may read every source and see
    /// every name and reload error.
    pub fn privileged(&self) -> bool {
        self.peer()
            .is_some_and(|p| p.uid == 0 || p.uid == self.own_uid)
    }

    /// Whether this caller may read (and force-refresh) `source`.
    pub fn may_read(&self, source: &SourceConfig) -> bool {
        self.admitted_by(source.allow.as_ref())
    }

    /// Whether `allow` (a source's or an app's; `None`: open to all)
    /// admits this caller.
    pub fn admitted_by(&self, allow: Option<&Allow>) -> bool {
        acl::permits(allow, self.peer(), self.own_uid)
    }

    /// The credentials, for log lines.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_deref().ok()
    }

    /// Why the kernel did not name this caller, if it did not.
    pub fn unknown(&self) -> Option<&Unknown> {
        self.peer.as_ref().err()
    }
}

/// What a route answers with: the running state, the door's settings, the
/// caller, and the request's clocks. `deadline` ends every wait (the end
/// of `request_timeout`).
pub struct Ctx<'a> {
    pub broker: &'a Broker,
    pub settings: &'a ServerSettings,
    pub caller: &'a Caller,
    pub now: Moment,
    pub deadline: Instant,
}

impl Ctx<'_> {
    /// Whether this caller may read the source called `name` (false if
    /// there is none).
    pub fn may_read_named(&self, name: &str) -> bool {
        self.broker
            .get(name)
            .is_some_and(|h| self.caller.may_read(&h.config_ref()))
    }
}
