//! kube-proxy's own conntrack reconciler, replayed on the real kernel as a test of ours (issue #12
//! §1, "UDP parity"): the table of `TestCleanStaleEntries` in kubernetes
//! `pkg/proxy/conntrack/cleanup_test.go`, whose rule is `pkg/proxy/conntrack/cleanup.go`.
//!
//! The same Service — `test/cleanup-test`, ClusterIP + one externalIP + one LoadBalancer IP,
//! ports `test-tcp` 8000/TCP, `test-udp` 8000/UDP and `test-sctp` 8000/SCTP (the UDP and SCTP
//! ones with NodePort 32000), all to target port 9090 — and the same EndpointSlice: one serving
//! endpoint, one listed but not serving (readiness failing), and a third address that is nobody's
//! endpoint any more (its pod deleted). The same 72 entries, created with ctnetlink's CT_NEW in a
//! throwaway namespace (the kernel computes the reply tuple from CTA_NAT_DST and sets DST_NAT, as
//! for a packet that hit a kube-proxy rule):
//!
//! - 3 UDP to ServiceIP:8000 DNAT'd to the serving endpoint's *old* port 8080;
//! - 63 = 3 backends × 3 protocols × (3 Service IPs × {8000, 3000 (not a Service port)} + the
//!   NodePort), DNAT'd to backend:9090;
//! - 6 UDP to ServiceIP:{8000, 3000} that nothing DNAT'd (reply source = original destination).
//!
//! kube-proxy removes 14: the 3 old-port ones, UDP to a Service IP:8000 or the NodePort whose reply
//! source is not a serving endpoint (3 × 2 + 2), and the 3 un-DNAT'd ones to port 8000.
//!
//! Addresses, mapped to the documentation ranges (ports are kube-proxy's):
//! ClusterIP 172.30.1.1 → 198.51.100.1 (in the lab's ServiceCIDR 198.51.100.0/25), externalIP
//! 192.168.99.100 → 198.51.100.199, LoadBalancer 1.2.3.4 → 198.51.100.234, the node (kube-proxy's
//! NodePort entries leave the destination unset) → 198.51.100.250, endpoints 10.240.0.4 /
//! 10.240.1.5 / 10.240.2.6 → 192.0.2.4 / 192.0.2.5 / 192.0.2.6, and every entry its own client
//! port on 203.0.113.10 (kube-proxy's entries leave the source unset).
//!
//! Two states the Go table leaves unset are set to what the kernel would hold: the DNAT'd entries
//! are established (TCP ESTABLISHED + ASSURED, UDP and SCTP have seen a reply: a backend answered),
//! the un-DNAT'd ones have seen no reply (nothing owns a Service address; a packet that no rule
//! rewrote is routed away unanswered). ghostbuster removes those to port 8000 as `missed_dnat`
//! (half-open, known older than the default `--min-age`, so the test waits 10 s); one that had a
//! reply (something answered at the address) it would keep, where kube-proxy removes it.
//!
//! ghostbuster removes the same 14 — the UDP-to-not-serving ones with their own verdict,
//! `not_serving` (row 10) — and 12 more, each deliberate and listed below ([`Ours`]): TCP/SCTP
//! flows to the deleted pod (kube-proxy cleans UDP only; ghostbuster has `pod_absent` evidence),
//! and DNAT'd UDP through ClusterIP:3000, a port the Service no longer has (`service_gone`, row 9;
//! kube-proxy ≤ 1.28 cleared those too, its reconciler calls them "not owned"). Every TCP and SCTP
//! flow to the listed endpoints, serving or not, stays. The default circuit breaker holds that
//! sweep (26 of the 48 service flows, over its 50 %): the test shows it holding, then passes
//! `--max-delete-percent 100`, every other flag at its default.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, Filter, Flow, NewFlow, Tuple};
use ctnetlink::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use netlab::k8s::{self, PodObject};
use netlab::{Endpoint, NetNs, Service, ServicePort};
use scan_support::*;
use serde_json::{json, Value};

