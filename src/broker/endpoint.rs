//! What the sources of one token endpoint share: its budget of fetches in
//! flight, and word that it answers again.
//!
//! A token endpoint is its URL's scheme, host and port (for an `issuer`
//! source, the issuer's, where discovery and, almost always, the token
//! endpoint live). `max_concurrent_fetches` holds per endpoint, so an IdP
//! that accepts connections and never answers holds only its own permits:
//! the sources of every other IdP fetch as if it were not there
//! (docs/behaviour.md, "Bulkheads").
//!
//! Invariant: at most `max_concurrent_fetches` fetches are in flight to
//! one endpoint; an endpoint no running source names is forgotten.

use crate::config::{Endpoint as ConfigEndpoint, SourceConfig};
use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{watch, Semaphore};

/// A token endpoint as the budget counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl EndpointKey {
    /// The endpoint `source` fetches from.
    pub fn of(source: &SourceConfig) -> EndpointKey {
        let url = match &source.endpoint {
            ConfigEndpoint::Url(u) | ConfigEndpoint::Issuer(u) => u,
        };
        EndpointKey {
            scheme: url.scheme().to_string(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port_or_known_default(),
        }
    }
}

/// One endpoint's share: held by every source task that fetches from it.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Fetches in flight to this endpoint.
    pub permits: Semaphore,
    /// Bumped when a fetch succeeds after the source had failed: the
    /// endpoint answers again, so its other sources need not wait out
    /// their backoff.
    pub recovered: watch::Sender<u64>,
}

impl Shared {
    /// Tells the endpoint's other sources that it answers again.
    pub fn announce_recovery(&self) {
        self.recovered.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Every endpoint in use, each made on first use.
#[derive(Debug)]
pub(crate) struct Endpoints {
    per_endpoint: usize,
    map: Mutex<HashMap<EndpointKey, Weak<Shared>>>,
}

impl Endpoints {
    /// Endpoints that each allow `per_endpoint` fetches in flight.
    pub fn new(per_endpoint: usize) -> Endpoints {
        Endpoints {
            per_endpoint: per_endpoint.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The share of `source`'s endpoint (made if no running source holds it).
    pub fn of(&self, source: &SourceConfig) -> Arc<Shared> {
        let key = EndpointKey::of(source);
        let mut map = self.map.locked();
        if let Some(shared) = map.get(&key).and_then(Weak::upgrade) {
            return shared;
        }
        // Endpoints no source holds any more go as new ones come.
        map.retain(|_, w| w.strong_count() > 0);
        let (recovered, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            permits: Semaphore::new(self.per_endpoint),
            recovered,
        });
        map.insert(key, Arc::downgrade(&shared));
        shared
    }

    /// How many endpoints are held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let map = self.map.locked();
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}
