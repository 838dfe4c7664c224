//! Shared by the real-kernel tests: the root/tool gate and conntrack listing through the
//! `conntrack` tool (test code only; the product uses ctnetlink).

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use netlab::{
    plan, Endpoint, Lab, PodSpec, ServerSpec, Service, ServicePort, TcpPool, TcpPoolConfig,
};

/// True when the test may run. Outside CI a missing privilege or tool is a skip with a printed
/// reason; in CI (`CI` set) it is a failure, so a green CI run always means the tests ran.
pub fn lab_available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !netlab::is_root() {
        missing.push("root (CAP_NET_ADMIN + CAP_SYS_ADMIN)".to_string());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
    ] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok();
        if !found {
            missing.push(format!("`{tool}` (apt-get install {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} needs {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{reason}; in CI this is a failure, not a skip");
    }
    eprintln!("SKIP {reason}");
    false
}

/// [`lab_available`] plus `iptables-restore`/`ip6tables-restore`/`iptables-save` (Debian's
/// `iptables` package), for the tests of kube-proxy's iptables mode. Same rule: a skip with a
/// printed reason outside CI, a failure in CI.
pub fn iptables_available(test: &str) -> bool {
    if !lab_available(test) {
        return false;
    }
    let missing: Vec<&str> = ["iptables-restore", "ip6tables-restore", "iptables-save"]
        .into_iter()
        .filter(|tool| Command::new(tool).arg("--version").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{test} needs {} (apt-get install iptables)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{reason}; in CI this is a failure, not a skip");
    }
    eprintln!("SKIP {reason}");
    false
}

/// `conntrack -L` lines of namespace `netns` (`-f ipv6` when `v6`).
pub fn conntrack_list(netns: &str, v6: bool) -> Vec<String> {
    let mut args = vec!["netns", "exec", netns, "conntrack", "-L"];
    if v6 {
        args.extend(["-f", "ipv6"]);
    }
    let out = Command::new("ip")
        .args(&args)
        .output()
        .expect("run conntrack -L");
    assert!(
        out.status.success(),
        "conntrack -L failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Deletes the entries whose reply source is `backend` (`conntrack -D --reply-src`), the manual
/// fix from the seeds; returns how many went.
pub fn conntrack_delete_backend(netns: &str, backend: &str) -> usize {
    let mut args = vec![
        "netns",
        "exec",
        netns,
        "conntrack",
        "-D",
        "--reply-src",
        backend,
    ];
    if backend.contains(':') {
        args.extend(["-f", "ipv6"]);
    }
    let out = Command::new("ip")
        .args(&args)
        .output()
        .expect("run conntrack -D");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Kernel tests that need root but no tools. Outside CI they skip with a reason; in CI a missing
/// privilege fails.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (CAP_NET_ADMIN), and CI must run kernel tests");
    }
    eprintln!("SKIP {test}: needs root to create network namespaces (run as root, or CI=true)");
    false
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The lab backends' HTTP port.
pub const HTTP: u16 = 8080;

/// The ClusterIP Service shop/web: VIP number `vip` in both families, port 80 (NodePort 30080)
/// to the backends' [`HTTP`] port.
pub fn web(vip: u8, endpoints: Vec<Endpoint>) -> Service {
    Service::new("shop", "web")
        .cluster_ip(plan::vip_v4(vip))
        .cluster_ip(plan::vip_v6(vip))
        .port(ServicePort::tcp("http", 80, HTTP).with_node_port(30080))
        .endpoints(endpoints)
}

/// A pool of `connections` long-lived HTTP connections from `client` to `target`, a request on
/// each every 100 ms (each given 300 ms), for `run_for`: watched closely enough that a stuck
/// connection shows within a second.
pub fn watched_pool(
    client: &str,
    target: SocketAddr,
    connections: usize,
    run_for: Duration,
) -> TcpPool {
    TcpPool::start(
        client,
        target,
        TcpPoolConfig {
            connections,
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(300),
            run_for,
            ..TcpPoolConfig::default()
        },
    )
    .expect("pool")
}

/// A backend pod `name` of shop/web (labelled `app: web`): HTTP on [`HTTP`] and a UDP echo on
/// 5353, both answering with its name; its endpoints.
pub fn backend(lab: &mut Lab, name: &str) -> Vec<Endpoint> {
    lab.add_pod(
        PodSpec::backend(name)
            .in_namespace("shop")
            .label("app", "web")
            .serve(ServerSpec::http(HTTP, 200, name))
            .serve(ServerSpec::udp_echo(5353, name)),
    )
    .expect("backend pod")
    .endpoints()
}

/// The lab's client pod; its namespace.
pub fn client(lab: &mut Lab) -> String {
    lab.add_pod(PodSpec::client("client"))
        .expect("client pod")
        .netns()
        .to_string()
}