const NAMESPACE: &str = "test";
const SERVICE: &str = "cleanup-test";

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 199);
const LOAD_BALANCER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 234);
const NODE_IP: Ipv4Addr = netlab::plan::NODE_IPV4;
const SERVING: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
const NON_SERVING: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);
const DELETED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

const OLD_ENDPOINT_PORT: u16 = 8080;
const ENDPOINT_PORT: u16 = 9090;
const SERVICE_PORT: u16 = 8000;
const NODE_PORT: u16 = 32000;
const NON_SERVICE_PORT: u16 = 3000;

/// The default `--min-age`: the un-DNAT'd entries are half-open, judged only once known older.
const MIN_AGE: Duration = Duration::from_secs(10);
/// More than the default `--clock-skew` (2 s) between the newest entry and the export.
const EXPORT_AFTER: Duration = Duration::from_secs(3);

/// What ghostbuster does with an entry kube-proxy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ours {
    /// Kept too.
    Keeps,
    /// Removed as well, deliberately: the verdict, and why that is not a bug.
    AlsoRemoves(&'static str, &'static str),
}

/// One entry of the table.
struct Entry {
    what: String,
    flow: NewFlow,
    /// kube-proxy's expectation in `TestCleanStaleEntries` (not in its `entriesAfterCleanup`).
    kube_proxy_removes: bool,
    /// Our verdict for the ones kube-proxy removes; our deliberate difference for the others.
    verdict_if_removed: Option<&'static str>,
    ours: Ours,
}

impl Entry {
    fn ghostbuster_removes(&self) -> bool {
        self.kube_proxy_removes || matches!(self.ours, Ours::AlsoRemoves(..))
    }

    fn expected_verdict(&self) -> Option<&'static str> {
        match self.ours {
            Ours::AlsoRemoves(verdict, _) => Some(verdict),
            Ours::Keeps => self.verdict_if_removed,
        }
    }
}

const TCP_SCTP_TO_DELETED_POD: &str = "TCP/SCTP to a pod deleted before the export, the flow \
    proven older than it (pod_absent): a ghost; kube-proxy cleans UDP only";
const NOT_A_SERVICE_PORT: &str = "DNAT'd to a ClusterIP port the Service no longer has \
    (row 9): UDP goes, TCP/SCTP only with pod_absent; kube-proxy's reconciler calls it \"not \
    owned\" (its <= 1.28 stale-service cleanup removed the UDP ones too)";

fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "sctp",
    }
}

