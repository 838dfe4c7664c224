//! Real-kernel tests of the lab (root). Each builds its own lab with unique namespace names.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{backend, client, watched_pool, web, HTTP};
use netlab::{
    http_get, plan, udp_query, Endpoint, Lab, PodSpec, ServerSpec, Service, ServicePort, TcpPool,
    TcpPoolConfig, UdpClient, UdpConfig,
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn tcp_through_vip_reaches_a_backend_and_is_dnatted() {
    if !common::lab_available("tcp_through_vip_reaches_a_backend_and_is_dnatted") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let mut eps = backend(&mut lab, "web-a");
    eps.extend(backend(&mut lab, "web-b"));
    let client = client(&mut lab);
    lab.sync_services(&[web(10, eps)]).expect("sync");

    let vip = SocketAddr::from((plan::vip_v4(10), 80));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = http_get(&client, vip, TIMEOUT).expect("answer through the VIP");
        assert_eq!(answer.status, 200);
        seen.insert(answer.backend);
    }
    assert!(
        seen.iter().all(|b| b == "web-a" || b == "web-b"),
        "{seen:?}"
    );
    assert_eq!(
        seen.len(),
        2,
        "numgen should spread 20 connections over both backends"
    );

    let client_ip = lab.pod("client").unwrap().ipv4().unwrap().to_string();
    let dnat: Vec<String> = common::conntrack_list(lab.node_netns(), false)
        .into_iter()
        .filter(|l| l.contains("dst=198.51.100.10 ") && l.contains("dport=80 "))
        .collect();
    assert!(!dnat.is_empty(), "no conntrack entry for the VIP");
    for line in &dnat {
        // Reply tuple: from the backend pod's target port back to the client (no masquerade).
        assert!(line.contains("src=203.0.113."), "{line}");
        assert!(line.contains(&format!("sport={HTTP} ")), "{line}");
        assert!(line.contains(&format!("dst={client_ip} ")), "{line}");
    }

    // The lab as Kubernetes objects: the Service, one slice per family, and the pods.
    let list = lab.kubernetes_objects();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Service").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "EndpointSlice").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "Pod").count(), 3);
}

#[test]
fn rolling_update_new_connections_move_while_pooled_ones_to_a_silent_pod_hang() {
    if !common::lab_available("rolling_update_...") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let a = backend(&mut lab, "web-a");
    let client = client(&mut lab);
    lab.sync_services(&[web(11, a)]).expect("sync");
    let vip = SocketAddr::from((plan::vip_v4(11), 80));

    let pool = watched_pool(&client, vip, 3, Duration::from_secs(20));
    assert!(
        pool.wait_answers(2, TIMEOUT),
        "pool never got answers: {:?}",
        pool.report()
    );
    assert_eq!(pool.report().answers_from("web-a"), pool.report().answers);

    // Rolling update: B comes, the rules move to B, A vanishes silently.
    let b = backend(&mut lab, "web-b");
    lab.sync_services(&[web(11, b)]).expect("sync to B");
    let dead = lab.delete_pod_silently("web-a").expect("silent delete");
    let dead_ip = dead.ips[0].to_string();

    for _ in 0..5 {
        assert_eq!(
            http_get(&client, vip, TIMEOUT)
                .expect("new connection")
                .backend,
            "web-b"
        );
    }

    // Observe: the pooled connections hang — no reset, no answers, just stuck time.
    let before = pool.report();
    std::thread::sleep(Duration::from_secs(2));
    let hung = pool.report();
    assert_eq!(hung.stuck_connections(), 3, "{hung:#?}");
    assert!(
        hung.errors.is_empty(),
        "a silent pod must not fail fast: {:?}",
        hung.errors
    );
    assert_eq!(
        hung.answers, before.answers,
        "nothing may answer on a ghost connection"
    );
    assert!(
        hung.total_stuck >= Duration::from_secs(5),
        "3 connections x ~2 s: {:?}",
        hung.total_stuck
    );
    let ghosts: Vec<String> = common::conntrack_list(lab.node_netns(), false)
        .into_iter()
        .filter(|l| l.contains("ESTABLISHED") && l.contains(&format!("src={dead_ip} ")))
        .collect();
    assert_eq!(
        ghosts.len(),
        3,
        "the ghosts are still in the table: {ghosts:#?}"
    );

    // The manual fix from the seeds: delete the stale entries; the next retransmission is
    // DNAT'd afresh to B, which resets it; the pool reconnects and B answers.
    assert!(common::conntrack_delete_backend(lab.node_netns(), &dead_ip) >= 3);
    let t0 = Instant::now();
    while pool.report().answers_from("web-b") < 3 && t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = pool.stop();
    assert!(report.answers_from("web-b") >= 3, "{report:#?}");
    assert!(
        report.errors_of_kind("ECONNRESET") >= 1,
        "{:?}",
        report.errors
    );
    assert_eq!(report.stuck_connections(), 0);
}

