//! DNAT rules shaped after kube-proxy's nftables proxier (`pkg/proxy/nftables/proxier.go` in
//! kubernetes/kubernetes): same table, chain, set and map names, same dispatch (`service-ips`
//! verdict map → per-service-port chain → `numgen random` → per-endpoint chain doing the masquerade
//! mark and `dnat`), same masquerade mark (0x4000) and chain-name hashing. A lab node therefore
//! produces conntrack entries exactly like a real node's: DST_NAT, reply tuple from the pod, and
//! the masqueraded reply destination for NodePort and hairpin traffic.
//!
//! A sync renders the *whole* ruleset and loads it as one `nft -f` transaction, so a "rolling
//! update" is atomic: new connections see either the old or the new backends, never a mix, and
//! existing conntrack entries keep their NAT binding (which is the ghost problem).
//!
//! Simplified relative to kube-proxy (see also [`SIMPLIFICATIONS`]):
//! - always a full sync: the table is flushed and rebuilt (`flush table`, then every set and map
//!   is flushed too, because `flush table` leaves their elements); kube-proxy flushes chain by
//!   chain and does partial syncs of changed services only;
//! - stale service/endpoint chains are deleted in the same transaction; kube-proxy waits ≥ 1 s and
//!   deletes them in a later one;
//! - `externalTrafficPolicy`/`internalTrafficPolicy: Local` (the `local-` chains and the
//!   `fib saddr type local` short-circuits), LoadBalancer ingress IPs and their source ranges
//!   (`firewall-` chains; the `firewall-ips` map exists but stays empty), topology hints and
//!   health-check NodePorts are not modelled;
//! - "local" traffic is detected by the lab's pod CIDRs (kube-proxy: one `--cluster-cidr`);
//! - services are rendered in sorted order (kube-proxy: map order).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::chain_name::hash_prefixed;
use crate::command;
use crate::error::{Error, Result};
use crate::kube_proxy_iptables;
use crate::model::{Endpoint, Service, ServicePort};
use crate::plan;

/// The list of simplifications, as put at the top of the rendered fixture file.
pub const SIMPLIFICATIONS: &str = "\
# Rendered by netlab::kube_proxy from a small Service model; shaped after kube-proxy's nftables
# proxier (pkg/proxy/nftables/proxier.go). Simplified relative to kube-proxy:
# - always a full sync: `flush table` plus a flush of every set and map, then everything is
#   re-added in this one transaction (kube-proxy flushes chain by chain and syncs partially);
# - stale service/endpoint chains are deleted in the same transaction (kube-proxy: >= 1 s later);
# - no Local traffic policies (`local-` chains, `fib saddr type local` short-circuits), no
#   LoadBalancer ingress IPs or source ranges (`firewall-ips` stays empty), no topology hints,
#   no health-check NodePorts;
# - local (pod) traffic is recognised by the lab's pod CIDRs instead of one --cluster-cidr;
# - services appear in sorted order instead of Go map order.
";

/// The masquerade mark kube-proxy uses by default (`--masquerade-bit=14`).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Environment variable that picks the proxy mode of [`ProxyConfig::default`] (and therefore of
/// [`crate::Lab::new`]): `nftables` (also when unset or empty) or `iptables`. It lets every
/// existing kernel test run in kube-proxy's iptables mode without a code change.
pub const PROXY_MODE_ENV: &str = "GB_LAB_PROXY_MODE";

/// Which of kube-proxy's proxiers the lab imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// `--proxy-mode=nftables`: one `ip`/`ip6 kube-proxy` table loaded with `nft -f`.
    #[default]
    Nftables,
    /// `--proxy-mode=iptables`: `KUBE-*` chains in the `nat` and `filter` tables loaded with
    /// `iptables-restore`/`ip6tables-restore` ([`crate::kube_proxy_iptables`]).
    Iptables,
}

