//! The decision table of issue #3, row by row and trap by trap, against a real `kubectl get
//! services,endpointslices,pods,nodes,servicecidrs -A -o json` export (`fixtures/cluster.json`).

mod classify_support;
mod flow_schema;

use std::sync::OnceLock;
use std::time::Duration;

use classify_support::*;
use ctnetlink::Flow;
use ghostbuster::classify::classify;
use ghostbuster::cluster::file::Loaded;
use ghostbuster::cluster::{FrontendKind, Index, Protocol};
use ghostbuster::flow_json::FlowRecord;
use ghostbuster::policy::Policy;
use ghostbuster::scan::Finding;
use ghostbuster::verdict::{Evidence, KeepReason, Step, Verdict, VerdictKind};
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn loaded() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(cluster)
}

fn no_pods() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(cluster_without_pods)
}

fn judge(f: FlowBuilder) -> Verdict {
    judge_with(f, &Policy::default())
}

fn judge_with(f: FlowBuilder, policy: &Policy) -> Verdict {
    judge_in(&loaded().index, f.build(), policy)
}

/// Also holds every verdict the table gives, as the flow object every output prints, to
/// docs/flow.schema.json: each row and keep reason these tests reach is a valid object.
fn judge_in(index: &Index, f: Flow, policy: &Policy) -> Verdict {
    let finding = Finding {
        flow: f,
        verdict: classify(&f, index, policy, t(NOW)),
    };
    flow_schema::assert_flow(&record(&finding));
    finding.verdict
}

/// The flow object of `scan -o json` (with `explain`'s trace).
fn record(f: &Finding) -> serde_json::Value {
    serde_json::to_value(FlowRecord::new(f).with_trace()).unwrap()
}

fn evidence(v: &Verdict) -> Vec<Evidence> {
    v.evidence.iter().collect()
}

const CLIENT: &str = "10.244.1.77";
const WEB: &str = "10.96.10.10";
/// A start well before the export ([`SNAPSHOT`]): what the snapshot's absence can judge.
const BEFORE_EXPORT: &str = "2025-06-01T11:00:00Z";

/// A TCP flow from `CLIENT:40000` to `dst:dport`, DNAT'd to `backend:bport`, that started
/// before the export.
fn old_tcp(dst: &str, dport: u16, backend: &str, bport: u16) -> FlowBuilder {
    tcp(CLIENT, 40000, dst, dport)
        .dnat(backend, bport)
        .started(BEFORE_EXPORT)
}

/// [`old_tcp`] for UDP.
fn old_udp(dst: &str, dport: u16, backend: &str, bport: u16) -> FlowBuilder {
    udp(CLIENT, 40000, dst, dport)
        .dnat(backend, bport)
        .started(BEFORE_EXPORT)
}

/// `f` is an `endpoint_gone` flow kept for `reason` by default, and removable under `allowed`.
fn expect_gone_kept_unless(f: FlowBuilder, reason: KeepReason, allowed: Policy) {
    let v = judge(f);
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(v.kept_because, Some(reason));
    assert!(judge_with(f, &allowed).removable);
}

/// The default policy with one change.
fn policy(set: impl FnOnce(&mut Policy)) -> Policy {
    let mut policy = Policy::default();
    set(&mut policy);
    policy
}

// --- row 1: not_service --------------------------------------------------------------------------

#[test]
fn row1_traffic_outside_services_is_not_service() {
    let v = judge(tcp(CLIENT, 40000, "93.184.215.14", 443));
    assert_eq!(v.kind, VerdictKind::NotService);
    assert!(!v.removable && v.service.is_none() && v.backend.is_none());
    // Even masqueraded egress, NATed on another node's address.
    let v = judge(tcp(CLIENT, 40001, "93.184.215.14", 443).dnat("93.184.215.14", 8443));
    assert_eq!(v.kind, VerdictKind::NotService);
    // A pod talking to a pod directly.
    let v = judge(tcp(CLIENT, 40002, "10.244.1.10", 8080));
    assert_eq!(v.kind, VerdictKind::NotService);
}

