//! The kube-proxy-shaped ruleset in a real kernel: the fixture loads, a re-sync removes stale
//! chains, SCTP is DNAT'd where the kernel has SCTP, echo servers work, and a pod deleted the
//! loud way makes clients fail fast (the contrast to a silent one).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use netlab::kube_proxy::example_services;
use netlab::{
    in_netns, plan, AppProtocol, Lab, PodSpec, Protocol, ProxyConfig, ProxyMode, ServerSpec,
    Service, ServicePort, TcpPool, TcpPoolConfig,
};

#[test]
fn example_ruleset_loads_and_resync_removes_stale_chains() {
    if !common::lab_available("example_ruleset_loads_and_resync_removes_stale_chains") {
        return;
    }
    // This test reads nft's listing: nftables mode even under GB_LAB_PROXY_MODE=iptables
    // (tests/iptables_mode.rs is its iptables counterpart).
    let mut lab = Lab::with_config(ProxyConfig {
        mode: ProxyMode::Nftables,
        ..ProxyConfig::default()
    })
    .expect("lab");
    let services = example_services();
    lab.sync_services(&services)
        .expect("example loads into nft");
    let listed = lab.kube_proxy().list().expect("list");
    assert!(listed.contains("numgen random mod 2 vmap"), "{listed}");
    assert!(
        listed.contains("meta l4proto sctp dnat to 203.0.113.31:3868"),
        "{listed}"
    );
    assert!(listed.contains("dnat to [2001:db8:2::11]:8080"), "{listed}");
    assert!(listed.contains("__203.0.113.11/8080"));

    // Rolling update: web-7d4b9-a1 leaves; its endpoint chains must go, in the same transaction.
    let mut next = services.clone();
    next[0]
        .endpoints
        .retain(|e| e.pod.as_deref() != Some("web-7d4b9-a1"));
    lab.sync_services(&next).expect("re-sync");
    let listed = lab.kube_proxy().list().expect("list");
    assert!(!listed.contains("__203.0.113.11/8080"), "{listed}");
    assert!(!listed.contains("__2001.db8.2..11/8080"), "{listed}");
    assert!(listed.contains("numgen random mod 1 vmap"));
    // Deleting a whole service removes its chains and affinity sets.
    lab.sync_services(&next[..2])
        .expect("re-sync without signal");
    let listed = lab.kube_proxy().list().expect("list");
    assert!(!listed.contains("telecom/signal"), "{listed}");
    assert_eq!(lab.kube_proxy().syncs(), 3);
}

#[test]
fn echo_servers_and_sctp_where_the_kernel_has_it() {
    if !common::lab_available("echo_servers_and_sctp_where_the_kernel_has_it") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let client = lab
        .add_pod(PodSpec::client("client"))
        .unwrap()
        .netns()
        .to_string();
    let sctp = in_netns(&client, netlab::sctp::supported).expect("probe");
    let mut spec = PodSpec::backend("echo-0").serve(ServerSpec::tcp_echo(7000, "echo-0"));
    if sctp {
        spec = spec.serve(ServerSpec::sctp_echo(7001, "echo-0"));
    }
    let eps = lab.add_pod(spec).unwrap().endpoints();
    let mut svc = Service::new("default", "echo")
        .cluster_ip(plan::vip_v4(70))
        .port(ServicePort::tcp("tcp", 7, 7000))
        .port(ServicePort::sctp("sctp", 7, 7001))
        .endpoints(eps);
    svc.session_affinity = None;
    lab.sync_services(&[svc]).expect("sync with an SCTP port");

    let mut transports = vec![Protocol::Tcp];
    if sctp {
        transports.push(Protocol::Sctp);
    } else {
        eprintln!(
            "NOTE: this kernel cannot create SCTP sockets (CONFIG_IP_SCTP unset); SCTP rules were \
             loaded but SCTP traffic is not exercised"
        );
    }
    for transport in transports {
        let pool = TcpPool::start(
            &client,
            SocketAddr::from((plan::vip_v4(70), 7)),
            TcpPoolConfig {
                connections: 2,
                protocol: AppProtocol::Echo,
                transport,
                interval: Duration::from_millis(50),
                run_for: Duration::from_secs(5),
                ..TcpPoolConfig::default()
            },
        )
        .expect("pool");
        assert!(
            pool.wait_answers(3, Duration::from_secs(3)),
            "{transport:?}: {:#?}",
            pool.report()
        );
        let report = pool.stop();
        assert!(
            report.errors.is_empty(),
            "{transport:?}: {:?}",
            report.errors
        );
    }
}

#[test]
fn a_pod_deleted_the_loud_way_makes_clients_fail_fast() {
    if !common::lab_available("a_pod_deleted_the_loud_way_makes_clients_fail_fast") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let eps = lab
        .add_pod(PodSpec::backend("web-a").serve(ServerSpec::http(8080, 200, "web-a")))
        .unwrap()
        .endpoints();
    let client = lab
        .add_pod(PodSpec::client("client"))
        .unwrap()
        .netns()
        .to_string();
    let svc = Service::new("default", "web")
        .cluster_ip(plan::vip_v4(20))
        .port(ServicePort::tcp("http", 80, 8080))
        .endpoints(eps);
    lab.sync_services(&[svc]).expect("sync");
    let pool = TcpPool::start(
        &client,
        SocketAddr::from((plan::vip_v4(20), 80)),
        TcpPoolConfig {
            connections: 2,
            interval: Duration::from_millis(50),
            run_for: Duration::from_secs(5),
            reconnect: false,
            ..TcpPoolConfig::default()
        },
    )
    .expect("pool");
    assert!(pool.wait_answers(2, Duration::from_secs(2)));
    lab.delete_pod("web-a").expect("delete");
    std::thread::sleep(Duration::from_millis(500));
    let report = pool.stop();
    assert_eq!(report.stuck_connections(), 0, "{report:#?}");
    assert!(
        report.errors.len() >= 2,
        "closed connections must be noticed: {report:#?}"
    );
}