impl ProxyMode {
    /// The mode's name as kube-proxy's `/proxyMode` answers it.
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }

    /// Parses `nftables` or `iptables` (case-insensitive).
    pub fn parse(s: &str) -> Option<ProxyMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nftables" | "nft" => Some(ProxyMode::Nftables),
            "iptables" => Some(ProxyMode::Iptables),
            _ => None,
        }
    }

    /// The mode [`PROXY_MODE_ENV`] asks for: nftables when it is unset or empty, an error naming
    /// the bad value otherwise.
    pub fn from_env() -> Result<ProxyMode> {
        match std::env::var(PROXY_MODE_ENV) {
            Err(_) => Ok(ProxyMode::Nftables),
            Ok(v) if v.trim().is_empty() => Ok(ProxyMode::Nftables),
            Ok(v) => ProxyMode::parse(&v).ok_or_else(|| {
                Error::Invalid(format!(
                    "{PROXY_MODE_ENV}={v:?}: the lab's proxy mode is nftables or iptables"
                ))
            }),
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Node-level settings of the rendered ruleset (what kube-proxy gets from flags and the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Which proxier's rules are rendered. The default follows [`PROXY_MODE_ENV`]
    /// (nftables when unset).
    pub mode: ProxyMode,
    /// Mark bit set on packets to be masqueraded.
    pub masquerade_mark: u32,
    /// Pod CIDRs per family: traffic from outside them to a ClusterIP is masqueraded.
    pub cluster_cidrs_v4: Vec<String>,
    /// IPv6 pod CIDRs.
    pub cluster_cidrs_v6: Vec<String>,
    /// ClusterIP range: forwarded traffic to an unallocated address in it is dropped. `None`
    /// disables that rule (kube-proxy without known service CIDRs), e.g. to let a non-DNAT'd
    /// flow to a VIP exist for `missed_dnat` tests.
    pub service_cidr_v4: Option<String>,
    /// IPv6 ClusterIP range.
    pub service_cidr_v6: Option<String>,
    /// Addresses that accept NodePort traffic (`--nodeport-addresses`).
    pub node_ips: Vec<IpAddr>,
}

impl Default for ProxyConfig {
    /// kube-proxy's defaults on a lab node. The mode comes from [`PROXY_MODE_ENV`]; a value other
    /// than `nftables`/`iptables` panics (a typo must not silently test the other mode).
    fn default() -> Self {
        let mode = match ProxyMode::from_env() {
            Ok(mode) => mode,
            Err(e) => panic!("{e}"),
        };
        ProxyConfig {
            mode,
            masquerade_mark: MASQUERADE_MARK,
            cluster_cidrs_v4: plan::CLUSTER_CIDRS_V4
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cluster_cidrs_v6: plan::CLUSTER_CIDRS_V6
                .iter()
                .map(|s| s.to_string())
                .collect(),
            service_cidr_v4: Some(plan::SERVICE_CIDR_V4.to_string()),
            service_cidr_v6: Some(plan::SERVICE_CIDR_V6.to_string()),
            node_ips: vec![plan::NODE_IPV4.into(), plan::NODE_IPV6.into()],
        }
    }
}

/// Per-service objects (chains and affinity sets) of one render, so the next render can delete
/// the ones that disappeared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// `(family, chain)` pairs, family being `ip` or `ip6`.
    pub chains: BTreeSet<(String, String)>,
    /// `(family, set)` pairs of affinity sets.
    pub sets: BTreeSet<(String, String)>,
}

/// A rendered transaction and the per-service objects it leaves installed.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The `nft -f` script.
    pub script: String,
    /// Chains and sets the script creates.
    pub installed: Installed,
}

#[derive(Clone, Copy)]
struct Family {
    table: &'static str,
    ip: &'static str,
    addr_type: &'static str,
    v6: bool,
}

