//! What `sweep` may remove beyond what the decision table allows by itself.
//!
//! The classifier applies the policy to `removable` (never to the verdict): a flow outside the
//! policy is still reported, with the reason it is kept.

use std::time::Duration;

use crate::cluster::Protocol;

/// The removal policy, from the command line (`--min-age`, `--include-deselected`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Half-open flows younger than this are not judged (rows 2 and 4), when their age is known
    /// (`nf_conntrack_timestamp=1`): a reply may be on its way, or kube-proxy about to sync.
    pub min_age: Duration,
    /// Also remove TCP/SCTP flows to pods that are alive but no longer selected (`deselected`,
    /// `port_changed`): a blue/green switch would otherwise keep them on the old colour.
    pub include_deselected: bool,
    /// Take "not in the snapshot" as proof that a backend is gone (`endpoint_gone` with
    /// `snapshot_only` evidence).
    pub trust_snapshot: bool,
    /// Protocols whose flows may be removed.
    pub protocols: ProtocolSet,
    /// Only these Service namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Never these Service namespaces.
    pub exclude_namespaces: Vec<String>,
    /// Also remove flows in conntrack zones other than 0 (kube-proxy's rules use zone 0).
    pub all_zones: bool,
    /// Also remove flows of `default/kubernetes` and of Services whose endpoints do not come from
    /// the EndpointSlice controller with Pod targets.
    pub include_unmanaged: bool,
    /// How far the API server's clock (a pod's `creationTimestamp`, the snapshot's time) and this
    /// node's (a flow's start) may disagree: a comparison between the two proves an order only
    /// beyond this margin, so a pod "created" a second after a flow began may still be its
    /// backend (`--clock-skew`, default 2 s).
    pub clock_skew: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_age: Duration::from_secs(10),
            include_deselected: false,
            trust_snapshot: false,
            protocols: ProtocolSet::ALL,
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            all_zones: false,
            include_unmanaged: false,
            clock_skew: Duration::from_secs(2),
        }
    }
}

impl Policy {
    /// Whether flows of a Service in `namespace` may be removed; `None` (a deleted Service) only
    /// passes when no `--namespace` restriction is set.
    pub fn allows_namespace(&self, namespace: Option<&str>) -> bool {
        match namespace {
            Some(ns) => {
                (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == ns))
                    && !self.exclude_namespaces.iter().any(|n| n == ns)
            }
            None => self.namespaces.is_empty(),
        }
    }

    pub fn allows_zone(&self, zone: u16) -> bool {
        self.all_zones || zone == 0
    }
}

/// A set of [`Protocol`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtocolSet(u8);

impl ProtocolSet {
    pub const ALL: ProtocolSet = ProtocolSet(0b111);
    pub const NONE: ProtocolSet = ProtocolSet(0);

    const fn bit(p: Protocol) -> u8 {
        match p {
            Protocol::Tcp => 1,
            Protocol::Udp => 2,
            Protocol::Sctp => 4,
        }
    }

    pub fn insert(&mut self, p: Protocol) {
        self.0 |= Self::bit(p);
    }

    pub fn contains(self, p: Protocol) -> bool {
        self.0 & Self::bit(p) != 0
    }
}

impl Default for ProtocolSet {
    fn default() -> Self {
        ProtocolSet::ALL
    }
}

impl FromIterator<Protocol> for ProtocolSet {
    fn from_iter<I: IntoIterator<Item = Protocol>>(iter: I) -> Self {
        let mut s = ProtocolSet::NONE;
        for p in iter {
            s.insert(p);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_include_then_exclude() {
        let mut p = Policy::default();
        assert!(p.allows_namespace(Some("a")) && p.allows_namespace(None));
        p.exclude_namespaces = vec!["kube-system".into()];
        assert!(!p.allows_namespace(Some("kube-system")));
        assert!(p.allows_namespace(None));
        p.namespaces = vec!["a".into()];
        assert!(p.allows_namespace(Some("a")));
        assert!(!p.allows_namespace(Some("b")));
        assert!(!p.allows_namespace(None));
    }

    #[test]
    fn protocol_sets() {
        let s: ProtocolSet = [Protocol::Udp].into_iter().collect();
        assert!(s.contains(Protocol::Udp) && !s.contains(Protocol::Tcp));
        assert!(ProtocolSet::default().contains(Protocol::Sctp));
    }
}
