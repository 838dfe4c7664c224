//! The evidence rules of issue #12 §1: what proves a backend gone, and what only looks like it.
//! Each test pins a case that deleted a live connection before (the message says which), and
//! the evidence that still makes the flow removable.

mod classify_support;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::{Event, Index, Object, ObjectKey};
use ghostbuster::policy::Policy;
use ghostbuster::verdict::{Evidence, Verdict, VerdictKind};
use serde_json::json;

const VIP: &str = WEB_VIP;
const CLIENT: &str = "10.244.9.9";

fn apply(index: &mut Index, o: Object) {
    index.apply(Event::Apply(o), t(NOW)).unwrap();
}

fn judge(index: &Index, f: FlowBuilder) -> Verdict {
    classify(&f.build(), index, &Policy::default(), t(NOW))
}

/// `kept_because` as its JSON name (`None` when removable).
fn kept(v: &Verdict) -> Option<String> {
    serde_json::to_value(v.kept_because)
        .unwrap()
        .as_str()
        .map(str::to_owned)
}

fn pod_at(name: &str, ip: &str, created: &str, host_network: bool) -> Object {
    let mut p = pod("ns", name, ip, created, "Running");
    p.spec.as_mut().unwrap().host_network = Some(host_network);
    p.into()
}

/// A Service `ns/exporter` on port 9100 whose one endpoint is `ip` (pod `pod`).
fn exporter_at(ip: &str, pod: &str) -> Vec<Object> {
    vec![
        service(
            "ns",
            "exporter",
            &["10.96.1.3"],
            json!([{"name": "", "port": 9100}]),
        )
        .into(),
        slice(
            "ns",
            "exporter",
            "exporter-1",
            vec![ready(ip, pod)],
            json!([{"name": "", "port": 9100}]),
        )
        .into(),
    ]
}

/// web's one endpoint `ip` (pod `pod`) left its slice `web-1` while the exporter Service lists
/// `ip` too (pod `holder`); `others` are in the index as well.
fn left_while_exporter_holds(ip: &str, pod: &str, holder: &str, others: Vec<Object>) -> Index {
    let mut index = index_of(
        [
            vec![web_service(), web_slice("web-1", vec![ready(ip, pod)])],
            exporter_at(ip, holder),
            others,
        ]
        .concat(),
    );
    apply(&mut index, web_slice("web-1", vec![]));
    index
}

// --- 1. "someone else holds the IP" is not proof -----------------------------------------------

/// The agent's view: it watches only its own Node, so node-b's address is not known as one. web
/// had a hostNetwork backend on node-b (pod `agent-b`); it was deselected (labels changed, pod
/// alive) and node-b's address is also the endpoint of another DaemonSet's Service.
#[test]
fn a_deselected_host_network_backend_on_another_node_is_not_ip_reused() {
    let node_b = "10.0.0.2";
    let index = left_while_exporter_holds(node_b, "agent-b", "exporter-b", vec![]);
    let tomb = index.tombstones().at(&ip(node_b));
    assert_eq!(tomb.len(), 1, "web's endpoint left: a tombstone");
    assert!(!tomb[0].pod_gone, "the GET found the pod alive");

    let v = judge(&index, tcp(CLIENT, 40000, VIP, 80).dnat(node_b, 8080));
    assert!(
        !v.removable,
        "a live hostNetwork backend judged {} with {:?}: the connection would be deleted",
        v.kind, v.evidence
    );
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert_eq!(kept(&v).as_deref(), Some("live_pod"));
}

/// The holder is known to be a hostNetwork pod (the pod watch says so): its IP is a node
/// address, whichever node it is on, even when no Node object lists it.
#[test]
fn a_host_network_holder_is_a_node_address() {
    let node_b = "10.0.0.2";
    let mut index = left_while_exporter_holds(
        node_b,
        "agent-b",
        "exporter-b",
        vec![pod_at("exporter-b", node_b, "2025-06-01T11:59:00Z", true)],
    );
    // Even when the web pod is confirmed gone and the holder is newer than the flow.
    index
        .tombstones_mut()
        .mark_pod_gone(&ip(node_b), &ObjectKey::new("ns", "agent-b"), None);
    let f = tcp(CLIENT, 40000, VIP, 80)
        .dnat(node_b, 8080)
        .started("2025-06-01T11:00:00Z");
    let v = judge(&index, f);
    assert!(!v.evidence.contains(Evidence::PodReplaced), "{v:?}");
    assert!(!v.evidence.contains(Evidence::PodCreatedAfterFlow), "{v:?}");
    assert_eq!(v.kind, VerdictKind::Deselected, "{}", v.reason());
    assert!(!v.removable);
}