const V4: Family = Family {
    table: "ip",
    ip: "ip",
    addr_type: "ipv4_addr",
    v6: false,
};
const V6: Family = Family {
    table: "ip6",
    ip: "ip6",
    addr_type: "ipv6_addr",
    v6: true,
};

/// Renders the full ruleset for both families as one transaction. `previous` is what the last
/// sync installed; chains and sets no longer needed are deleted at the end.
pub fn render(config: &ProxyConfig, services: &[Service], previous: &Installed) -> Rendered {
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.key());
    let mut out = Out {
        script: String::new(),
        installed: Installed::default(),
    };
    for family in [V4, V6] {
        render_family(&mut out, family, config, &sorted);
    }
    let stale_chains: Vec<_> = previous
        .chains
        .difference(&out.installed.chains)
        .cloned()
        .collect();
    let stale_sets: Vec<_> = previous
        .sets
        .difference(&out.installed.sets)
        .cloned()
        .collect();
    for (table, chain) in stale_chains {
        out.line(format!("delete chain {table} kube-proxy {chain}"));
    }
    for (table, set) in stale_sets {
        out.line(format!("delete set {table} kube-proxy {set}"));
    }
    Rendered {
        script: out.script,
        installed: out.installed,
    }
}

struct Out {
    script: String,
    installed: Installed,
}

impl Out {
    fn line(&mut self, line: impl AsRef<str>) {
        self.script.push_str(line.as_ref());
        self.script.push('\n');
    }
}

