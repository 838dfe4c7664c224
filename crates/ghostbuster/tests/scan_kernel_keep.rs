//! `ghostbuster sweep` end to end against the real kernel: the traps, flows that must be kept
//! (issue #3, section 4). Each test runs real traffic through a netlab node with kube-proxy-shaped
//! DNAT, writes the lab's Kubernetes objects (edited where a situation needs it) and sweeps the
//! node's namespace with the real binary — mostly with the most permissive flags — then checks
//! that the live connections kept exchanging data and their entries are still in the table.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::net::SocketAddr;
use std::time::Duration;

use netlab::plan::vip_v4;
use netlab::{Endpoint, ServerSpec, Service, ServicePort};
use scan_support::setups::*;
use scan_support::*;
use serde_json::{json, Value};

/// Every flag that widens what a sweep may remove.
const PERMISSIVE: &[&str] = &[
    "--trust-snapshot",
    "--include-deselected",
    "--include-unmanaged",
    "--all-zones",
    "--min-age",
    "0s",
];

/// Marks a Pod object as terminating (as the API server does on delete, until the kubelet is done).
fn terminating_pod(objects: &mut Value, name: &str) {
    object_mut(objects, "Pod", name)["metadata"]["deletionTimestamp"] =
        json!(netlab::k8s::rfc3339_now());
}

