//! The API server's answers to "which pods hold IP x?" (see [`crate::cluster::kube::IpHolders`]),
//! kept for the classifier: only the answer that is evidence, "no pod held `ip` as of `as_of`".
//!
//! An answer covers flows that began before it (by more than the clock-skew margin), never later
//! ones: a pod may have been created at the IP since. It is forgotten after a while (the agent
//! asks again if the flows are still there) and whenever anything in the agent's own view holds
//! the IP again (the classifier checks that too: an answer never outweighs the index).

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;

/// `ip` → the times (the local clock, when the question was sent) at which the API server listed
/// no pod whose primary IP is `ip`: the first such answer since the IP was last held, and the
/// latest.
#[derive(Debug, Default, Clone)]
pub struct IpAnswers {
    absent: HashMap<IpAddr, Absent>,
}

#[derive(Debug, Clone, Copy)]
struct Absent {
    first: Timestamp,
    latest: Timestamp,
}

impl IpAnswers {
    /// The API server listed no pod at `ip`, asked at `as_of`. A later answer replaces an older
    /// as evidence; the first is kept for the delete gate ([`IpAnswers::absent_since`]).
    pub fn record_absent(&mut self, ip: IpAddr, as_of: Timestamp) {
        let a = self.absent.entry(ip).or_insert(Absent {
            first: as_of,
            latest: as_of,
        });
        a.first = a.first.min(as_of);
        a.latest = a.latest.max(as_of);
    }

    /// Some pod holds `ip` (the API said so, or it is unknown again): nothing to remember.
    pub fn forget(&mut self, ip: &IpAddr) {
        self.absent.remove(ip);
    }

    /// When the API server last said no pod held `ip` (the evidence: it covers flows that
    /// began before it).
    pub fn absent_as_of(&self, ip: &IpAddr) -> Option<Timestamp> {
        self.absent.get(ip).map(|a| a.latest)
    }

    /// When the API server first said no pod held `ip` (since it was last held): when the agent
    /// learnt that the backend is gone — the change a kube-proxy sync must have begun after
    /// before a flow this answer condemns may be deleted. The agent's own view never knew the
    /// pod (it has no tombstone), so nothing earlier marks the change.
    pub fn absent_since(&self, ip: &IpAddr) -> Option<Timestamp> {
        self.absent.get(ip).map(|a| a.first)
    }

    /// Drops answers given before `cutoff`; returns how many.
    pub fn expire(&mut self, cutoff: Timestamp) -> usize {
        let before = self.absent.len();
        self.absent.retain(|_, a| a.latest >= cutoff);
        before - self.absent.len()
    }

    pub fn len(&self) -> usize {
        self.absent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.absent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_latest_first_and_expire() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:00:20Z".parse().unwrap();
        let mut a = IpAnswers::default();
        a.record_absent(ip, t2);
        a.record_absent(ip, t1);
        assert_eq!(a.absent_as_of(&ip), Some(t2));
        assert_eq!(a.absent_since(&ip), Some(t1));
        assert_eq!(a.expire(t1), 0);
        assert_eq!(a.expire("2026-01-01T00:00:21Z".parse().unwrap()), 1);
        assert!(a.is_empty());
        a.record_absent(ip, t1);
        a.forget(&ip);
        assert_eq!(a.absent_as_of(&ip), None);
        // Held again, then absent again: a new first answer.
        a.record_absent(ip, t2);
        assert_eq!(a.absent_since(&ip), Some(t2));
    }
}