fn render_family(out: &mut Out, f: Family, config: &ProxyConfig, services: &[&Service]) {
    let t = format!("{} kube-proxy", f.table);
    let ip = f.ip;
    let at = f.addr_type;
    let mark = format!("{:#x}", config.masquerade_mark);
    out.line(format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    out.line(format!("flush table {t}"));
    out.line("");
    let sets = [
        ("cluster-ips", "Active ClusterIPs"),
        ("nodeport-ips", "IPs that accept NodePort traffic"),
    ];
    for (name, comment) in sets {
        out.line(format!(
            "add set {t} {name} {{ type {at} ; comment \"{comment}\" ; }}"
        ));
    }
    let maps = [
        (
            "firewall-ips",
            format!("{at} . inet_proto . inet_service : verdict"),
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service : verdict".to_string(),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "no-endpoint-services",
            format!("{at} . inet_proto . inet_service : verdict"),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "service-ips",
            format!("{at} . inet_proto . inet_service : verdict"),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service : verdict".to_string(),
            "NodePort traffic",
        ),
    ];
    for (name, ty, comment) in &maps {
        out.line(format!(
            "add map {t} {name} {{ type {ty} ; comment \"{comment}\" ; }}"
        ));
    }
    // `flush table` empties chains but keeps set and map elements: flush those explicitly.
    for (name, _) in sets {
        out.line(format!("flush set {t} {name}"));
    }
    for (name, _, _) in &maps {
        out.line(format!("flush map {t} {name}"));
    }
    out.line("");
    let chains = [
        "cluster-ips-check",
        "filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
        "filter-output-pre-dnat { type filter hook output priority -110 ; }",
        "filter-forward { type filter hook forward priority 0 ; }",
        "filter-input { type filter hook input priority 0 ; }",
        "filter-output { type filter hook output priority 0 ; }",
        "firewall-check",
        "mark-for-masquerade",
        "masquerading",
        "nat-output { type nat hook output priority -100 ; }",
        "nat-postrouting { type nat hook postrouting priority 100 ; }",
        "nat-prerouting { type nat hook prerouting priority -100 ; }",
        "nodeport-endpoints-check",
        "reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        "services",
        "service-endpoints-check",
    ];
    for chain in chains {
        out.line(format!("add chain {t} {chain}"));
    }
    out.line("");
    let r = |chain: &str, rule: &str| format!("add rule {t} {chain} {rule}");
    out.line(r(
        "cluster-ips-check",
        &format!("{ip} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
    ));
    let service_cidr = if f.v6 {
        &config.service_cidr_v6
    } else {
        &config.service_cidr_v4
    };
    if let Some(cidr) = service_cidr {
        out.line(r(
            "cluster-ips-check",
            &format!(
                "{ip} daddr {{ {cidr} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
            ),
        ));
    }
    out.line(r(
        "filter-prerouting-pre-dnat",
        "ct state new jump firewall-check",
    ));
    out.line(r(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    ));
    out.line(r("filter-forward", "ct state new jump cluster-ips-check"));
    out.line(r(
        "filter-input",
        "ct state new jump nodeport-endpoints-check",
    ));
    out.line(r(
        "filter-input",
        "ct state new jump service-endpoints-check",
    ));
    out.line(r(
        "filter-output",
        "ct state new jump service-endpoints-check",
    ));
    out.line(r(
        "filter-output-pre-dnat",
        "ct state new jump firewall-check",
    ));
    out.line(r("filter-output", "ct state new jump cluster-ips-check"));
    out.line(r(
        "firewall-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @firewall-ips"),
    ));
    out.line(r(
        "mark-for-masquerade",
        &format!("mark set mark or {mark}"),
    ));
    out.line(r("masquerading", &format!("mark and {mark} == 0 return")));
    out.line(r("masquerading", &format!("mark set mark xor {mark}")));
    out.line(r("masquerading", "masquerade fully-random"));
    out.line(r("nat-output", "jump services"));
    out.line(r("nat-postrouting", "jump masquerading"));
    out.line(r("nat-prerouting", "jump services"));
    out.line(r(
        "nodeport-endpoints-check",
        &format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
    ));
    out.line(r("reject-chain", "reject"));
    out.line(r(
        "services",
        &format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
    ));
    out.line(r(
        "services",
        &format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
    ));
    out.line(r(
        "service-endpoints-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ));
    for node_ip in config.node_ips.iter().filter(|a| a.is_ipv6() == f.v6) {
        out.line(format!("add element {t} nodeport-ips {{ {node_ip} }}"));
    }
    let cluster_cidrs = if f.v6 {
        &config.cluster_cidrs_v6
    } else {
        &config.cluster_cidrs_v4
    };
    for svc in services {
        let mut ports: Vec<&ServicePort> = svc.ports.iter().collect();
        ports.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
        for port in ports {
            render_service_port(out, f, &t, cluster_cidrs, svc, port);
        }
    }
    out.line("");
}

fn render_service_port(
    out: &mut Out,
    f: Family,
    t: &str,
    cluster_cidrs: &[String],
    svc: &Service,
    port: &ServicePort,
) {
    let ip = f.ip;
    let cluster_ips: Vec<&IpAddr> = svc
        .cluster_ips
        .iter()
        .filter(|a| a.is_ipv6() == f.v6)
        .collect();
    let external_ips: Vec<&IpAddr> = svc
        .external_ips
        .iter()
        .filter(|a| a.is_ipv6() == f.v6)
        .collect();
    if cluster_ips.is_empty() && external_ips.is_empty() {
        return;
    }
    let proto = port.protocol.nft();
    let base = hash_prefixed(&format!(
        "{}/{}/{}/{}",
        svc.namespace, svc.name, proto, port.name
    ));
    let service_chain = format!("service-{base}");
    let external_chain = format!("external-{base}");
    let endpoints = svc.usable_endpoints(f.v6);
    let externally_accessible = port.node_port.is_some() || !external_ips.is_empty();
    let comment_name = format!("{}/{}:{}", svc.namespace, svc.name, port.name);
    out.line("");
    out.line(format!("# {comment_name} ({proto})"));

    if endpoints.is_empty() {
        // kube-proxy: no nat chains at all, only reject entries in the filter maps.
        for vip in &cluster_ips {
            out.line(format!("add element {t} cluster-ips {{ {vip} }}"));
        }
        for vip in cluster_ips.iter().chain(&external_ips) {
            out.line(format!(
                "add element {t} no-endpoint-services {{ {vip} . {proto} . {} comment \"{comment_name}\" : goto reject-chain }}",
                port.port
            ));
        }
        if let Some(node_port) = port.node_port {
            out.line(format!(
                "add element {t} no-endpoint-nodeports {{ {proto} . {node_port} comment \"{comment_name}\" : goto reject-chain }}"
            ));
        }
        return;
    }

    let endpoint_names: Vec<(String, &Endpoint)> = endpoints
        .iter()
        .map(|ep| {
            let ep_ip = match ep.ip {
                IpAddr::V6(v6) => v6.to_string().replace(':', "."),
                IpAddr::V4(v4) => v4.to_string(),
            };
            let name = hash_prefixed(&format!(
                "{}/{}/{}/{}__{}/{}",
                svc.namespace, svc.name, proto, port.name, ep_ip, port.target_port
            ));
            (name, *ep)
        })
        .collect();

    if let Some(timeout) = svc.session_affinity {
        for (name, _) in &endpoint_names {
            let set = format!("affinity-{name}");
            out.line(format!(
                "add set {t} {set} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                f.addr_type
            ));
            out.installed.sets.insert((f.table.to_string(), set));
        }
    }

    // Declare every chain of this port before any rule jumps to one (kube-proxy's ensureChain).
    let mut declared = vec![service_chain.clone()];
    if externally_accessible {
        declared.push(external_chain.clone());
    }
    declared.extend(
        endpoint_names
            .iter()
            .map(|(name, _)| format!("endpoint-{name}")),
    );
    for chain in declared {
        out.line(format!("add chain {t} {chain}"));
        out.installed.chains.insert((f.table.to_string(), chain));
    }

    let local = cluster_cidrs.join(", ");
    for vip in &cluster_ips {
        out.line(format!(
            "add rule {t} {service_chain} {ip} daddr {vip} {ip} saddr != {{ {local} }} jump mark-for-masquerade"
        ));
    }
    if svc.session_affinity.is_some() {
        for (name, _) in &endpoint_names {
            out.line(format!(
                "add rule {t} {service_chain} {ip} saddr @affinity-{name} goto endpoint-{name}"
            ));
        }
    }
    let mut vmap = String::new();
    for (i, (name, _)) in endpoint_names.iter().enumerate() {
        if i > 0 {
            vmap.push_str(" , ");
        }
        let _ = write!(vmap, "{i} : goto endpoint-{name}");
    }
    out.line(format!(
        "add rule {t} {service_chain} numgen random mod {} vmap {{ {vmap} }}",
        endpoint_names.len()
    ));

    if externally_accessible {
        // NodePort and external IP traffic is always masqueraded (Cluster traffic policy).
        out.line(format!(
            "add rule {t} {external_chain} jump mark-for-masquerade"
        ));
        out.line(format!(
            "add rule {t} {external_chain} goto {service_chain}"
        ));
    }

    for (name, ep) in &endpoint_names {
        let chain = format!("endpoint-{name}");
        // Hairpin: a pod reaching itself through its service must be masqueraded, or it would
        // answer itself directly and bypass the NAT reversal.
        out.line(format!(
            "add rule {t} {chain} {ip} saddr {} jump mark-for-masquerade",
            ep.ip
        ));
        if svc.session_affinity.is_some() {
            out.line(format!(
                "add rule {t} {chain} update @affinity-{name} {{ {ip} saddr }}"
            ));
        }
        let target = match ep.ip {
            IpAddr::V4(v4) => format!("{v4}:{}", port.target_port),
            IpAddr::V6(v6) => format!("[{v6}]:{}", port.target_port),
        };
        out.line(format!(
            "add rule {t} {chain} meta l4proto {proto} dnat to {target}"
        ));
    }

    for vip in &cluster_ips {
        out.line(format!("add element {t} cluster-ips {{ {vip} }}"));
        out.line(format!(
            "add element {t} service-ips {{ {vip} . {proto} . {} : goto {service_chain} }}",
            port.port
        ));
    }
    for ext in &external_ips {
        out.line(format!(
            "add element {t} service-ips {{ {ext} . {proto} . {} : goto {external_chain} }}",
            port.port
        ));
    }
    if let Some(node_port) = port.node_port {
        out.line(format!(
            "add element {t} service-nodeports {{ {proto} . {node_port} : goto {external_chain} }}"
        ));
    }
}

/// kube-proxy for one lab node: renders and applies the ruleset, remembering what it installed
/// so the next sync removes chains of vanished services and endpoints.
#[derive(Debug)]
pub struct KubeProxy {
    netns: String,
    config: ProxyConfig,
    installed: Installed,
    services: Vec<Service>,
    syncs: u64,
}

impl KubeProxy {
    /// A proxier for the node namespace `netns`; nothing is installed until [`KubeProxy::sync`].
    pub fn new(netns: &str, config: ProxyConfig) -> Self {
        KubeProxy {
            netns: netns.to_string(),
            config,
            installed: Installed::default(),
            services: Vec::new(),
            syncs: 0,
        }
    }

    /// Replaces the node's rules with ones for `services`, atomically, the way kube-proxy does
    /// after a Service or EndpointSlice change: one `nft -f` transaction in nftables mode; in
    /// iptables mode one `iptables-restore` (and one `ip6tables-restore`) of the node's whole
    /// `filter` and `nat` tables, which also drops the chains of vanished services.
    pub fn sync(&mut self, services: &[Service]) -> Result<()> {
        match self.config.mode {
            ProxyMode::Nftables => {
                let rendered = render(&self.config, services, &self.installed);
                command::nft(&self.netns, &rendered.script)?;
                self.installed = rendered.installed;
            }
            ProxyMode::Iptables => {
                let rendered = kube_proxy_iptables::render(&self.config, services);
                command::iptables_restore(&self.netns, false, &rendered.v4)?;
                command::iptables_restore(&self.netns, true, &rendered.v6)?;
            }
        }
        self.services = services.to_vec();
        self.syncs += 1;
        Ok(())
    }

    /// The services of the last successful sync.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Number of successful syncs.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The node's settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The proxier this node imitates.
    pub fn mode(&self) -> ProxyMode {
        self.config.mode
    }

    /// The installed rules, for debugging output and tests: `nft list table ip kube-proxy` and
    /// `ip6 kube-proxy` in nftables mode, `iptables-save` and `ip6tables-save` in iptables mode.
    pub fn list(&self) -> Result<String> {
        if self.config.mode == ProxyMode::Iptables {
            let mut text = command::iptables_save(&self.netns, false)?;
            text.push_str(&command::iptables_save(&self.netns, true)?);
            return Ok(text);
        }
        let mut text = command::nft_args(&self.netns, &["list", "table", "ip", "kube-proxy"])?;
        text.push_str(&command::nft_args(
            &self.netns,
            &["list", "table", "ip6", "kube-proxy"],
        )?);
        Ok(text)
    }
}

/// The service set the fixture `fixtures/kube-proxy-example.nft` is rendered from: named ports,
/// TCP/UDP/SCTP, several backends, dual-stack, NodePort, an external IP, session affinity, a
/// terminating endpoint and a service without endpoints.
pub fn example_services() -> Vec<Service> {
    use crate::model::ServicePort as P;
    use crate::plan::{external_ipv4, pod_ipv4, pod_ipv6, vip_v4, vip_v6, Role};
    let b4 = |n| IpAddr::from(pod_ipv4(Role::Backend, n));
    let b6 = |n| IpAddr::from(pod_ipv6(Role::Backend, n));
    vec![
        Service::new("shop", "web")
            .cluster_ip(vip_v4(10))
            .cluster_ip(vip_v6(10))
            .port(P::tcp("http", 80, 8080).with_node_port(30080))
            .port(P::tcp("metrics", 9090, 9090))
            .endpoint(Endpoint::ready(b4(11), "web-7d4b9-a1"))
            .endpoint(Endpoint::ready(b4(12), "web-7d4b9-b2"))
            .endpoint(Endpoint::ready(b6(11), "web-7d4b9-a1"))
            .endpoint(Endpoint::ready(b6(12), "web-7d4b9-b2"))
            .endpoint(Endpoint::ready(b4(13), "web-7d4b9-c3").terminating()),
        Service::new("kube-system", "dns")
            .cluster_ip(vip_v4(53))
            .port(P::udp("dns", 53, 5353))
            .port(P::tcp("dns-tcp", 53, 5353))
            .endpoint(Endpoint::ready(b4(21), "coredns-1"))
            .endpoint(Endpoint::ready(b4(22), "coredns-2")),
        Service::new("telecom", "signal")
            .cluster_ip(vip_v4(36))
            .external_ip(external_ipv4(1))
            .port(P::sctp("sig", 3868, 3868))
            .endpoint(Endpoint::ready(b4(31), "signal-0"))
            .with_session_affinity(10800),
        Service::new("shop", "empty")
            .cluster_ip(vip_v4(99))
            .port(P::tcp("http", 80, 8080).with_node_port(30099)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../fixtures/kube-proxy-example.nft");

    fn fixture_text() -> String {
        let rendered = render(
            &ProxyConfig::default(),
            &example_services(),
            &Installed::default(),
        );
        format!("{SIMPLIFICATIONS}\n{}", rendered.script)
    }

    #[test]
    fn fixture_is_current() {
        let text = fixture_text();
        if std::env::var_os("NETLAB_UPDATE_FIXTURES").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/kube-proxy-example.nft"
            );
            std::fs::write(path, &text).expect("write fixture");
        } else {
            let first_diff = text
                .lines()
                .zip(FIXTURE.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(text.lines().count().min(FIXTURE.lines().count()));
            assert!(
                text == FIXTURE,
                "rendering differs from the fixture at line {}: {:?} vs {:?}; rerun with \
                 NETLAB_UPDATE_FIXTURES=1 and review the diff",
                first_diff + 1,
                text.lines().nth(first_diff),
                FIXTURE.lines().nth(first_diff)
            );
        }
    }

    #[test]
    fn shape_follows_kube_proxy() {
        let text = fixture_text();
        for needle in [
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "numgen random mod 2 vmap { 0 : goto endpoint-",
            "dnat to [2001:db8:2::11]:8080",
            "add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-",
            "meta l4proto sctp dnat to 203.0.113.31:3868",
            "update @affinity-",
            "add element ip kube-proxy no-endpoint-services { 198.51.100.99 . tcp . 80 comment \"shop/empty:http\" : goto reject-chain }",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        // The terminating endpoint is not used while ready ones exist.
        assert!(!text.contains("203.0.113.13:8080"));
    }

    #[test]
    fn rerender_deletes_vanished_chains() {
        let config = ProxyConfig::default();
        let first = render(&config, &example_services(), &Installed::default());
        let mut services = example_services();
        services[0]
            .endpoints
            .retain(|e| e.pod.as_deref() != Some("web-7d4b9-a1"));
        let second = render(&config, &services, &first.installed);
        let deleted: Vec<&str> = second
            .script
            .lines()
            .filter(|l| l.starts_with("delete chain"))
            .collect();
        // http and metrics ports, both families.
        assert_eq!(deleted.len(), 4, "{deleted:#?}");
        assert!(deleted
            .iter()
            .all(|l| l.contains("web-7d4b9") || l.contains("__")));
    }
}
