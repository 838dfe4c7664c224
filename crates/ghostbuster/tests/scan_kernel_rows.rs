//! `ghostbuster sweep` end to end against the real kernel: the rows of the decision table that
//! need timing or a changed cluster (issue #3, section 4) — `ip_reused` (seed 003), `unanswered`,
//! `missed_dnat`, `service_gone` — and bad inputs, which must change nothing.
//!
//! Half-open flows are real SYNs to a backend that drops packets silently; the client pod's
//! kernel retransmits them 1 s, 3 s and 7 s after the first (exponential backoff, see
//! `Story::start`), so each test sweeps between two retransmissions and then watches the next one
//! reach the right backend.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netlab::kube_proxy::ProxyConfig;
use netlab::plan::{vip_v4, SERVICE_CIDR_V4};
use netlab::{Endpoint, Service, ServicePort, TcpPool, TcpPoolConfig, UdpClient, UdpConfig};
use scan_support::*;
use serde_json::{json, Value};

/// One connection that keeps retrying its SYN for 12 s (the kernel retransmits it), then talks
/// HTTP keep-alive.
fn connecting_pool(netns: &str, target: SocketAddr) -> TcpPool {
    pool_with(
        netns,
        target,
        TcpPoolConfig {
            connections: 1,
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(12),
            run_for: Duration::from_secs(30),
            ..TcpPoolConfig::default()
        },
    )
}

/// Waits for the client's SYN to `backend` to be in the table as `SYN_SENT [UNREPLIED]`; returns
/// the entry and when it was seen (no earlier than the SYN).
fn syn_sent_to(node: &str, backend: IpAddr) -> (Value, Instant) {
    let entry = wait_entry(node, TIMEOUT, |f| {
        reply_src(f) == Some(backend) && f["state"] == "SYN_SENT" && f["unreplied"] == true
    });
    (entry, Instant::now())
}

/// Waits until the pool's connection got an answer; returns the report.
fn first_answers(pool: TcpPool, within: Duration) -> netlab::ClientReport {
    pool.wait_answers(1, within);
    pool.stop()
}