/// Draining endpoints (terminating, serving or not) are healthy: kube-proxy keeps routing their
/// existing connections (graceful shutdown, kubernetes#101607), so no sweep may touch them.
#[test]
fn terminating_endpoints_are_kept_serving_or_not() {
    let Some(mut s) = Story::start("terminating_kept", true) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let c = s.backend("web-c", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let web = |eps: Vec<Endpoint>| web("shop", 50, &eps);
    let vip = SocketAddr::from((vip_v4(50), 80));
    s.lab.sync_services(&[web(a.clone())]).unwrap();
    let to_a = pool(&s.client, vip, 1);
    expect_answers(&to_a, 2, "pool to A");
    s.lab.sync_services(&[web(c.clone())]).unwrap();
    let to_c = pool(&s.client, vip, 1);
    expect_answers(&to_c, 2, "pool to C");

    // A and C are being deleted: A still passes its readiness probe (serving), C no longer does.
    let draining = |eps: &[Endpoint], serving: bool| -> Vec<Endpoint> {
        eps.iter()
            .map(|e| Endpoint {
                serving,
                ..e.clone().terminating()
            })
            .collect()
    };
    let mut eps = b.clone();
    eps.extend(draining(&a, true));
    eps.extend(draining(&c, false));
    s.lab.sync_services(&[web(eps)]).unwrap();
    let to_b = pool(&s.client, vip, 1);
    expect_answers(&to_b, 2, "pool to B");
    let marks = [mark(&to_a), mark(&to_c), mark(&to_b)];

    let mut objects = s.export();
    terminating_pod(&mut objects, "web-a");
    terminating_pod(&mut objects, "web-c");
    let slices = slices_mut(&mut objects, "web");
    let conditions: Vec<&Value> = slices[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["conditions"])
        .collect();
    assert!(
        conditions.contains(&&json!({"ready": false, "serving": false, "terminating": true})),
        "{conditions:?}"
    );
    let file = s.write("cluster.json", &objects);
    let table = s.table();
    let (ip_a, ip_c) = (ip_of(&a, false), ip_of(&c, false));
    let kept: Vec<String> = table
        .iter()
        .filter(|f| reply_src(f) == Some(ip_a) || reply_src(f) == Some(ip_c))
        .map(key)
        .collect();
    assert_eq!(kept.len(), 2, "{table:#?}");

    for _ in 0..2 {
        let run = s.sweep(&file, PERMISSIVE).ok(0);
        assert!(run.flows().is_empty(), "{}", run.pretty());
        assert_eq!(run.deleted(), 0);
    }
    let after = keys(&s.table());
    assert!(
        kept.iter().all(|k| after.contains(k)),
        "a draining flow went"
    );

    let [m_a, m_c, m_b] = marks;
    expect_untouched(to_a, &m_a, &["web-a"], "draining, serving");
    expect_untouched(to_c, &m_c, &["web-c"], "draining, not serving");
    expect_untouched(to_b, &m_b, &["web-b"], "ready");
}

/// All slices of a Service are merged before judging: an export taken while an endpoint moves
/// from one slice to another (here: it is only in the new slice, listed before its Service) is no
/// removal.
#[test]
fn endpoint_moved_between_slices_is_kept() {
    let Some(mut s) = Story::start("moved_between_slices", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| http_service("shop", "web", 51, eps);
    let vip = SocketAddr::from((vip_v4(51), 80));
    s.lab.sync_services(&[web(&a)]).unwrap();
    let to_a = pool(&s.client, vip, 2);
    expect_answers(&to_a, 2, "pool to A");
    let both: Vec<Endpoint> = a.iter().chain(&b).cloned().collect();
    s.lab.sync_services(&[web(&both)]).unwrap();
    let before = mark(&to_a);

    let ip_a = ip_of(&a, false).to_string();
    let mut objects = s.export();
    let slice = slices_mut(&mut objects, "web").remove(0);
    let mut moved = slice.clone();
    let endpoints = slice["endpoints"].as_array_mut().unwrap();
    endpoints.retain(|e| e["addresses"][0] != ip_a.as_str());
    assert_eq!(endpoints.len(), 1, "A left the first slice");
    moved["metadata"]["name"] = "web-moved".into();
    moved["metadata"]["uid"] = "7e0d2c4e-5a49-4f1e-8e52-3b0b6f0c1a99".into();
    moved["endpoints"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["addresses"][0] == ip_a.as_str());
    items(&mut objects).insert(0, moved);
    let file = s.write("cluster.json", &objects);

    let table = s.table();
    let kept: Vec<String> = entries_to(&table, ip_of(&a, false))
        .into_iter()
        .map(key)
        .collect();
    assert_eq!(kept.len(), 2);
    let run = s.sweep(&file, PERMISSIVE).ok(0);
    assert!(run.flows().is_empty(), "{}", run.pretty());
    assert_eq!(run.deleted(), 0);
    let after = keys(&s.table());
    assert!(kept.iter().all(|k| after.contains(k)));
    expect_untouched(to_a, &before, &["web-a"], "pool to the moved endpoint");
}

/// Row 7, blue/green: the Service switched to green, blue still runs. Its TCP connections are
/// kept (`deselected`, only `--include-deselected` removes them) and keep working; its UDP flow
/// goes (kube-proxy removes those itself) and the next query reaches green.
#[test]
fn deselected_blue_green_tcp_is_kept_and_udp_is_removed() {
    let Some(mut s) = Story::start("deselected_blue_green", true) else {
        return;
    };
    let blue = s.udp_backend("web-blue", "shop", "web", 5353);
    let green = s.udp_backend("web-green", "shop", "web", 5353);
    let web = |eps: &[Endpoint]| {
        http_service("shop", "web", 52, eps).port(ServicePort::udp("dns", 53, 5353))
    };
    let http = SocketAddr::from((vip_v4(52), 80));
    let dns = SocketAddr::from((vip_v4(52), 53));
    s.lab.sync_services(&[web(&blue)]).unwrap();
    let to_blue = pool(&s.client, http, 1);
    expect_answers(&to_blue, 2, "pool to blue");
    let querier = s.querier(dns);

    // The switch: the selector now picks green; blue keeps running.
    s.lab.sync_services(&[web(&green)]).unwrap();
    let to_green = pool(&s.client, http, 1);
    expect_answers(&to_green, 2, "pool to green");
    let marks = [mark(&to_blue), mark(&to_green)];

    let file = s.write("cluster.json", &s.export());
    let ip_blue = ip_of(&blue, false);
    let table = s.table();

    // Read-only: with --include-deselected the TCP flow would be removable.
    let scan = s.scan(&file, &["--include-deselected"]).ok(0);
    let tcp: Vec<&Value> = scan
        .to_backend(ip_blue)
        .into_iter()
        .filter(|f| f["protocol"] == "tcp")
        .collect();
    assert_eq!(tcp.len(), 1, "{}", scan.pretty());
    assert_eq!(tcp[0]["removable"], true);
    assert_eq!(keys(&s.table()), keys(&table), "scan changed the table");

    let run = s.sweep(&file, &["--trust-snapshot"]).ok(0);
    let flows = run.to_backend(ip_blue);
    assert_eq!(flows.len(), 2, "{}", run.pretty());
    for f in flows {
        assert_eq!(f["verdict"], "deselected", "{}", run.pretty());
        assert_eq!(f["now_owned_by"]["pod"], "web-blue");
        assert_eq!(f["now_owned_by"]["service"], Value::Null);
        if f["protocol"] == "tcp" {
            assert_eq!(f["removable"], false);
            assert_eq!(f["kept_because"], "live_pod");
            assert_eq!(f["result"], "kept");
            assert!(evidence(f).is_empty(), "{}", run.pretty());
        } else {
            assert_eq!(evidence(f), ["udp"]);
            assert_eq!(f["result"], "deleted");
        }
    }
    assert_eq!(run.deleted(), 1);
    // `explain -o json` on blue's IP: the kept TCP flow as the same flow object plus its trace
    // (`Run::ok` holds every one to docs/flow.schema.json); explain removes nothing.
    let ip = ip_blue.to_string();
    let explained = s.explain(&file, &["--trust-snapshot", &ip]).ok(0);
    let kept: Vec<&Value> = explained
        .to_backend(ip_blue)
        .into_iter()
        .filter(|f| f["protocol"] == "tcp")
        .collect();
    assert_eq!(kept.len(), 1, "{}", explained.pretty());
    assert_eq!(kept[0]["verdict"], "deselected");
    assert_eq!(kept[0]["kept_because"], "live_pod");
    assert!(kept[0].get("result").is_none(), "{}", explained.pretty());
    let trace = kept[0]["trace"].as_array().expect("a trace");
    assert!(
        trace
            .iter()
            .any(|l| l.as_str().unwrap_or("").ends_with("row 7: deselected")),
        "{}",
        explained.pretty()
    );

    expect_more_answers(&querier);
    let q = querier.stop();
    assert!(q.answers_from("web-green") >= 3, "{q:#?}");
    let [m_blue, m_green] = marks;
    expect_untouched(
        to_blue,
        &m_blue,
        &["web-blue"],
        "deselected blue connection",
    );
    expect_untouched(to_green, &m_green, &["web-green"], "green connection");
}

/// Row 5: the Service's target ports changed while the pod lives on: its TCP flow on the old
/// port is kept (`port_changed`) and keeps working; its UDP flow goes and the next query is
/// DNAT'd to the new port.
#[test]
fn port_changed_tcp_is_kept_and_udp_is_removed() {
    let Some(mut s) = Story::start("port_changed", true) else {
        return;
    };
    let a = s.backend(
        "web-a",
        "shop",
        "web",
        &[
            ServerSpec::http(8081, 200, "web-a"),
            ServerSpec::udp_echo(5353, "web-a"),
            ServerSpec::udp_echo(5354, "web-a"),
        ],
    );
    let web = |http: u16, dns: u16| {
        Service::new("shop", "web")
            .cluster_ip(vip_v4(54))
            .port(ServicePort::tcp("http", 80, http))
            .port(ServicePort::udp("dns", 53, dns))
            .endpoints(v4(&a))
    };
    let http = SocketAddr::from((vip_v4(54), 80));
    s.lab.sync_services(&[web(HTTP, 5353)]).unwrap();
    let old_port = pool(&s.client, http, 1);
    expect_answers(&old_port, 2, "pool to the old port");
    let querier = s.querier(SocketAddr::from((vip_v4(54), 53)));

    s.lab.sync_services(&[web(8081, 5354)]).unwrap();
    let new_port = pool(&s.client, http, 1);
    expect_answers(&new_port, 2, "pool to the new port");
    let marks = [mark(&old_port), mark(&new_port)];

    let file = s.write("cluster.json", &s.export());
    let run = s.sweep(&file, &["--trust-snapshot"]).ok(0);
    let flows = run.to_backend(ip_of(&a, false));
    assert_eq!(flows.len(), 2, "{}", run.pretty());
    for f in flows {
        assert_eq!(f["verdict"], "port_changed", "{}", run.pretty());
        assert_eq!(f["now_owned_by"]["service"], "web");
        assert_eq!(f["now_owned_by"]["pod"], "web-a");
        if f["protocol"] == "tcp" {
            assert_eq!(f["backend"]["port"], HTTP);
            assert_eq!(f["kept_because"], "live_pod");
            assert_eq!(f["result"], "kept");
        } else {
            assert_eq!(f["backend"]["port"], 5353);
            assert_eq!(evidence(f), ["udp"]);
            assert_eq!(f["result"], "deleted");
        }
    }
    assert_eq!(run.deleted(), 1);

    expect_more_answers(&querier);
    drop(querier);
    let udp_now = s
        .table()
        .into_iter()
        .filter(|f| f["protocol"] == "udp" && f["original"]["dport"] == 53)
        .map(|f| f["reply"]["sport"].clone())
        .collect::<Vec<_>>();
    assert_eq!(udp_now, [json!(5354)], "the new query goes to the new port");
    let [m_old, m_new] = marks;
    expect_untouched(old_port, &m_old, &["web-a"], "connection to the old port");
    expect_untouched(new_port, &m_new, &["web-a"], "connection to the new port");
}

/// Row 1: traffic that is not to a Service frontend (pod to pod, also to a pod that vanished)
/// is never touched, whatever the flags.
#[test]
fn non_service_traffic_is_never_touched() {
    let Some(mut s) = Story::start("non_service", true) else {
        return;
    };
    let a = s.udp_backend("web-a", "shop", "web", 5353);
    let d = s.backend("web-d", "shop", "web", &[]);
    let web = web("shop", 55, &a);
    s.lab.sync_services(&[web]).unwrap();
    let (ip_a, ip_d) = (ip_of(&a, false), ip_of(&d, false));
    let direct = pool(&s.client, SocketAddr::new(ip_a, HTTP), 1);
    let ghost = pool(&s.client, SocketAddr::new(ip_d, HTTP), 1);
    expect_answers(&direct, 2, "direct pool");
    expect_answers(&ghost, 2, "direct pool to D");
    let querier = s.querier(SocketAddr::new(ip_a, 5353));
    // D vanishes: a direct connection to it hangs, and is still none of ghostbuster's business.
    s.lab.delete_pod_silently("web-d").unwrap();
    expect_hang(&ghost, 1, Duration::from_millis(500));
    let before = mark(&direct);
    let udp_before = querier.report();

    let objects = with_service_cidrs(s.export());
    let file = s.write("cluster.json", &objects);
    let table = s.table();
    let direct_flows: Vec<String> = table
        .iter()
        .filter(|f| matches!(reply_src(f), Some(ip) if ip == ip_a || ip == ip_d))
        .map(key)
        .collect();
    assert_eq!(direct_flows.len(), 3, "{table:#?}");

    let run = s.sweep(&file, PERMISSIVE).ok(0);
    assert!(run.flows().is_empty(), "{}", run.pretty());
    assert_eq!(run.removable(), 0);
    assert_eq!(run.deleted(), 0);
    assert!(run.json["scanned"].as_u64().unwrap() >= 3);
    let after = keys(&s.table());
    assert!(direct_flows.iter().all(|k| after.contains(k)));

    // The hung direct connection is still hung: nothing reset it.
    let still = ghost.stop();
    assert!(still.errors.is_empty(), "{:?}", still.errors);
    assert_eq!(still.stuck_connections(), 1);
    let q = querier.stop();
    assert!(q.errors.is_empty(), "{:?}", q.errors);
    assert!(q.answers > udp_before.answers);
    expect_untouched(direct, &before, &["web-a"], "direct connection");
}

/// A pod created after the export (the seed scripts' mistake: "not in the endpoint list" kills
/// connections to pods newer than the list): its flow starts after the snapshot time (the file's
/// modification time) and is kept even with `--trust-snapshot --include-deselected`, while a real
/// ghost from before the snapshot goes in the same pass.
#[test]
fn pod_created_after_the_snapshot_is_never_touched() {
    let Some(mut s) = Story::start("newer_than_snapshot", true) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| http_service("shop", "web", 56, eps);
    let vip = SocketAddr::from((vip_v4(56), 80));
    s.lab.sync_services(&[web(&a)]).unwrap();
    let ghost = pool(&s.client, vip, 1);
    expect_answers(&ghost, 2, "ghost pool");
    s.lab.sync_services(&[web(&b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    let hung = expect_hang(&ghost, 1, Duration::from_millis(500));

    // The export is taken now...
    let file = s.write("cluster.json", &s.export());
    std::thread::sleep(Duration::from_millis(50));
    // ...and then the Service scales up: C is not in it.
    let c = s.backend("web-c", "shop", "web", &[]);
    s.lab.sync_services(&[web(&c)]).unwrap();
    let to_c = pool(&s.client, vip, 2);
    expect_answers(&to_c, 2, "pool to the new pod");
    let both: Vec<Endpoint> = b.iter().chain(&c).cloned().collect();
    s.lab.sync_services(&[web(&both)]).unwrap();
    let before = mark(&to_c);
    let ip_c = ip_of(&c, false);

    let run = s
        .sweep(&file, &["--trust-snapshot", "--include-deselected"])
        .ok(0);
    let newer = run.to_backend(ip_c);
    assert_eq!(newer.len(), 2, "{}", run.pretty());
    for f in newer {
        assert_eq!(f["verdict"], "endpoint_gone", "{}", run.pretty());
        assert_eq!(f["removable"], false);
        assert_eq!(f["kept_because"], "newer_than_snapshot");
        assert_eq!(f["result"], "kept");
        let time = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
        assert!(time(&f["start_time"]) > time(&run.json["snapshot_time"]));
    }
    let gone = run.to_backend(dead);
    assert_eq!(gone.len(), 1, "{}", run.pretty());
    assert_eq!(gone[0]["result"], "deleted");
    assert_eq!(run.deleted(), 1);

    expect_fail_fast_and_recover(ghost, &hung, None, Duration::from_secs(8));
    expect_untouched(to_c, &before, &["web-c"], "pool to the new pod");
}

/// Seed 003 without evidence: the dead backend's IP now belongs to a pod of another Service,
/// but nothing says it is another pod than the one the flow reached (no Pods in the export, or no
/// flow start time: `nf_conntrack_timestamp=0`, the kernel's default). Kept as `deselected`.
#[test]
fn ip_reused_without_evidence_is_kept_as_deselected() {
    let Some(mut s) = Story::start("ip_reused_no_evidence", false) else {
        return;
    };
    let (a, b) = s.web_pair();
    let web = |eps: &[Endpoint]| http_service("shop", "web", 57, eps);
    let vip = SocketAddr::from((vip_v4(57), 80));
    s.lab.sync_services(&[web(&a)]).unwrap();
    // An idle keep-alive connection to A.
    let mut idle = connect(&s.client, vip);
    assert_eq!(http_request(&mut idle, TIMEOUT).unwrap(), "web-a");
    s.lab.sync_services(&[web(&b)]).unwrap();
    let dead = s.lab.delete_pod_silently("web-a").unwrap();
    let billing = s.takes_over(&dead);
    let billing_svc = http_service("billing", "billing", 58, &billing);
    s.lab.sync_services(&[web(&b), billing_svc]).unwrap();
    let healthy = pool(&s.client, vip, 1);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);

    let objects = s.export();
    let with_pods = s.write("cluster.json", &objects);
    let without_pods = s.write("no-pods.json", &without_kind(objects, "Pod"));
    let entry = entries_to(&s.table(), dead.ips[0])
        .into_iter()
        .map(key)
        .collect::<Vec<_>>();
    assert_eq!(entry.len(), 1);

    for file in [&without_pods, &with_pods] {
        let run = s
            .sweep(file, &["--trust-snapshot", "--min-age", "0s"])
            .ok(0);
        let flows = run.to_backend(dead.ips[0]);
        assert_eq!(flows.len(), 1, "{}", run.pretty());
        let f = flows[0];
        assert_eq!(f["verdict"], "deselected", "{}", run.pretty());
        assert_eq!(f["now_owned_by"]["namespace"], "billing");
        assert_eq!(f["now_owned_by"]["service"], "billing");
        assert_eq!(f["now_owned_by"]["pod"], "billing-0");
        assert_eq!(f["removable"], false);
        assert_eq!(f["kept_because"], "live_pod");
        assert_eq!(f["result"], "kept");
        assert!(!evidence(f).contains(&"pod_created_after_flow".to_string()));
        assert_eq!(run.deleted(), 0);
    }
    assert!(keys(&s.table()).contains(&entry[0]), "the kept flow went");
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
}
