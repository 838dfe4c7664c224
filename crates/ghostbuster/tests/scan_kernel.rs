//! `ghostbuster sweep` end to end against the real kernel: ghosts that are removed (issue #3,
//! section 4). Each test builds a netlab node with kube-proxy-shaped nftables DNAT, sends real
//! traffic through a Service frontend, makes a backend vanish silently (packets dropped, no RST,
//! no ICMP: a pod on a dead node), writes the lab's own Kubernetes objects to a file and runs the
//! real binary on the node's namespace.
//!
//! The standard for every delete: the failure is shown first (the pooled connection hangs), the
//! ghost fails fast and reconnects after the sweep, and a healthy long-lived connection to a live
//! backend of the same Service keeps exchanging data through every sweep, with zero errors.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ctnetlink::IPPROTO_SCTP;
use ctnetlink::{Conntrack, NewFlow, Tuple};
use netlab::plan::{external_ipv4, vip_v4, vip_v6, NODE_IPV4};
use netlab::{AppProtocol, Endpoint, ServerSpec, Service, ServicePort, TcpPoolConfig};
use scan_support::setups::*;
use scan_support::*;
use serde_json::Value;

/// Asserts the common shape of a removed ghost: `verdict`, the backend, `removable`, `result`.
fn expect_deleted(run: &Run, flow: &Value, verdict: &str, backend: IpAddr) {
    assert_eq!(flow["verdict"], verdict, "{}", run.pretty());
    assert_eq!(
        flow["backend"]["ip"],
        backend.to_string(),
        "{}",
        run.pretty()
    );
    assert_eq!(flow["removable"], true, "{}", run.pretty());
    assert_eq!(flow["kept_because"], Value::Null, "{}", run.pretty());
    assert_eq!(flow["result"], "deleted", "{}", run.pretty());
}

