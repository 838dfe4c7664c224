//! The agent end to end, for what its watches, its API calls and its admin server must get right
//! (issue #12): every node's addresses, watch freshness, bounded API calls, kube-proxy's mode
//! re-read while running, `/debug/recent` on localhost only, and no `--trust-snapshot`.
//!
//! The real binary against a netlab node (real DNAT'd traffic), the in-process fake API server and
//! a fake kube-proxy. Root-only stories skip outside CI with a printed reason (CI fails instead).

mod agent_support;
mod scan_support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::*;
use netlab::plan::vip_v4;
use scan_support::*;
use serde_json::{json, Value};

/// The EndpointSlice of Service `shop/web` among `objects`.
fn web_slice(objects: &mut Value) -> Value {
    slices_mut(objects, "web")
        .into_iter()
        .next()
        .expect("web's slice")
        .clone()
}

// --- no --trust-snapshot in the agent --------------------------------------------------------------

/// `--trust-snapshot` skips the pod GET, the agent's best evidence: the agent does not have it
/// (a usage error, exit 2, nothing started), while `scan`/`sweep` keep it.
#[test]
fn the_agent_has_no_trust_snapshot_flag() {
    let bin = env!("CARGO_BIN_EXE_ghostbuster");
    let out = Command::new(bin)
        .args([
            "agent",
            "--node-name",
            "node-1",
            "--listen",
            "127.0.0.1:1",
            "--trust-snapshot",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("--trust-snapshot"), "{err}");
    let help = Command::new(bin)
        .args(["agent", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("trust-snapshot"));
    for cmd in ["sweep", "scan"] {
        let help = Command::new(bin).args([cmd, "--help"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--trust-snapshot"),
            "{cmd} keeps --trust-snapshot"
        );
    }
}

// --- every node's addresses ------------------------------------------------------------------------

/// Adds node B to `objects`: a Node whose InternalIP is `ip`, the backend pod `web-a` moved there
/// as a hostNetwork pod (its IP is the node's), and another DaemonSet's Service
/// (`monitoring/node-exporter`) whose slice lists the same IP for its own hostNetwork pod.
fn with_node_b(mut objects: Value, ip: IpAddr) -> Value {
    let ip_s = ip.to_string();
    for slice in slices_mut(&mut objects, "web") {
        for ep in slice["endpoints"].as_array_mut().into_iter().flatten() {
            if ep["addresses"][0] == ip_s {
                ep["nodeName"] = json!("node-b");
            }
        }
    }
    let a = object_mut(&mut objects, "Pod", "web-a");
    a["spec"]["nodeName"] = json!("node-b");
    a["spec"]["hostNetwork"] = json!(true);
    a["status"]["hostIP"] = json!(ip_s);
    let extra = [
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-b"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": ip_s},
                {"type": "Hostname", "address": "node-b"}
            ]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "node-exporter", "namespace": "monitoring"},
            "spec": {
                "type": "ClusterIP", "clusterIP": vip_v4(39).to_string(),
                "clusterIPs": [vip_v4(39).to_string()], "ipFamilies": ["IPv4"],
                "selector": {"app": "node-exporter"},
                "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100}]
            }
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "node-exporter-x1", "namespace": "monitoring",
                "labels": {
                    "kubernetes.io/service-name": "node-exporter",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
                }
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": [ip_s],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-b",
                "targetRef": {"kind": "Pod", "namespace": "monitoring", "name": "node-exporter-b",
                              "uid": "0b0b0b0b-0000-4000-8000-00000000000b"}
            }],
            "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}]
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "node-exporter-b", "namespace": "monitoring",
                         "uid": "0b0b0b0b-0000-4000-8000-00000000000b",
                         "labels": {"app": "node-exporter"}},
            "spec": {"nodeName": "node-b", "hostNetwork": true,
                     "containers": [{"name": "exporter", "image": "netlab.invalid/exporter:1"}]},
            "status": {"phase": "Running", "hostIP": ip_s, "podIP": ip_s,
                       "podIPs": [{"ip": ip_s}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }),
    ];
    items(&mut objects).extend(extra);
    objects
}