#[test]
fn row1_other_protocols_are_not_service() {
    let mut f = tcp(CLIENT, 1, WEB, 80).build();
    f.orig.proto = 1;
    f.orig.l4 = ctnetlink::L4::Icmp {
        kind: 8,
        code: 0,
        id: 7,
    };
    f.reply = f.orig.inverted();
    let v = judge_in(&loaded().index, f, &Policy::default());
    assert_eq!(v.kind, VerdictKind::NotService);
    assert_eq!(v.trace.steps()[0], Step::OtherProtocol(1));
}

#[test]
fn row1_service_cidr_address_without_dnat_is_not_service() {
    let v = judge(tcp(CLIENT, 40000, "10.96.99.99", 80).syn_sent());
    assert_eq!(v.kind, VerdictKind::NotService);
    assert!(v.trace.steps().contains(&Step::InServiceCidr(true)));
}

#[test]
fn proxy_mode_load_balancer_ips_and_headless_services_have_no_frontend() {
    let v = judge(tcp(CLIENT, 40000, "198.51.100.11", 80).dnat("10.244.1.10", 8080));
    assert_eq!(
        v.kind,
        VerdictKind::NotService,
        "ipMode: Proxy is not DNAT'd on the node"
    );
}

// --- row 2: missed_dnat --------------------------------------------------------------------------

#[test]
fn row2_missed_dnat_after_min_age() {
    let f = tcp(CLIENT, 40000, WEB, 80).syn_sent();
    let v = judge(f.started("2025-06-01T12:00:30Z"));
    assert_eq!(v.kind, VerdictKind::MissedDnat);
    assert!(v.removable && v.half_open);
    assert_eq!(evidence(&v), [Evidence::HalfOpen]);
    assert!(v.backend.is_none());
    // Age unknown: not known to be old, so reported and kept (issue #12).
    let v = judge(f);
    assert_eq!(v.kind, VerdictKind::MissedDnat);
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::UnknownAge));
}

#[test]
fn row2_missed_dnat_only_after_min_age() {
    let f = tcp(CLIENT, 40000, WEB, 80)
        .syn_sent()
        .started("2025-06-01T12:00:55Z");
    let v = judge(f);
    assert_eq!(v.kind, VerdictKind::Healthy, "5 s old, min-age 10 s");
    assert!(!v.removable);
    let v = judge_with(f, &policy(|p| p.min_age = Duration::from_secs(3)));
    assert_eq!(v.kind, VerdictKind::MissedDnat);
}

#[test]
fn row2_needs_ready_endpoints_and_no_reply() {
    // Answered by the VIP itself: not a missed DNAT.
    let v = judge(tcp(CLIENT, 40000, WEB, 80));
    assert_eq!(v.kind, VerdictKind::Healthy);
    // No ready endpoint to send the retransmitted SYN to: removing it gains nothing.
    let index = index_of(vec![
        service(
            "ns",
            "idle",
            &["10.96.1.1"],
            serde_json::json!([{"name": "", "port": 80}]),
        )
        .into(),
        slice(
            "ns",
            "idle",
            "idle-1",
            vec![endpoint("10.244.0.1", "p", false, true, true)],
            serde_json::json!([{"name": "", "port": 8080}]),
        )
        .into(),
    ]);
    let v = judge_in(
        &index,
        tcp(CLIENT, 1, "10.96.1.1", 80).syn_sent().build(),
        &Policy::default(),
    );
    assert_eq!(v.kind, VerdictKind::Healthy);
    assert!(v.trace.steps().contains(&Step::ReadyEndpoints(false)));
}

// --- row 3: healthy ------------------------------------------------------------------------------

