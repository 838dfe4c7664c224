//! Tombstones: endpoints that left every slice of their Service, remembered for a while.
//!
//! Since Kubernetes 1.26 a terminating pod stays in its slices (`terminating: true`) until the pod
//! object is deleted, so an endpoint that leaves *every* slice of its Service means the pod is gone
//! or no longer selected. That moment is the agent's strongest evidence; a snapshot cannot see it.
//! The agent confirms with one GET of the pod named here before removing TCP flows — also when
//! the endpoint was last seen terminating: a draining pod whose labels changed leaves the slice
//! alive.

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;
use serde::Serialize;

use super::model::{Conditions, ObjectKey, PodTarget, Uid};
use super::slice::SlicePort;

/// An endpoint that left every slice of its Service.
#[derive(Clone, Debug, Serialize)]
pub struct Tombstone {
    pub service: ObjectKey,
    pub ip: IpAddr,
    /// The ports of the slice it was last listed in.
    #[serde(skip)]
    pub ports: Vec<SlicePort>,
    pub pod: Option<PodTarget>,
    /// Its conditions when last listed.
    pub conditions: Conditions,
    /// Listed by the pod controller with a Pod `targetRef`: its removal says something about a pod.
    pub managed: bool,
    pub removed_at: Timestamp,
    /// Set by the agent once the API server confirmed the pod is gone (404, other uid or IP).
    pub pod_gone: bool,
}

impl Tombstone {
    /// The endpoint was draining when it left: its removal means the pod object was deleted.
    pub fn was_terminating(&self) -> bool {
        self.conditions.terminating()
    }

    /// Names pod `key` with `uid`: same namespace and name, and the same uid when both are known
    /// (a pod of the same name with another uid is another incarnation).
    pub fn names_pod(&self, key: &ObjectKey, uid: Option<&Uid>) -> bool {
        let Some(p) = &self.pod else { return false };
        let same_uid = match (&p.uid, uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.service.namespace == key.namespace && p.name == key.name && same_uid
    }
}

/// Tombstones by backend IP.
#[derive(Default, Debug)]
pub struct Tombstones {
    by_ip: HashMap<IpAddr, Vec<Tombstone>>,
    len: usize,
}

impl Tombstones {
    /// Every tombstone at `ip` (one per Service the IP left).
    pub fn at(&self, ip: &IpAddr) -> &[Tombstone] {
        self.by_ip.get(ip).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, service: &ObjectKey, ip: &IpAddr) -> Option<&Tombstone> {
        self.at(ip).iter().find(|t| t.service == *service)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tombstone> {
        self.by_ip.values().flatten()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records `t`, replacing an older tombstone of the same service and IP.
    pub(crate) fn bury(&mut self, t: Tombstone) {
        let list = self.by_ip.entry(t.ip).or_default();
        if let Some(old) = list.iter_mut().find(|o| o.service == t.service) {
            *old = t;
        } else {
            list.push(t);
            self.len += 1;
        }
    }

    /// Forgets the tombstone of `service` at `ip`: the IP is an endpoint of it again.
    pub(crate) fn revive(&mut self, service: &ObjectKey, ip: &IpAddr) {
        if let Some(list) = self.by_ip.get_mut(ip) {
            let before = list.len();
            list.retain(|t| t.service != *service);
            self.len -= before - list.len();
            if list.is_empty() {
                self.by_ip.remove(ip);
            }
        }
    }

    /// Drops tombstones recorded before `cutoff`; returns how many.
    pub fn expire(&mut self, cutoff: Timestamp) -> usize {
        let before = self.len;
        self.by_ip.retain(|_, list| {
            list.retain(|t| t.removed_at >= cutoff);
            !list.is_empty()
        });
        self.len = self.by_ip.values().map(Vec::len).sum();
        before - self.len
    }

    /// The API server confirmed pod `key` (uid `uid`) gone (404, another uid or IP): marks the
    /// tombstones at `ip` that name that pod — namespace, name and uid, never the name alone
    /// (`a/web-0` gone says nothing about `b/web-0`) — and returns how many.
    pub fn mark_pod_gone(&mut self, ip: &IpAddr, key: &ObjectKey, uid: Option<&Uid>) -> usize {
        let mut n = 0;
        for t in self.by_ip.get_mut(ip).into_iter().flatten() {
            if t.names_pod(key, uid) {
                t.pod_gone = true;
                n += 1;
            }
        }
        n
    }

    /// This node's pod watch saw pod `key` (uid `uid`) deleted or finished while it held `ip`:
    /// as good as a GET answering 404, and fresher. Marks the tombstones at `ip` that name that
    /// pod (same namespace and name, and the same uid when both are known: a delete of an older
    /// incarnation says nothing about a newer one) and returns how many were not marked before.
    pub fn mark_pod_ended(&mut self, ip: &IpAddr, key: &ObjectKey, uid: Option<&Uid>) -> usize {
        let mut n = 0;
        for t in self.by_ip.get_mut(ip).into_iter().flatten() {
            if !t.pod_gone && t.names_pod(key, uid) {
                t.pod_gone = true;
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Name;

    fn tomb(ns: &str, pod: &str, uid: &str, ip: IpAddr) -> Tombstone {
        Tombstone {
            service: ObjectKey::new(ns, "web"),
            ip,
            ports: Vec::new(),
            pod: Some(PodTarget {
                name: Name::new(pod),
                uid: Some(Uid::Other(Name::new(uid))),
            }),
            conditions: Conditions::new(true, true, false),
            managed: true,
            removed_at: Timestamp::from_second(1_800_000_000).unwrap(),
            pod_gone: false,
        }
    }

    /// Issue #12 §1: `a/web-0` confirmed gone says nothing about `b/web-0`, even at the same IP
    /// (the IP was reused, then `b/web-0` was deselected while it runs on).
    #[test]
    fn a_pod_confirmed_gone_marks_only_its_own_namespace() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let mut t = Tombstones::default();
        t.bury(tomb("a", "web-0", "uid-a", ip));
        t.bury(tomb("b", "web-0", "uid-b", ip));
        let a = ObjectKey::new("a", "web-0");
        let uid_a = Uid::Other(Name::new("uid-a"));
        assert_eq!(t.mark_pod_gone(&ip, &a, Some(&uid_a)), 1);
        let gone: Vec<(&str, bool)> = t
            .at(&ip)
            .iter()
            .map(|t| (t.service.namespace.as_str(), t.pod_gone))
            .collect();
        assert_eq!(gone, vec![("a", true), ("b", false)]);
        // Another incarnation of a/web-0 (another uid) is not the one the tombstone names.
        let mut t = Tombstones::default();
        t.bury(tomb("a", "web-0", "uid-a", ip));
        let other = Uid::Other(Name::new("uid-a2"));
        assert_eq!(t.mark_pod_gone(&ip, &a, Some(&other)), 0);
        assert!(!t.at(&ip)[0].pod_gone);
    }
}