/// Seed 000, the control run: a pooled connection whose backend was deleted hangs, the sweep
/// keeps it while only the snapshot speaks, removes it once Pods are given, and then it fails
/// fast and reconnects; a healthy pooled connection of the same Service never notices.
#[test]
fn seed_000_pooled_connection_to_a_deleted_backend_hangs_until_the_sweep_then_fails_fast() {
    let Some(mut s) = Story::start("seed_000_control", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| http_service("shop", "web", 20, eps);
    let vip = SocketAddr::from((vip_v4(20), 80));
    // Rolling update: the endpoints move to B; then A's node dies and A vanishes without a RST.
    // The failure first: the pooled connections hang (seed 000: for ~15 min in production).
    let (ghost, hung, healthy, before) =
        s.ghost([&web(&a), &web(&b)], vip, 2, Duration::from_secs(2));
    let dead = ip_of(&a, false);

    // The export, as kubectl prints it: A is gone from the slices and from the Pods.
    let objects = s.export();
    let with_pods = s.write("cluster.json", &objects);
    let without_pods = s.write("no-pods.json", &without_kind(objects, "Pod"));

    // scan is read-only; --exit-code says something is removable.
    let table = s.table();
    assert_eq!(entries_to(&table, dead).len(), 2, "{table:#?}");
    let scan = s.scan(&with_pods, &["--exit-code"]).ok(1);
    assert_eq!(scan.to_backend(dead).len(), 2, "{}", scan.pretty());
    assert_eq!(keys(&s.table()), keys(&table), "scan changed the table");

    // Only the snapshot says A is gone: reported with `snapshot_only`, kept.
    let kept = s.sweep(&without_pods, &["--exit-code"]).ok(0);
    let flows = kept.to_backend(dead);
    assert_eq!(flows.len(), 2, "{}", kept.pretty());
    for f in flows {
        assert_eq!(f["verdict"], "endpoint_gone");
        assert_eq!(evidence(f), ["snapshot_only"], "{}", kept.pretty());
        assert_eq!(f["removable"], false);
        assert_eq!(f["kept_because"], "no_evidence");
        assert_eq!(f["result"], "kept");
    }
    assert_eq!(kept.deleted(), 0);
    assert_eq!(
        entries_to(&s.table(), dead).len(),
        2,
        "a kept ghost was deleted"
    );

    // With the Pods the absence is evidence: both ghosts go, nothing removable remains.
    let swept = s.sweep(&with_pods, &["--exit-code"]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 2, "{}", swept.pretty());
    for f in flows {
        expect_deleted(&swept, f, "endpoint_gone", dead);
        assert_eq!(evidence(f), ["pod_absent"], "{}", swept.pretty());
        assert_eq!(f["half_open"], false);
        assert_eq!(f["state"], "ESTABLISHED");
        assert_eq!(f["protocol"], "tcp");
        assert_eq!(f["family"], "ipv4");
        assert_eq!(f["service"]["namespace"], "shop");
        assert_eq!(f["service"]["name"], "web");
        assert_eq!(f["service"]["port_name"], "http");
        assert_eq!(f["service"]["frontend"], "cluster_ip");
        assert_eq!(f["backend"]["port"], HTTP);
        assert_eq!(f["now_owned_by"], Value::Null);
    }
    assert_eq!(swept.deleted(), 2, "{}", swept.pretty());
    assert_eq!(swept.json["failed"], 0);
    assert!(entries_to(&s.table(), dead).is_empty());

    // After the sweep the ghosts fail fast (reset by B) and reconnect to B.
    expect_fail_fast_and_recover(ghost, &hung, Some("web-b"), Duration::from_secs(8));
    // A second pass finds nothing.
    let again = s.sweep(&with_pods, &["--exit-code"]).ok(0);
    assert_eq!(again.removable(), 0, "{}", again.pretty());
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
}

/// Seed 001: a resolver's long-lived UDP socket keeps refreshing its entry to a backend removed by
/// a scale-down (a blackhole); the sweep removes it and the queries are answered again.
#[test]
fn seed_001_udp_flow_to_a_scaled_down_backend_is_removed_and_queries_are_answered_again() {
    let Some(mut s) = Story::start("seed_001_udp", true) else {
        return;
    };
    let a = s.dns_backend("dns-a");
    let b = s.dns_backend("dns-b");
    let dns = |eps: &[Endpoint]| dns_service(53, eps);
    let vip = SocketAddr::from((vip_v4(53), 53));
    // Two replicas, one resolver socket pinned to each (syncing one endpoint at a time pins them;
    // kube-proxy would pick at random): the table is that of a two-replica Service.
    s.lab.sync_services(&[dns(&b)]).unwrap();
    let healthy = s.querier(vip);
    s.lab.sync_services(&[dns(&a)]).unwrap();
    let stale = s.querier(vip);

    // Scale down to one replica: A leaves the slices, its pod vanishes.
    s.lab.sync_services(&[dns(&b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("dns-a").unwrap();

    // The failure first: the socket's entry still points at A, every query is lost.
    std::thread::sleep(Duration::from_millis(1200));
    let lost = stale.report();
    assert_eq!(lost.answers_from("dns-b"), 0, "{lost:#?}");
    assert!(lost.errors_of_kind("timeout") >= 3, "{lost:#?}");
    assert_eq!(lost.stuck_connections(), 1);
    let healthy_before = healthy.report();

    let file = s.write("cluster.json", &s.export());
    let swept = s.sweep(&file, &[]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", swept.pretty());
    let f = flows[0];
    expect_deleted(&swept, f, "endpoint_gone", dead);
    assert_eq!(f["protocol"], "udp");
    assert_eq!(f["service"]["protocol"], "UDP");
    assert!(
        evidence(f).contains(&"udp".to_string()),
        "{}",
        swept.pretty()
    );
    assert!(
        evidence(f).contains(&"pod_absent".to_string()),
        "{}",
        swept.pretty()
    );
    assert_eq!(swept.deleted(), 1);

    // The next query gets a new entry, DNAT'd to B.
    assert!(
        stale.wait_answers(lost.answers + 3, TIMEOUT),
        "queries not answered again: {:#?}",
        stale.report()
    );
    let after = stale.stop();
    assert!(after.answers_from("dns-b") >= 3, "{after:#?}");

    let report = healthy.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.answers >= healthy_before.answers + 3, "{report:#?}");
    assert_eq!(report.answers_from("dns-b"), report.answers);
}

/// SCTP. This kernel has no SCTP sockets (CONFIG_IP_SCTP unset), but conntrack and nft handle
/// SCTP: the flows are created through ctnetlink (`Conntrack::create` with a DNAT target, so the
/// kernel computes the reply tuple and sets DST_NAT as for a packet that hit kube-proxy's rule) in
/// the node namespace, next to the Service's kube-proxy-shaped SCTP rules. The live connection of
/// the same Service is real TCP on its second port.
#[test]
fn sctp_flow_to_a_gone_backend_is_removed_with_evidence_and_kept_without() {
    let Some(mut s) = Story::start("sctp_synthetic", true) else {
        return;
    };
    let a = s.backend("diameter-a", "telecom", "diameter", &[]);
    let svc = Service::new("telecom", "diameter")
        .cluster_ip(vip_v4(38))
        .port(ServicePort::sctp("diameter", 3868, 3868))
        .port(ServicePort::tcp("http", 80, HTTP))
        .endpoints(v4(&a));
    s.lab.sync_services(&[svc]).unwrap();
    let vip = vip_v4(38);
    let healthy = pool(&s.client, SocketAddr::from((vip, 80)), 1);
    expect_answers(&healthy, 2, "healthy pool");

    let client: IpAddr = s.lab.pod("client").unwrap().ipv4().unwrap().into();
    let live = ip_of(&a, false);
    // A backend address no pod of this lab holds: a pod that is gone.
    let dead: IpAddr = "203.0.113.240".parse().unwrap();
    let sctp = |sport: u16| Tuple::ports(client, sport, vip.into(), 3868, IPPROTO_SCTP);
    let mut ct = Conntrack::open_in(Some(&s.node())).unwrap();
    let created = ct.create(&[
        NewFlow::established(sctp(40000), Some((live, 3868))),
        NewFlow::established(sctp(40001), Some((dead, 3868))),
    ]);
    match created {
        Ok(c) if c.created == 2 => {}
        other => {
            eprintln!(
                "SKIP sctp test: this kernel cannot create SCTP conntrack entries: {other:?}"
            );
            return;
        }
    }
    let table = s.table();
    let healthy_entry = table
        .iter()
        .find(|f| f["protocol"] == "sctp" && reply_src(f) == Some(live))
        .map(key)
        .expect("the live SCTP entry");
    let before = mark(&healthy);

    let objects = s.export();
    let without_pods = s.write("no-pods.json", &without_kind(objects.clone(), "Pod"));
    let with_pods = s.write("cluster.json", &objects);

    let kept = s.sweep(&without_pods, &[]).ok(0);
    let flows = kept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", kept.pretty());
    assert_eq!(flows[0]["verdict"], "endpoint_gone");
    assert_eq!(flows[0]["protocol"], "sctp");
    assert_eq!(evidence(flows[0]), ["snapshot_only"]);
    assert_eq!(flows[0]["result"], "kept");

    let swept = s.sweep(&with_pods, &[]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", swept.pretty());
    expect_deleted(&swept, flows[0], "endpoint_gone", dead);
    assert_eq!(flows[0]["service"]["protocol"], "SCTP");
    assert_eq!(flows[0]["service"]["port_name"], "diameter");
    assert_eq!(evidence(flows[0]), ["pod_absent"]);
    assert!(swept.to_backend(live).is_empty(), "{}", swept.pretty());
    assert_eq!(swept.deleted(), 1);

    let after = s.table();
    assert!(entries_to(&after, dead).is_empty());
    assert!(
        keys(&after).contains(&healthy_entry),
        "the live SCTP entry went"
    );
    expect_untouched(healthy, &before, &["diameter-a"], "healthy TCP pool");
}

/// IPv6: a ghost on an IPv6-only Service is kept on the snapshot's word alone and removed with
/// `--trust-snapshot`.
#[test]
fn ipv6_ghost_is_kept_on_the_snapshot_alone_and_removed_with_trust_snapshot() {
    let Some(mut s) = Story::start("ipv6_trust_snapshot", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| {
        Service::new("shop", "web6")
            .cluster_ip(vip_v6(40))
            .port(ServicePort::tcp("http", 80, HTTP))
            .endpoints(v6(eps))
    };
    let vip = SocketAddr::from((vip_v6(40), 80));
    let (ghost, hung, healthy, before) =
        s.ghost([&web(&a), &web(&b)], vip, 1, Duration::from_millis(800));
    let dead = ip_of(&a, true);

    let file = s.write("no-pods.json", &without_kind(s.export(), "Pod"));
    let kept = s.sweep(&file, &[]).ok(0);
    let flows = kept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", kept.pretty());
    assert_eq!(flows[0]["verdict"], "endpoint_gone");
    assert_eq!(flows[0]["family"], "ipv6");
    assert_eq!(evidence(flows[0]), ["snapshot_only"]);
    assert_eq!(flows[0]["removable"], false);
    assert_eq!(flows[0]["result"], "kept");
    assert_eq!(kept.deleted(), 0);

    let swept = s.sweep(&file, &["--trust-snapshot"]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", swept.pretty());
    expect_deleted(&swept, flows[0], "endpoint_gone", dead);
    assert_eq!(flows[0]["family"], "ipv6");
    assert_eq!(flows[0]["original"]["dst"], vip_v6(40).to_string());
    assert_eq!(swept.deleted(), 1);

    expect_fail_fast_and_recover(ghost, &hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
}

/// A dual-stack Service: E(S) is merged per family; the ghosts of both families go, the healthy
/// connections of both families stay.
#[test]
fn dual_stack_service_ghosts_of_both_families_are_removed() {
    let Some(mut s) = Story::start("dual_stack", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| {
        Service::new("shop", "web")
            .cluster_ip(vip_v4(41))
            .cluster_ip(vip_v6(41))
            .port(ServicePort::tcp("http", 80, HTTP))
            .endpoints(eps.to_vec())
    };
    let vips = [
        SocketAddr::from((vip_v4(41), 80)),
        SocketAddr::from((vip_v6(41), 80)),
    ];
    let story = s.ghosts_with(
        [&web(&a), &web(&b)],
        |c| vips.iter().map(|v| pool(c, *v, 1)).collect(),
        1,
        delete("web-a"),
        Duration::from_millis(600),
    );

    let file = s.write("cluster.json", &s.export());
    let swept = s.sweep(&file, &[]).ok(0);
    for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
        let dead = ip_of(&a, v6);
        let flows = swept.to_backend(dead);
        assert_eq!(flows.len(), 1, "{family}: {}", swept.pretty());
        expect_deleted(&swept, flows[0], "endpoint_gone", dead);
        assert_eq!(flows[0]["family"], family);
        assert_eq!(evidence(flows[0]), ["pod_absent"]);
        assert!(swept.to_backend(ip_of(&b, v6)).is_empty());
    }
    assert_eq!(swept.deleted(), 2, "{}", swept.pretty());

    for (g, h) in story.ghosts.into_iter().zip(&story.hung) {
        expect_fail_fast_and_recover(g, h, Some("web-b"), Duration::from_secs(8));
    }
    for (h, b) in story.healthy.into_iter().zip(&story.before) {
        expect_untouched(h, b, &["web-b"], "healthy pool");
    }
}

/// The ghost-and-healthy story on one frontend (NodePort, external IP): A behind `target` dies
/// silently after the endpoints moved to B; returns the sweep's flows to A's address.
fn frontend_story(
    test: &str,
    svc: impl Fn(&[Endpoint]) -> Service,
    target: SocketAddr,
) -> Option<(Run, IpAddr)> {
    let mut s = Story::start(test, true)?;
    let (a, b) = s.web_pair();
    let dead = ip_of(&a, false);
    // These frontends are masqueraded, and the kernel kills a masqueraded entry whose packets
    // leave by another interface (nf_nat_oif_changed), or whose interface goes down: deleting the
    // lab pod (its veth) would clean the table for us, which the death of a pod on *another* node
    // never does. So A dies like a pod behind a dead node: every packet to or from it is dropped
    // inside its namespace, the node's routes stay, and the node lifecycle controller has deleted
    // its Pod object (below).
    let (ghost, hung, healthy, before) = s
        .ghosts_with(
            [&svc(&a), &svc(&b)],
            |c| vec![pool(c, target, 1)],
            1,
            |lab| silence_pod(lab, "web-a"),
            Duration::from_millis(600),
        )
        .single();

    let mut objects = s.export();
    items(&mut objects).retain(|o| !(o["kind"] == "Pod" && o["metadata"]["name"] == "web-a"));
    let file = s.write("cluster.json", &objects);
    let swept = s.sweep(&file, &[]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", swept.pretty());
    expect_deleted(&swept, flows[0], "endpoint_gone", dead);
    assert_eq!(flows[0]["original"]["dst"], target.ip().to_string());
    assert_eq!(flows[0]["original"]["dport"], target.port());
    assert_eq!(swept.deleted(), 1);
    expect_fail_fast_and_recover(ghost, &hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
    Some((swept, dead))
}

/// NodePort on the node's address: DNAT'd and masqueraded (the reply goes to the node), matched
/// through the scanned namespace's local addresses.
#[test]
fn node_port_ghost_is_removed() {
    let web = |eps: &[Endpoint]| {
        Service::new("shop", "web")
            .cluster_ip(vip_v4(42))
            .port(ServicePort::tcp("http", 80, HTTP).with_node_port(30080))
            .endpoints(v4(eps))
    };
    let target = SocketAddr::from((NODE_IPV4, 30080));
    let Some((swept, dead)) = frontend_story("node_port", web, target) else {
        return;
    };
    let f = swept.to_backend(dead)[0];
    assert_eq!(f["service"]["frontend"], "node_port", "{}", swept.pretty());
    assert_eq!(f["service"]["node_port"], 30080);
    assert_eq!(f["service"]["port"], 80);
    assert_eq!(f["reply"]["dst"], NODE_IPV4.to_string(), "masqueraded");
}

/// `spec.externalIPs`.
#[test]
fn external_ip_ghost_is_removed() {
    let web = |eps: &[Endpoint]| {
        Service::new("shop", "web")
            .cluster_ip(vip_v4(43))
            .external_ip(external_ipv4(3))
            .port(ServicePort::tcp("http", 80, HTTP))
            .endpoints(v4(eps))
    };
    let target = SocketAddr::from((external_ipv4(3), 80));
    let Some((swept, dead)) = frontend_story("external_ip", web, target) else {
        return;
    };
    let f = swept.to_backend(dead)[0];
    assert_eq!(
        f["service"]["frontend"],
        "external_ip",
        "{}",
        swept.pretty()
    );
    assert_eq!(f["service"]["node_port"], Value::Null);
}

/// Named ports: two ports with different names and target ports. E(S) is matched by the Service
/// port's *name* — the export says `targetPort: web` (a named container port) while the slices
/// carry the Service port names, listed in the other order — so both ghosts are found on their own
/// port and both healthy connections stay healthy.
#[test]
fn named_ports_are_matched_by_the_service_port_name() {
    let Some(mut s) = Story::start("named_ports", true) else {
        return;
    };
    let echo = |name: &str| [ServerSpec::tcp_echo(9000, name)];
    let d = s.backend("web-d", "shop", "web", &echo("web-d"));
    let a = s.backend("web-a", "shop", "web", &echo("web-a"));
    let web = |eps: &[Endpoint]| web("shop", 44, eps).port(ServicePort::tcp("admin", 81, 9000));
    let http = SocketAddr::from((vip_v4(44), 80));
    let admin = SocketAddr::from((vip_v4(44), 81));
    let echo_pool = |ns: &str| {
        pool_with(
            ns,
            admin,
            TcpPoolConfig {
                connections: 1,
                interval: Duration::from_millis(100),
                request_timeout: Duration::from_millis(500),
                connect_timeout: TIMEOUT,
                run_for: Duration::from_secs(40),
                protocol: AppProtocol::Echo,
                ..TcpPoolConfig::default()
            },
        )
    };
    let story = s.ghosts_with(
        [&web(&d), &web(&a)],
        |c| vec![pool(c, http, 1), echo_pool(c)],
        1,
        delete("web-d"),
        Duration::from_millis(600),
    );
    let dead = ip_of(&d, false);

    let mut objects = s.export();
    let svc = object_mut(&mut objects, "Service", "web");
    svc["spec"]["ports"][0]["targetPort"] = "web".into();
    for slice in slices_mut(&mut objects, "web") {
        slice["ports"].as_array_mut().unwrap().reverse();
    }
    let file = s.write("cluster.json", &objects);
    let swept = s.sweep(&file, &[]).ok(0);
    let flows = swept.to_backend(dead);
    assert_eq!(flows.len(), 2, "{}", swept.pretty());
    for (port, name, target) in [(80, "http", HTTP), (81, "admin", 9000)] {
        let f = flows
            .iter()
            .find(|f| f["service"]["port"] == port)
            .unwrap_or_else(|| panic!("no ghost on port {port}: {}", swept.pretty()));
        expect_deleted(&swept, f, "endpoint_gone", dead);
        assert_eq!(f["service"]["port_name"], name);
        assert_eq!(f["backend"]["port"], target);
    }
    assert!(
        swept.to_backend(ip_of(&a, false)).is_empty(),
        "{}",
        swept.pretty()
    );
    assert_eq!(swept.deleted(), 2);

    let Ok([g_http, g_admin]) = <[_; 2]>::try_from(story.ghosts) else {
        unreachable!("two ghost pools")
    };
    expect_fail_fast_and_recover(
        g_http,
        &story.hung[0],
        Some("web-a"),
        Duration::from_secs(8),
    );
    expect_fail_fast_and_recover(g_admin, &story.hung[1], None, Duration::from_secs(8));
    let Ok([h_http, h_admin]) = <[_; 2]>::try_from(story.healthy) else {
        unreachable!("two healthy pools")
    };
    expect_untouched(h_http, &story.before[0], &["web-a"], "healthy http pool");
    expect_untouched(h_admin, &story.before[1], &[], "healthy admin pool");
}