#[test]
fn row3_ready_endpoint_is_healthy() {
    let v = judge(tcp(CLIENT, 40000, WEB, 80).dnat("10.244.1.10", 8080));
    assert_eq!(v.kind, VerdictKind::Healthy);
    assert!(!v.removable);
    let s = v.service.unwrap();
    assert_eq!(
        (&*s.namespace, &*s.name, s.port, &*s.port_name),
        ("shop", "web", 80, "http")
    );
    assert_eq!(
        (s.protocol, s.node_port, s.frontend),
        (Protocol::Tcp, None, FrontendKind::ClusterIp)
    );
    assert_eq!(v.backend.unwrap().port, 8080);
}

#[test]
fn trap_terminating_endpoints_are_healthy() {
    // kq8zn is terminating (ready: false, serving: true): draining, not stale.
    let v = judge(tcp(CLIENT, 40000, WEB, 80).dnat("10.244.2.20", 8080));
    assert_eq!(v.kind, VerdictKind::Healthy);
    // Even a half-open flow to it: it still serves.
    let v = judge(
        tcp(CLIENT, 40001, WEB, 80)
            .dnat("10.244.2.20", 8080)
            .syn_sent(),
    );
    assert_eq!(v.kind, VerdictKind::Healthy);
}

#[test]
fn trap_all_slices_are_merged() {
    // 10.244.1.11 is in the second slice (with empty conditions: ready).
    let v = judge(tcp(CLIENT, 40000, WEB, 80).dnat("10.244.1.11", 8080));
    assert_eq!(v.kind, VerdictKind::Healthy);
}

#[test]
fn trap_named_ports_match_by_service_port_name() {
    // http → targetPort "http" resolved to 8080 by the slice; metrics → 9090.
    let v = judge(tcp(CLIENT, 40000, WEB, 9090).dnat("10.244.1.10", 9090));
    assert_eq!(v.kind, VerdictKind::Healthy);
    assert_eq!(&*v.service.unwrap().port_name, "metrics");
    // The metrics port DNAT'd to the http target port: the IP is in E(metrics) on 9090.
    let v = judge(tcp(CLIENT, 40001, WEB, 9090).dnat("10.244.1.10", 8080));
    assert_eq!(v.kind, VerdictKind::PortChanged);
    assert!(v.trace.steps().contains(&Step::OtherPort(9090)));
}

#[test]
fn trap_same_port_number_different_protocols() {
    // kube-dns: dns 53/UDP and dns-tcp 53/TCP.
    let v = judge(udp(CLIENT, 5353, "10.96.0.10", 53).dnat("10.244.0.5", 53));
    assert_eq!(v.kind, VerdictKind::Healthy);
    assert_eq!(&*v.service.unwrap().port_name, "dns");
    let v = judge(tcp(CLIENT, 5353, "10.96.0.10", 53).dnat("10.244.0.5", 53));
    assert_eq!(&*v.service.unwrap().port_name, "dns-tcp");
}

#[test]
fn nodeport_external_ip_and_load_balancer_frontends() {
    let cases = [
        ("192.168.49.2", 30080, FrontendKind::NodePort),
        ("203.0.113.10", 80, FrontendKind::ExternalIp),
        ("198.51.100.10", 80, FrontendKind::LoadBalancer),
    ];
    for (dst, port, kind) in cases {
        let v = judge(tcp("192.0.2.2", 40000, dst, port).dnat("10.244.1.10", 8080));
        assert_eq!(v.kind, VerdictKind::Healthy, "{dst}");
        let s = v.service.unwrap();
        assert_eq!(s.frontend, kind);
        assert_eq!(
            s.node_port,
            (kind == FrontendKind::NodePort).then_some(30080)
        );

        let v = judge(
            tcp("192.0.2.2", 40001, dst, port)
                .dnat("10.244.1.200", 8080)
                .started(BEFORE_EXPORT),
        );
        assert_eq!(v.kind, VerdictKind::EndpointGone, "{dst}");
        assert!(v.removable, "pods given, nobody has the IP");
    }
    // node-b's address is not this node's: no NodePort frontend here.
    let v = judge(tcp("192.0.2.2", 40000, "192.168.49.3", 30080).dnat("10.244.1.10", 8080));
    assert_eq!(v.kind, VerdictKind::NotService);
}

