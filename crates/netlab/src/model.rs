//! The small Service model the lab renders into kube-proxy rules and Kubernetes objects.
//! It holds what kube-proxy reads from a Service and its EndpointSlices, nothing more.

use std::net::IpAddr;

use serde::Serialize;

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    /// TCP (6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (132).
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Lower-case name as nft and kube-proxy chain names spell it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Upper-case name as the Kubernetes API spells it.
    pub fn kubernetes(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IP protocol number (conntrack's `l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// One port of a Service. `name` is what EndpointSlice ports are matched by; `target_port` is the
/// resolved backend port (named target ports are resolved by the caller, per pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// Service port name ("" for a single unnamed port).
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port on the ClusterIP / external IPs.
    pub port: u16,
    /// Port on the backend pods.
    pub target_port: u16,
    /// NodePort on the node's addresses, if the service is of type NodePort.
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// A TCP port.
    pub fn tcp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, Protocol::Tcp, port, target_port)
    }

    /// A UDP port.
    pub fn udp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, Protocol::Udp, port, target_port)
    }

    /// An SCTP port.
    pub fn sctp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, Protocol::Sctp, port, target_port)
    }

    /// A port of any protocol.
    pub fn new(name: &str, protocol: Protocol, port: u16, target_port: u16) -> Self {
        ServicePort {
            name: name.to_string(),
            protocol,
            port,
            target_port,
            node_port: None,
        }
    }

    /// Also expose the port as NodePort `node_port` on the node's addresses.
    pub fn with_node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// One endpoint address of a Service, with the EndpointSlice conditions kube-proxy acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: IpAddr,
    /// Owning pod's name (`targetRef`), if any; `None` for endpoints without a Pod.
    pub pod: Option<String>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint backed by pod `pod`.
    pub fn ready(ip: IpAddr, pod: &str) -> Self {
        Endpoint {
            ip,
            pod: Some(pod.to_string()),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Marks the endpoint terminating (still serving): kube-proxy keeps it only while no ready
    /// endpoint is left.
    pub fn terminating(mut self) -> Self {
        self.ready = false;
        self.terminating = true;
        self
    }
}

/// A Service as kube-proxy sees it: frontends, ports and the merged endpoints of all its slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// ClusterIPs (one per family; both for dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints (all slices merged; every port is served on every endpoint).
    pub endpoints: Vec<Endpoint>,
    /// ClientIP session affinity timeout in seconds, if enabled.
    pub session_affinity: Option<u32>,
}

impl Service {
    /// A service with no frontends, ports or endpoints yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            ports: Vec::new(),
            endpoints: Vec::new(),
            session_affinity: None,
        }
    }

    /// Adds a ClusterIP.
    pub fn cluster_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.cluster_ips.push(ip.into());
        self
    }

    /// Adds an external IP.
    pub fn external_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.external_ips.push(ip.into());
        self
    }

    /// Adds a port.
    pub fn port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Adds endpoints.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints.extend(endpoints);
        self
    }

    /// Enables ClientIP session affinity with the given timeout.
    pub fn with_session_affinity(mut self, timeout_seconds: u32) -> Self {
        self.session_affinity = Some(timeout_seconds);
        self
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True when any port has a NodePort.
    pub fn is_node_port(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
    }

    /// Endpoints kube-proxy routes *new* connections of one family to: the ready ones, or, when
    /// none is ready, the serving-and-terminating ones (kube-proxy ≥ 1.26 falls back to them).
    pub fn usable_endpoints(&self, v6: bool) -> Vec<&Endpoint> {
        let family: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.ip.is_ipv6() == v6)
            .collect();
        let ready: Vec<&Endpoint> = family.iter().copied().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        family
            .into_iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }
}
