//! Property: a flow whose backend is in E(S) is never removed, for any snapshot and any policy.
//!
//! The one exception is the table's row 4 (`unanswered`): a half-open flow to an endpoint that no
//! longer serves is removed because no connection exists. The property is checked for every other
//! flow to E(S): answered flows, and half-open flows to serving endpoints.
//!
//! Snapshots are built from random event sequences (slices created, changed, moved and deleted),
//! so they also carry tombstones; E(S) is computed from the generated objects, not from the index.

mod classify_support;
mod flow_schema;

use std::collections::BTreeMap;
use std::time::Duration;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::{Event, Index, IndexConfig, Object};
use ghostbuster::flow_json::FlowRecord;
use ghostbuster::policy::{Policy, ProtocolSet};
use ghostbuster::scan::Finding;
use ghostbuster::verdict::VerdictKind;
use proptest::prelude::*;
use serde_json::{json, Value};

const PORT_NAMES: [&str; 3] = ["", "http", "grpc"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const SERVICES: usize = 3;

#[derive(Clone, Debug)]
struct SvcModel {
    /// (name, port, protocol)
    ports: Vec<(&'static str, u16, &'static str)>,
}

#[derive(Clone, Debug)]
struct EpModel {
    ip: u8,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    pod: Option<u8>,
}

#[derive(Clone, Debug)]
struct SliceModel {
    service: usize,
    /// (port name, target port, protocol)
    ports: Vec<(&'static str, u16, &'static str)>,
    endpoints: Vec<EpModel>,
    managed: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(u8, SliceModel),
    Delete(u8),
}

fn svc_strategy() -> impl Strategy<Value = SvcModel> {
    proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3)
        .prop_flat_map(|names| {
            let n = names.len();
            (
                Just(names),
                proptest::collection::vec(
                    (prop_oneof![Just(80u16), Just(53), Just(443)], 0..3usize),
                    n,
                ),
            )
        })
        .prop_map(|(names, rest)| {
            let mut ports: Vec<(&'static str, u16, &'static str)> = Vec::new();
            for (n, (port, proto)) in names.into_iter().zip(rest) {
                // The API server rejects two ports with the same number and protocol.
                if !ports
                    .iter()
                    .any(|&(_, p, pr)| p == port && pr == PROTOCOLS[proto])
                {
                    ports.push((PORT_NAMES[n], port, PROTOCOLS[proto]));
                }
            }
            SvcModel { ports }
        })
}

fn ep_strategy() -> impl Strategy<Value = EpModel> {
    (
        1u8..10,
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u8..6),
    )
        .prop_map(|(ip, ready, serving, terminating, pod)| EpModel {
            ip,
            ready,
            serving,
            terminating,
            pod,
        })
}

fn slice_strategy() -> impl Strategy<Value = SliceModel> {
    (
        0..SERVICES + 1, // SERVICES: a service that has no Service object
        proptest::collection::vec(
            (
                0..3usize,
                prop_oneof![Just(8080u16), Just(8081), Just(53)],
                0..3usize,
            ),
            0..4,
        ),
        proptest::collection::vec(ep_strategy(), 0..5),
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(service, ports, endpoints, managed)| SliceModel {
            service,
            ports: ports
                .into_iter()
                .map(|(n, p, proto)| (PORT_NAMES[n], p, PROTOCOLS[proto]))
                .collect(),
            endpoints,
            managed,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5, slice_strategy()).prop_map(|(n, s)| Op::Upsert(n, s)),
        1 => (0u8..5).prop_map(Op::Delete),
    ]
}

fn pod_ip(i: u8) -> String {
    format!("10.244.0.{i}")
}

fn svc_name(i: usize) -> String {
    format!("s{i}")
}

fn service_obj(i: usize, s: &SvcModel) -> Object {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    service(
        "ns",
        &svc_name(i),
        &[&format!("10.96.0.{}", i + 1)],
        Value::Array(ports),
    )
    .into()
}

fn slice_obj(n: u8, s: &SliceModel) -> Object {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|e| {
            let mut v = json!({"addresses": [pod_ip(e.ip)], "conditions": {}});
            for (k, c) in [("ready", e.ready), ("serving", e.serving), ("terminating", e.terminating)] {
                if let Some(c) = c {
                    v["conditions"][k] = json!(c);
                }
            }
            if let Some(p) = e.pod {
                v["targetRef"] = json!({"kind": "Pod", "name": format!("p{p}"), "namespace": "ns", "uid": format!("uid-{p}")});
            }
            v
        })
        .collect();
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    let mut obj = slice(
        "ns",
        &svc_name(s.service),
        &format!("slice-{n}"),
        endpoints,
        Value::Array(ports),
    );
    if !s.managed {
        obj.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("endpointslice.kubernetes.io/managed-by");
    }
    obj.into()
}

