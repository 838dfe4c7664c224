//! Shared helpers for the `classify_*` tests: fixtures, API objects in their real JSON shape, and
//! conntrack flows as the kernel reports them for Service traffic.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;

use ctnetlink::{Flow, Status, TcpState, Tuple};
use ghostbuster::cluster::file::{self, Loaded};
use ghostbuster::cluster::{Event, Index, IndexConfig, Object};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// When `cluster.json` was "exported".
pub const SNAPSHOT: &str = "2025-06-01T12:00:00Z";
/// When the flows are read.
pub const NOW: &str = "2025-06-01T12:01:00Z";

pub fn node_a() -> IndexConfig {
    IndexConfig {
        node_name: Some("node-a".into()),
        ..IndexConfig::default()
    }
}

/// `cluster.json` loaded as on node-a, snapshot at [`SNAPSHOT`].
pub fn cluster() -> Loaded {
    file::load(&[fixture("cluster.json")], node_a(), Some(t(SNAPSHOT))).unwrap()
}

/// `cluster.json` without its Pods (a `kubectl get services,endpointslices,nodes` export).
pub fn cluster_without_pods() -> Loaded {
    let text = std::fs::read_to_string(fixture("cluster.json")).unwrap();
    let mut list: Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["kind"] != "Pod");
    let mut loader = file::Loader::new(node_a());
    loader
        .add_str("cluster-without-pods.json", &list.to_string())
        .unwrap();
    loader.finish(Some(t(SNAPSHOT)))
}

// --- flows -------------------------------------------------------------------------------------

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// Builds a conntrack entry: `client:sport -> frontend:dport`, replied to by `backend` when NATed.
#[derive(Clone, Copy)]
pub struct FlowBuilder {
    flow: Flow,
}

pub fn flow(proto: u8, client: &str, sport: u16, dst: &str, dport: u16) -> FlowBuilder {
    let (c, d) = (ip(client), ip(dst));
    let orig = Tuple::ports(c, sport, d, dport, proto);
    FlowBuilder {
        flow: {
            let mut fl = Flow::new(orig, orig.inverted());
            fl.status = Status::CONFIRMED | Status::SEEN_REPLY | Status::ASSURED;
            fl.timeout = Some(431_999);
            fl.mark = Some(0);
            fl.id = Some(0x1234_5678);
            fl.use_count = Some(1);
            fl.tcp_state = (proto == TCP).then_some(TcpState::ESTABLISHED);
            fl
        },
    }
}

pub fn tcp(client: &str, sport: u16, dst: &str, dport: u16) -> FlowBuilder {
    flow(TCP, client, sport, dst, dport)
}

pub fn udp(client: &str, sport: u16, dst: &str, dport: u16) -> FlowBuilder {
    flow(UDP, client, sport, dst, dport).assured_udp()
}

impl FlowBuilder {
    /// kube-proxy's DNAT to `backend:port`: the reply comes from the backend.
    pub fn dnat(mut self, backend: &str, port: u16) -> Self {
        let o = self.flow.orig;
        self.flow.reply = Tuple::ports(ip(backend), port, o.src, o.sport().unwrap(), o.proto);
        self.flow.status |= Status::DST_NAT | Status::DST_NAT_DONE;
        self
    }

    /// A SYN that was never answered.
    pub fn syn_sent(mut self) -> Self {
        self.flow
            .status
            .remove(Status::SEEN_REPLY | Status::ASSURED);
        if self.flow.orig.proto == TCP {
            self.flow.tcp_state = Some(TcpState::SYN_SENT);
        }
        self.flow.timeout = Some(119);
        self
    }

    /// A UDP flow that saw replies.
    fn assured_udp(mut self) -> Self {
        self.flow.tcp_state = None;
        self.flow.timeout = Some(119);
        self
    }

    pub fn unreplied(mut self) -> Self {
        self.flow
            .status
            .remove(Status::SEEN_REPLY | Status::ASSURED);
        self
    }

    pub fn started(mut self, at: &str) -> Self {
        self.flow.start_ns = Some(u64::try_from(t(at).as_nanosecond()).unwrap());
        self
    }

    pub fn zone(mut self, zone: u16) -> Self {
        self.flow.zone = zone;
        self
    }

    pub fn build(self) -> Flow {
        self.flow
    }
}

// --- API objects in their JSON shape -------------------------------------------------------------

pub fn service(ns: &str, name: &str, cluster_ips: &[&str], ports: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-svc-{ns}-{name}"),
            "resourceVersion": "1", "creationTimestamp": "2025-05-01T09:00:00Z",
            "labels": {"app": name}
        },
        "spec": {
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ports": ports,
            "selector": {"app": name},
            "type": "ClusterIP"
        }
    }))
    .unwrap()
}

/// One endpoint: `(ip, pod name, ready, serving, terminating)`.
pub fn endpoint(ip: &str, pod: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "nodeName": "node-a",
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns", "uid": format!("uid-pod-{pod}")}
    })
}

pub fn ready(ip: &str, pod: &str) -> Value {
    endpoint(ip, pod, true, true, false)
}

pub fn slice(
    ns: &str,
    service: &str,
    name: &str,
    endpoints: Vec<Value>,
    ports: Value,
) -> EndpointSlice {
    let family = match endpoints.first().and_then(|e| e["addresses"][0].as_str()) {
        Some(a) if a.contains(':') => "IPv6",
        _ => "IPv4",
    };
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": family,
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-slice-{ns}-{name}"),
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }
        },
        "endpoints": endpoints,
        "ports": ports
    }))
    .unwrap()
}

pub fn pod(ns: &str, name: &str, ip: &str, created: &str, phase: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-pod-{name}"),
            "creationTimestamp": created
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}], "nodeName": "node-a"},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

pub fn node(name: &str, addresses: &[&str]) -> Node {
    let addrs: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-node-{name}")},
        "status": {"addresses": addrs}
    }))
    .unwrap()
}

/// The ClusterIP of [`web_service`].
pub const WEB_VIP: &str = "10.96.1.1";

/// Service `ns/web` at [`WEB_VIP`]: port `http` 80 to the container port named `http`.
pub fn web_service() -> Object {
    service(
        "ns",
        "web",
        &[WEB_VIP],
        json!([{"name": "http", "port": 80, "targetPort": "http"}]),
    )
    .into()
}

/// EndpointSlice `name` of `ns/web` with `endpoints` on its port `http` (8080).
pub fn web_slice(name: &str, endpoints: Vec<Value>) -> Object {
    slice(
        "ns",
        "web",
        name,
        endpoints,
        json!([{"name": "http", "port": 8080}]),
    )
    .into()
}

/// `web` whose slice `web-1` lists `a` (10.244.0.1) ready and `b` (10.244.0.2) terminating, not
/// ready, and serving as `b_serving` says.
pub fn web_with_b_terminating(b_serving: bool) -> Index {
    index_of(vec![
        web_service(),
        web_slice(
            "web-1",
            vec![
                ready("10.244.0.1", "a"),
                endpoint("10.244.0.2", "b", false, b_serving, true),
            ],
        ),
    ])
}

/// An index with `objects` applied at [`NOW`] and service CIDR 10.96.0.0/16.
pub fn index_of(objects: Vec<Object>) -> Index {
    let mut index = Index::new(IndexConfig {
        node_name: Some("node-a".into()),
        service_cidrs: vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        ..IndexConfig::default()
    });
    for o in objects {
        index.apply(Event::Apply(o), t(NOW)).unwrap();
    }
    index
}