#[test]
fn dual_stack_service_judged_per_family() {
    let v = judge(tcp("fd00:244:1::77", 40000, "fd00:10:96::a", 80).dnat("fd00:244:1::10", 8080));
    assert_eq!(v.kind, VerdictKind::Healthy);
    let v = judge(
        tcp("fd00:244:1::77", 40000, "fd00:10:96::a", 80)
            .dnat("fd00:244:1::99", 8080)
            .started(BEFORE_EXPORT),
    );
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(v.removable);
    // NodePort on the node's IPv6 address (the Service has IPv6).
    let v = judge(tcp("2001:db8::2", 40000, "fd00:49::2", 30080).dnat("fd00:244:1::10", 8080));
    assert_eq!(v.kind, VerdictKind::Healthy);
    // A deleted IPv6 ClusterIP in the v6 service CIDR.
    let v = judge(udp("fd00:244:1::77", 40000, "fd00:10:96::99", 53).dnat("fd00:244:1::53", 53));
    assert_eq!(v.kind, VerdictKind::ServiceGone);
}

// --- row 4: unanswered ---------------------------------------------------------------------------

#[test]
fn row4_half_open_to_an_endpoint_that_stopped_serving() {
    let index = index_of(vec![
        service(
            "ns",
            "api",
            &["10.96.1.2"],
            serde_json::json!([{"name": "", "port": 80}]),
        )
        .into(),
        slice(
            "ns",
            "api",
            "api-1",
            vec![
                ready("10.244.0.2", "a"),
                endpoint("10.244.0.3", "b", false, false, true),
            ],
            serde_json::json!([{"name": "", "port": 8080}]),
        )
        .into(),
    ]);
    let f = tcp(CLIENT, 1, "10.96.1.2", 80)
        .dnat("10.244.0.3", 8080)
        .syn_sent();
    let v = judge_in(
        &index,
        f.started("2025-06-01T12:00:00Z").build(),
        &Policy::default(),
    );
    assert_eq!(v.kind, VerdictKind::Unanswered);
    assert!(v.removable);
    assert_eq!(evidence(&v), [Evidence::HalfOpen]);
    // Too young: not judged.
    let v = judge_in(
        &index,
        f.started("2025-06-01T12:00:58Z").build(),
        &Policy::default(),
    );
    assert_eq!(v.kind, VerdictKind::Healthy);
    // Answered: a connection exists and drains.
    let f = tcp(CLIENT, 2, "10.96.1.2", 80).dnat("10.244.0.3", 8080);
    assert_eq!(
        judge_in(&index, f.build(), &Policy::default()).kind,
        VerdictKind::Healthy
    );
}

// --- row 5: port_changed -------------------------------------------------------------------------

#[test]
fn row5_port_changed_kept_for_tcp_removed_for_udp() {
    let v = judge(tcp(CLIENT, 40000, WEB, 80).dnat("10.244.1.10", 8081));
    assert_eq!(v.kind, VerdictKind::PortChanged);
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::LivePod));
    let owner = v.now_owned_by.unwrap();
    assert_eq!(owner.pod.as_deref(), Some("web-6b7f9c8d5-x2x7q"));

    let policy = policy(|p| p.include_deselected = true);
    assert!(judge_with(old_tcp(WEB, 80, "10.244.1.10", 8081), &policy).removable);

    let v = judge(old_udp("10.96.0.10", 53, "10.244.0.5", 5353));
    assert_eq!(v.kind, VerdictKind::PortChanged);
    assert!(v.removable);
    assert_eq!(evidence(&v), [Evidence::Udp]);
}

// --- rows 6 and 7: ip_reused / deselected --------------------------------------------------------