/// A deleted Service's backend at a node address (any node's): never `pod_absent`.
#[test]
fn service_gone_to_a_node_address_is_not_backend_gone() {
    let mut index = index_of(vec![node("node-b", &["10.0.0.2"]).into()]);
    index.set_snapshot_time(Some(t(SNAPSHOT)));
    index.set_pods_complete(true);
    let f = tcp(CLIENT, 40000, "10.96.7.7", 80)
        .dnat("10.0.0.2", 8080)
        .started("2025-06-01T11:00:00Z");
    let v = judge(&index, f);
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(
        !v.removable,
        "service_gone TCP to node-b's address removed with {:?}",
        v.evidence
    );
    assert!(!v.evidence.contains(Evidence::PodAbsent));
}

/// db's endpoint left its slice, its pod was deselected, not deleted (the GET returns it: same
/// uid, same IP). Another Service's endpoint at the IP is no proof of reuse.
#[test]
fn ip_reused_needs_the_old_pod_confirmed_gone() {
    let mut index = left_while_exporter_holds("10.244.0.5", "db-0", "other-0", vec![]);
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.5", 8080);
    let v = judge(&index, f);
    assert!(
        !v.removable,
        "judged {} with {:?} while the pod is alive",
        v.kind, v.evidence
    );
    assert_eq!(v.kind, VerdictKind::Deselected);
    // The API confirms db-0 is gone: now the other Service's pod holds its IP.
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.5"), &ObjectKey::new("ns", "db-0"), None);
    let v = judge(&index, f);
    assert_eq!(v.kind, VerdictKind::IpReused, "{}", v.reason());
    assert!(v.evidence.contains(Evidence::PodReplaced));
    assert!(v.removable);
}

/// The slice watch lags the pod watch: web-0 was deleted (confirmed) and web's new pod web-0b
/// got the same IP; the pod watch shows it, the slice update that lists it has not arrived. A
/// flow that may well be to web-0b must be kept unless it provably predates web-0b.
#[test]
fn slice_watch_lagging_the_pod_watch_is_not_ip_reused() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.7", "web-0")]),
    ]);
    apply(&mut index, web_slice("web-1", vec![]));
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.7"), &ObjectKey::new("ns", "web-0"), None);
    apply(
        &mut index,
        pod_at("web-0b", "10.244.0.7", "2025-06-01T12:00:30Z", false),
    );
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.7", 8080);
    let v = judge(&index, f);
    assert!(
        !v.removable,
        "a flow to the Service's new pod judged {} with {:?}",
        v.kind, v.evidence
    );
    assert_eq!(v.kind, VerdictKind::Deselected);
    // Started well before web-0b existed: it is web-0's.
    let v = judge(&index, f.started("2025-06-01T12:00:00Z"));
    assert_eq!(v.kind, VerdictKind::IpReused);
    assert!(v.evidence.contains(Evidence::PodCreatedAfterFlow));
    assert!(v.removable);
}

// --- 2. terminating when it left is not gone ---------------------------------------------------

#[test]
fn terminating_when_it_left_the_slice_is_not_gone() {
    let mut index = web_with_b_terminating(true);
    // b's labels changed while it drained: it left the slice, alive.
    apply(
        &mut index,
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    );
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.2", 8080);
    let v = judge(&index, f);
    assert!(
        !v.removable,
        "a draining connection judged {} with {:?}",
        v.kind, v.evidence
    );
    assert!(!v.evidence.contains(Evidence::PodGone));
    assert_eq!(kept(&v).as_deref(), Some("no_evidence"));
    // The API confirms: gone.
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.2"), &ObjectKey::new("ns", "b"), None);
    let v = judge(&index, f);
    assert!(v.evidence.contains(Evidence::PodGone) && v.removable);
}

// --- 3. unknown age is not old -----------------------------------------------------------------