#[derive(Clone, Debug)]
struct World {
    services: Vec<SvcModel>,
    ops: Vec<Op>,
    /// (ip, created offset in minutes from NOW - 2h, phase index)
    pods: Vec<(u8, u8, usize)>,
    node_ip: Option<u8>,
    pods_complete: bool,
    snapshot_offset_min: Option<u8>,
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(svc_strategy(), SERVICES),
        proptest::collection::vec(op_strategy(), 0..12),
        proptest::collection::vec((1u8..10, 0u8..180, 0..4usize), 0..6),
        proptest::option::of(1u8..10),
        any::<bool>(),
        proptest::option::of(0u8..180),
    )
        .prop_map(
            |(services, ops, pods, node_ip, pods_complete, snapshot_offset_min)| World {
                services,
                ops,
                pods,
                node_ip,
                pods_complete,
                snapshot_offset_min,
            },
        )
}

fn minutes_after_base(m: u8) -> jiff::Timestamp {
    t("2025-06-01T10:00:00Z") + jiff::SignedDuration::from_mins(i64::from(m))
}

impl World {
    fn index(&self) -> Index {
        let mut index = Index::new(IndexConfig {
            node_name: Some("node-a".into()),
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..IndexConfig::default()
        });
        let now = t(NOW);
        for (i, s) in self.services.iter().enumerate() {
            index.apply(Event::Apply(service_obj(i, s)), now).unwrap();
        }
        for (n, (ip, created, phase)) in self.pods.iter().enumerate() {
            let phase = ["Running", "Pending", "Succeeded", "Failed"][*phase];
            let created = minutes_after_base(*created).to_string();
            let p = pod("ns", &format!("p{n}"), &pod_ip(*ip), &created, phase);
            index.apply(Event::Apply(p.into()), now).unwrap();
        }
        if let Some(n) = self.node_ip {
            index
                .apply(Event::Apply(node("node-a", &[&pod_ip(n)]).into()), now)
                .unwrap();
        }
        for op in &self.ops {
            let e = match op {
                Op::Upsert(n, s) => Event::Apply(slice_obj(*n, s)),
                Op::Delete(n) => Event::Delete(slice_obj(
                    *n,
                    &SliceModel {
                        service: 0,
                        ports: vec![],
                        endpoints: vec![],
                        managed: true,
                    },
                )),
            };
            index.apply(e, now).unwrap();
        }
        index.set_pods_complete(self.pods_complete);
        index.set_snapshot_time(self.snapshot_offset_min.map(minutes_after_base));
        index
    }

    /// The final slices, by name.
    fn slices(&self) -> BTreeMap<u8, SliceModel> {
        let mut out = BTreeMap::new();
        for op in &self.ops {
            match op {
                Op::Upsert(n, s) => {
                    out.insert(*n, s.clone());
                }
                Op::Delete(n) => {
                    out.remove(n);
                }
            }
        }
        out
    }

