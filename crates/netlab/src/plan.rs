//! The lab's address plan. Only documentation ranges (RFC 5737, RFC 3849) are ever used, so
//! nothing the lab does can collide with a real network even if a packet escaped.
//!
//! | what | IPv4 | IPv6 |
//! | --- | --- | --- |
//! | client pods | 192.0.2.0/24 | 2001:db8:1::/64 |
//! | backend pods | 203.0.113.0/24 | 2001:db8:2::/64 |
//! | service VIPs (ClusterIPs) | 198.51.100.0/25 | 2001:db8:3::/112 |
//! | external IPs | 198.51.100.200–249 | 2001:db8:3::2:0/112 |
//! | the node (NodePort address, pods' gateway) | 198.51.100.250 | 2001:db8:3::1:250 |
//!
//! The ClusterIP range is kept apart from node and external addresses because kube-proxy drops
//! forwarded traffic to unallocated addresses of its service CIDR.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The node's IPv4 address: NodePort address and the pods' (on-link) default gateway.
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 250);
/// The node's IPv6 address for NodePort traffic.
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 1, 0x250);
/// Link-local address of the node end of every pod veth: the pods' IPv6 gateway, as Calico does.
pub const GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Pod ranges that kube-proxy treats as "local" traffic (not masqueraded to a ClusterIP).
pub const CLUSTER_CIDRS_V4: [&str; 2] = ["192.0.2.0/24", "203.0.113.0/24"];
/// IPv6 pod ranges.
pub const CLUSTER_CIDRS_V6: [&str; 2] = ["2001:db8:1::/64", "2001:db8:2::/64"];
/// ClusterIP range (kube-proxy's `--service-cluster-ip-range`).
pub const SERVICE_CIDR_V4: &str = "198.51.100.0/25";
/// IPv6 ClusterIP range.
pub const SERVICE_CIDR_V6: &str = "2001:db8:3::/112";

/// Which range a pod's addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 192.0.2.0/24 and 2001:db8:1::/64.
    Client,
    /// 203.0.113.0/24 and 2001:db8:2::/64.
    Backend,
}

/// Writes the decimal digits of `n` as hex digits, so host 12 reads `...::12` in both families.
fn decimal_as_hex(n: u8) -> u16 {
    let s = n.to_string();
    u16::from_str_radix(&s, 16).unwrap_or(0)
}

/// The IPv4 address of host `n` (1–254) in `role`'s range.
pub fn pod_ipv4(role: Role, n: u8) -> Ipv4Addr {
    match role {
        Role::Client => Ipv4Addr::new(192, 0, 2, n),
        Role::Backend => Ipv4Addr::new(203, 0, 113, n),
    }
}

/// The IPv6 address paired with [`pod_ipv4`]: 203.0.113.12 ↔ 2001:db8:2::12.
pub fn pod_ipv6(role: Role, n: u8) -> Ipv6Addr {
    let subnet = match role {
        Role::Client => 1,
        Role::Backend => 2,
    };
    Ipv6Addr::new(0x2001, 0xdb8, subnet, 0, 0, 0, 0, decimal_as_hex(n))
}

/// The IPv6 address paired with a given IPv4 pod address, if it is in a pod range.
pub fn paired_ipv6(v4: Ipv4Addr) -> Option<Ipv6Addr> {
    let [a, b, c, d] = v4.octets();
    match (a, b, c) {
        (192, 0, 2) => Some(pod_ipv6(Role::Client, d)),
        (203, 0, 113) => Some(pod_ipv6(Role::Backend, d)),
        _ => None,
    }
}

/// ClusterIP number `n` (1–127): 198.51.100.n.
pub fn vip_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n & 0x7f)
}

/// IPv6 ClusterIP number `n`: 2001:db8:3::n (decimal digits read as hex).
pub fn vip_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, decimal_as_hex(n))
}

/// External IP number `n` (0–49): 198.51.100.(200+n).
pub fn external_ipv4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 200 + n.min(49))
}

/// IPv6 external IP number `n`: 2001:db8:3::2:n.
pub fn external_ipv6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 2, decimal_as_hex(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_read_alike() {
        assert_eq!(pod_ipv6(Role::Backend, 12).to_string(), "2001:db8:2::12");
        assert_eq!(
            paired_ipv6(Ipv4Addr::new(192, 0, 2, 7)),
            Some("2001:db8:1::7".parse().unwrap())
        );
        assert_eq!(NODE_IPV6.to_string(), "2001:db8:3::1:250");
        assert_eq!(vip_v6(10).to_string(), "2001:db8:3::10");
    }
}
