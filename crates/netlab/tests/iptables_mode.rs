//! kube-proxy's iptables mode in a real kernel (root, `iptables`): the rendered rules load with
//! `iptables-restore` into the node namespace and read back from `iptables-save` with kube-proxy's
//! chain names, a re-sync drops stale chains, a ClusterIP spreads connections over its backends,
//! the conntrack entries have exactly the shape the nftables mode gives them, and a backend that
//! vanishes leaves ghosts the same way.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::{backend, client, watched_pool, web, HTTP};
use netlab::kube_proxy::example_services;
use netlab::kube_proxy_iptables::{endpoint_chain_name, service_chain_name};
use netlab::{http_get, plan, Lab, ProxyConfig, ProxyMode};

const TIMEOUT: Duration = Duration::from_secs(2);

fn lab(mode: ProxyMode) -> Lab {
    Lab::with_config(ProxyConfig {
        mode,
        ..ProxyConfig::default()
    })
    .expect("lab")
}

/// `nft list ruleset` of the node: what iptables-nft created there.
fn nft_ruleset(netns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rules_load_with_kube_proxys_chain_names_and_resync_drops_stale_chains() {
    if !common::iptables_available(
        "rules_load_with_kube_proxys_chain_names_and_resync_drops_stale_chains",
    ) {
        return;
    }
    let mut lab = lab(ProxyMode::Iptables);
    let services = example_services();
    lab.sync_services(&services)
        .expect("example loads with iptables-restore");
    let saved = lab.kube_proxy().list().expect("iptables-save");
    let svc = service_chain_name("shop/web:http", "tcp");
    let sep_a = endpoint_chain_name("shop/web:http", "tcp", "203.0.113.11:8080");
    let sep_a6 = endpoint_chain_name("shop/web:http", "tcp", "[2001:db8:2::11]:8080");
    // As iptables-save prints them back (it normalises the order of matches and the decimals).
    for needle in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        &format!("-A KUBE-SERVICES -d 198.51.100.10/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j {svc}"),
        &format!("-A {svc} -m comment --comment \"shop/web:http -> 203.0.113.11:8080\" -m statistic --mode random --probability 0.50000000000 -j {sep_a}"),
        &format!("-A {sep_a} -s 203.0.113.11/32 -m comment --comment \"shop/web:http\" -j KUBE-MARK-MASQ"),
        &format!("-A {sep_a} -p tcp -m comment --comment \"shop/web:http\" -m tcp -j DNAT --to-destination 203.0.113.11:8080"),
        &format!("-A {sep_a6} -p tcp -m comment --comment \"shop/web:http\" -m tcp -j DNAT --to-destination [2001:db8:2::11]:8080"),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-j MASQUERADE --random-fully",
        "-A KUBE-NODEPORTS -p tcp -m comment --comment \"shop/web:http\" -m tcp --dport 30080 -j KUBE-EXT-",
        "-p sctp -m comment --comment \"telecom/signal:sig\" -m recent --set --name KUBE-SEP-",
        "-j DNAT --to-destination 203.0.113.31:3868",
        "-A KUBE-SERVICES -d 198.51.100.99/32 -p tcp -m comment --comment \"shop/empty:http has no endpoints\" -m tcp --dport 80 -j REJECT",
        "-A KUBE-CLUSTER-IPS-CHECK -d 198.51.100.0/25 -m comment --comment \"Drop traffic to unallocated ClusterIPs\" -j DROP",
    ] {
        assert!(saved.contains(needle), "missing {needle:?} in\n{saved}");
    }
    assert!(
        !nft_ruleset(lab.node_netns()).contains("table ip kube-proxy"),
        "iptables mode must not load the nftables ruleset"
    );

    // Rolling update: web-7d4b9-a1 leaves; its KUBE-SEP chains go in the same restore.
    let mut next = services.clone();
    next[0]
        .endpoints
        .retain(|e| e.pod.as_deref() != Some("web-7d4b9-a1"));
    lab.sync_services(&next).expect("re-sync");
    let saved = lab.kube_proxy().list().expect("iptables-save");
    assert!(!saved.contains(&sep_a), "{saved}");
    assert!(!saved.contains(&sep_a6), "{saved}");
    assert!(
        !saved
            .lines()
            .any(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("--probability")),
        "one endpoint left per family: {saved}"
    );
    // Deleting a whole service removes its chains.
    lab.sync_services(&next[..2])
        .expect("re-sync without signal");
    let saved = lab.kube_proxy().list().expect("iptables-save");
    assert!(!saved.contains("telecom/signal"), "{saved}");
    assert!(!saved.contains(&service_chain_name("telecom/signal:sig", "sctp")));
    assert_eq!(lab.kube_proxy().syncs(), 3);
    assert_eq!(lab.kube_proxy().mode(), ProxyMode::Iptables);
}