    /// E(S) for service `svc`, port `port`: (ip, target port) → merged "serving".
    fn endpoints_of(&self, svc: usize, port: usize) -> BTreeMap<(u8, u16), bool> {
        let (name, _, proto) = self.services[svc].ports[port];
        let mut e = BTreeMap::new();
        for s in self.slices().values().filter(|s| s.service == svc) {
            let Some(&(_, target, _)) = s.ports.iter().find(|(n, _, p)| *n == name && *p == proto)
            else {
                continue;
            };
            for ep in &s.endpoints {
                let serving = ep.ready.unwrap_or(true) || ep.serving.unwrap_or(true);
                *e.entry((ep.ip, target)).or_insert(false) |= serving;
            }
        }
        e
    }
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (any::<[bool; 4]>(), 0u64..20).prop_map(|(b, min)| Policy {
        min_age: Duration::from_secs(min),
        include_deselected: b[0],
        trust_snapshot: b[1],
        protocols: ProtocolSet::ALL,
        namespaces: Vec::new(),
        exclude_namespaces: Vec::new(),
        all_zones: b[2],
        include_unmanaged: b[3],
        clock_skew: Duration::from_secs(2),
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn flows_to_current_endpoints_are_never_removed(
        mut world in world_strategy(),
        anchor in (ep_strategy(), prop_oneof![Just(8080u16), Just(8081), Just(53)], any::<prop::sample::Index>(), any::<bool>()),
        policy in policy_strategy(),
        pick in any::<(prop::sample::Index, prop::sample::Index, prop::sample::Index)>(),
        shape in 0..3usize,
        start in proptest::option::of(0u8..200),
        zone in prop_oneof![Just(0u16), Just(3)],
    ) {
        let svc = pick.0.index(SERVICES);
        let port = pick.1.index(world.services[svc].ports.len());
        // A slice that guarantees S has an endpoint, inserted anywhere in the event sequence under
        // a name no other event touches.
        let (name, _, proto) = world.services[svc].ports[port];
        let (ep, target, at, managed) = anchor;
        let at = at.index(world.ops.len() + 1);
        world.ops.insert(at, Op::Upsert(9, SliceModel {
            service: svc,
            ports: vec![(name, target, proto)],
            endpoints: vec![ep],
            managed,
        }));
        let members = world.endpoints_of(svc, port);
        let (&(ip, target), &serving) = members.iter().nth(pick.2.index(members.len())).unwrap();

        let (_, dport, proto) = world.services[svc].ports[port];
        let proto = match proto { "TCP" => TCP, "UDP" => UDP, _ => SCTP };
        let vip = format!("10.96.0.{}", svc + 1);
        let mut f = flow(proto, "10.244.1.77", 40000, &vip, dport).dnat(&pod_ip(ip), target).zone(zone);
        f = match shape { 0 => f, 1 => f.syn_sent(), _ => f.unreplied() };
        if let Some(m) = start {
            f = f.started(&minutes_after_base(m).to_string());
        }
        let flow = f.build();
        let index = world.index();
        let v = classify(&flow, &index, &policy, t(NOW));

        let half_open = ghostbuster::classify::is_half_open(&flow);
        if proto == UDP && !serving {
            // kube-proxy's own rule: UDP to a listed endpoint that does not serve goes once the
            // port has a serving endpoint (row 10), unless half-open already says so (row 4).
            prop_assert!(
                matches!(v.kind, VerdictKind::Healthy | VerdictKind::Unanswered | VerdictKind::NotServing),
                "{v:?}"
            );
            prop_assert!(!v.removable || v.kind != VerdictKind::Healthy);
        } else if half_open && !serving {
            prop_assert!(matches!(v.kind, VerdictKind::Healthy | VerdictKind::Unanswered), "{v:?}");
        } else {
            prop_assert_eq!(v.kind, VerdictKind::Healthy, "{:?}", v);
            prop_assert!(!v.removable);
        }
    }

    #[test]
    fn classify_is_total(
        world in world_strategy(),
        policy in policy_strategy(),
        proto in prop_oneof![Just(TCP), Just(UDP), Just(SCTP), Just(1u8), Just(47u8)],
        dst in prop_oneof![(1u8..5).prop_map(|i| format!("10.96.0.{i}")), (1u8..10).prop_map(pod_ip), Just("8.8.8.8".to_string())],
        dport in prop_oneof![Just(80u16), Just(53), Just(443), any::<u16>()],
        backend in proptest::option::of(((1u8..10).prop_map(pod_ip), prop_oneof![Just(8080u16), Just(53), any::<u16>()])),
        status in any::<u32>(),
        start in proptest::option::of(any::<u64>()),
    ) {
        let mut f = flow(proto, "10.244.1.77", 40000, &dst, dport);
        if let Some((ip, port)) = &backend {
            f = f.dnat(ip, *port);
        }
        let mut flow = f.build();
        flow.status = ctnetlink::Status::from_bits_retain(status);
        flow.start_ns = start;
        if proto == 1 {
            flow.orig.l4 = ctnetlink::L4::Icmp { kind: 8, code: 0, id: 1 };
            flow.reply.l4 = ctnetlink::L4::Icmp { kind: 0, code: 0, id: 1 };
        }
        let index = world.index();
        let v = classify(&flow, &index, &policy, t(NOW));
        prop_assert!(!v.removable || v.kind.is_stale());
        prop_assert!(!(v.removable && v.kept_because.is_some()));
        prop_assert!(v.removable || v.kept_because.is_some() || !v.kind.is_stale());
        // Whatever the flow (any status bits, any start, ICMP), its JSON object is one that
        // docs/flow.schema.json accepts.
        let finding = Finding { flow, verdict: v };
        flow_schema::assert_flow(&serde_json::to_value(FlowRecord::new(&finding).with_trace()).unwrap());
    }
}
