//! The node: a forwarding namespace that holds the kube-proxy-shaped rules and therefore the
//! conntrack table every Service flow of the lab goes through (DNAT happens on the client's node).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::command;
use crate::error::Result;
use crate::link::{self, set_sysctls, NODE_SYSCTLS};
use crate::ns::NetNs;
use crate::plan;

/// Name of the node in rendered Kubernetes objects (`spec.nodeName`, `nodeName`).
pub const NODE_NAME: &str = "netlab-node";

/// The node namespace. Its addresses live on `lo` (not every kernel has the dummy driver): they
/// are the NodePort addresses and the pods' on-link IPv4 gateway.
#[derive(Debug)]
pub struct Node {
    ns: NetNs,
}

impl Node {
    /// Creates and configures a node namespace.
    pub fn create() -> Result<Node> {
        let ns = NetNs::create("node")?;
        set_sysctls(ns.name(), NODE_SYSCTLS)?;
        let mut lines = vec![
            format!("addr add {}/32 dev lo", plan::NODE_IPV4),
            format!("addr add {}/128 dev lo nodad", plan::NODE_IPV6),
        ];
        lines.extend(link::sink_lines());
        command::ip_batch(ns.name(), &lines)?;
        Ok(Node { ns })
    }

    /// The namespace name (for `ip -n`, `ip netns exec`, `ctnetlink::Conntrack::open_in`).
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// NodePort address (IPv4).
    pub fn ipv4(&self) -> Ipv4Addr {
        plan::NODE_IPV4
    }

    /// NodePort address (IPv6).
    pub fn ipv6(&self) -> Ipv6Addr {
        plan::NODE_IPV6
    }

    /// Keeps the namespace after drop (see [`NetNs::keep`]).
    pub fn keep(&mut self) {
        self.ns.keep();
    }
}
