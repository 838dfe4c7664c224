//! The soak's cluster: pods (real netlab pods, or API-only ones such as a DaemonSet pod on
//! another node), Services and their endpoints, rendered into Kubernetes objects for the fake API
//! server and into Services for the syncing kube-proxy, with every change timestamped. The
//! timeline (when each pod was born, went away, left the API; when each Service was deleted or
//! had no endpoints) is what the invariants are judged against.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fake_apiserver::FakeApiServer;
use netlab::k8s::{self, PodObject};
use netlab::sync_proxy::now_secs;
use netlab::{Endpoint, Lab, PodSpec, Protocol, ServerSpec, Service, ServicePort, SyncingProxy};
use serde_json::{json, Value};

/// The other node (pods there are invisible to the agent's node-filtered pod watch).
pub const OTHER_NODE: &str = "soak-node-b";
/// Port of every backend's TCP (HTTP) server and UDP server.
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// How a pod went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Its servers closed their connections (FIN), then its network went.
    Graceful,
    /// Its network vanished without a word (no FIN, no RST): its TCP flows become ghosts.
    Silent,
}

#[derive(Debug, Clone)]
pub struct PodRec {
    pub ns: String,
    /// API name (not unique across namespaces: `a/web-0`, `b/web-0`).
    pub name: String,
    /// netlab pod name (unique; the servers' identity); `None` for an API-only pod.
    pub lab: Option<String>,
    pub uid: String,
    pub ip: IpAddr,
    pub node: String,
    pub host_network: bool,
    pub labels: BTreeMap<String, String>,
    pub created: String,
    pub born: f64,
    /// When its network went (and how).
    pub gone: Option<(f64, Exit)>,
    /// When it was deleted from the API (the publish that did it).
    pub api_deleted: Option<f64>,
    /// The kube-proxy change that carried its deletion.
    pub del_seq: Option<u64>,
    /// Terminating (deletionTimestamp set) since.
    pub terminating: Option<f64>,
    pub scenario: String,
}

impl PodRec {
    /// A pod born now, labelled `app: <app>`, on `node`, with no network of its own yet
    /// (`lab` unset) and not hostNetwork; nothing has happened to it.
    fn new(
        ns: &str,
        name: &str,
        app: &str,
        uid: String,
        ip: IpAddr,
        node: &str,
        scenario: &str,
    ) -> PodRec {
        PodRec {
            ns: ns.into(),
            name: name.into(),
            lab: None,
            uid,
            ip,
            node: node.into(),
            host_network: false,
            labels: [("app".to_string(), app.to_string())].into(),
            created: k8s::rfc3339_now(),
            born: now_secs(),
            gone: None,
            api_deleted: None,
            del_seq: None,
            terminating: None,
            scenario: scenario.into(),
        }
    }