#[test]
fn row6_ip_reused_with_pods_as_evidence() {
    // postgres' flow started at 09:00; its old backend IP 10.244.1.11 is now web's pod p5vwl,
    // created at 09:59.
    let f = tcp(CLIENT, 40000, "10.96.20.20", 5432).dnat("10.244.1.11", 5432);
    let v = judge(f.started("2025-06-01T09:00:00Z"));
    assert_eq!(v.kind, VerdictKind::IpReused);
    assert!(v.removable);
    assert_eq!(evidence(&v), [Evidence::PodCreatedAfterFlow]);
    let owner = v.now_owned_by.unwrap();
    assert_eq!(
        (
            owner.namespace.as_deref(),
            owner.service.as_deref(),
            owner.pod.as_deref()
        ),
        (Some("shop"), Some("web"), Some("web-6b7f9c8d5-p5vwl"))
    );
}

#[test]
fn row7_same_case_without_evidence_is_deselected() {
    // No start time (nf_conntrack_timestamp=0): it could be the same pod, now serving web only.
    let v = judge(tcp(CLIENT, 40000, "10.96.20.20", 5432).dnat("10.244.1.11", 5432));
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::LivePod));
    // The flow started after the pod was created: same pod, merely deselected.
    let f = tcp(CLIENT, 40000, "10.96.20.20", 5432).dnat("10.244.1.11", 5432);
    assert_eq!(
        judge(f.started("2025-06-01T11:00:00Z")).kind,
        VerdictKind::Deselected
    );
}

#[test]
fn row7_blue_green_switch_keeps_tcp_to_the_live_pod() {
    // search selects track=blue; the green pod is alive and no longer (or not yet) selected.
    let f = old_tcp("10.96.40.40", 80, "10.244.1.51", 8080);
    let v = judge(f);
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert!(!v.removable);
    assert_eq!(
        v.now_owned_by.unwrap().pod.as_deref(),
        Some("search-green-6f8b5d4c3-t4r6p")
    );
    let policy = policy(|p| p.include_deselected = true);
    assert!(judge_with(f, &policy).removable);
    // Half-open: no connection to break.
    let v = judge(f.syn_sent());
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert!(v.removable);
}

#[test]
fn row7_node_addresses_are_deselected() {
    let v = judge(tcp(CLIENT, 40000, WEB, 80).dnat("192.168.49.3", 8080));
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert!(v.trace.steps().contains(&Step::NodeAddress));
    assert!(!v.removable);
}

// --- row 8: endpoint_gone ------------------------------------------------------------------------

#[test]
fn row8_endpoint_gone_with_pods_is_removable() {
    let v = judge(old_tcp("10.96.20.20", 5432, "10.244.2.31", 5432));
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(evidence(&v), [Evidence::PodAbsent]);
    assert!(v.removable && v.kept_because.is_none());
    // The IP's last pod Succeeded: its containers are gone.
    let v = judge(old_tcp("10.96.20.20", 5432, "10.244.1.60", 5432));
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(v.removable);
}

#[test]
fn row8_snapshot_only_keeps_tcp_unless_trusted() {
    let index = &no_pods().index;
    let f = old_tcp("10.96.20.20", 5432, "10.244.2.31", 5432).build();
    let v = judge_in(index, f, &Policy::default());
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(evidence(&v), [Evidence::SnapshotOnly]);
    assert_eq!(v.kept_because, Some(KeepReason::NoEvidence));
    assert!(v.reason().contains("--trust-snapshot"), "{}", v.reason());
    let trusting = policy(|p| p.trust_snapshot = true);
    assert!(judge_in(index, f, &trusting).removable);
    // Half-open: removable without Pods.
    let f = tcp(CLIENT, 40001, "10.96.20.20", 5432)
        .dnat("10.244.2.31", 5432)
        .syn_sent()
        .started(BEFORE_EXPORT);
    let v = judge_in(index, f.build(), &Policy::default());
    assert_eq!(evidence(&v), [Evidence::HalfOpen]);
    assert!(v.removable && v.half_open);
}