/// The 72 entries of `TestCleanStaleEntries`, each with kube-proxy's expectation and ours.
fn table_72() -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut sport = 40_000u16;
    let mut next = |proto: u8, dst: Ipv4Addr, dport: u16, dnat: Option<(Ipv4Addr, u16)>| {
        sport += 1;
        let orig = Tuple::ports(CLIENT.into(), sport, dst.into(), dport, proto);
        let mut flow = NewFlow::established(orig, dnat.map(|(ip, p)| (IpAddr::V4(ip), p)));
        flow.timeout = 3600;
        if dnat.is_none() {
            flow.status = ctnetlink::Status::empty(); // never answered
        }
        flow
    };
    let service_ips = [CLUSTER_IP, LOAD_BALANCER_IP, EXTERNAL_IP];

    // 3: the endpoint changed port, not IP.
    for dst in service_ips {
        entries.push(Entry {
            what: format!("udp {dst}:{SERVICE_PORT} -> {SERVING}:{OLD_ENDPOINT_PORT} (old port)"),
            flow: next(
                IPPROTO_UDP,
                dst,
                SERVICE_PORT,
                Some((SERVING, OLD_ENDPOINT_PORT)),
            ),
            kube_proxy_removes: true,
            verdict_if_removed: Some("port_changed"),
            ours: Ours::Keeps,
        });
    }

    // 63: 3 backends × 3 protocols × (3 Service IPs × 2 ports + the NodePort).
    for backend in [SERVING, NON_SERVING, DELETED] {
        for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP] {
            let udp = proto == IPPROTO_UDP;
            for dst in service_ips {
                for port in [SERVICE_PORT, NON_SERVICE_PORT] {
                    let kube_proxy_removes = udp && port == SERVICE_PORT && backend != SERVING;
                    let verdict_if_removed = kube_proxy_removes.then(|| {
                        if backend == NON_SERVING {
                            "not_serving"
                        } else {
                            "endpoint_gone"
                        }
                    });
                    let ours = match (port, dst == CLUSTER_IP) {
                        _ if kube_proxy_removes => Ours::Keeps,
                        (SERVICE_PORT, _) if backend == DELETED => {
                            Ours::AlsoRemoves("endpoint_gone", TCP_SCTP_TO_DELETED_POD)
                        }
                        (NON_SERVICE_PORT, true) if udp || backend == DELETED => {
                            Ours::AlsoRemoves("service_gone", NOT_A_SERVICE_PORT)
                        }
                        _ => Ours::Keeps,
                    };
                    entries.push(Entry {
                        what: format!(
                            "{} {dst}:{port} -> {backend}:{ENDPOINT_PORT}",
                            proto_name(proto)
                        ),
                        flow: next(proto, dst, port, Some((backend, ENDPOINT_PORT))),
                        kube_proxy_removes,
                        verdict_if_removed,
                        ours,
                    });
                }
            }
            // The NodePort (the TCP port has none: to kube-proxy and to us it is no Service's).
            let kube_proxy_removes = udp && backend != SERVING;
            let verdict_if_removed = kube_proxy_removes.then(|| {
                if backend == NON_SERVING {
                    "not_serving"
                } else {
                    "endpoint_gone"
                }
            });
            let ours = if proto == IPPROTO_SCTP && backend == DELETED {
                Ours::AlsoRemoves("endpoint_gone", TCP_SCTP_TO_DELETED_POD)
            } else {
                Ours::Keeps
            };
            entries.push(Entry {
                what: format!(
                    "{} node {NODE_IP}:{NODE_PORT} -> {backend}:{ENDPOINT_PORT}",
                    proto_name(proto)
                ),
                flow: next(proto, NODE_IP, NODE_PORT, Some((backend, ENDPOINT_PORT))),
                kube_proxy_removes,
                verdict_if_removed,
                ours,
            });
        }
    }

    // 6: never DNAT'd (no rule yet for a Service without endpoints); reply source = destination.
    for dst in service_ips {
        for port in [SERVICE_PORT, NON_SERVICE_PORT] {
            let kube_proxy_removes = port == SERVICE_PORT;
            entries.push(Entry {
                what: format!("udp {dst}:{port} not DNAT'd, unanswered"),
                flow: next(IPPROTO_UDP, dst, port, None),
                kube_proxy_removes,
                verdict_if_removed: kube_proxy_removes.then_some("missed_dnat"),
                ours: Ours::Keeps,
            });
        }
    }
    entries
}

