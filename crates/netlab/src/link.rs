//! Wiring pods to the node, Calico style: one point-to-point veth per pod, the pod's address as a
//! /32 (/128) on its `eth0`, a host route per pod on the node, and an on-link default route in
//! the pod pointing at the node. No bridge: with a bridge, hairpin and same-node traffic could
//! bypass the node's NAT hooks, while here every packet between pods crosses the node's
//! forwarding path and therefore kube-proxy's rules and conntrack, as on a real Calico node.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::command;
use crate::error::{Error, Result};
use crate::ns::in_netns;
use crate::plan;

/// Writes `/proc/sys/net/...` values inside `netns` (net sysctls are per namespace, resolved by
/// the namespace of the thread that opens the file).
pub(crate) fn set_sysctls(netns: &str, values: &[(&str, &str)]) -> Result<()> {
    in_netns(netns, || -> Result<()> {
        for (key, value) in values {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| Error::io(format!("setting {key}={value} in {netns}"), e))?;
        }
        Ok(())
    })?
}

/// Sysctls of a node: forward both families; no DAD delays; no reverse-path filter surprises.
pub(crate) const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Sysctls of a pod: addresses usable at once (no duplicate address detection wait).
pub(crate) const POD_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Creates the veth `node_if` (node side) ↔ `eth0` (pod side), addresses it and adds the routes
/// on both sides (`route replace`, so a sink route left by a silently deleted pod with the same
/// address is taken over: IP reuse).
pub(crate) fn attach(
    node_ns: &str,
    pod_ns: &str,
    node_if: &str,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
) -> Result<()> {
    if node_if.len() > 15 {
        return Err(Error::Invalid(format!(
            "interface name {node_if} is longer than 15 characters"
        )));
    }
    let mut node = vec![
        format!("link add {node_if} type veth peer name eth0 netns {pod_ns}"),
        format!("link set {node_if} up"),
    ];
    if ipv6.is_some() {
        node.push(format!(
            "addr add {}/64 dev {node_if} nodad",
            plan::GATEWAY_IPV6
        ));
    }
    if let Some(v4) = ipv4 {
        node.push(format!("route replace {v4}/32 dev {node_if}"));
    }
    if let Some(v6) = ipv6 {
        node.push(format!("route replace {v6}/128 dev {node_if}"));
    }
    command::ip_batch(node_ns, &node)?;

    let mut pod = vec!["link set eth0 up".to_string()];
    if let Some(v4) = ipv4 {
        pod.push(format!("addr add {v4}/32 dev eth0"));
        // The node answers ARP for its own address on every veth (arp_ignore=0), so an on-link
        // gateway needs no extra address per veth.
        pod.push(format!(
            "route add default via {} dev eth0 onlink",
            plan::NODE_IPV4
        ));
    }
    if let Some(v6) = ipv6 {
        pod.push(format!("addr add {v6}/128 dev eth0 nodad"));
        pod.push(format!(
            "route add ::/0 via {} dev eth0",
            plan::GATEWAY_IPV6
        ));
    }
    command::ip_batch(pod_ns, &pod)
}

/// Node-side end of the sink veth: routes to silenced addresses point here. Its peer
/// ([`SINK_PEER`]) stays down, so everything sent into it is dropped by the device, *after* the
/// node's POSTROUTING hooks — like a packet that left a real node for a dead one. (A `blackhole`
/// route would drop it during routing, before conntrack confirms a new flow, so a SYN to a dead
/// pod would leave no `SYN_SENT [UNREPLIED]` entry, unlike on a real node.)
pub(crate) const SINK: &str = "sink0";
/// The sink's peer, kept down.
pub(crate) const SINK_PEER: &str = "sink1";
/// Link-layer address of the silenced pods' permanent neighbour entries (RFC 7042 documentation
/// range). Permanent, so no ARP/NDP resolution ever fails — a failed one would send an ICMP
/// "host unreachable" back to the client and make it fail fast.
const SINK_LLADDR: &str = "00:00:5e:00:53:00";

/// `ip` commands creating the sink on a node.
pub(crate) fn sink_lines() -> Vec<String> {
    vec![
        format!("link add {SINK} type veth peer name {SINK_PEER}"),
        format!("link set {SINK} up"),
    ]
}

/// Makes `ips` vanish the way a pod on a dead remote node does: packets to them are routed into
/// the sink and disappear without any answer (no RST, no ICMP); then the pod's link is removed,
/// so nothing the pod still sends (a FIN or RST while its sockets close) reaches the node.
pub(crate) fn vanish(node_ns: &str, node_if: &str, ips: &[IpAddr]) -> Result<()> {
    let mut lines = Vec::new();
    for ip in ips {
        let len = if ip.is_ipv6() { 128 } else { 32 };
        lines.push(format!("route replace {ip}/{len} dev {SINK}"));
        lines.push(format!(
            "neigh replace {ip} lladdr {SINK_LLADDR} dev {SINK} nud permanent"
        ));
    }
    lines.push(format!("link del {node_if}"));
    command::ip_batch(node_ns, &lines)
}

/// Removes a pod's link from the node; its host routes go with it. Packets to its addresses then
/// find no route on the node and the sender gets an ICMP error at once.
pub(crate) fn detach(node_ns: &str, node_if: &str) -> Result<()> {
    command::ip_batch(node_ns, &[format!("link del {node_if}")])
}

/// Ends the silence for `ips`: their sink routes and neighbour entries go (no error if already
/// gone). Called before a new pod takes over one of the addresses, or to make them unreachable.
pub(crate) fn unsilence(node_ns: &str, ips: &[IpAddr]) -> Result<()> {
    for ip in ips {
        let len = if ip.is_ipv6() { 128 } else { 32 };
        let prefix = format!("{ip}/{len}");
        let listed = command::run(
            "ip",
            &["-n", node_ns, "route", "show", &prefix, "dev", SINK],
            None,
        )?;
        let mut lines = Vec::new();
        if !listed.trim().is_empty() {
            lines.push(format!("route del {prefix} dev {SINK}"));
        }
        let neigh = command::run(
            "ip",
            &["-n", node_ns, "neigh", "show", &ip.to_string(), "dev", SINK],
            None,
        )?;
        if !neigh.trim().is_empty() {
            lines.push(format!("neigh del {ip} dev {SINK}"));
        }
        command::ip_batch(node_ns, &lines)?;
    }
    Ok(())
}