/// An export with every Pod, judged against flows without a start time: a pod created after the
/// export is absent from it, and nothing says the flow is older than the export.
#[test]
fn unknown_age_is_not_older_than_the_snapshot() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
        pod_at("a", "10.244.0.1", "2025-06-01T10:00:00Z", false),
    ]);
    index.set_snapshot_time(Some(t(SNAPSHOT)));
    index.set_pods_complete(true);
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.9", 8080);
    let v = judge(&index, f);
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(
        !v.removable,
        "a TCP flow of unknown age judged gone with {:?}",
        v.evidence
    );
    assert_eq!(kept(&v).as_deref(), Some("unknown_age"));
    assert!(!v.evidence.contains(Evidence::PodAbsent));
    assert!(
        v.reason()
            .contains("net.netfilter.nf_conntrack_timestamp=1"),
        "{}",
        v.reason()
    );
    // UDP alike: the snapshot cannot judge it.
    let v = judge(&index, udp(CLIENT, 40000, VIP, 80).dnat("10.244.0.9", 8080));
    assert!(!v.removable);
    assert_eq!(kept(&v).as_deref(), Some("unknown_age"));
    // Proven older than the snapshot: removable.
    let v = judge(&index, f.started("2025-06-01T11:00:00Z"));
    assert!(v.removable && v.evidence.contains(Evidence::PodAbsent));
    // A deleted Service alike.
    let v = judge(
        &index,
        tcp(CLIENT, 40000, "10.96.7.7", 80).dnat("10.244.0.9", 8080),
    );
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(!v.removable);
    assert_eq!(kept(&v).as_deref(), Some("unknown_age"));
}

#[test]
fn half_open_needs_a_known_age() {
    let index = web_with_b_terminating(false);
    // Row 2: a SYN never DNAT'd.
    let v = judge(&index, tcp(CLIENT, 40000, VIP, 80).syn_sent());
    assert!(!v.removable, "a SYN of unknown age judged {}", v.kind);
    assert_eq!(kept(&v).as_deref(), Some("unknown_age"));
    let v = judge(
        &index,
        tcp(CLIENT, 40000, VIP, 80)
            .syn_sent()
            .started("2025-06-01T12:00:30Z"),
    );
    assert_eq!(v.kind, VerdictKind::MissedDnat);
    assert!(v.removable);
    // Row 4: half-open to an endpoint that stopped serving.
    let f = tcp(CLIENT, 40000, VIP, 80)
        .dnat("10.244.0.2", 8080)
        .syn_sent();
    let v = judge(&index, f);
    assert!(!v.removable, "a SYN of unknown age judged {}", v.kind);
    let v = judge(&index, f.started("2025-06-01T12:00:30Z"));
    assert_eq!(v.kind, VerdictKind::Unanswered);
    assert!(v.removable);
    // Half-open evidence on other rows alike: a SYN to a gone endpoint, no pods known.
    let v = judge(
        &index,
        tcp(CLIENT, 40000, VIP, 80)
            .dnat("10.244.0.9", 8080)
            .syn_sent(),
    );
    assert!(!v.evidence.contains(Evidence::HalfOpen), "{v:?}");
    assert!(!v.removable);
}