/// Seed 003: the backend's IP is reused by a pod of another Service, created after the flows
/// started. With Pods and flow start times that is evidence: both the idle established flow and
/// the half-open SYN (which would otherwise complete to the wrong Service and get its 404) are
/// removed, and the SYN's next retransmission reaches the right Service.
#[test]
fn seed_003_ip_reused_by_a_newer_pod_is_removed_and_the_syn_reaches_the_right_service() {
    let Some(mut s) = Story::start("seed_003_ip_reused", true) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let web = |eps: &[Endpoint]| http_service("shop", "web", 60, eps);
    let vip = SocketAddr::from((vip_v4(60), 80));
    s.lab.sync_services(&[web(&a)]).unwrap();
    let mut idle = connect(&s.client, vip);
    assert_eq!(http_request(&mut idle, TIMEOUT).unwrap(), "web-a");

    // A's node dies while kube-proxy still routes to A: a new connection's SYN is DNAT'd to A.
    let dead = s.lab.delete_pod_silently("web-a").unwrap();
    let node = s.node();
    let syn = connecting_pool(&s.client, vip);
    let (_, seen) = syn_sent_to(&node, dead.ips[0]);

    // The endpoints move on to B.
    let b = s.backend("web-b", "shop", "web", &[]);
    s.lab.sync_services(&[web(&b)]).unwrap();
    let healthy = pool(&s.client, vip, 1);
    expect_answers(&healthy, 2, "healthy pool");

    // After the SYN's second retransmission, A's IP goes to a pod of another Service. Pod
    // creation times are whole seconds: created > 1 s after the SYN, it is after the flow start.
    sleep_until(seen + Duration::from_millis(3300));
    let billing = s.takes_over(&dead);
    let billing_svc = Service::new("billing", "billing")
        .cluster_ip(vip_v4(61))
        .port(ServicePort::tcp("http", 80, HTTP))
        .endpoints(v4(&billing));
    s.lab.sync_services(&[web(&b), billing_svc]).unwrap();
    let before = mark(&healthy);

    let file = s.write("cluster.json", &s.export());
    let run = s.sweep(&file, &["--min-age", "1s"]).ok(0);
    let elapsed = seen.elapsed();
    let flows = run.to_backend(dead.ips[0]);
    assert_eq!(flows.len(), 2, "{}", run.pretty());
    for f in &flows {
        assert_eq!(f["verdict"], "ip_reused", "{}", run.pretty());
        assert!(evidence(f).contains(&"pod_created_after_flow".to_string()));
        assert_eq!(
            f["now_owned_by"],
            json!({"namespace": "billing", "service": "billing", "pod": "billing-0"})
        );
        assert_eq!(f["service"]["name"], "web");
        assert_eq!(f["removable"], true);
        assert_eq!(f["result"], "deleted");
    }
    let half_open = flows
        .iter()
        .find(|f| f["half_open"] == true)
        .expect("the SYN");
    assert_eq!(half_open["state"], "SYN_SENT");
    assert!(evidence(half_open).contains(&"half_open".to_string()));
    let established = flows
        .iter()
        .find(|f| f["half_open"] == false)
        .expect("idle");
    assert_eq!(established["state"], "ESTABLISHED");
    assert_eq!(evidence(established), ["pod_created_after_flow"]);
    assert_eq!(run.deleted(), 2);
    assert!(
        elapsed < Duration::from_secs(7),
        "the sweep ran after the SYN's next retransmission ({elapsed:?}): too slow a machine?"
    );

    // The SYN's next retransmission is DNAT'd afresh: web-b answers, billing never does.
    let report = first_answers(syn, Duration::from_secs(8));
    assert_eq!(report.answers_from("billing-0"), 0, "{report:#?}");
    assert!(report.answers_from("web-b") >= 1, "{report:#?}");
    // The idle connection's next request fails fast instead of reaching billing-0.
    let t = Instant::now();
    assert!(http_request(&mut idle, Duration::from_secs(3)).is_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
}

/// Row 4: a SYN DNAT'd to an endpoint that is now terminating and no longer serving, never
/// answered. Not judged while younger than `--min-age`; then removed, and the retransmission
/// reaches a ready endpoint.
#[test]
fn unanswered_syn_to_a_not_serving_endpoint_is_removed_after_min_age() {
    let Some(mut s) = Story::start("unanswered", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: Vec<Endpoint>| {
        Service::new("shop", "web")
            .cluster_ip(vip_v4(62))
            .port(ServicePort::tcp("http", 80, HTTP))
            .endpoints(v4(&eps))
    };
    let vip = SocketAddr::from((vip_v4(62), 80));
    s.lab.sync_services(&[web(a.clone())]).unwrap();
    let pod_a = s.export()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "web-a")
        .cloned()
        .unwrap();
    // A's node dies; kube-proxy still routes to A.
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    let node = s.node();
    let syn = connecting_pool(&s.client, vip);
    let (_, seen) = syn_sent_to(&node, dead);

    // A's pod is being deleted: its endpoint stays, terminating and not serving; new
    // connections go to B.
    let mut eps = b.clone();
    eps.extend(a.iter().map(|e| Endpoint {
        serving: false,
        ..e.clone().terminating()
    }));
    s.lab.sync_services(&[web(eps)]).unwrap();
    let healthy = pool(&s.client, vip, 1);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);

    let mut objects = s.export();
    let mut pod_a = pod_a;
    pod_a["metadata"]["deletionTimestamp"] = json!(netlab::k8s::rfc3339_now());
    items(&mut objects).push(pod_a);
    let file = s.write("cluster.json", &objects);

    sleep_until(seen + Duration::from_millis(1100));
    let young = s.sweep(&file, &["--min-age", "10s"]).ok(0);
    assert!(young.to_backend(dead).is_empty(), "{}", young.pretty());
    assert_eq!(young.deleted(), 0);
    assert_eq!(entries_to(&s.table(), dead).len(), 1);

    let run = s.sweep(&file, &["--min-age", "1s"]).ok(0);
    let flows = run.to_backend(dead);
    assert_eq!(flows.len(), 1, "{}", run.pretty());
    let f = flows[0];
    assert_eq!(f["verdict"], "unanswered", "{}", run.pretty());
    assert_eq!(f["half_open"], true);
    assert_eq!(f["state"], "SYN_SENT");
    assert_eq!(evidence(f), ["half_open"]);
    assert_eq!(f["result"], "deleted");
    assert_eq!(run.deleted(), 1);

    let report = first_answers(syn, Duration::from_secs(8));
    assert!(report.answers_from("web-b") >= 1, "{report:#?}");
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
}

