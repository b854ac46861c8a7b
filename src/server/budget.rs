//! Connections per caller uid: no one uid can hold every connection slot
//! of a door and lock the others out (docs/behaviour.md, "Bulkheads").
//!
//! Invariant: a uid other than root and the daemon's own holds at most
//! `max_connections_per_uid` connections at once; a slot is given back when
//! its connection ends, however it ends.

use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The connections each uid holds on one door.
#[derive(Debug)]
pub struct UidBudget {
    limit: usize,
    exempt: [u32; 2],
    held: Mutex<HashMap<u32, usize>>,
}

/// The uid holds its limit already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// One connection's place in its uid's budget; given back when dropped.
#[derive(Debug)]
pub struct UidSlot {
    budget: Arc<UidBudget>,
    uid: Option<u32>,
}

impl UidBudget {
    /// `limit` connections per uid; root and `own_uid` are not counted.
    pub fn new(limit: usize, own_uid: u32) -> Arc<UidBudget> {
        Arc::new(UidBudget {
            limit,
            exempt: [0, own_uid],
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection of `uid`, or `None` if it holds its limit.
    pub fn claim(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        if self.exempt.contains(&uid) {
            return Some(UidSlot {
                budget: self.clone(),
                uid: None,
            });
        }
        let mut held = self.held.locked();
        let n = held.entry(uid).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            budget: self.clone(),
            uid: Some(uid),
        })
    }

    /// [`claim`](Self::claim) for a caller whose uid may be unknown (such a
    /// caller is counted by the door's global limit only).
    pub fn claim_for(self: &Arc<Self>, uid: Option<u32>) -> Result<Option<UidSlot>, OverBudget> {
        match uid {
            Some(uid) => self.claim(uid).map(Some).ok_or(OverBudget),
            None => Ok(None),
        }
    }

    /// Connections `uid` holds now.
    #[cfg(test)]
    fn holds(&self, uid: u32) -> usize {
        let held = self.held.locked();
        held.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let Some(uid) = self.uid else { return };
        let mut held = self.budget.held.locked();
        if let Some(n) = held.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_holds_at_most_its_limit_and_root_and_the_daemon_are_not_counted() {
        let b = UidBudget::new(2, 998);
        let first = b.claim(1000).unwrap();
        let _second = b.claim(1000).unwrap();
        assert!(b.claim(1000).is_none(), "the third is refused");
        assert!(b.claim(1001).is_some(), "another uid is not");
        let exempt: Vec<UidSlot> = (0..10)
            .flat_map(|_| [b.claim(0), b.claim(998)])
            .flatten()
            .collect();
        assert_eq!(exempt.len(), 20);
        drop(first);
        assert_eq!(b.holds(1000), 1);
        assert!(b.claim(1000).is_some(), "a slot given back is free again");
    }
}