/// The agent's evidence does not need the flow's age: the endpoint left and the API confirmed
/// the pod gone after the flow was seen.
#[test]
fn the_agents_tombstone_evidence_needs_no_age() {
    let mut index = index_of(vec![
        web_service(),
        web_slice(
            "web-1",
            vec![ready("10.244.0.1", "a"), ready("10.244.0.2", "b")],
        ),
    ]);
    apply(
        &mut index,
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    );
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.2"), &ObjectKey::new("ns", "b"), None);
    let v = judge(&index, tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.2", 8080));
    assert!(v.removable, "{}", v.reason());
    assert!(v.evidence.contains(Evidence::PodGone));
}

// --- 4. Services another proxy programs --------------------------------------------------------

#[test]
fn services_kube_proxy_does_not_program_are_never_service_gone() {
    for label in [
        "service.kubernetes.io/service-proxy-name",
        "service.kubernetes.io/headless",
    ] {
        let mut svc = service(
            "ns",
            "mesh",
            &["10.96.5.5"],
            json!([{"name": "", "port": 53, "protocol": "UDP"}]),
        );
        svc.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(label.into(), "other".into());
        let index = index_of(vec![svc.into()]);
        for f in [
            udp(CLIENT, 40000, "10.96.5.5", 53).dnat("10.244.3.3", 5353),
            tcp(CLIENT, 40000, "10.96.5.5", 53).dnat("10.244.3.3", 5353),
        ] {
            let v = judge(&index, f);
            assert_ne!(v.kind, VerdictKind::ServiceGone, "{label}: {}", v.reason());
            assert!(!v.removable, "{label}: another proxy's flow removed");
        }
    }
}

// --- 5. clock skew -----------------------------------------------------------------------------

/// creationTimestamp is the API server's clock, the flow's start the node's: a pod "created"
/// a second after the flow began may well be the flow's own backend.
#[test]
fn timestamps_are_compared_with_a_clock_skew_margin() {
    let mut index = index_of(
        [
            vec![
                web_service(),
                web_slice("web-1", vec![ready("10.244.0.5", "db-0")]),
            ],
            exporter_at("10.244.0.5", "other-0"),
            vec![pod_at(
                "other-0",
                "10.244.0.5",
                "2025-06-01T12:00:01Z",
                false,
            )],
        ]
        .concat(),
    );
    apply(&mut index, web_slice("web-1", vec![]));
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.5", 8080);
    let v = judge(&index, f.started("2025-06-01T12:00:00Z"));
    assert!(
        !v.removable,
        "1 s apart judged {} with {:?}",
        v.kind, v.evidence
    );
    let v = judge(&index, f.started("2025-06-01T11:59:58Z"));
    assert_eq!(v.kind, VerdictKind::IpReused, "3 s apart: {}", v.reason());
    assert!(v.removable);
    // The margin is the operator's (--clock-skew): with clocks known to agree, 1 s is proof.
    let exact = Policy {
        clock_skew: std::time::Duration::ZERO,
        ..Policy::default()
    };
    let v = classify(
        &f.started("2025-06-01T12:00:00Z").build(),
        &index,
        &exact,
        t(NOW),
    );
    assert_eq!(v.kind, VerdictKind::IpReused, "{}", v.reason());

    // The snapshot alike: a flow that began a second before the export may be to a pod the
    // export missed.
    let mut index = index_of(vec![web_service(), web_slice("web-1", vec![])]);
    index.set_snapshot_time(Some(t(SNAPSHOT)));
    index.set_pods_complete(true);
    let f = tcp(CLIENT, 40000, VIP, 80).dnat("10.244.0.9", 8080);
    let v = judge(&index, f.started("2025-06-01T11:59:59Z"));
    assert!(!v.removable, "1 s before the snapshot: {:?}", v.evidence);
    let v = judge(&index, f.started("2025-06-01T11:59:57Z"));
    assert!(v.removable, "{}", v.reason());
}

// --- 6. UDP to an endpoint that is listed but not serving --------------------------------------

/// `ns/dns`: port 53 over UDP and TCP, both to 5353.
fn dns_service() -> Object {
    service(
        "ns",
        "dns",
        &[VIP],
        json!([
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]),
    )
    .into()
}

fn dns_slice(endpoints: Vec<serde_json::Value>) -> Object {
    slice(
        "ns",
        "dns",
        "dns-1",
        endpoints,
        json!([
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}
        ]),
    )
    .into()
}

#[test]
fn udp_to_a_listed_endpoint_that_does_not_serve_is_removable() {
    let index = index_of(vec![
        dns_service(),
        dns_slice(vec![
            ready("10.244.0.1", "a"),
            // Readiness failing.
            endpoint("10.244.0.2", "b", false, false, false),
            // Terminating and no longer serving (CoreDNS after lameduck).
            endpoint("10.244.0.3", "c", false, false, true),
            // Terminating but still serving: draining, healthy.
            endpoint("10.244.0.4", "d", false, true, true),
        ]),
    ]);
    for backend in ["10.244.0.2", "10.244.0.3"] {
        let v = judge(&index, udp(CLIENT, 40000, VIP, 53).dnat(backend, 5353));
        assert_eq!(v.kind.as_str(), "not_serving", "{backend}: {}", v.reason());
        assert!(v.removable, "{backend}");
        assert!(v.evidence.contains(Evidence::Udp));
        // TCP and SCTP to it stay: a connection exists and may finish.
        let v = judge(&index, tcp(CLIENT, 40000, VIP, 53).dnat(backend, 5353));
        assert_eq!(v.kind, VerdictKind::Healthy, "{backend}");
        assert!(!v.removable);
    }
    let v = judge(&index, udp(CLIENT, 40000, VIP, 53).dnat("10.244.0.4", 5353));
    assert_eq!(v.kind, VerdictKind::Healthy);
    // No serving endpoint at all: kube-proxy keeps the flows (nowhere better to send them).
    let index = index_of(vec![
        dns_service(),
        dns_slice(vec![endpoint("10.244.0.2", "b", false, false, false)]),
    ]);
    let v = judge(&index, udp(CLIENT, 40000, VIP, 53).dnat("10.244.0.2", 5353));
    assert_eq!(v.kind, VerdictKind::Healthy, "{}", v.reason());
    assert!(!v.removable);
}
