//! A whole lab: one node with kube-proxy-shaped rules, pods attached to it, and the operations the
//! stories need — rolling updates (re-sync the rules), a pod vanishing silently like one on a dead
//! remote node, and a new pod reusing a dead pod's IP.
//!
//! Dropping a [`Lab`] stops every server and deletes every namespace, also during a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::k8s::{self, PodObject};
use crate::kube_proxy::{KubeProxy, ProxyConfig};
use crate::link;
use crate::model::Service;
use crate::node::Node;
use crate::ns;
use crate::plan::{self, Role};
use crate::pod::{Pod, PodSpec};

/// A pod that was deleted, as the lab remembers it (its IPs may be silenced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedPod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// True when it vanished silently (packets to it are dropped without an answer).
    pub silent: bool,
}

/// A node, its pods and its kube-proxy.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: pods (servers, then namespaces) before the node.
    pods: BTreeMap<String, Pod>,
    proxy: KubeProxy,
    node: Node,
    silenced: BTreeSet<IpAddr>,
    deleted: Vec<DeletedPod>,
    next_pod: u32,
}

impl Lab {
    /// Removes leftovers of dead runs, then creates a node with default settings: nftables mode
    /// unless `GB_LAB_PROXY_MODE=iptables` (see [`crate::kube_proxy::PROXY_MODE_ENV`]).
    pub fn new() -> Result<Lab> {
        Self::with_config(ProxyConfig::default())
    }

    /// Like [`Lab::new`] with explicit kube-proxy settings.
    pub fn with_config(config: ProxyConfig) -> Result<Lab> {
        crate::preflight_mode(config.mode)?;
        // A leftover that cannot be removed does not stop a new lab (names never collide).
        if let Err(e) = ns::cleanup_leftovers() {
            eprintln!("netlab: could not remove leftovers of an earlier run: {e}");
        }
        let node = Node::create()?;
        let proxy = KubeProxy::new(node.netns(), config);
        Ok(Lab {
            pods: BTreeMap::new(),
            proxy,
            node,
            silenced: BTreeSet::new(),
            deleted: Vec::new(),
            next_pod: 0,
        })
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's namespace name: where the DNAT'd flows' conntrack entries live.
    pub fn node_netns(&self) -> &str {
        self.node.netns()
    }

    /// The node's kube-proxy.
    pub fn kube_proxy(&self) -> &KubeProxy {
        &self.proxy
    }

    /// A live pod by name.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("no live pod named {name}")))
    }

    /// A live pod by name, mutably (to start servers).
    pub fn pod_mut(&mut self, name: &str) -> Result<&mut Pod> {
        self.pods
            .get_mut(name)
            .ok_or_else(|| Error::Invalid(format!("no live pod named {name}")))
    }

    /// All live pods.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Pods deleted so far.
    pub fn deleted_pods(&self) -> &[DeletedPod] {
        &self.deleted
    }

    fn in_use(&self, ip: IpAddr) -> bool {
        self.pods.values().any(|p| p.ips().contains(&ip)) || self.silenced.contains(&ip)
    }

    fn allocate_v4(&self, role: Role) -> Result<Ipv4Addr> {
        (10..=249u8)
            .map(|n| plan::pod_ipv4(role, n))
            .find(|ip| !self.in_use(IpAddr::V4(*ip)))
            .ok_or_else(|| Error::Invalid(format!("no free {role:?} address left")))
    }