#[test]
fn row8_udp_after_scale_down_is_removable() {
    let index = &no_pods().index;
    let f = old_udp("10.96.30.30", 8125, "10.244.1.41", 8125);
    let v = judge_in(index, f.build(), &Policy::default());
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(evidence(&v), [Evidence::Udp]);
    assert!(v.removable);
}

#[test]
fn trap_pod_created_after_the_snapshot_is_untouched() {
    // A flow that started after the export to a pod the export does not know.
    let f = tcp(CLIENT, 40000, WEB, 80)
        .dnat("10.244.1.120", 8080)
        .started("2025-06-01T12:00:20Z");
    let v = judge(f);
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::NewerThanSnapshot));
    assert!(!v.evidence.contains(Evidence::PodAbsent));
    // UDP too: the snapshot cannot judge it.
    let f = udp(CLIENT, 40000, "10.96.30.30", 8125)
        .dnat("10.244.1.120", 8125)
        .started("2025-06-01T12:00:20Z");
    assert!(!judge(f).removable);
}

// --- row 9: service_gone -------------------------------------------------------------------------

#[test]
fn row9_service_gone_udp_removed_tcp_kept_without_evidence() {
    let index = &no_pods().index;
    let f = old_udp("10.96.77.77", 53, "10.244.5.5", 53);
    let v = judge_in(index, f.build(), &Policy::default());
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(v.removable && v.service.is_none());
    assert_eq!(v.backend.unwrap().ip, ip("10.244.5.5"));

    let f = old_tcp("10.96.77.77", 80, "10.244.5.5", 8080);
    let v = judge_in(index, f.build(), &Policy::default());
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(!v.removable);
    assert_eq!(evidence(&v), [Evidence::SnapshotOnly]);
    // --trust-snapshot does not apply: a deleted Service's pods are in no slice, alive or not.
    let trusting = policy(|p| p.trust_snapshot = true);
    assert!(!judge_in(index, f.build(), &trusting).removable);
}

#[test]
fn row9_service_gone_tcp_with_backend_evidence() {
    // Pods given, nobody has the IP: the backend is gone too.
    let v = judge(old_tcp("10.96.77.77", 80, "10.244.5.5", 8080));
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert_eq!(evidence(&v), [Evidence::PodAbsent]);
    assert!(v.removable);
    // The backend pod lives on (kube-proxy lets TCP finish).
    let v = judge(tcp(CLIENT, 40000, "10.96.77.77", 80).dnat("10.244.1.51", 8080));
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(!v.removable);
}

// --- policy --------------------------------------------------------------------------------------

#[test]
fn other_zones_are_reported_never_removed() {
    let f = old_tcp("10.96.20.20", 5432, "10.244.2.31", 5432).zone(7);
    expect_gone_kept_unless(f, KeepReason::Zone, policy(|p| p.all_zones = true));
}

#[test]
fn protocol_and_namespace_policy() {
    let gone = old_tcp("10.96.20.20", 5432, "10.244.2.31", 5432);
    let udp_only = policy(|p| p.protocols = [Protocol::Udp].into_iter().collect());
    assert_eq!(
        judge_with(gone, &udp_only).kept_because,
        Some(KeepReason::Protocol)
    );
    let exclude = policy(|p| p.exclude_namespaces = vec!["db".into()]);
    assert_eq!(
        judge_with(gone, &exclude).kept_because,
        Some(KeepReason::Namespace)
    );
    let only_shop = policy(|p| p.namespaces = vec!["shop".into()]);
    assert_eq!(
        judge_with(gone, &only_shop).kept_because,
        Some(KeepReason::Namespace)
    );
    // A deleted Service has no namespace: only removable without --namespace.
    let gone_svc = old_udp("10.96.77.77", 53, "10.244.5.5", 53);
    assert!(!judge_with(gone_svc, &only_shop).removable);
    assert!(judge_with(gone_svc, &exclude).removable);
}