/// Row 2 (kubernetes#101607): a SYN that reached the node before kube-proxy programmed the
/// Service keeps its "no NAT" entry; its retransmissions follow it nowhere. Not judged while
/// younger than `--min-age`; then removed, and the next retransmission is DNAT'd.
#[test]
fn missed_dnat_is_removed_only_after_min_age() {
    // No drop rule for unallocated service addresses, so the early SYN leaves an entry.
    let config = ProxyConfig {
        service_cidr_v4: None,
        service_cidr_v6: None,
        ..ProxyConfig::default()
    };
    let Some(mut s) = Story::with_config("missed_dnat", true, config) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let web = Service::new("shop", "web")
        .cluster_ip(vip_v4(70))
        .port(ServicePort::tcp("http", 80, HTTP))
        .endpoints(v4(&a));
    let vip_ip: IpAddr = vip_v4(70).into();
    let vip = SocketAddr::new(vip_ip, 80);
    let node = s.node();
    // kube-proxy runs (its tables are there, so conntrack and NAT are active in the node's
    // namespace) but has not programmed this Service yet.
    s.lab.sync_services(&[]).unwrap();
    // Where an un-NATed packet to the VIP goes on this node: out and silently away.
    sink_route(&node, vip_ip);
    let syn = connecting_pool(&s.client, vip);
    let (entry, seen) = syn_sent_to(&node, vip_ip);
    assert!(!entry["status"]
        .as_array()
        .unwrap()
        .contains(&json!("DST_NAT")));

    s.lab.sync_services(&[web]).unwrap();
    let healthy = pool(&s.client, vip, 1);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);
    let file = s.write("cluster.json", &s.export());

    sleep_until(seen + Duration::from_millis(1100));
    let young = s.sweep(&file, &["--min-age", "10s"]).ok(0);
    assert!(young.to_backend(vip_ip).is_empty(), "{}", young.pretty());
    assert_eq!(young.deleted(), 0);
    assert_eq!(entries_to(&s.table(), vip_ip).len(), 1);

    let run = s.sweep(&file, &["--min-age", "1s"]).ok(0);
    let flows = run.to_backend(vip_ip);
    assert_eq!(flows.len(), 1, "{}", run.pretty());
    let f = flows[0];
    assert_eq!(f["verdict"], "missed_dnat", "{}", run.pretty());
    assert_eq!(f["half_open"], true);
    assert_eq!(f["backend"], Value::Null);
    assert_eq!(f["service"]["name"], "web");
    assert_eq!(evidence(f), ["half_open"]);
    assert_eq!(f["result"], "deleted");
    assert_eq!(run.deleted(), 1);

    let report = first_answers(syn, Duration::from_secs(8));
    assert!(report.answers_from("web-a") >= 1, "{report:#?}");
    expect_untouched(healthy, &before, &["web-a"], "healthy pool");
}

