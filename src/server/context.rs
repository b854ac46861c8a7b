//! Who asks, and what a door's routes answer with: the [`Caller`] of a
//! connection as the kernel vouched for it, and the [`Ctx`] every route
//! function takes with its request.

use super::ServerSettings;
use crate::acl::{self, Peer};
use crate::broker::Broker;
use crate::clock::Moment;
use crate::config::SourceConfig;
use std::sync::Arc;
use tokio::time::Instant;

/// The caller of a connection: on the socket, its peer credentials, taken
/// once at accept; on the TCP doors, nobody the kernel names yet (an
/// anonymous caller, who may read only sources open to all).
#[derive(Debug, Clone)]
pub struct Caller {
    peer: Option<Arc<Peer>>,
    own_uid: u32,
}

impl Caller {
    /// A socket caller with `peer`'s credentials (`None`: they could not
    /// be read), on a daemon running as `own_uid`.
    pub fn socket(peer: Option<Arc<Peer>>, own_uid: u32) -> Caller {
        Caller { peer, own_uid }
    }

    /// A caller nobody vouched for.
    pub fn anonymous() -> Caller {
        Caller {
            peer: None,
            own_uid: u32::MAX,
        }
    }

    /// Root and the daemon's own uid: they may read every source and see
    /// every name and reload error.
    pub fn privileged(&self) -> bool {
        self.peer
            .as_deref()
            .is_some_and(|p| p.uid == 0 || p.uid == self.own_uid)
    }

    /// Whether this caller may read (and force-refresh) `source`.
    pub fn may_read(&self, source: &SourceConfig) -> bool {
        acl::permits(source.allow.as_ref(), self.peer.as_deref(), self.own_uid)
    }

    /// The credentials, for log lines.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_deref()
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
