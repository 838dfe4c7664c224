//! The last removed flows, for `/debug/recent`: the forensic answer to "did you kill my
//! connection?" without turning on per-flow logs.
//!
//! Each entry is the CLI's flow object (`render::flow_fields`: protocol, original and reply
//! tuples, zone, id, ...) plus the verdict, its evidence, the Service port, the backend, the
//! delete's result and the time. A bounded ring: the oldest entry goes when a new one comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ctnetlink::Flow;
use jiff::Timestamp;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::series::lock;
use crate::render::flow_fields;
use crate::scan::Finding;
use crate::sweep::Outcome;
use crate::verdict::{Backend, EvidenceSet, ServiceRef, VerdictKind};

/// Entries `/debug/recent` keeps by default.
pub const DEFAULT_CAPACITY: usize = 256;

/// One flow the agent tried to remove.
#[derive(Debug, Clone)]
pub struct RemovedFlow {
    pub time: Timestamp,
    pub flow: Flow,
    pub verdict: VerdictKind,
    pub evidence: EvidenceSet,
    pub service: Option<ServiceRef>,
    pub backend: Option<Backend>,
    /// `deleted`, `already_gone` or `failed`.
    pub result: Outcome,
    /// The kernel's errno when `failed`.
    pub errno: Option<i32>,
}

impl RemovedFlow {
    pub fn new(f: &Finding, result: Outcome, errno: Option<i32>, time: Timestamp) -> Self {
        RemovedFlow {
            time,
            flow: f.flow,
            verdict: f.verdict.kind,
            evidence: f.verdict.evidence,
            service: f.verdict.service.clone(),
            backend: f.verdict.backend,
            result,
            errno,
        }
    }
}

impl Serialize for RemovedFlow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("time", &self.time)?;
        m.serialize_entry("result", &self.result)?;
        if let Some(e) = self.errno {
            m.serialize_entry("errno", &e)?;
        }
        m.serialize_entry("verdict", &self.verdict)?;
        m.serialize_entry("evidence", &self.evidence)?;
        m.serialize_entry("service", &self.service)?;
        m.serialize_entry("backend", &self.backend)?;
        flow_fields(&mut m, &self.flow)?;
        m.end()
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

    use ctnetlink::{Status, Tuple};

    use super::*;

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
        RemovedFlow {
            time: Timestamp::from_second(1_700_000_000).unwrap(),
            flow: flow(sport),
            verdict: VerdictKind::EndpointGone,
            evidence: [crate::verdict::Evidence::PodGone].into_iter().collect(),
            service: None,
            backend: Some(Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7)),
                port: 5432,
            }),
            result: Outcome::Deleted,
            errno: None,
        }
    }

    #[test]
    fn keeps_the_newest_first_and_bounded() {
        let r = Recent::new(3);
        r.extend((1..=5).map(removed));
        assert_eq!(r.len(), 3);
        let ports: Vec<u16> = r
            .latest(10)
            .iter()
            .map(|f| f.flow.orig.sport().unwrap())
            .collect();
        assert_eq!(ports, vec![5, 4, 3]);
        assert_eq!(r.latest(1).len(), 1);
        let none = Recent::new(0);
        none.push(removed(1));
        assert!(none.is_empty());
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
    }
}