/// A conntrack line without what differs between two runs of the same flow: the timeout, the
/// TCP state, the client's ephemeral port and the id/use counters.
fn shape(line: &str) -> String {
    let mut seen_sport = false;
    let mut seen_dport = false;
    line.split_whitespace()
        .enumerate()
        .filter(|(i, tok)| *i != 2 && !tok.starts_with("use=") && !tok.starts_with("id="))
        .map(|(_, tok)| tok)
        .filter(|tok| !tok.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|tok| {
            // Original sport and reply dport are the client's ephemeral port.
            if tok.starts_with("sport=") && !seen_sport {
                seen_sport = true;
                return "sport=*".to_string();
            }
            if tok.starts_with("dport=") {
                if seen_dport {
                    return "dport=*".to_string();
                }
                seen_dport = true;
            }
            tok.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens connections through a ClusterIP (v4 and v6) and a NodePort in a lab of `mode`; returns
/// the backends that answered the ClusterIP and the shapes of the node's conntrack entries.
fn flows(mode: ProxyMode) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut lab = lab(mode);
    let mut eps = backend(&mut lab, "web-a");
    eps.extend(backend(&mut lab, "web-b"));
    let client = client(&mut lab);
    lab.sync_services(&[web(10, eps)]).expect("sync");
    let mut seen = BTreeSet::new();
    let vip = SocketAddr::from((plan::vip_v4(10), 80));
    for _ in 0..24 {
        let answer = http_get(&client, vip, TIMEOUT).expect("answer through the ClusterIP");
        assert_eq!(answer.status, 200);
        seen.insert(answer.backend);
    }
    for target in [
        SocketAddr::from((plan::vip_v6(10), 80)),
        SocketAddr::new(IpAddr::from(plan::NODE_IPV4), 30080),
        SocketAddr::new(IpAddr::from(plan::NODE_IPV6), 30080),
    ] {
        // Enough tries that both backends appear behind each frontend in either mode.
        for _ in 0..24 {
            http_get(&client, target, TIMEOUT).expect("answer");
        }
    }
    let mut shapes = BTreeSet::new();
    for v6 in [false, true] {
        for line in common::conntrack_list(lab.node_netns(), v6) {
            if line.contains("dport=80 ") || line.contains("dport=30080 ") {
                shapes.insert(shape(&line));
            }
        }
    }
    (seen, shapes)
}

#[test]
fn clusterip_spreads_over_backends_and_conntrack_matches_nftables_mode() {
    if !common::iptables_available(
        "clusterip_spreads_over_backends_and_conntrack_matches_nftables_mode",
    ) {
        return;
    }
    let (seen, ipt) = flows(ProxyMode::Iptables);
    assert_eq!(
        seen,
        BTreeSet::from(["web-a".to_string(), "web-b".to_string()]),
        "-m statistic should spread 24 connections over both backends"
    );
    let (_, nft) = flows(ProxyMode::Nftables);
    assert_eq!(
        ipt, nft,
        "conntrack entries differ between the modes:\niptables {ipt:#?}\nnftables {nft:#?}"
    );
    // ClusterIP: DNAT'd to a pod, reply straight to the client (no masquerade); NodePort: the
    // reply goes to the node (masqueraded). Both backends behind each of the four frontends.
    let client = plan::pod_ipv4(plan::Role::Client, 10).to_string();
    for (frontend, reply_dst) in [
        ("dst=198.51.100.10 ", format!("dst={client} ")),
        ("dst=2001:db8:3::10 ", "dst=2001:db8:1::10 ".to_string()),
        ("dst=198.51.100.250 ", "dst=198.51.100.250 ".to_string()),
        (
            "dst=2001:db8:3::1:250 ",
            "dst=2001:db8:3::1:250 ".to_string(),
        ),
    ] {
        let lines: Vec<&String> = ipt.iter().filter(|l| l.contains(frontend)).collect();
        assert_eq!(lines.len(), 2, "{frontend}: {ipt:#?}");
        for line in lines {
            let reply = line.split_once(" src=").map_or("", |x| x.1);
            let reply = reply.split_once(" src=").map_or("", |x| x.1);
            assert!(reply.contains(&reply_dst), "{line}");
            assert!(reply.contains(&format!("sport={HTTP} ")), "{line}");
        }
    }
}

/// A rolling update whose old pod vanishes silently, in `mode`: (pooled connections stuck,
/// errors, ghost entries to the dead pod, backend of new connections).
fn ghost_story(mode: ProxyMode) -> (usize, usize, usize, String) {
    let mut lab = lab(mode);
    let a = backend(&mut lab, "web-a");
    let client = client(&mut lab);
    lab.sync_services(&[web(11, a)]).expect("sync");
    let vip = SocketAddr::from((plan::vip_v4(11), 80));
    let pool = watched_pool(&client, vip, 3, Duration::from_secs(10));
    assert!(pool.wait_answers(3, TIMEOUT), "{:#?}", pool.report());
    let b = backend(&mut lab, "web-b");
    lab.sync_services(&[web(11, b)]).expect("sync to B");
    let dead = lab.delete_pod_silently("web-a").expect("silent delete");
    let fresh = http_get(&client, vip, TIMEOUT)
        .expect("new connection")
        .backend;
    std::thread::sleep(Duration::from_millis(1500));
    let report = pool.report();
    pool.stop();
    let dead_ip = dead.ips[0].to_string();
    let ghosts = common::conntrack_list(lab.node_netns(), false)
        .into_iter()
        .filter(|l| l.contains("ESTABLISHED") && l.contains(&format!("src={dead_ip} ")))
        .count();
    (
        report.stuck_connections(),
        report.errors.len(),
        ghosts,
        fresh,
    )
}

#[test]
fn a_vanished_backend_leaves_ghosts_as_in_nftables_mode() {
    if !common::iptables_available("a_vanished_backend_leaves_ghosts_as_in_nftables_mode") {
        return;
    }
    let ipt = ghost_story(ProxyMode::Iptables);
    assert_eq!(ipt, (3, 0, 3, "web-b".to_string()), "iptables mode");
    let nft = ghost_story(ProxyMode::Nftables);
    assert_eq!(ipt, nft, "the modes disagree (iptables vs nftables)");
}

/// How connections to a Service without endpoints fail in `mode`: per frontend, the kind of
/// error and whether it came within a second (IPv4; IPv6's first ICMPv6 error may come later in
/// either mode, so it counts as fast).
fn no_endpoint_answers(mode: ProxyMode) -> Vec<(String, &'static str, bool)> {
    let mut lab = lab(mode);
    let client = client(&mut lab);
    lab.sync_services(&[web(12, Vec::new())]).expect("sync");
    let mut out = Vec::new();
    for target in [
        SocketAddr::from((plan::vip_v4(12), 80)),
        SocketAddr::from((plan::vip_v6(12), 80)),
        SocketAddr::new(IpAddr::from(plan::NODE_IPV4), 30080),
        SocketAddr::new(IpAddr::from(plan::NODE_IPV6), 30080),
    ] {
        let t0 = std::time::Instant::now();
        let err = http_get(&client, target, TIMEOUT)
            .expect_err("nothing may answer")
            .to_string()
            .to_lowercase();
        let kind = if err.contains("refused") {
            "refused"
        } else if err.contains("unreachable") || err.contains("no route") {
            "unreachable"
        } else if err.contains("timed out") || err.contains("would block") {
            "timeout"
        } else {
            "other"
        };
        let fast = target.is_ipv6() || t0.elapsed() < Duration::from_secs(1);
        out.push((target.to_string(), kind, fast));
    }
    out
}

#[test]
fn a_service_without_endpoints_fails_fast_as_in_nftables_mode() {
    if !common::iptables_available("a_service_without_endpoints_fails_fast_as_in_nftables_mode") {
        return;
    }
    let ipt = no_endpoint_answers(ProxyMode::Iptables);
    // NodePorts are local: KUBE-EXTERNAL-SERVICES' REJECT answers with a port unreachable. (A
    // ClusterIP without endpoints is not DNAT'd and the node has no route to it: the client
    // gets a fast "unreachable" before the filter table sees the packet, in both modes.)
    for (target, kind, fast) in &ipt[2..] {
        assert_eq!((*kind, *fast), ("refused", true), "{target}");
    }
    assert!(
        ipt.iter()
            .all(|(_, kind, fast)| *fast && *kind != "timeout"),
        "{ipt:#?}"
    );
    let nft = no_endpoint_answers(ProxyMode::Nftables);
    assert_eq!(ipt, nft, "the modes disagree (iptables vs nftables)");
}