#[test]
fn api_server_service_is_never_removed_by_default() {
    let f = old_tcp("10.96.0.1", 443, "192.168.49.9", 6443);
    let unmanaged = policy(|p| p.include_unmanaged = true);
    expect_gone_kept_unless(f, KeepReason::ApiServer, unmanaged);
}

/// Service `ns/ext` (10.96.1.3, UDP 5432) and its one slice `ext-1` listing 10.244.0.9 (pod `x`),
/// as `edit` leaves it.
fn ext_index(edit: impl FnOnce(&mut EndpointSlice)) -> Index {
    let ports = serde_json::json!([{"name": "", "port": 5432, "protocol": "UDP"}]);
    let mut ext = slice(
        "ns",
        "ext",
        "ext-1",
        vec![ready("10.244.0.9", "x")],
        ports.clone(),
    );
    edit(&mut ext);
    index_of(vec![
        service("ns", "ext", &["10.96.1.3"], ports).into(),
        ext.into(),
    ])
}

#[test]
fn endpoints_without_pods_or_from_other_controllers_prove_nothing() {
    let index = ext_index(|manual| {
        manual.metadata.labels.as_mut().unwrap().insert(
            "endpointslice.kubernetes.io/managed-by".into(),
            "endpointslicemirroring-controller.k8s.io".into(),
        );
    });
    let f = udp(CLIENT, 1, "10.96.1.3", 5432).dnat("10.244.0.8", 5432);
    let v = judge_in(&index, f.build(), &Policy::default());
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(v.kept_because, Some(KeepReason::Unmanaged));

    // An endpoint without targetRef in a controller slice.
    let index = ext_index(|bare| bare.endpoints[0].target_ref = None);
    let v = judge_in(&index, f.build(), &Policy::default());
    assert_eq!(v.kept_because, Some(KeepReason::Unmanaged));
}

#[test]
fn verdict_json_has_the_interface_fields() {
    let flow = old_tcp(WEB, 80, "10.244.1.200", 8080).build();
    let verdict = judge_in(&loaded().index, flow, &Policy::default());
    let j = record(&Finding { flow, verdict });
    assert_eq!(j["verdict"], "endpoint_gone");
    assert_eq!(j["evidence"], serde_json::json!(["pod_absent"]));
    assert_eq!(j["half_open"], false);
    assert_eq!(j["removable"], true);
    assert_eq!(
        j["service"],
        serde_json::json!({"namespace": "shop", "name": "web", "port": 80, "port_name": "http",
                           "protocol": "TCP", "node_port": null, "frontend": "cluster_ip"})
    );
    assert_eq!(
        j["backend"],
        serde_json::json!({"ip": "10.244.1.200", "port": 8080})
    );
    assert!(j["now_owned_by"].is_null());
    assert!(j["reason"].as_str().unwrap().starts_with("row 8"));
    // The flow's own fields in the same object, and explain's trace naming the deciding row.
    assert_eq!(j["original"]["dport"], 80);
    assert_eq!(j["reply"]["src"], "10.244.1.200");
    let trace = j["trace"].as_array().unwrap();
    assert!(
        trace
            .iter()
            .any(|l| l.as_str().unwrap().ends_with("row 8: endpoint_gone")),
        "{trace:?}"
    );
}

#[test]
fn trace_lists_the_rows_passed() {
    let v = judge(tcp(CLIENT, 40000, "10.96.20.20", 5432).dnat("10.244.1.11", 5432));
    let text = v.trace.to_string();
    assert!(text.contains("Service frontend"), "{text}");
    assert!(text.contains("another service"), "{text}");
    assert!(text.contains("row 7: deselected"), "{text}");
    assert_eq!(
        v.trace.rows().collect::<Vec<_>>(),
        [VerdictKind::Deselected]
    );
}
