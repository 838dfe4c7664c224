//! DNAT rules shaped after kube-proxy's iptables proxier (`pkg/proxy/iptables/proxier.go` in
//! kubernetes/kubernetes), the mode most clusters run. Same chains, same dispatch, same chain-name
//! hashing:
//!
//! - `nat`: `PREROUTING`/`OUTPUT` → `KUBE-SERVICES` → per service port `KUBE-SVC-<hash>`, whose
//!   `-m statistic --mode random --probability 1/(n-i)` rules spread new connections over
//!   per-endpoint `KUBE-SEP-<hash>` chains doing the hairpin `-s <ep> -j KUBE-MARK-MASQ` and the
//!   `DNAT --to-destination`; traffic to a ClusterIP from outside the cluster CIDR is marked in the
//!   `KUBE-SVC-` chain; NodePorts go through `KUBE-NODEPORTS` (the last rule of `KUBE-SERVICES`)
//!   and external IPs straight from `KUBE-SERVICES`, both to a `KUBE-EXT-<hash>` chain that marks
//!   and then jumps to `KUBE-SVC-`; `KUBE-MARK-MASQ` sets the mark (0x4000) and
//!   `KUBE-POSTROUTING` masquerades marked packets (`--random-fully`); ClientIP session affinity
//!   uses `-m recent --name KUBE-SEP-<hash>` as kube-proxy does.
//! - `filter`: a port without usable endpoints gets `-j REJECT` in `KUBE-SERVICES` (ClusterIP,
//!   from `FORWARD`/`OUTPUT`) and `KUBE-EXTERNAL-SERVICES` (external IPs and NodePorts, from
//!   `INPUT`/`FORWARD`), both for `--ctstate NEW` only.
//!
//! A conntrack entry made by these rules is the same as one made by the nftables mode
//! ([`crate::kube_proxy`]): DST_NAT, reply tuple from the pod, masqueraded reply destination for
//! NodePort and hairpin traffic. That is what lets every lab test run in both modes.
//!
//! A sync writes the node's *whole* `filter` and `nat` tables with one `iptables-restore` (and one
//! `ip6tables-restore`) without `--noflush`: each table is replaced atomically, so chains of
//! vanished services and endpoints disappear in the same step (the lab's node is its own network
//! namespace and owns those tables).
//!
//! Simplified relative to kube-proxy (see also [`SIMPLIFICATIONS`]), mostly as in the nftables
//! renderer:
//! - always a full restore; kube-proxy restores with `--noflush` and syncs changed services
//!   partially, deleting stale chains with `-X` lines;
//! - no Local traffic policies (`KUBE-SVL-`, the `KUBE-EXT-` short-circuits), no LoadBalancer
//!   (`KUBE-FW-`, `KUBE-PROXY-FIREWALL`), no health-check NodePorts, no `KUBE-FORWARD` and no
//!   `KUBE-FIREWALL` (the nftables renderer has no counterpart of them either);
//! - for parity with the nftables mode's `cluster-ips-check`, `KUBE-CLUSTER-IPS-CHECK` in
//!   `filter` rejects new traffic to a ClusterIP on a port it does not serve and drops traffic to
//!   unallocated addresses of the service CIDR;
//! - with more than one pod CIDR per family (the lab has two), "not from the cluster" cannot be
//!   one `! -s` match: the `KUBE-SVC-` rule jumps to `KUBE-MARK-MASQ-NONLOCAL`, which returns
//!   for each pod CIDR and marks the rest; with one CIDR the rule is kube-proxy's own;
//! - services and ports are rendered in sorted order (kube-proxy: map order).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::chain_name::sha256;
use crate::kube_proxy::ProxyConfig;
use crate::model::{Endpoint, Protocol, Service, ServicePort};

/// The list of simplifications, for readers of a rendered ruleset.
pub const SIMPLIFICATIONS: &str = "\
# Rendered by netlab::kube_proxy_iptables from a small Service model; shaped after kube-proxy's
# iptables proxier (pkg/proxy/iptables/proxier.go). Simplified relative to kube-proxy:
# - always a full restore of the filter and nat tables (kube-proxy: --noflush, partial syncs);
# - no Local traffic policies, LoadBalancers, health-check NodePorts, KUBE-FORWARD, KUBE-FIREWALL;
# - KUBE-CLUSTER-IPS-CHECK mirrors the nftables mode's cluster-ips-check;
# - several pod CIDRs per family: KUBE-MARK-MASQ-NONLOCAL replaces `! -s <cluster cidr>`;
# - services appear in sorted order instead of Go map order.
";

