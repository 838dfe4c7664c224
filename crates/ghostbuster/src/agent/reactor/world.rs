//! What the reactor needs of the world outside the conntrack table: kube-proxy's syncs, the API
//! server's answers about pods and IPs, the global gate's inputs, and where reports go. The agent's
//! implementation is [`crate::agent::world::AgentWorld`]; tests answer from tables.

use std::net::IpAddr;

use jiff::Timestamp;

use super::PassReport;
use crate::agent::gate::{Global, KubeProxyView, Trip};

/// What a pod GET said about the pod a tombstone names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodFate {
    /// 404, another uid, or another IP: the backend is gone.
    Gone,
    /// Still there (maybe terminating): keep its flows.
    Alive,
    /// The API could not be asked: keep, try again later.
    Unknown,
    /// A lookup is under way (it never blocks the reactor): keep the flows for now. Its answer
    /// wakes the reactor for the backend when it is `Gone` or `Unknown`.
    Pending,
}

/// What the API server said when asked which pods hold an IP
/// ([`crate::cluster::kube::IpHolders`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldersAnswer {
    /// No pod's primary IP was the IP when the question was sent (`as_of`, the local clock).
    Absent { as_of: Timestamp },
    /// Some pod is listed at the IP (finished ones too: conservative).
    Held,
    /// No answer (timeout, error, over the rate limit): keep, ask again later.
    Unknown,
    /// The question is under way: keep the flows for now; its answer wakes the reactor.
    Pending,
}

/// The outside world the reactor needs, behind small traits so the loop can be driven by tests
/// and by the real API/kube-proxy clients alike.
pub trait World: Send {
    /// What is known of kube-proxy's syncs (read now; the tracker behind it remembers earlier
    /// readings).
    fn kube_proxy(&mut self) -> KubeProxyView;
    /// Is the pod `namespace/name` (uid, ip) gone? Must not block on the network: an answer
    /// not known yet is [`PodFate::Pending`] (see [`super::lookups`]).
    fn pod_fate(&mut self, namespace: &str, name: &str, uid: Option<&str>, ip: IpAddr) -> PodFate;
    /// Which pods hold `ip`, cluster-wide (rate-limited, with a timeout). Must not block on the
    /// network, like [`World::pod_fate`]. The default knows nothing.
    fn ip_holders(&mut self, _ip: IpAddr) -> HoldersAnswer {
        HoldersAnswer::Unknown
    }
    /// The global gate's current inputs (sync/freshness of watches, dataplane mode, dry run).
    fn global(&mut self) -> Global;
    /// Called after every pass with what happened.
    fn report(&mut self, pass: &PassReport);
    /// Called on every turn of the loop (at least every 250 ms): the liveness heartbeat.
    fn tick(&mut self) {}
    /// The flow index now (every few seconds while it is on).
    fn flow_index(&mut self, _index: &crate::agent::flow_index::Summary) {}
    /// The deletes-per-minute budget tripped the circuit breaker (once: it stays open).
    fn circuit_tripped(&mut self, _trip: &Trip) {}
}