#[test]
fn udp_queries_through_vip_blackhole_on_a_silent_pod() {
    if !common::lab_available("udp_queries_through_vip_blackhole_on_a_silent_pod") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let a = backend(&mut lab, "dns-a");
    let client = client(&mut lab);
    let dns = |eps: Vec<Endpoint>| {
        Service::new("kube-system", "dns")
            .cluster_ip(plan::vip_v4(53))
            .port(ServicePort::udp("dns", 53, 5353))
            .endpoints(eps)
    };
    lab.sync_services(&[dns(a)]).expect("sync");
    let vip = SocketAddr::from((plan::vip_v4(53), 53));
    assert_eq!(
        udp_query(&client, vip, "hello", TIMEOUT).expect("query"),
        "dns-a hello"
    );

    let querier = UdpClient::start(
        &client,
        vip,
        UdpConfig {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            run_for: Duration::from_secs(15),
            ..UdpConfig::default()
        },
    )
    .expect("querier");
    assert!(querier.wait_answers(3, TIMEOUT));

    let b = backend(&mut lab, "dns-b");
    lab.sync_services(&[dns(b)]).expect("sync to B");
    let dead = lab.delete_pod_silently("dns-a").expect("silent delete");
    // A fresh socket (new tuple) reaches B at once...
    assert!(udp_query(&client, vip, "x", TIMEOUT)
        .expect("fresh query")
        .starts_with("dns-b "));
    // ...but the long-lived socket keeps refreshing its entry to the dead pod: a blackhole.
    std::thread::sleep(Duration::from_millis(1500));
    let stuck = querier.report();
    assert_eq!(stuck.answers_from("dns-b"), 0, "{stuck:#?}");
    assert_eq!(stuck.stuck_connections(), 1);
    assert!(stuck.errors_of_kind("timeout") >= 3);

    assert!(common::conntrack_delete_backend(lab.node_netns(), &dead.ips[0].to_string()) >= 1);
    assert!(
        querier.wait_answers(stuck.answers + 3, TIMEOUT),
        "{:#?}",
        querier.report()
    );
    let report = querier.stop();
    assert!(report.answers_from("dns-b") >= 3);
    assert!(report
        .stalls
        .iter()
        .any(|s| s.duration >= Duration::from_secs(1)));
}