/// Row 9 (kubernetes#141371): a deleted Service. Its UDP flow goes (kube-proxy's own rule); its
/// TCP flow to a pod that lives on is kept and keeps working; its TCP flow to a pod that is gone
/// too goes.
#[test]
fn service_gone_udp_is_removed_tcp_is_kept_unless_the_pod_is_gone_too() {
    let Some(mut s) = Story::start("service_gone", true) else {
        return;
    };
    let alive = s.udp_backend("legacy-0", "shop", "legacy", 8125);
    let gone = s.udp_backend("legacy-1", "shop", "legacy", 8125);
    let legacy = |eps: &[Endpoint]| {
        http_service("shop", "legacy", 80, eps).port(ServicePort::udp("statsd", 8125, 8125))
    };
    let http = SocketAddr::from((vip_v4(80), 80));
    s.lab.sync_services(&[legacy(&gone)]).unwrap();
    let to_gone = pool(&s.client, http, 1);
    expect_answers(&to_gone, 2, "pool to legacy-1");
    s.lab.sync_services(&[legacy(&alive)]).unwrap();
    let to_alive = pool(&s.client, http, 1);
    expect_answers(&to_alive, 2, "pool to legacy-0");
    let statsd = s.querier(SocketAddr::from((vip_v4(80), 8125)));

    // The Service is deleted; legacy-0 lives on, legacy-1's node dies.
    s.lab.sync_services(&[]).unwrap();
    s.lab.delete_pod_silently("legacy-1").unwrap();
    expect_hang(&to_gone, 1, Duration::from_millis(500));
    let before = mark(&to_alive);
    drop(statsd);

    let (ip_alive, ip_gone) = (ip_of(&alive, false), ip_of(&gone, false));
    let udp_entry = s
        .table()
        .into_iter()
        .find(|f| f["protocol"] == "udp" && reply_src(f) == Some(ip_alive))
        .map(|f| key(&f))
        .expect("the statsd entry");
    // Every Service of the export is gone but the API server's: a real export still holds that
    // one's EndpointSlice (without any slice the export is refused).
    let objects = with_api_server_slice(with_api_server(with_service_cidrs(s.export())));
    assert!(!objects["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "legacy"));
    let file = s.write("cluster.json", &objects);

    let run = s.sweep(&file, &[]).ok(0);
    let flows = run.to_backend(ip_alive);
    assert_eq!(flows.len(), 2, "{}", run.pretty());
    for f in flows {
        assert_eq!(f["verdict"], "service_gone", "{}", run.pretty());
        assert_eq!(f["service"], Value::Null);
        assert_eq!(f["original"]["dst"], vip_v4(80).to_string());
        if f["protocol"] == "udp" {
            assert!(evidence(f).contains(&"udp".to_string()), "{}", run.pretty());
            assert_eq!(f["result"], "deleted");
        } else {
            assert_eq!(evidence(f), ["snapshot_only"], "{}", run.pretty());
            assert_eq!(f["removable"], false);
            assert_eq!(f["kept_because"], "no_evidence");
            assert_eq!(f["result"], "kept");
        }
    }
    let flows = run.to_backend(ip_gone);
    assert_eq!(flows.len(), 1, "{}", run.pretty());
    assert_eq!(flows[0]["verdict"], "service_gone");
    assert_eq!(evidence(flows[0]), ["pod_absent"]);
    assert_eq!(flows[0]["result"], "deleted");
    assert_eq!(run.deleted(), 2);
    assert!(!keys(&s.table()).contains(&udp_entry));

    drop(to_gone);
    expect_untouched(
        to_alive,
        &before,
        &["legacy-0"],
        "TCP to the deleted Service's live pod",
    );
}

/// Bad input: a clear message naming the file, exit 2, and the table exactly as it was — while
/// the same sweep with the good export would have removed something.
#[test]
fn bad_inputs_exit_2_and_leave_the_table_unchanged() {
    let Some(mut s) = Story::start("bad_inputs", true) else {
        return;
    };
    let a = s.dns_backend("dns-a");
    let b = s.dns_backend("dns-b");
    let dns = |eps: &[Endpoint]| dns_service(90, eps).port(ServicePort::tcp("http", 80, HTTP));
    s.lab.sync_services(&[dns(&a)]).unwrap();
    let querier = UdpClient::start(
        &s.client,
        SocketAddr::from((vip_v4(90), 53)),
        UdpConfig {
            max_queries: 3,
            ..UdpConfig::default()
        },
    )
    .unwrap();
    assert!(querier.wait_answers(3, TIMEOUT));
    drop(querier);
    s.lab.sync_services(&[dns(&b)]).unwrap();
    s.lab.delete_pod_silently("dns-a").unwrap();
    let healthy = pool(&s.client, SocketAddr::from((vip_v4(90), 80)), 1);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);

    let objects = s.export();
    let good = s.write("cluster.json", &objects);
    let scan = s.scan(&good, &[]).ok(0);
    assert!(scan.removable() >= 1, "{}", scan.pretty());

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut o = objects.clone();
        f(&mut o);
        o
    };
    let text = serde_json::to_string_pretty(&objects).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated.json",
            s.write_text("truncated.json", &text[..text.len() / 2]),
            "truncated.json:",
        ),
        (
            "broken.yaml",
            s.write_text(
                "broken.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: dns\nspec:\n  ports: []\n",
            ),
            "broken.yaml:",
        ),
        (
            "no-kind.json",
            s.write(
                "no-kind.json",
                &edit(&|o| {
                    object_mut(o, "Service", "dns")
                        .as_object_mut()
                        .unwrap()
                        .remove("kind");
                }),
            ),
            "has no \"kind\"",
        ),
        (
            "only-unknown-kinds.json",
            s.write(
                "only-unknown-kinds.json",
                &json!({"apiVersion": "v1", "kind": "List", "items": [
                    {"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": "dns", "namespace": "kube-system"}, "spec": {}},
                    {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {}},
                ]}),
            ),
            "no Service",
        ),
        (
            "no-cluster-ip.json",
            s.write(
                "no-cluster-ip.json",
                &edit(&|o| {
                    let spec = object_mut(o, "Service", "dns")["spec"]
                        .as_object_mut()
                        .unwrap();
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }),
            ),
            "spec.clusterIP is missing",
        ),
        (
            "no-address-type.json",
            s.write(
                "no-address-type.json",
                &edit(&|o| {
                    slices_mut(o, "dns")[0]
                        .as_object_mut()
                        .unwrap()
                        .remove("addressType");
                }),
            ),
            "addressType",
        ),
        (
            "unnamed-pod.json",
            s.write(
                "unnamed-pod.json",
                &edit(&|o| {
                    object_mut(o, "Pod", "dns-b")["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("name");
                }),
            ),
            "metadata.name is missing",
        ),
        (
            "no-ports.json",
            s.write(
                "no-ports.json",
                &edit(&|o| {
                    object_mut(o, "Service", "dns")["spec"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ports");
                }),
            ),
            "spec.ports is empty",
        ),
    ];

    let table = keys(&s.table());
    assert!(!table.is_empty());
    for (name, path, message) in &cases {
        for command in ["sweep", "scan"] {
            let node = s.node();
            let run = Run::of(&[
                command,
                "--netns",
                &node,
                "--from-file",
                path,
                "-o",
                "json",
                "--trust-snapshot",
                "--min-age",
                "0s",
                "--service-cidr",
                SERVICE_CIDR_V4,
            ]);
            assert_eq!(run.code, 2, "{name}: {}", run.pretty());
            assert!(
                run.stdout.is_empty(),
                "{name}: printed a report: {}",
                run.stdout
            );
            assert!(
                run.stderr.contains(path.as_str()),
                "{name}: the message does not name the file: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(message),
                "{name}: expected {message:?} in: {}",
                run.stderr
            );
            assert_eq!(keys(&s.table()), table, "{name}: the table changed");
        }
    }
    // One bad file among good ones spoils the whole view.
    let node = s.node();
    let run = Run::of(&[
        "sweep",
        "--netns",
        &node,
        "--from-file",
        &good,
        "--from-file",
        &cases[0].1,
    ]);
    assert_eq!(run.code, 2, "{}", run.pretty());
    assert_eq!(keys(&s.table()), table);

    // Unknown kinds next to real objects are ignored with one warning per kind.
    let mut mixed = objects.clone();
    items(&mut mixed).push(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {}}));
    let mixed = s.write("mixed.json", &mixed);
    let run = s.scan(&mixed, &[]).ok(0);
    assert!(
        run.stderr.contains("ignored 1 object of kind ConfigMap"),
        "{}",
        run.stderr
    );
    assert_eq!(keys(&s.table()), table);

    // The good export removes the ghost: there was something to delete all along.
    let run = s.sweep(&good, &[]).ok(0);
    assert!(run.deleted() >= 1, "{}", run.pretty());
    expect_untouched(healthy, &before, &["dns-b"], "healthy pool");
}
