//! The reactor's input: [`Work`] items, coalesced per turn into a [`Turn`].

use std::collections::HashSet;
use std::net::IpAddr;

use super::Shared;

/// What the reactor is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Look at the flows of this backend (it left a Service, or was seen again in a NEW event).
    Backend(IpAddr),
    /// Scan the whole table (periodic resync, lost events, a deleted Service).
    Full,
    /// A reading of kube-proxy moved the gate's view: look again at the backends waiting on it.
    KubeProxy,
    /// The walker thread finished a full pass's walk: act on its findings.
    Walked,
}

/// Backends that left a Service (or whose pod just ended), from an index change: what the
/// reactor should look at.
pub fn work_from_changes(changes: &crate::cluster::Changes) -> Vec<Work> {
    let mut w: Vec<Work> = Vec::new();
    let mut seen = HashSet::new();
    let ips = changes
        .endpoints_removed
        .iter()
        .chain(&changes.endpoints_added)
        .map(|(_, ip)| ip)
        .chain(&changes.pods_ended);
    for ip in ips {
        if seen.insert(*ip) {
            w.push(Work::Backend(*ip));
        }
    }
    if !changes.services_removed.is_empty() {
        w.push(Work::Full);
    }
    w
}

/// The work of one turn of the reactor: everything queued since the last turn, coalesced — a
/// burst of endpoint changes during a rollout becomes one look per backend, any number of "events
/// were lost" one full pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Turn {
    pub full: bool,
    pub backends: HashSet<IpAddr>,
}

impl Turn {
    /// A turn with a full pass.
    pub fn full() -> Turn {
        Turn {
            full: true,
            backends: HashSet::new(),
        }
    }

    /// A turn that looks at these backends.
    pub fn backends(ips: impl IntoIterator<Item = IpAddr>) -> Turn {
        Turn {
            full: false,
            backends: ips.into_iter().collect(),
        }
    }

    /// Adds one work item. The backends that wait on kube-proxy are taken from `shared` when a
    /// reading of kube-proxy moved (each is looked at again, and waits again if it must).
    pub fn absorb(&mut self, shared: &Shared, w: Work) {
        match w {
            Work::Full => self.full = true,
            Work::Backend(ip) => {
                self.backends.insert(ip);
            }
            Work::KubeProxy => self.backends.extend(shared.take_kube_proxy_waiters()),
            // The turn collects the walk itself.
            Work::Walked => {}
        }
    }
}