#[test]
fn ipv6_service_and_nodeports_in_both_families() {
    if !common::lab_available("ipv6_service_and_nodeports_in_both_families") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let a = backend(&mut lab, "web-a");
    let client = client(&mut lab);
    lab.sync_services(&[web(12, a)]).expect("sync");

    let v6 = SocketAddr::from((plan::vip_v6(12), 80));
    assert_eq!(
        http_get(&client, v6, TIMEOUT).expect("IPv6 VIP").backend,
        "web-a"
    );
    let lines = common::conntrack_list(lab.node_netns(), true);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("dst=2001:db8:3::12 ") && l.contains("src=2001:db8:2::10 ")),
        "{lines:#?}"
    );

    // NodePort on the node's addresses: DNAT'd and masqueraded (reply goes to the node).
    for node_ip in [IpAddr::from(plan::NODE_IPV4), IpAddr::from(plan::NODE_IPV6)] {
        let answer = http_get(&client, SocketAddr::new(node_ip, 30080), TIMEOUT).expect("NodePort");
        assert_eq!(answer.backend, "web-a");
        let lines = common::conntrack_list(lab.node_netns(), node_ip.is_ipv6());
        let np: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("dport=30080 "))
            .collect();
        assert!(!np.is_empty(), "{lines:#?}");
        assert!(
            np.iter().all(|l| l.contains(&format!("dst={node_ip} "))),
            "{np:#?}"
        );
    }

    // A pooled IPv6 connection to a silently deleted pod hangs too (no NDP failure, no ICMPv6).
    let pool = watched_pool(&client, v6, 1, Duration::from_secs(10));
    assert!(pool.wait_answers(1, TIMEOUT));
    lab.delete_pod_silently("web-a").expect("silent delete");
    std::thread::sleep(Duration::from_millis(1500));
    let report = pool.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.stalls.len(), 1, "{report:#?}");
    assert!(report.total_stuck >= Duration::from_secs(1));
}

#[test]
fn ip_reuse_lets_a_half_open_flow_complete_to_the_wrong_service() {
    if !common::lab_available("ip_reuse_lets_a_half_open_flow_complete_to_the_wrong_service") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let a = backend(&mut lab, "web-a");
    let client = client(&mut lab);
    lab.sync_services(&[web(13, a)]).expect("sync");
    // A stops answering while kube-proxy still routes to it: the SYN is DNAT'd to A and dropped.
    let dead = lab.delete_pod_silently("web-a").expect("silent delete");
    let pool = TcpPool::start(
        &client,
        SocketAddr::from((plan::vip_v4(13), 80)),
        TcpPoolConfig {
            connections: 1,
            connect_timeout: Duration::from_secs(5),
            run_for: Duration::from_secs(10),
            ..TcpPoolConfig::default()
        },
    )
    .expect("pool");
    std::thread::sleep(Duration::from_millis(300));
    let syn_sent = common::conntrack_list(lab.node_netns(), false);
    assert!(
        syn_sent
            .iter()
            .any(|l| l.contains("SYN_SENT") && l.contains("[UNREPLIED]")),
        "{syn_sent:#?}"
    );
    // Endpoints move on; a pod of another service gets A's IP and serves the same port.
    lab.sync_services(&[web(13, Vec::new())]).expect("sync");
    let IpAddr::V4(ip) = dead.ips[0] else {
        panic!("IPv4 first")
    };
    lab.add_pod(
        PodSpec::backend("billing-0")
            .in_namespace("billing")
            .with_ipv4(ip)
            .serve(ServerSpec::http(HTTP, 404, "billing-0")),
    )
    .expect("pod reusing the IP");
    // The SYN retransmission completes to billing-0 through the old NAT binding.
    assert!(
        pool.wait_answers(2, Duration::from_secs(5)),
        "{:#?}",
        pool.report()
    );
    let report = pool.stop();
    assert_eq!(
        report.statuses.get(&404).copied(),
        Some(report.answers),
        "{report:#?}"
    );
    assert_eq!(report.answers_from("billing-0"), report.answers);
}

#[test]
fn session_affinity_pins_a_client_to_one_backend() {
    if !common::lab_available("session_affinity_pins_a_client_to_one_backend") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let mut eps = backend(&mut lab, "web-a");
    eps.extend(backend(&mut lab, "web-b"));
    eps.extend(backend(&mut lab, "web-c"));
    let client = client(&mut lab);
    lab.sync_services(&[web(14, eps).with_session_affinity(60)])
        .expect("sync");
    let vip = SocketAddr::from((plan::vip_v4(14), 80));
    let first = http_get(&client, vip, TIMEOUT).expect("answer").backend;
    for _ in 0..10 {
        assert_eq!(
            http_get(&client, vip, TIMEOUT).expect("answer").backend,
            first
        );
    }
}