/// Issue #12, reproduced on main: a hostNetwork backend on node B leaves `shop/web` (deselected,
/// alive); another DaemonSet's Service lists node B's IP for its own pod. Knowing only its own
/// Node, the agent took that for the IP reused by someone else (`ip_reused`) and deleted the live
/// connection. Knowing every Node, it is a node address: the connection is kept. Proven after a
/// sibling ghost (a backend of the same Service that really vanished) was removed.
#[test]
fn a_deselected_host_network_backend_on_another_node_keeps_its_connection() {
    let Some(mut s) = Story::start("agent_e2e_watch_nodes", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let c = s.backend("web-c", "shop", "web", &[]);
    let a_ip = ip_of(&a, false);
    let c_ip = ip_of(&c, false);
    // Two connections to each of a and c.
    let [live, ghost] = pin_pools(&mut s, 38, [("web-a", &a), ("web-c", &c)]);

    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(with_node_b(s.lab.kubernetes_objects(), a_ip))
        .args(&["--resync-interval", "1s"])
        .start();

    // web moves to b: a (alive, on node B) is deselected, c vanishes for real.
    s.lab.sync_services(&[web("shop", 38, &b)]).unwrap();
    s.lab.delete_pod_silently("web-c").unwrap();
    let before = mark(&live);
    publish_pod_gone(
        &api,
        &with_node_b(s.lab.kubernetes_objects(), a_ip),
        "shop",
        "web-c",
    );
    kp.synced_now();

    let swept = wait_for(Duration::from_secs(15), || {
        entries_to(&table(&s.node()), c_ip).is_empty()
    });
    assert!(
        swept,
        "the sibling ghost was never removed: {}",
        agent.metrics()
    );
    assert_eq!(
        entries_to(&table(&s.node()), a_ip).len(),
        2,
        "the live hostNetwork backend's connections were deleted: {}",
        agent.metrics()
    );
    expect_untouched(live, &before, &["web-a"], "hostNetwork backend on node B");
    let m = agent.metrics();
    assert!(
        metric_sum(&m, "ghostbuster_flows_removed_total") >= 2.0,
        "{m}"
    );
    drop(ghost);
}

// --- watch freshness -------------------------------------------------------------------------------

/// A watch that stays connected but silent turns stale: the gate holds a ghost with evidence
/// (the hold says `watch_stale` and names the silent kinds), and the removal happens once
/// BOOKMARKs arrive.
#[test]
fn a_silent_watch_holds_removals_until_bookmarks_arrive() {
    let Some((mut s, a, b, _, ghost)) = two_backends("agent_e2e_watch_stale", false, 40) else {
        return;
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&["--resync-interval", "1s", "--watch-stale-after", "2s"])
        .start();
    // No BOOKMARKs and no changes: after 2 s every watch is stale (the setup; the hold below is
    // the proof).
    std::thread::sleep(Duration::from_millis(2500));

    // The ghost: only the slice changes and the pod goes (Services, Nodes and Namespaces stay
    // silent).
    s.lab.sync_services(&[web("shop", 40, &b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    let mut objects = s.lab.kubernetes_objects();
    api.apply(web_slice(&mut objects));
    api.delete("pods", "shop", "web-a");
    kp.synced_now();

    let mut m = String::new();
    let held = wait_for(Duration::from_secs(10), || {
        m = agent.metrics();
        metric_sum(&m, r#"ghostbuster_report_only{reason="watch_stale"}"#) >= 1.0
    });
    assert!(held, "no watch_stale hold: {m}");
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "removed while the watches were stale"
    );
    let (_, readyz) = agent.get("/readyz").unwrap();
    assert!(
        readyz.contains("watch_stale") && readyz.contains("services"),
        "/readyz names the stale kinds: {readyz}"
    );
    assert_eq!(metric_sum(&m, "ghostbuster_flows_removed_total"), 0.0);

    // BOOKMARKs from now on (on the watches that reconnect after the cut): fresh, and the held
    // ghost goes.
    api.set_bookmark_interval(Some(Duration::from_millis(300)));
    api.drop_watches();
    let removed = wait_for(Duration::from_secs(15), || {
        entries_to(&table(&s.node()), dead).is_empty()
    });
    assert!(removed, "not removed after BOOKMARKs: {}", agent.metrics());
    drop(ghost);
}

// --- bounded API calls -----------------------------------------------------------------------------

/// `GET path` on `addr` within 2 s: (status, body, time to the answer).
fn timed_get(addr: SocketAddr, path: &str) -> Option<(u16, String, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let took = t.elapsed();
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body, took))
}

/// A hanging API server holds back neither the admin server nor other work: `/metrics` answers
/// within 100 ms while a list hangs (before the first sync) and while a pod GET hangs (the pod
/// lookup of a ghost whose pod ran on another node, which keeps the ghost: the lookup failed);
/// once the GET answers again, the ghost goes.
#[test]
fn metrics_answer_while_the_api_hangs() {
    let Some((mut s, a, b, _, ghost)) = two_backends("agent_e2e_watch_hang", false, 42) else {
        return;
    };
    // web-a runs on another node as far as the API says: the agent's pod watch (this node's pods)
    // does not see it go, so only a GET can tell.
    let mut objects = s.lab.kubernetes_objects();
    object_mut(&mut objects, "Pod", "web-a")["spec"]["nodeName"] = json!("node-b");
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects)
        .api(|api| api.hang_lists("endpointslices", true))
        .args(&["--resync-interval", "1s"])
        .no_wait()
        .start();
    let admin = SocketAddr::from(([127, 0, 0, 1], agent.port));
    assert!(
        wait_for(Duration::from_secs(10), || timed_get(admin, "/metrics")
            .is_some()),
        "the admin server never answered"
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (code, body, took) = timed_get(admin, "/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        assert!(body.contains("ghostbuster_cluster_synced"));
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/metrics took {slowest:?} while a list hung"
    );
    assert_eq!(timed_get(admin, "/readyz").unwrap().0, 503);
    api.hang_lists("endpointslices", false);
    assert!(agent.wait_ready(Duration::from_secs(20)), "agent not ready");

    // A ghost whose pod lookup hangs.
    api.hang_gets("pods", true);
    s.lab.sync_services(&[web("shop", 42, &b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    kp.synced_now();
    let asked = wait_for(Duration::from_secs(10), || {
        api.requests()
            .iter()
            .any(|r| r.resource == "pods" && r.verb == "get")
    });
    assert!(asked, "the agent never asked for the pod");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (code, _, took) = timed_get(admin, "/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/metrics took {slowest:?} while a pod GET hung"
    );
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "removed without an answer about the pod"
    );
    api.hang_gets("pods", false);
    let removed = wait_for(Duration::from_secs(20), || {
        entries_to(&table(&s.node()), dead).is_empty()
    });
    assert!(
        removed,
        "not removed once the API answered: {}",
        agent.metrics()
    );
    drop(ghost);
}

// --- kube-proxy's mode, re-read --------------------------------------------------------------------

/// kube-proxy restarted in IPVS mode under a running agent: within the re-probe interval the agent
/// reports only (`dataplane`), and a ghost with evidence is kept; back in nftables mode, it goes.
#[test]
fn a_kube_proxy_mode_change_is_seen_while_running() {
    let Some((mut s, a, b, _, ghost)) = two_backends("agent_e2e_watch_mode", false, 43) else {
        return;
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&[
            "--resync-interval",
            "1s",
            "--kube-proxy-mode-interval",
            "300ms",
        ])
        .start();
    kp.set_mode("ipvs");
    // Several probe intervals (setup; the hold below is the proof).
    std::thread::sleep(Duration::from_millis(1500));

    s.lab.sync_services(&[web("shop", 43, &b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    kp.synced_now();
    let mut m = String::new();
    let held = wait_for(Duration::from_secs(10), || {
        m = agent.metrics();
        metric_sum(&m, r#"ghostbuster_report_only{reason="dataplane"}"#) >= 1.0
    });
    assert!(held, "IPVS not seen: {m}");
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "removed in IPVS mode"
    );

    kp.set_mode("nftables");
    kp.synced_now();
    let removed = wait_for(Duration::from_secs(15), || {
        entries_to(&table(&s.node()), dead).is_empty()
    });
    assert!(
        removed,
        "not removed back in nftables mode: {}",
        agent.metrics()
    );
    drop(ghost);
}

// --- /debug/recent on localhost only ---------------------------------------------------------------

/// The agent on the node's address, as the DaemonSet runs it: `/metrics` answers any client, but
/// `/debug/recent` (tuples of removed flows) only a client on localhost — through the extra
/// 127.0.0.1 listener — unless `--expose-debug-recent`.
#[test]
fn debug_recent_is_served_on_localhost_only_unless_exposed() {
    let Some(s) = Story::start("agent_e2e_watch_debug", false) else {
        return;
    };
    let node = s.node();
    let node_ip = IpAddr::V4(s.lab.node().ipv4());
    let api = NsApiServer::start(&node);
    let kp = FakeKubeProxy::start_in("nftables", Some(&node));
    for (expose, want_remote) in [(false, 403), (true, 200)] {
        let port = free_port_in(Some(&node));
        let kc = Agent::kubeconfig_file(&api.kubeconfig());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node, env!("CARGO_BIN_EXE_ghostbuster")])
            .args([
                "--log",
                "info",
                "agent",
                "--node-name",
                netlab::node::NODE_NAME,
            ])
            .arg("--kubeconfig")
            .arg(&kc.0)
            .args(["--listen", &format!("{node_ip}:{port}")])
            .args([
                "--kube-proxy-metrics-url",
                &format!("http://{}/metrics", kp.addr),
            ])
            .args([
                "--kube-proxy-mode-url",
                &format!("http://{}/proxyMode", kp.addr),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if expose {
            cmd.arg("--expose-debug-recent");
        }
        let mut child = cmd.spawn().expect("start the agent");
        let remote = SocketAddr::new(node_ip, port);
        let from_client = |path: &str| {
            netlab::in_netns(&s.client, || timed_get(remote, path))
                .ok()
                .flatten()
        };
        let up = wait_for(Duration::from_secs(20), || {
            from_client("/metrics").is_some_and(|r| r.0 == 200)
        });
        assert!(up, "the agent's admin server never answered on {remote}");
        let (code, body, _) = from_client("/debug/recent").expect("an answer");
        assert_eq!(code, want_remote, "expose={expose}: {body}");
        if !expose {
            assert!(body.contains("--expose-debug-recent"), "{body}");
            // On the node itself, through the node address: not loopback either.
            let on_node = netlab::in_netns(&node, || timed_get(remote, "/debug/recent"))
                .unwrap()
                .unwrap();
            assert_eq!(on_node.0, 403);
        }
        // On the node through 127.0.0.1: always.
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let (code, body, _) = netlab::in_netns(&node, || timed_get(local, "/debug/recent"))
            .unwrap()
            .expect("the loopback listener answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"flows\""), "{body}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
