//! Pods: one namespace each, attached to the node by a veth, running in-process servers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Result;
use crate::k8s::PodObject;
use crate::link::{set_sysctls, POD_SYSCTLS};
use crate::model::Endpoint;
use crate::node::NODE_NAME;
use crate::ns::NetNs;
use crate::plan::Role;
use crate::server::{Server, ServerSpec, ServerStats};

/// What pod to create. Addresses are allocated from the role's range unless given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name (unique among the lab's live pods).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Client or backend range.
    pub role: Role,
    /// Fixed IPv4 address (e.g. a dead pod's, to reuse it).
    pub ipv4: Option<Ipv4Addr>,
    /// Fixed IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Give the pod an IPv6 address too (paired with its IPv4 one unless fixed).
    pub dual_stack: bool,
    /// Labels of the rendered Pod object.
    pub labels: BTreeMap<String, String>,
    /// Servers started when the pod comes up.
    pub servers: Vec<ServerSpec>,
}

impl PodSpec {
    /// A client pod in namespace `default`, dual-stack.
    pub fn client(name: &str) -> Self {
        Self::new(name, Role::Client)
    }

    /// A backend pod in namespace `default`, dual-stack.
    pub fn backend(name: &str) -> Self {
        Self::new(name, Role::Backend)
    }

    fn new(name: &str, role: Role) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            role,
            ipv4: None,
            ipv6: None,
            dual_stack: true,
            labels: BTreeMap::new(),
            servers: Vec::new(),
        }
    }

    /// Sets the Kubernetes namespace.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Uses this IPv4 address.
    pub fn with_ipv4(mut self, ip: Ipv4Addr) -> Self {
        self.ipv4 = Some(ip);
        self
    }

    /// Uses this IPv6 address (and makes the pod dual-stack).
    pub fn with_ipv6(mut self, ip: Ipv6Addr) -> Self {
        self.ipv6 = Some(ip);
        self.dual_stack = true;
        self
    }

    /// IPv4 only.
    pub fn ipv4_only(mut self) -> Self {
        self.dual_stack = false;
        self.ipv6 = None;
        self
    }

    /// Adds a label. Rendered Services select `app: <service name>`, so label backends with
    /// `app` for the objects to be consistent.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Runs this server in the pod.
    pub fn serve(mut self, server: ServerSpec) -> Self {
        self.servers.push(server);
        self
    }
}

/// A running pod. Dropping it stops its servers, then deletes its namespace.
#[derive(Debug)]
pub struct Pod {
    // Field order matters: servers must stop before the namespace goes.
    servers: Vec<Server>,
    pub(crate) node_if: String,
    name: String,
    namespace: String,
    role: Role,
    uid: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    labels: BTreeMap<String, String>,
    created: String,
    ns: NetNs,
}

impl Pod {
    /// Creates the namespace (not yet attached to a node).
    pub(crate) fn create(
        spec: &PodSpec,
        ns_role: &str,
        node_if: String,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        uid: String,
    ) -> Result<Pod> {
        let ns = NetNs::create(ns_role)?;
        set_sysctls(ns.name(), POD_SYSCTLS)?;
        Ok(Pod {
            servers: Vec::new(),
            node_if,
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            role: spec.role,
            uid,
            ipv4,
            ipv6,
            labels: spec.labels.clone(),
            created: crate::k8s::rfc3339_now(),
            ns,
        })
    }

    /// Pod name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Client or backend.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Network namespace name, for [`crate::in_netns`], clients and `ip netns exec`.
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// Pod UID of the rendered Pod object (new for every pod, even one reusing a name).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// IPv4 address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4
    }

    /// IPv6 address.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }

    /// All addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::from)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::from))
            .collect()
    }

    /// Ready endpoints for every address of the pod, for a [`crate::Service`].
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.ips()
            .into_iter()
            .map(|ip| Endpoint::ready(ip, &self.name))
            .collect()
    }

    /// Starts another server in the pod.
    pub fn start_server(&mut self, spec: ServerSpec) -> Result<()> {
        let server = Server::start(self.ns.name(), spec)?;
        self.servers.push(server);
        Ok(())
    }

    /// Stops all servers (connections are closed normally: the clients see FIN).
    pub fn stop_servers(&mut self) -> Vec<ServerStats> {
        self.servers.drain(..).map(Server::stop).collect()
    }

    /// Counters of each running server.
    pub fn server_stats(&self) -> Vec<(ServerSpec, ServerStats)> {
        self.servers
            .iter()
            .map(|s| (s.spec().clone(), s.stats()))
            .collect()
    }

    /// The Pod as a Kubernetes object description.
    pub fn object(&self) -> PodObject {
        PodObject {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ips: self.ips(),
            node_name: NODE_NAME.to_string(),
            labels: self.labels.clone(),
            creation_timestamp: self.created.clone(),
            ports: self
                .servers
                .iter()
                .map(|s| (s.spec().port, s.spec().kind.protocol()))
                .collect(),
        }
    }

    /// Keeps the namespace after drop.
    pub(crate) fn keep(&mut self) {
        self.ns.keep();
    }
}
