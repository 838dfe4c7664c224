//! The last removed flows, for `/debug/recent`: the forensic answer to "did you kill my
//! connection?" without turning on per-flow logs.
//!
//! Each entry is the flow object every JSON output shares (`flow_json::FlowRecord`: the flow,
//! its verdict with evidence, Service port and backend, and the reason) with the removal's
//! `time`, `result` and `errno`; `--log-removed-flows` logs the same object. A bounded ring: the
//! oldest entry goes when a new one comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::{Serialize, Serializer};

use super::series::lock;
use crate::flow_json::FlowRecord;
use crate::scan::Finding;
use crate::sockets::Ended;
use crate::sweep::Outcome;

/// Entries `/debug/recent` keeps by default.
pub const DEFAULT_CAPACITY: usize = 256;

/// One flow the agent tried to remove. Keeps the whole finding (verdict and trace included, a
/// few hundred bytes) so `/debug/recent` says as much as `sweep -o json` did.
#[derive(Debug, Clone)]
pub struct RemovedFlow {
    pub time: Timestamp,
    pub finding: Finding,
    /// `deleted`, `already_gone` or `failed`.
    pub result: Outcome,
    /// The kernel's errno when `failed`.
    pub errno: Option<i32>,
    /// What ending the client's socket came to (`--terminate-sockets`), once it is known.
    pub socket: Option<Ended>,
}

impl RemovedFlow {
    pub fn new(f: &Finding, result: Outcome, errno: Option<i32>, time: Timestamp) -> Self {
        RemovedFlow {
            time,
            finding: f.clone(),
            result,
            errno,
            socket: None,
        }
    }

    /// The shared flow object with this removal's fields.
    pub fn record(&self) -> FlowRecord<'_> {
        FlowRecord::new(&self.finding)
            .removal(self.time, self.result, self.errno)
            .socket(self.socket)
    }

    /// The `--log-removed-flows` line: its `flow` field is the same JSON object `/debug/recent`
    /// serves (tracing has no stable way to nest an object, so it travels as JSON text).
    pub fn log(&self) {
        tracing::info!(flow = %self.json(), "removed flow");
    }

    /// [`RemovedFlow::record`] as JSON text.
    pub fn json(&self) -> String {
        serde_json::to_string(&self.record()).unwrap_or_default()
    }
}

impl Serialize for RemovedFlow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.record().serialize(s)
    }
}

/// A ring of the last removed flows. Clones share it.
#[derive(Debug, Clone)]
pub struct Recent {
    ring: Arc<Mutex<VecDeque<RemovedFlow>>>,
    capacity: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Recent {
            ring: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(4096)))),
            capacity,
        }
    }

    pub fn push(&self, flow: RemovedFlow) {
        self.extend(std::iter::once(flow));
    }

    /// Adds many under one lock (a sweep's worth); only the last `capacity` stay.
    pub fn extend(&self, flows: impl IntoIterator<Item = RemovedFlow>) {
        if self.capacity == 0 {
            return;
        }
        let mut r = lock(&self.ring);
        for f in flows {
            if r.len() == self.capacity {
                r.pop_front();
            }
            r.push_back(f);
        }
    }

    /// Records what ending the client socket of the deleted flow `flow` came to, on its entry
    /// (the newest deletion of that entry: same original tuple and id), if it is still kept.
    pub fn note_socket(&self, flow: &ctnetlink::Flow, ended: Ended) {
        let mut r = lock(&self.ring);
        if let Some(e) = r.iter_mut().rev().find(|e| {
            e.result == Outcome::Deleted
                && e.finding.flow.orig == flow.orig
                && e.finding.flow.id == flow.id
        }) {
            e.socket = Some(ended);
        }
    }

    /// Newest first, at most `limit`.
    pub fn latest(&self, limit: usize) -> Vec<RemovedFlow> {
        lock(&self.ring).iter().rev().take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.ring).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ctnetlink::{Flow, Status, Tuple};

    use super::*;
    use crate::verdict::{Backend, Evidence, Trace, Verdict, VerdictKind};

    fn flow(sport: u16) -> Flow {
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
        let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7));
        let mut f = Flow::new(
            Tuple::ports(client, sport, vip, 5432, 6),
            Tuple::ports(pod, 5432, client, sport, 6),
        );
        f.status = Status::DST_NAT;
        f.timeout = Some(100);
        f.id = Some(42);
        f
    }

    fn removed(sport: u16) -> RemovedFlow {
        let verdict = Verdict {
            kind: VerdictKind::EndpointGone,
            evidence: [Evidence::PodGone].into_iter().collect(),
            half_open: false,
            removable: true,
            kept_because: None,
            service: None,
            backend: Some(Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7)),
                port: 5432,
            }),
            now_owned_by: None,
            trace: Trace::default(),
        };
        RemovedFlow::new(
            &Finding {
                flow: flow(sport),
                verdict,
            },
            Outcome::Deleted,
            None,
            Timestamp::from_second(1_700_000_000).unwrap(),
        )
    }

    #[test]
    fn keeps_the_newest_first_and_bounded() {
        let r = Recent::new(3);
        r.extend((1..=5).map(removed));
        assert_eq!(r.len(), 3);
        let ports: Vec<u16> = r
            .latest(10)
            .iter()
            .map(|f| f.finding.flow.orig.sport().unwrap())
            .collect();
        assert_eq!(ports, vec![5, 4, 3]);
        assert_eq!(r.latest(1).len(), 1);
        let none = Recent::new(0);
        none.push(removed(1));
        assert!(none.is_empty());
    }

    /// The socket ender's result lands on the newest deletion of the same entry only.
    #[test]
    fn a_socket_result_is_noted_on_its_flows_entry() {
        let r = Recent::new(8);
        r.extend((1..=3).map(removed));
        r.note_socket(&flow(2), Ended::Destroyed);
        let mut other_id = flow(3);
        other_id.id = Some(7);
        r.note_socket(&other_id, Ended::Destroyed);
        let by_port: Vec<(u16, Option<Ended>)> = r
            .latest(8)
            .iter()
            .map(|e| (e.finding.flow.orig.sport().unwrap(), e.socket))
            .collect();
        assert_eq!(
            by_port,
            vec![(3, None), (2, Some(Ended::Destroyed)), (1, None)]
        );
    }

    #[test]
    fn serializes_verdict_and_the_flow_object() {
        let v = serde_json::to_value(removed(40000)).unwrap();
        assert_eq!(v["verdict"], "endpoint_gone");
        assert_eq!(v["evidence"][0], "pod_gone");
        assert_eq!(v["result"], "deleted");
        assert_eq!(v["backend"]["ip"], "10.244.1.7");
        assert_eq!(v["original"]["dst"], "10.96.0.10");
        assert_eq!(v["original"]["sport"], 40000);
        assert_eq!(v["id"], 42);
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        assert!(v.get("errno").is_none());
        // The verdict fields of `sweep -o json` too: one object everywhere.
        assert_eq!(v["removable"], true);
        assert_eq!(v["half_open"], false);
        assert!(v["kept_because"].is_null());
        assert_eq!(v["reason"], "row 8: endpoint_gone");
    }
}