/// Chain that marks traffic from outside every pod CIDR (only rendered with several CIDRs).
pub const NONLOCAL_CHAIN: &str = "KUBE-MARK-MASQ-NONLOCAL";
/// The lab's counterpart of the nftables mode's `cluster-ips-check` chain.
pub const CLUSTER_IPS_CHECK_CHAIN: &str = "KUBE-CLUSTER-IPS-CHECK";

/// The two `*-restore` inputs of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `iptables-restore` input (`filter` and `nat`).
    pub v4: String,
    /// `ip6tables-restore` input (`filter` and `nat`).
    pub v6: String,
}

/// kube-proxy's `portProtoHash`: the first 16 characters of the standard base32 encoding (RFC
/// 4648 alphabet) of `sha256(servicePortName + protocol)`, with `servicePortName` as
/// `namespace/name:port` (`namespace/name` for an unnamed port) and `protocol` lower-case.
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    base32_prefix16(&sha256(format!("{service_port_name}{protocol}").as_bytes()))
}

/// kube-proxy's `servicePortPolicyClusterChain`: `KUBE-SVC-` + [`port_proto_hash`].
pub fn service_chain_name(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(service_port_name, protocol))
}

/// kube-proxy's `serviceExternalChainName`: `KUBE-EXT-` + [`port_proto_hash`].
pub fn external_chain_name(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(service_port_name, protocol))
}

/// kube-proxy's `servicePortEndpointChainName`: `KUBE-SEP-` + the first 16 base32 characters of
/// `sha256(servicePortName + protocol + endpoint)`, `endpoint` being `ip:port` (`[ip6]:port`).
pub fn endpoint_chain_name(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    let digest = sha256(format!("{service_port_name}{protocol}{endpoint}").as_bytes());
    format!("KUBE-SEP-{}", base32_prefix16(&digest))
}

/// `ServicePortName.String()`: `namespace/name:port`, or `namespace/name` for an unnamed port.
pub fn service_port_name(svc: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        svc.key()
    } else {
        format!("{}:{}", svc.key(), port.name)
    }
}

/// 16 base32 characters = the first 80 bits (10 bytes) of `digest`.
fn base32_prefix16(digest: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
    (0..16)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]))
        .collect()
}

/// kube-proxy's `computeProbability`: `1/n` with ten decimals.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// A comment argument as kube-proxy writes it: quoted when it holds a space.
fn comment(text: &str) -> String {
    if text.contains(' ') {
        format!("-m comment --comment \"{text}\"")
    } else {
        format!("-m comment --comment {text}")
    }
}

fn proto_match(p: Protocol) -> String {
    let name = p.nft();
    format!("-m {name} -p {name}")
}

fn endpoint_string(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Renders both families' `filter` and `nat` tables for `services`.
pub fn render(config: &ProxyConfig, services: &[Service]) -> Rendered {
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.key());
    Rendered {
        v4: render_family(config, &sorted, false),
        v6: render_family(config, &sorted, true),
    }
}

#[derive(Default)]
struct Tables {
    filter_services: Vec<String>,
    filter_external: Vec<String>,
    cluster_ips: Vec<IpAddr>,
    nat_chains: Vec<String>,
    nat_services: Vec<String>,
    nat_nodeports: Vec<String>,
    nat_rules: Vec<String>,
}