    /// Creates a pod, attaches it to the node and starts its servers. A fixed address that a
    /// silently deleted pod left silenced is taken over (IP reuse).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<&Pod> {
        if self.pods.contains_key(&spec.name) {
            return Err(Error::Invalid(format!("pod {} already exists", spec.name)));
        }
        let ipv4 = match spec.ipv4 {
            Some(ip) => ip,
            None => self.allocate_v4(spec.role)?,
        };
        let ipv6: Option<Ipv6Addr> = match (spec.ipv6, spec.dual_stack) {
            (Some(ip), _) => Some(ip),
            (None, true) => plan::paired_ipv6(ipv4),
            (None, false) => None,
        };
        for ip in std::iter::once(IpAddr::V4(ipv4)).chain(ipv6.map(IpAddr::V6)) {
            if self.pods.values().any(|p| p.ips().contains(&ip)) {
                return Err(Error::Invalid(format!("{ip} is used by a live pod")));
            }
        }
        let index = self.next_pod;
        self.next_pod += 1;
        let ns_role = format!("p{}", index % 1000);
        let node_if = format!("vp{index}");
        let uid = k8s::uid(&[
            "Pod",
            &spec.namespace,
            &spec.name,
            self.node.netns(),
            &index.to_string(),
        ]);
        let mut pod = Pod::create(&spec, &ns_role, node_if.clone(), Some(ipv4), ipv6, uid)?;
        let reused: Vec<IpAddr> = pod
            .ips()
            .into_iter()
            .filter(|ip| self.silenced.contains(ip))
            .collect();
        // IP reuse: the dead pod's sink route and neighbour entry go, then the new veth's host
        // route takes the address over.
        link::unsilence(self.node.netns(), &reused)?;
        for ip in &reused {
            self.silenced.remove(ip);
        }
        link::attach(self.node.netns(), pod.netns(), &node_if, Some(ipv4), ipv6)?;
        for server in &spec.servers {
            pod.start_server(server.clone())?;
        }
        let name = spec.name.clone();
        Ok(self.pods.entry(name).or_insert(pod))
    }

    /// Applies `services` as kube-proxy would after a Service/EndpointSlice change: the node's
    /// rules are replaced in one transaction. Existing conntrack entries are untouched.
    pub fn sync_services(&mut self, services: &[Service]) -> Result<()> {
        self.proxy.sync(services)
    }

    /// Makes pod `name` vanish like a pod on a dead remote node: packets to its addresses still
    /// leave the node's NAT and conntrack (a new SYN to it becomes `SYN_SENT [UNREPLIED]`) and are
    /// then silently dropped (no RST, no ICMP); its link is removed before its servers stop (so
    /// their FINs never leave), then its namespace is deleted. A pooled connection DNAT'd to it
    /// *hangs*. The rules are not changed: call
    /// [`Lab::sync_services`] for the rolling update, before or after, as the story needs.
    pub fn delete_pod_silently(&mut self, name: &str) -> Result<DeletedPod> {
        let pod = self
            .pods
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("no live pod named {name}")))?;
        let ips = pod.ips();
        link::vanish(self.node.netns(), &pod.node_if, &ips)?;
        self.silenced.extend(ips.iter().copied());
        self.remove(name, true)
    }

    /// Deletes pod `name` the loud way: its servers close their connections (clients see FIN),
    /// its link and routes go, so later packets to its addresses get an ICMP error at once.
    pub fn delete_pod(&mut self, name: &str) -> Result<DeletedPod> {
        let pod = self
            .pods
            .get_mut(name)
            .ok_or_else(|| Error::Invalid(format!("no live pod named {name}")))?;
        pod.stop_servers();
        let node_if = pod.node_if.clone();
        link::detach(self.node.netns(), &node_if)?;
        self.remove(name, false)
    }

    fn remove(&mut self, name: &str, silent: bool) -> Result<DeletedPod> {
        let pod = self
            .pods
            .remove(name)
            .ok_or_else(|| Error::Invalid(format!("no live pod named {name}")))?;
        let record = DeletedPod {
            name: pod.name().to_string(),
            namespace: pod.namespace().to_string(),
            uid: pod.uid().to_string(),
            ips: pod.ips(),
            silent,
        };
        drop(pod); // stops servers, deletes the namespace
        self.deleted.push(record.clone());
        Ok(record)
    }

    /// Ends the silence for `ips` without giving them to a pod: packets to them then get an ICMP
    /// error from the node (no route).
    pub fn unsilence(&mut self, ips: &[IpAddr]) -> Result<()> {
        link::unsilence(self.node.netns(), ips)?;
        for ip in ips {
            self.silenced.remove(ip);
        }
        Ok(())
    }

    /// The lab as a Kubernetes `List`: the services of the last sync, their EndpointSlices and
    /// the live pods (deleted pods are absent, as in a cluster).
    pub fn kubernetes_objects(&self) -> Value {
        let pods: Vec<PodObject> = self.pods.values().map(Pod::object).collect();
        k8s::list(self.proxy.services(), &pods, &k8s::rfc3339_now())
    }

    /// Leaves every namespace in place when the lab is dropped (for `--keep`); a later run's
    /// [`crate::cleanup_leftovers`] removes them after this process exited.
    pub fn keep(&mut self) {
        self.node.keep();
        for pod in self.pods.values_mut() {
            pod.keep();
        }
    }
}