    /// netlab's description of it, serving `ports`.
    fn object(&self, ports: Vec<(u16, Protocol)>) -> PodObject {
        PodObject {
            namespace: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ips: vec![self.ip],
            node_name: self.node.clone(),
            labels: self.labels.clone(),
            creation_timestamp: self.created.clone(),
            ports,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SvcRec {
    pub ns: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// Endpoints by pod index (`World::pods`); `true`: terminating (still serving).
    pub endpoints: Vec<(usize, bool)>,
    pub deleted: Option<f64>,
    /// The kube-proxy change that carried its deletion.
    pub del_seq: Option<u64>,
    /// (from, to) windows without any endpoint (new connections refused).
    pub empty: Vec<(f64, Option<f64>)>,
    pub scenario: String,
}

impl SvcRec {
    pub fn tcp_vip(&self) -> SocketAddr {
        SocketAddr::from((self.vip, 80))
    }
    pub fn udp_vip(&self) -> SocketAddr {
        SocketAddr::from((self.vip, 53))
    }
    pub fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

/// One publish: when, and the kube-proxy change it queued.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub t: f64,
    pub seq: u64,
}

pub struct World {
    pub pods: Vec<PodRec>,
    pub svcs: Vec<SvcRec>,
    published: BTreeMap<(String, String, String), Value>,
    pub changes: Vec<Change>,
    /// (pod, Service, from, until): when each pod was an endpoint of each Service.
    membership: Vec<(usize, usize, f64, Option<f64>)>,
    next_vip: u8,
    next_pod: u32,
    /// Round-robin address allocation (see [`World::next_ip`]).
    next_host: u8,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> World {
        World {
            pods: Vec::new(),
            svcs: Vec::new(),
            published: BTreeMap::new(),
            changes: Vec::new(),
            membership: Vec::new(),
            next_vip: 60,
            next_pod: 0,
            next_host: 10,
        }
    }

    /// A Service with a TCP port 80 → 8080 and (when `udp`) a UDP port 53 → 5353.
    pub fn service(&mut self, ns: &str, name: &str, udp: bool, scenario: &str) -> usize {
        let vip = netlab::plan::vip_v4(self.next_vip);
        self.next_vip += 1;
        let mut ports = vec![ServicePort::tcp("http", 80, TCP_PORT)];
        if udp {
            ports.push(ServicePort::udp("dns", 53, UDP_PORT));
        }
        self.svcs.push(SvcRec {
            ns: ns.into(),
            name: name.into(),
            vip,
            ports,
            endpoints: Vec::new(),
            deleted: None,
            del_seq: None,
            empty: vec![(now_secs(), None)],
            scenario: scenario.into(),
        });
        self.svcs.len() - 1
    }

    pub fn svc(&self, ns: &str, name: &str) -> usize {
        self.svcs
            .iter()
            .position(|s| s.ns == ns && s.name == name && s.deleted.is_none())
            .unwrap_or_else(|| panic!("no Service {ns}/{name}"))
    }

    /// A real pod (HTTP on 8080, UDP echo on 5353) named `name` in `ns`, labelled `app: <app>`,
    /// on `node`, optionally at a fixed address; added as a ready endpoint of `svc` if given.
    #[allow(clippy::too_many_arguments)]
    pub fn pod(
        &mut self,
        lab: &mut Lab,
        ns: &str,
        name: &str,
        app: &str,
        node: &str,
        ip: Option<Ipv4Addr>,
        svc: Option<usize>,
        scenario: &str,
    ) -> usize {
        self.next_pod += 1;
        let lab_name = format!("{ns}-{name}-{}", self.next_pod);
        let mut spec = PodSpec::backend(&lab_name)
            .in_namespace(ns)
            .ipv4_only()
            .label("app", app)
            .serve(ServerSpec::http(TCP_PORT, 200, &lab_name))
            .serve(ServerSpec::udp_echo(UDP_PORT, &lab_name));
        let ip = ip.unwrap_or_else(|| self.next_ip());
        spec = spec.with_ipv4(ip);
        let pod = lab.add_pod(spec).expect("add a pod");
        let (uid, ip) = (pod.uid().to_string(), pod.ips()[0]);
        self.pods.push(PodRec {
            lab: Some(lab_name.clone()),
            ..PodRec::new(ns, name, app, uid, ip, node, scenario)
        });
        let i = self.pods.len() - 1;
        if let Some(s) = svc {
            self.add_endpoint(s, i);
        }
        i
    }

    /// The next backend address round-robin, skipping those of live pods and of pods gone in
    /// the last minute: a cluster's IPAM does not hand a freed address out again at once (the
    /// soak's IP reuse is its own part, `ip_reuse`), and a judge matching flows to pods by
    /// address needs the holder of an address to be unambiguous while its ghosts are reaped.
    fn next_ip(&mut self) -> Ipv4Addr {
        let now = now_secs();
        for _ in 0..240 {
            let host = self.next_host;
            self.next_host = if host >= 249 { 10 } else { host + 1 };
            let ip = IpAddr::V4(netlab::plan::pod_ipv4(netlab::plan::Role::Backend, host));
            let busy = self.pods.iter().any(|p| {
                p.ip == ip && (p.lab.is_none() || p.gone.is_none_or(|(t, _)| now - t < 60.0))
            });
            if !busy && ip != IpAddr::V4(other_node_ip()) {
                return netlab::plan::pod_ipv4(netlab::plan::Role::Backend, host);
            }
        }
        panic!("no free backend address left");
    }

    /// A pod only the API knows (no network of its own), e.g. a hostNetwork DaemonSet pod on
    /// the other node, sharing that node's address.
    pub fn api_pod(
        &mut self,
        ns: &str,
        name: &str,
        app: &str,
        ip: IpAddr,
        host_network: bool,
    ) -> usize {
        let uid = k8s::uid(&["Pod", ns, name, "api-only"]);
        self.pods.push(PodRec {
            host_network,
            ..PodRec::new(ns, name, app, uid, ip, OTHER_NODE, "api-only")
        });
        self.pods.len() - 1
    }

    /// Every Service the pod was ever an endpoint of.
    pub fn services_of(&self, pod: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .membership
            .iter()
            .filter(|m| m.0 == pod)
            .map(|m| m.1)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Was the pod an endpoint of Service `s` at `t`?
    pub fn served_at(&self, pod: usize, s: usize, t: f64) -> bool {
        self.membership
            .iter()
            .any(|m| m.0 == pod && m.1 == s && m.2 <= t && m.3.is_none_or(|u| t <= u))
    }

    pub fn add_endpoint(&mut self, s: usize, pod: usize) {
        self.membership.push((pod, s, now_secs(), None));
        let svc = &mut self.svcs[s];
        svc.endpoints.push((pod, false));
        if let Some(w) = svc.empty.last_mut() {
            if w.1.is_none() {
                w.1 = Some(now_secs());
            }
        }
    }

    pub fn remove_endpoint(&mut self, s: usize, pod: usize) {
        let now = now_secs();
        for m in &mut self.membership {
            if m.0 == pod && m.1 == s && m.3.is_none() {
                m.3 = Some(now);
            }
        }
        let svc = &mut self.svcs[s];
        svc.endpoints.retain(|(p, _)| *p != pod);
        if svc.endpoints.is_empty() {
            svc.empty.push((now_secs(), None));
        }
    }

    /// The pod starts terminating: deletionTimestamp set, its endpoints terminating (serving).
    pub fn terminate(&mut self, pod: usize) {
        self.pods[pod].terminating = Some(now_secs());
        for s in &mut self.svcs {
            for e in &mut s.endpoints {
                if e.0 == pod {
                    e.1 = true;
                }
            }
        }
    }

    /// The pod's labels change (it leaves every Service selecting the old ones): `app` := `app`.
    pub fn relabel(&mut self, pod: usize, app: &str) {
        self.pods[pod].labels.insert("app".into(), app.into());
        for s in 0..self.svcs.len() {
            if self.svcs[s].endpoints.iter().any(|e| e.0 == pod) {
                self.remove_endpoint(s, pod);
            }
        }
    }

    /// The pod's network goes (gracefully or silently); it leaves every Service and the API.
    pub fn kill(&mut self, lab: &mut Lab, pod: usize, exit: Exit) {
        let p = &mut self.pods[pod];
        p.gone = Some((now_secs(), exit));
        if let Some(name) = &p.lab {
            match exit {
                Exit::Graceful => lab.delete_pod(name).map(|_| ()),
                Exit::Silent => lab.delete_pod_silently(name).map(|_| ()),
            }
            .expect("delete a pod");
        }
        self.forget(pod);
    }

    /// The pod leaves every Service and the API (its network, if any, stays as it is).
    pub fn forget(&mut self, pod: usize) {
        self.pods[pod].api_deleted = Some(now_secs());
        for s in 0..self.svcs.len() {
            if self.svcs[s].endpoints.iter().any(|e| e.0 == pod) {
                self.remove_endpoint(s, pod);
            }
        }
    }

    pub fn delete_service(&mut self, s: usize) {
        self.svcs[s].deleted = Some(now_secs());
    }

    /// The Services kube-proxy programs (every live Service with its endpoints).
    pub fn proxy_services(&self) -> Vec<Service> {
        self.svcs
            .iter()
            .filter(|s| s.deleted.is_none())
            .map(|s| self.netlab_service(s))
            .collect()
    }

    fn netlab_service(&self, s: &SvcRec) -> Service {
        let mut svc = Service::new(&s.ns, &s.name).cluster_ip(s.vip);
        for p in &s.ports {
            svc = svc.port(p.clone());
        }
        for (i, term) in &s.endpoints {
            let p = &self.pods[*i];
            let mut e = Endpoint::ready(p.ip, &p.name);
            if *term {
                e = e.terminating();
            }
            svc = svc.endpoint(e);
        }
        svc
    }

    fn pod_object(&self, p: &PodRec) -> Value {
        let mut ports = vec![(TCP_PORT, Protocol::Tcp)];
        ports.push((UDP_PORT, Protocol::Udp));
        let mut v = k8s::pod_object(&p.object(ports));
        if p.host_network {
            v["spec"]["hostNetwork"] = json!(true);
        }
        if p.node == OTHER_NODE {
            v["status"]["hostIP"] = json!(other_node_ip().to_string());
        }
        if let Some(t) = p.terminating {
            let secs = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
            v["metadata"]["deletionTimestamp"] = json!(k8s::rfc3339(secs));
            v["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        }
        v
    }

    /// Every object the API should hold now, by (kind, namespace, name).
    fn objects(&self) -> BTreeMap<(String, String, String), Value> {
        let mut out = BTreeMap::new();
        let created = "2026-01-01T00:00:00Z";
        let pods: Vec<&PodRec> = self
            .pods
            .iter()
            .filter(|p| p.api_deleted.is_none())
            .collect();
        let pod_objects: Vec<PodObject> = pods.iter().map(|p| p.object(Vec::new())).collect();
        for s in self.svcs.iter().filter(|s| s.deleted.is_none()) {
            let svc = self.netlab_service(s);
            out.insert(
                ("Service".into(), s.ns.clone(), s.name.clone()),
                k8s::service_object(&svc, created),
            );
            for mut slice in k8s::endpoint_slice_objects(&svc, &pod_objects, created) {
                // Each endpoint on its pod's node.
                if let Some(eps) = slice["endpoints"].as_array_mut() {
                    for ep in eps {
                        let name = ep["targetRef"]["name"].as_str().unwrap_or("").to_string();
                        if let Some(p) = pods.iter().find(|p| p.ns == s.ns && p.name == name) {
                            ep["nodeName"] = json!(p.node);
                        }
                    }
                }
                let name = slice["metadata"]["name"].as_str().unwrap_or("").to_string();
                out.insert(("EndpointSlice".into(), s.ns.clone(), name), slice);
            }
        }
        for p in pods {
            out.insert(
                ("Pod".into(), p.ns.clone(), p.name.clone()),
                self.pod_object(p),
            );
        }
        out.insert(
            ("Node".into(), String::new(), OTHER_NODE.into()),
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": OTHER_NODE, "uid": k8s::uid(&["Node", OTHER_NODE])},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": other_node_ip().to_string()},
                    {"type": "Hostname", "address": OTHER_NODE},
                ]},
            }),
        );
        out
    }

    /// Brings the API in line with the world (only what changed; a pod whose uid changed is
    /// deleted and created anew) and queues the change with kube-proxy.
    pub fn publish(&mut self, api: &FakeApiServer, kp: &SyncingProxy) -> Change {
        let t = now_secs();
        let want = self.objects();
        let resource = |kind: &str| match kind {
            "Service" => "services",
            "EndpointSlice" => "endpointslices",
            "Node" => "nodes",
            _ => "pods",
        };
        for (k, old) in &self.published {
            if !want.contains_key(k) {
                api.delete(resource(&k.0), &k.1, &k.2);
            } else if k.0 == "Pod" && want[k]["metadata"]["uid"] != old["metadata"]["uid"] {
                api.delete("pods", &k.1, &k.2);
            }
        }
        for (k, v) in &want {
            if self.published.get(k) != Some(v) {
                api.apply(v.clone());
            }
        }
        self.published = want;
        let seq = kp.change(self.proxy_services());
        // What this publish deleted: the API learnt it now, kube-proxy with change `seq`.
        for p in &mut self.pods {
            if p.api_deleted.is_some() && p.del_seq.is_none() {
                p.api_deleted = Some(t);
                p.del_seq = Some(seq);
            }
        }
        for s in &mut self.svcs {
            if s.deleted.is_some() && s.del_seq.is_none() {
                s.deleted = Some(t);
                s.del_seq = Some(seq);
            }
        }
        let c = Change { t, seq };
        self.changes.push(c);
        c
    }
}

/// The other node's address: a backend-range address no netlab pod is given (pods are
/// allocated from .10 upwards).
pub fn other_node_ip() -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 250)
}