/// kube-proxy's Service and EndpointSlice, its two live pods, this node and the lab's
/// ServiceCIDR, as `kubectl get services,endpointslices,pods,nodes,namespaces,servicecidrs -A -o
/// json` prints them. The deleted endpoint's pod is gone: in no slice, no Pod object.
fn export() -> Value {
    let mut non_serving = Endpoint::ready(NON_SERVING.into(), "cleanup-test-non-serving");
    non_serving.ready = false;
    non_serving.serving = false;
    let svc = Service::new(NAMESPACE, SERVICE)
        .cluster_ip(CLUSTER_IP)
        .external_ip(EXTERNAL_IP)
        .port(ServicePort::tcp("test-tcp", SERVICE_PORT, ENDPOINT_PORT))
        .port(ServicePort::udp("test-udp", SERVICE_PORT, ENDPOINT_PORT).with_node_port(NODE_PORT))
        .port(ServicePort::sctp("test-sctp", SERVICE_PORT, ENDPOINT_PORT).with_node_port(NODE_PORT))
        .endpoint(Endpoint::ready(SERVING.into(), "cleanup-test-serving"))
        .endpoint(non_serving);
    let created = "2024-01-01T00:00:00Z";
    let pods: Vec<PodObject> = [
        ("cleanup-test-serving", SERVING),
        ("cleanup-test-non-serving", NON_SERVING),
    ]
    .into_iter()
    .map(|(name, ip)| PodObject {
        namespace: NAMESPACE.to_string(),
        name: name.to_string(),
        uid: k8s::uid(&["Pod", NAMESPACE, name]),
        ips: vec![ip.into()],
        node_name: netlab::node::NODE_NAME.to_string(),
        labels: [("app".to_string(), SERVICE.to_string())]
            .into_iter()
            .collect(),
        creation_timestamp: created.to_string(),
        ports: svc
            .ports
            .iter()
            .map(|p| (p.target_port, p.protocol))
            .collect(),
    })
    .collect();
    let mut list = k8s::list(&[svc], &pods, created);
    // A LoadBalancer Service without NodePorts for TCP, as kube-proxy's test builds it.
    let service = object_mut(&mut list, "Service", SERVICE);
    service["spec"]["type"] = json!("LoadBalancer");
    service["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
    service["status"]["loadBalancer"] =
        json!({ "ingress": [{ "ip": LOAD_BALANCER_IP.to_string() }] });
    // The non-serving pod fails its readiness probe.
    let pod = object_mut(&mut list, "Pod", "cleanup-test-non-serving");
    pod["status"]["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
    with_service_cidrs(with_node(with_namespaces(list)))
}

fn dump(ct: &mut Conntrack) -> Vec<Flow> {
    ct.dump_vec(&Filter::default()).expect("dump the table")
}

#[test]
fn kube_proxy_clean_stale_entries_table_replayed_on_the_kernel() {
    if !lab_available("kube_proxy_clean_stale_entries_table_replayed_on_the_kernel") {
        return;
    }
    let entries = table_72();
    assert_eq!(entries.len(), 72, "kube-proxy's table has 72 entries");
    let kube_proxy: usize = entries.iter().filter(|e| e.kube_proxy_removes).count();
    assert_eq!(kube_proxy, 14, "kube-proxy's table removes 14");

    let ns = NetNs::create("kpp").expect("namespace");
    let node = ns.name().to_string();
    // Start times before any entry exists, so every entry is proven older than the export.
    enable_timestamps(&node);
    let mut ct = Conntrack::open_in(Some(&node)).expect("ctnetlink");
    let flows: Vec<NewFlow> = entries.iter().map(|e| e.flow).collect();
    let created = ct.create(&flows).expect("create the 72 entries");
    let created_at = Instant::now();
    assert_eq!(created.created, 72, "{created:?}");
    let before = dump(&mut ct);
    assert_eq!(before.len(), 72);
    for f in &before {
        assert!(f.start_ns.is_some(), "an entry without a start time: {f:?}");
        let e = entries.iter().find(|e| e.flow.orig == f.orig).unwrap();
        assert_eq!(
            f.is_dnat(),
            e.flow.dnat.is_some(),
            "{}: DST_NAT as created",
            e.what
        );
    }

    // The export, written after the entries by more than the clock-skew margin; the sweep once
    // the un-DNAT'd (half-open) entries are known older than the default --min-age.
    sleep_until(created_at + EXPORT_AFTER);
    let dir = Scratch::new("kube_proxy_parity");
    let file = dir.write("cluster.json", &export());
    sleep_until(created_at + MIN_AGE + Duration::from_millis(500));
    let sweep = |extra: &[&str]| {
        let mut args = vec![
            "sweep",
            "--netns",
            &node,
            "--from-file",
            &file,
            "--node-name",
            netlab::node::NODE_NAME,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        Run::of(&args)
    };

    // With every default: the breaker holds. 26 of the 48 service flows is more than 50 %
    // (kube-proxy's table is small and a third of it is stale), so nothing is removed.
    let expected: BTreeSet<usize> = (0..entries.len())
        .filter(|&i| entries[i].ghostbuster_removes())
        .collect();
    let held = sweep(&[]);
    assert_eq!(
        held.json["circuit_breaker"]["tripped"],
        true,
        "{}",
        held.pretty()
    );
    assert_eq!(
        held.json["circuit_breaker"]["removable"],
        expected.len() as u64,
        "{}",
        held.pretty()
    );
    assert_eq!(held.deleted(), 0, "{}", held.pretty());
    assert_eq!(
        dump(&mut ct).len(),
        72,
        "the breaker held, yet entries went"
    );

    // Past the breaker (--max-delete-percent 100), every other flag at its default.
    let run = sweep(&["--max-delete-percent", "100"]).ok(0);
    let after = dump(&mut ct);
    // Every entry has its own client port: the key across the two dumps.
    let sport = |t: &Tuple| t.sport().expect("a port");
    let remaining: BTreeSet<u16> = after.iter().map(|f| sport(&f.orig)).collect();
    let removed: BTreeSet<usize> = (0..entries.len())
        .filter(|&i| !remaining.contains(&sport(&entries[i].flow.orig)))
        .collect();

    let mut report = String::new();
    let mut by_verdict: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let finding = run.flows().into_iter().find(|f| {
            f["original"]["sport"] == e.flow.orig.sport().unwrap_or(0)
                && f["original"]["dst"] == e.flow.orig.dst.to_string()
        });
        let verdict = finding
            .map(|f| f["verdict"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "healthy/not_service".to_string());
        let gone = removed.contains(&i);
        if gone {
            *by_verdict.entry(verdict.clone()).or_default() += 1;
        }
        report.push_str(&format!(
            "{:<60} kube-proxy {:<7} ghostbuster {:<7} {verdict}\n",
            e.what,
            if e.kube_proxy_removes {
                "removes"
            } else {
                "keeps"
            },
            if gone { "removed" } else { "kept" },
        ));
        if let (true, Some(want)) = (gone, e.expected_verdict()) {
            assert_eq!(verdict, want, "{}: verdict\n{}", e.what, run.pretty());
            let f = finding.expect("a removed flow is in the report");
            assert_eq!(f["result"], "deleted", "{}: {f:#}", e.what);
        }
    }
    eprintln!("{report}removed by verdict: {by_verdict:?}");

    assert_eq!(
        removed, expected,
        "removed (left) vs expected (right):\n{report}"
    );
    let kube_proxy_set: BTreeSet<usize> = (0..entries.len())
        .filter(|&i| entries[i].kube_proxy_removes)
        .collect();
    assert!(
        kube_proxy_set.is_subset(&removed),
        "every entry kube-proxy removes, ghostbuster removes\n{report}"
    );
    assert_eq!(
        removed.len(),
        26,
        "kube-proxy's 14 and our 12 deliberate\n{report}"
    );
    assert_eq!(run.deleted(), 26, "{}", run.pretty());
    assert_eq!(after.len(), 72 - 26);
    // Every TCP and SCTP flow to a listed endpoint, serving or not, is still there.
    for e in &entries {
        let listed = matches!(e.flow.dnat, Some((ip, _)) if ip == IpAddr::from(SERVING) || ip == IpAddr::from(NON_SERVING));
        if e.flow.orig.proto != IPPROTO_UDP && listed {
            assert!(remaining.contains(&sport(&e.flow.orig)), "{} went", e.what);
        }
    }
    // The not-serving UDP flows went with their own verdict; TCP/SCTP to the same endpoint through
    // a Service port were judged healthy (a healthy flow is not listed in the report).
    assert_eq!(by_verdict.get("not_serving"), Some(&4), "{report}");
    for e in &entries {
        let to_non_serving = e.flow.dnat == Some((IpAddr::from(NON_SERVING), ENDPOINT_PORT));
        let service_port = e.flow.orig.dport() == Some(SERVICE_PORT)
            || (e.flow.orig.dport() == Some(NODE_PORT) && e.flow.orig.proto == IPPROTO_SCTP);
        if to_non_serving && service_port && e.flow.orig.proto != IPPROTO_UDP {
            let listed = run
                .flows()
                .into_iter()
                .find(|f| f["original"]["sport"] == e.flow.orig.sport().unwrap_or(0));
            assert!(listed.is_none(), "{}: not healthy: {listed:#?}", e.what);
        }
    }
    drop(ns);
}