fn render_family(config: &ProxyConfig, services: &[&Service], v6: bool) -> String {
    let mark = format!("{:#x}", config.masquerade_mark);
    let cidrs = if v6 {
        &config.cluster_cidrs_v6
    } else {
        &config.cluster_cidrs_v4
    };
    let mut t = Tables::default();
    for svc in services {
        let mut ports: Vec<&ServicePort> = svc.ports.iter().collect();
        ports.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
        for port in ports {
            render_service_port(&mut t, cidrs, svc, port, v6);
        }
    }

    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("*filter");
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        line(&format!(":{chain} ACCEPT [0:0]"));
    }
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        CLUSTER_IPS_CHECK_CHAIN,
    ] {
        line(&format!(":{chain} - [0:0]"));
    }
    let new = "-m conntrack --ctstate NEW";
    let ext = comment("kubernetes externally-visible service portals");
    let portals = comment("kubernetes service portals");
    let check = comment("kubernetes cluster IPs check");
    line(&format!("-A INPUT {new} {ext} -j KUBE-EXTERNAL-SERVICES"));
    line(&format!("-A FORWARD {new} {ext} -j KUBE-EXTERNAL-SERVICES"));
    line(&format!("-A FORWARD {new} {portals} -j KUBE-SERVICES"));
    line(&format!(
        "-A FORWARD {new} {check} -j {CLUSTER_IPS_CHECK_CHAIN}"
    ));
    line(&format!("-A OUTPUT {new} {portals} -j KUBE-SERVICES"));
    line(&format!(
        "-A OUTPUT {new} {check} -j {CLUSTER_IPS_CHECK_CHAIN}"
    ));
    for rule in t.filter_services.iter().chain(&t.filter_external) {
        line(rule);
    }
    let host_len = if v6 { 128 } else { 32 };
    for vip in &t.cluster_ips {
        line(&format!(
            "-A {CLUSTER_IPS_CHECK_CHAIN} {} -d {vip}/{host_len} -j REJECT",
            comment("Reject traffic to invalid ports of ClusterIPs")
        ));
    }
    let service_cidr = if v6 {
        &config.service_cidr_v6
    } else {
        &config.service_cidr_v4
    };
    if let Some(cidr) = service_cidr {
        line(&format!(
            "-A {CLUSTER_IPS_CHECK_CHAIN} {} -d {cidr} -j DROP",
            comment("Drop traffic to unallocated ClusterIPs")
        ));
    }
    line("COMMIT");

    line("*nat");
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        line(&format!(":{chain} ACCEPT [0:0]"));
    }
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-NODEPORTS".to_string(),
        "KUBE-POSTROUTING".to_string(),
        "KUBE-MARK-MASQ".to_string(),
    ];
    let several_cidrs = cidrs.len() > 1;
    if several_cidrs {
        chains.push(NONLOCAL_CHAIN.to_string());
    }
    chains.extend(t.nat_chains.iter().cloned());
    for chain in &chains {
        line(&format!(":{chain} - [0:0]"));
    }
    line(&format!("-A PREROUTING {portals} -j KUBE-SERVICES"));
    line(&format!("-A OUTPUT {portals} -j KUBE-SERVICES"));
    line(&format!(
        "-A POSTROUTING {} -j KUBE-POSTROUTING",
        comment("kubernetes postrouting rules")
    ));
    line(&format!("-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"));
    line(&format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    ));
    line(&format!("-A KUBE-POSTROUTING -j MARK --xor-mark {mark}"));
    line(&format!(
        "-A KUBE-POSTROUTING {} -j MASQUERADE --random-fully",
        comment("kubernetes service traffic requiring SNAT")
    ));
    if several_cidrs {
        for cidr in cidrs {
            line(&format!("-A {NONLOCAL_CHAIN} -s {cidr} -j RETURN"));
        }
        line(&format!("-A {NONLOCAL_CHAIN} -j KUBE-MARK-MASQ"));
    }
    for rule in t.nat_services.iter().chain(&t.nat_nodeports) {
        line(rule);
    }
    let last =
        comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
    let node_ips: Vec<&IpAddr> = config
        .node_ips
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    if config.node_ips.is_empty() {
        line(&format!(
            "-A KUBE-SERVICES {last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        ));
    } else {
        // `--nodeport-addresses`: one rule per node address instead of `--dst-type LOCAL`.
        for ip in node_ips {
            line(&format!(
                "-A KUBE-SERVICES {last} -d {ip}/{host_len} -j KUBE-NODEPORTS"
            ));
        }
    }
    for rule in &t.nat_rules {
        line(rule);
    }
    line("COMMIT");
    out
}

fn render_service_port(
    t: &mut Tables,
    cidrs: &[String],
    svc: &Service,
    port: &ServicePort,
    v6: bool,
) {
    let family = |a: &&IpAddr| a.is_ipv6() == v6;
    let cluster_ips: Vec<&IpAddr> = svc.cluster_ips.iter().filter(family).collect();
    let external_ips: Vec<&IpAddr> = svc.external_ips.iter().filter(family).collect();
    if cluster_ips.is_empty() && external_ips.is_empty() {
        return;
    }
    let host_len = if v6 { 128 } else { 32 };
    let proto = port.protocol.nft();
    let pm = proto_match(port.protocol);
    let name = service_port_name(svc, port);
    let svc_chain = service_chain_name(&name, proto);
    let ext_chain = external_chain_name(&name, proto);
    let endpoints = svc.usable_endpoints(v6);
    t.cluster_ips.extend(cluster_ips.iter().copied());

    if endpoints.is_empty() {
        // kube-proxy: no nat chains at all, only REJECT rules in the filter table.
        let why = comment(&format!("{name} has no endpoints"));
        for vip in &cluster_ips {
            t.filter_services.push(format!(
                "-A KUBE-SERVICES {why} {pm} -d {vip}/{host_len} --dport {} -j REJECT",
                port.port
            ));
        }
        for ext in &external_ips {
            t.filter_external.push(format!(
                "-A KUBE-EXTERNAL-SERVICES {why} {pm} -d {ext}/{host_len} --dport {} -j REJECT",
                port.port
            ));
        }
        if let Some(node_port) = port.node_port {
            t.filter_external.push(format!(
                "-A KUBE-EXTERNAL-SERVICES {why} -m addrtype --dst-type LOCAL {pm} --dport {node_port} -j REJECT"
            ));
        }
        return;
    }

    let externally_accessible = port.node_port.is_some() || !external_ips.is_empty();
    let eps: Vec<(String, String, &Endpoint)> = endpoints
        .iter()
        .map(|ep| {
            let target = endpoint_string(ep.ip, port.target_port);
            (endpoint_chain_name(&name, proto, &target), target, *ep)
        })
        .collect();

    t.nat_chains.push(svc_chain.clone());
    if externally_accessible {
        t.nat_chains.push(ext_chain.clone());
    }
    t.nat_chains
        .extend(eps.iter().map(|(chain, _, _)| chain.clone()));

    let cluster_comment = comment(&format!("{name} cluster IP"));
    for vip in &cluster_ips {
        t.nat_services.push(format!(
            "-A KUBE-SERVICES {cluster_comment} {pm} -d {vip}/{host_len} --dport {} -j {svc_chain}",
            port.port
        ));
    }
    let external_comment = comment(&format!("{name} external IP"));
    for ext in &external_ips {
        t.nat_services.push(format!(
            "-A KUBE-SERVICES {external_comment} {pm} -d {ext}/{host_len} --dport {} -j {ext_chain}",
            port.port
        ));
    }
    if let Some(node_port) = port.node_port {
        t.nat_nodeports.push(format!(
            "-A KUBE-NODEPORTS {} {pm} --dport {node_port} -j {ext_chain}",
            comment(&name)
        ));
    }

    if externally_accessible {
        // NodePort and external IP traffic is always masqueraded (Cluster traffic policy).
        t.nat_rules.push(format!(
            "-A {ext_chain} {} -j KUBE-MARK-MASQ",
            comment(&format!(
                "masquerade traffic for {name} external destinations"
            ))
        ));
        t.nat_rules.push(format!("-A {ext_chain} -j {svc_chain}"));
    }

    for vip in &cluster_ips {
        let dst = format!("{pm} -d {vip}/{host_len} --dport {}", port.port);
        match cidrs {
            [] => {}
            [cidr] => t.nat_rules.push(format!(
                "-A {svc_chain} {cluster_comment} {dst} ! -s {cidr} -j KUBE-MARK-MASQ"
            )),
            _ => t.nat_rules.push(format!(
                "-A {svc_chain} {cluster_comment} {dst} -j {NONLOCAL_CHAIN}"
            )),
        }
    }
    if let Some(timeout) = svc.session_affinity {
        for (chain, target, _) in &eps {
            t.nat_rules.push(format!(
                "-A {svc_chain} {} -m recent --name {chain} --rcheck --seconds {timeout} --reap -j {chain}",
                comment(&format!("{name} -> {target}"))
            ));
        }
    }
    let n = eps.len();
    for (i, (chain, target, _)) in eps.iter().enumerate() {
        let mut rule = format!("-A {svc_chain} {}", comment(&format!("{name} -> {target}")));
        if i < n - 1 {
            let _ = write!(
                rule,
                " -m statistic --mode random --probability {}",
                probability(n - i)
            );
        }
        let _ = write!(rule, " -j {chain}");
        t.nat_rules.push(rule);
    }

    for (chain, target, ep) in &eps {
        let c = comment(&name);
        // Hairpin: a pod reaching itself through its service must be masqueraded.
        t.nat_rules.push(format!(
            "-A {chain} {c} -s {}/{host_len} -j KUBE-MARK-MASQ",
            ep.ip
        ));
        let affinity = if svc.session_affinity.is_some() {
            format!(" -m recent --name {chain} --set")
        } else {
            String::new()
        };
        t.nat_rules.push(format!(
            "-A {chain} {c}{affinity} {pm} -j DNAT --to-destination {target}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{example_services, ProxyMode};

    fn config() -> ProxyConfig {
        ProxyConfig {
            mode: ProxyMode::Iptables,
            ..ProxyConfig::default()
        }
    }

    /// The expected names are literals from kube-proxy's own tests
    /// (`pkg/proxy/iptables/proxier_test.go`): `ns1/svc1:p80` over TCP is `KUBE-SVC-XPGD46QRK7WJZT7O`,
    /// its endpoint `10.180.0.1:80` is `KUBE-SEP-SXIVWICOYRO3J4NJ`, and every cluster's DNS
    /// service `kube-system/kube-dns:dns` over UDP is `KUBE-SVC-TCOU7JCQXEZGVUNU`. The lab's own
    /// `shop/web:http` values were computed independently with Python's
    /// `base64.b32encode(hashlib.sha256(b"shop/web:httptcp").digest())[:16]`.
    #[test]
    fn chain_names_equal_kube_proxys() {
        assert_eq!(
            service_chain_name("ns1/svc1:p80", "tcp"),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            external_chain_name("ns1/svc1:p80", "tcp"),
            "KUBE-EXT-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            service_chain_name("kube-system/kube-dns:dns", "udp"),
            "KUBE-SVC-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(port_proto_hash("shop/web:http", "tcp"), "67NZLRHBNDSAWJRO");
        assert_eq!(
            endpoint_chain_name("shop/web:http", "tcp", "203.0.113.11:8080"),
            "KUBE-SEP-ZE6JXPUENRXSHJ3C"
        );
        assert_eq!(
            endpoint_chain_name("shop/web:http", "tcp", "[2001:db8:2::11]:8080"),
            "KUBE-SEP-K6CCK6RFO6UFONNA"
        );
    }

    #[test]
    fn probabilities_are_kube_proxys() {
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
    }

    #[test]
    fn shape_follows_kube_proxy() {
        let r = render(&config(), &example_services());
        for needle in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A KUBE-SERVICES -m comment --comment \"shop/web:http cluster IP\" -m tcp -p tcp -d 198.51.100.10/32 --dport 80 -j KUBE-SVC-67NZLRHBNDSAWJRO",
            "-A KUBE-SVC-67NZLRHBNDSAWJRO -m comment --comment \"shop/web:http -> 203.0.113.11:8080\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-ZE6JXPUENRXSHJ3C",
            "-A KUBE-SEP-ZE6JXPUENRXSHJ3C -m comment --comment shop/web:http -s 203.0.113.11/32 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-ZE6JXPUENRXSHJ3C -m comment --comment shop/web:http -m tcp -p tcp -j DNAT --to-destination 203.0.113.11:8080",
            "-A KUBE-NODEPORTS -m comment --comment shop/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-67NZLRHBNDSAWJRO",
            "-A KUBE-EXT-67NZLRHBNDSAWJRO -j KUBE-SVC-67NZLRHBNDSAWJRO",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-j MASQUERADE --random-fully",
            "-A KUBE-SERVICES -m comment --comment \"shop/empty:http has no endpoints\" -m tcp -p tcp -d 198.51.100.99/32 --dport 80 -j REJECT",
            "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30099 -j REJECT",
            "-m sctp -p sctp -j DNAT --to-destination 203.0.113.31:3868",
            "-m recent --name KUBE-SEP-",
            "-j KUBE-MARK-MASQ-NONLOCAL",
        ] {
            assert!(r.v4.contains(needle), "missing {needle:?} in\n{}", r.v4);
        }
        assert!(r
            .v6
            .contains("-j DNAT --to-destination [2001:db8:2::11]:8080"));
        assert!(r.v6.contains(":KUBE-SEP-K6CCK6RFO6UFONNA - [0:0]"));
        // The terminating endpoint is not used while ready ones exist; the no-endpoint service
        // has no nat chains.
        assert!(!r.v4.contains("203.0.113.13:8080"));
        assert!(!r.v4.contains(&service_chain_name("shop/empty:http", "tcp")));
        // Each chain is declared once.
        let declared: Vec<&str> = r.v4.lines().filter(|l| l.starts_with(':')).collect();
        let unique: std::collections::BTreeSet<_> = declared.iter().collect();
        // INPUT, OUTPUT and KUBE-SERVICES exist in both tables.
        assert_eq!(declared.len(), unique.len() + 3, "{declared:#?}");
    }

    #[test]
    fn one_cluster_cidr_uses_kube_proxys_negated_source() {
        let cfg = ProxyConfig {
            cluster_cidrs_v4: vec!["203.0.113.0/24".into()],
            ..config()
        };
        let r = render(&cfg, &example_services());
        assert!(r.v4.contains(
            "-m tcp -p tcp -d 198.51.100.10/32 --dport 80 ! -s 203.0.113.0/24 -j KUBE-MARK-MASQ"
        ));
        assert!(!r.v4.contains(NONLOCAL_CHAIN));
        assert!(r.v6.contains(NONLOCAL_CHAIN));
    }
}
