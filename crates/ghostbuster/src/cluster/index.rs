//! The compact cluster index: frontends → service ports, backend IPs → slice endpoints, pods by IP,
//! and the `ghostbuster.io/mode` of the namespaces that set one.
//!
//! It keeps no API structs: each object is reduced on arrival (see `service.rs`, `slice.rs`, ...)
//! and the lookups the classifier needs are hash tables of small integer references into slabs.
//! All slices of a Service are looked at together: an endpoint moving from one slice to another
//! (two watch events) is not a removal, and E(S) is the union of every slice of S in the flow's
//! family.
//!
//! The index is changed only through [`Index::apply`], which is pure and synchronous (as
//! kube-runtime's `Store::apply_watcher_event`): the file loader feeds it once, the agent feeds it
//! watch events, tests feed it whatever they like.

// Looked up once or more per flow per scan: foldhash (fast, not DoS-resistant; keys are cluster
// objects and addresses, not attacker-chosen strings in bulk).
use foldhash::{HashMap, HashSet, HashSetExt};
use std::net::IpAddr;

use jiff::Timestamp;

use super::cidr::Cidr;
use super::error::Result;
use super::event::{Event, Kind, Object};
use super::ip_answers::IpAnswers;
use super::keyless::KeylessMultimap;
use super::meta;
use super::model::{IpFamily, ObjectKey, Protocol, Uid};
use super::name::{Name, NamePool};
use super::namespace::NamespaceMode;
use super::node::{Node, ServiceCidr};
use super::one_or_many::OneOrMany;
use super::pod::Pod;
use super::service::{EffectiveMode, FrontendKind, ModeSource, Service, ServicePort, SweepMode};
use super::slab::{Keyed, KeyedSlab};
use super::slice::{Endpoint, PodRef, Slice};
use super::tombstone::{Tombstone, Tombstones};

/// What the index needs to know that is not in the API objects.
#[derive(Clone, Debug, Default)]
pub struct IndexConfig {
    /// This node's name (`--node-name` / `NODE_NAME`): its Node's addresses serve NodePorts.
    pub node_name: Option<String>,
    /// More addresses NodePorts are reachable on (the scanned namespace's local addresses).
    pub local_addresses: Vec<IpAddr>,
    /// Service CIDRs given on the command line, for clusters without ServiceCIDR objects.
    pub service_cidrs: Vec<Cidr>,
}

/// What an [`Index::apply`] changed that the agent may want to react to.
#[derive(Debug, Default)]
pub struct Changes {
    /// `(service, ip)`: the IP left every slice of the service (a tombstone was recorded).
    pub endpoints_removed: Vec<(ObjectKey, IpAddr)>,
    /// `(service, ip)`: the IP became an endpoint of a service it was not an endpoint of.
    pub endpoints_added: Vec<(ObjectKey, IpAddr)>,
    /// Services deleted.
    pub services_removed: Vec<ObjectKey>,
    /// Backends with a tombstone whose pod this node's watch saw deleted or finished: new
    /// evidence for flows that were kept while the pod looked alive.
    pub pods_ended: Vec<IpAddr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.endpoints_removed.is_empty()
            && self.endpoints_added.is_empty()
            && self.services_removed.is_empty()
            && self.pods_ended.is_empty()
    }

    fn extend(&mut self, other: Changes) {
        self.endpoints_removed.extend(other.endpoints_removed);
        self.endpoints_added.extend(other.endpoints_added);
        self.services_removed.extend(other.services_removed);
        self.pods_ended.extend(other.pods_ended);
    }
}

/// A Service port reached through a frontend.
#[derive(Clone, Copy, Debug)]
pub struct FrontendMatch<'a> {
    pub service: &'a Service,
    pub port: &'a ServicePort,
    pub kind: FrontendKind,
}

/// One listing of an IP: an endpoint in a slice.
#[derive(Clone, Debug)]
pub struct EndpointView<'a> {
    pub slice: &'a Slice,
    pub endpoint: Endpoint<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FrontendKey {
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortRef {
    service: u32,
    port: u16,
    kind: FrontendKind,
}

/// Endpoint `endpoint` of slice `slice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointRef {
    slice: u32,
    endpoint: u32,
}

/// Address `ip` (its position in [`Pod::ips`]) of pod `pod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PodIpRef {
    pod: u32,
    ip: u32,
}

/// An object already reduced to its compact form.
enum Entry {
    Service(Service),
    Slice(Slice),
    /// A slice kube-proxy ignores; applying it removes an earlier version.
    IgnoredSlice(ObjectKey),
    Node(Node),
    ServiceCidr(ServiceCidr),
    Pod(Pod),
    Namespace(NamespaceMode),
}

impl Entry {
    fn key(&self) -> &ObjectKey {
        match self {
            Entry::Service(o) => &o.key,
            Entry::Slice(o) => &o.key,
            Entry::IgnoredSlice(k) => k,
            Entry::Node(o) => &o.key,
            Entry::ServiceCidr(o) => &o.key,
            Entry::Pod(o) => &o.key,
            Entry::Namespace(o) => &o.key,
        }
    }
}

#[derive(Default)]
struct Relist {
    entries: Vec<Entry>,
    /// Objects that were listed but rejected: their previous version is kept, not deleted.
    rejected: HashSet<ObjectKey>,
}

/// The cluster as the classifier sees it.
#[derive(Default)]
pub struct Index {
    node_name: Option<Name>,
    configured_local: Vec<IpAddr>,
    configured_cidrs: Vec<Cidr>,
    pool: NamePool,

    services: KeyedSlab<Service>,
    frontends: HashMap<FrontendKey, OneOrMany<PortRef>>,
    node_ports: HashMap<(u16, Protocol), OneOrMany<PortRef>>,
    /// Addresses of Services another proxy programs ([`Service::other_proxy_addresses`]), with
    /// how many such Services have each.
    other_proxy: HashMap<IpAddr, u32>,

    slices: KeyedSlab<Slice>,
    /// Service → its slices' ids (a Service may have slices before or after itself).
    slices_of: KeylessMultimap<u32>,
    /// Services with slices that prove nothing about pods ([`Slice::proves_nothing`]), with how
    /// many: few Services have any, so only they take a slot.
    proving_nothing: HashMap<ObjectKey, u32>,
    /// Backend IP → the slice endpoints listing it.
    by_ip: KeylessMultimap<EndpointRef>,

    pods: KeyedSlab<Pod>,
    pods_by_ip: KeylessMultimap<PodIpRef>,
    pods_complete: bool,

    nodes: HashMap<ObjectKey, Node>,
    node_ips: HashMap<IpAddr, u32>,
    local_ips: HashSet<IpAddr>,

    cidr_objects: HashMap<ObjectKey, Vec<Cidr>>,
    cidrs: Vec<Cidr>,

    /// Namespace name → its `ghostbuster.io/mode`, only for namespaces that carry the annotation:
    /// the others cost nothing, however many there are.
    namespace_modes: HashMap<Name, SweepMode>,

    tombstones: Tombstones,
    /// The API server's "no pod at this IP" answers (the agent's, for ghosts without a
    /// tombstone).
    ip_answers: IpAnswers,
    /// IP → when this node's pod watch last saw a pod holding it deleted or finished. For a
    /// backend without a tombstone (its endpoint's removal hidden from the agent, e.g. by a
    /// silent slice watch) this is when the agent learnt that it is gone.
    pods_left: HashMap<IpAddr, Timestamp>,
    /// The agent's watch-fed view ([`Index::set_live`]), not a snapshot.
    live: bool,
    relists: HashMap<Kind, Relist>,
    snapshot_time: Option<Timestamp>,
    removals_since_purge: usize,
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        let mut index = Index::default();
        index.node_name = config.node_name.as_deref().map(|n| index.pool.intern(n));
        index.configured_local = config.local_addresses;
        index.configured_cidrs = config.service_cidrs;
        index.refresh_local_ips();
        index.refresh_cidrs();
        index
    }

    /// Applies one event at time `now` (used for tombstones). On error the index is unchanged.
    pub fn apply(&mut self, event: Event, now: Timestamp) -> Result<Changes> {
        let mut changes = Changes::default();
        match event {
            Event::Apply(obj) => {
                let entry = self.reduce(&obj)?;
                self.upsert(entry, now, &mut changes);
            }
            Event::Delete(obj) => {
                let (kind, key, uid) = self.identify(&obj)?;
                self.remove(kind, &key, uid.as_ref(), now, &mut changes);
            }
            Event::Init(kind) => {
                self.relists.insert(kind, Relist::default());
            }
            Event::InitApply(obj) => {
                let kind = obj.kind();
                let reduced = self.reduce(&obj);
                let relist = self.relists.entry(kind).or_default();
                match reduced {
                    // A Namespace without the annotation sets nothing: leaving it out of the
                    // relist ends the same way (any mode it had is dropped) without holding
                    // thousands of names until `InitDone`.
                    Ok(Entry::Namespace(NamespaceMode { mode: None, .. })) => {}
                    Ok(entry) => relist.entries.push(entry),
                    Err(e) => {
                        if let Ok((_, key, _)) = self.identify(&obj) {
                            self.relists.entry(kind).or_default().rejected.insert(key);
                        }
                        return Err(e);
                    }
                }
            }
            Event::InitDone(kind) => {
                let relist = self.relists.remove(&kind).unwrap_or_default();
                self.finish_relist(kind, relist, now, &mut changes);
            }
        }
        Ok(changes)
    }

    /// Applies `obj` as added (the file loader's path).
    pub fn insert(&mut self, obj: &Object, now: Timestamp) -> Result<()> {
        let entry = self.reduce(obj)?;
        self.upsert(entry, now, &mut Changes::default());
        Ok(())
    }

    // --- configuration and metadata -----------------------------------------------------------

    /// When the cluster state was observed: `None` for a live index (the agent).
    pub fn snapshot_time(&self) -> Option<Timestamp> {
        self.snapshot_time
    }

    pub fn set_snapshot_time(&mut self, t: Option<Timestamp>) {
        self.snapshot_time = t;
    }

    /// True when the index holds every Pod of the cluster, so "no pod has this IP" is evidence.
    pub fn pods_complete(&self) -> bool {
        self.pods_complete
    }

    pub fn set_pods_complete(&mut self, complete: bool) {
        self.pods_complete = complete;
    }

    pub fn tombstones(&self) -> &Tombstones {
        &self.tombstones
    }

    pub fn tombstones_mut(&mut self) -> &mut Tombstones {
        &mut self.tombstones
    }

    pub fn ip_answers(&self) -> &IpAnswers {
        &self.ip_answers
    }

    pub fn ip_answers_mut(&mut self) -> &mut IpAnswers {
        &mut self.ip_answers
    }

    /// Marks this index as the agent's live view, fed by watches: an endpoint the view lacks may
    /// be one it has not caught up with (the classifier asks for more than UDP alone then).
    pub fn set_live(&mut self, live: bool) {
        self.live = live;
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// When this node's pod watch last saw a pod at `ip` deleted or finished.
    pub fn pod_left_at(&self, ip: &IpAddr) -> Option<Timestamp> {
        self.pods_left.get(ip).copied()
    }

    /// Forgets pods that left before `cutoff` (with the tombstones' TTL); returns how many.
    pub fn expire_pods_left(&mut self, cutoff: Timestamp) -> usize {
        let before = self.pods_left.len();
        self.pods_left.retain(|_, t| *t >= cutoff);
        before - self.pods_left.len()
    }

    /// Counts of what is indexed: (services, slices, endpoints, pods).
    pub fn counts(&self) -> Counts {
        Counts {
            services: self.services.len(),
            slices: self.slices.len(),
            endpoints: self.slices.iter().map(|(_, s)| s.endpoint_count()).sum(),
            pods: self.pods.len(),
            nodes: self.nodes.len(),
            tombstones: self.tombstones.len(),
            namespace_modes: self.namespace_modes.len(),
        }
    }

    // --- lookups ------------------------------------------------------------------------------

    /// The Service port a flow to `ip:port/protocol` was sent to, as kube-proxy would match it:
    /// address frontends first, then NodePorts on this node's addresses (in the Service's families).
    pub fn frontend(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<FrontendMatch<'_>> {
        let key = FrontendKey { ip, port, protocol };
        if let Some(refs) = self.frontends.get(&key) {
            if let Some(m) = refs.as_slice().iter().find_map(|r| self.port_ref(r)) {
                return Some(m);
            }
        }
        if !self.local_ips.contains(&ip) {
            return None;
        }
        let refs = self.node_ports.get(&(port, protocol))?;
        refs.as_slice()
            .iter()
            .filter_map(|r| self.port_ref(r))
            .find(|m| m.service.families.contains(IpFamily::of(&ip)))
    }

    fn port_ref(&self, r: &PortRef) -> Option<FrontendMatch<'_>> {
        let service = self.services.get(r.service)?;
        Some(FrontendMatch {
            service,
            port: service.ports.get(usize::from(r.port))?,
            kind: r.kind,
        })
    }

    /// True for an address of a Service kube-proxy does not program (labelled
    /// `service.kubernetes.io/service-proxy-name` or `service.kubernetes.io/headless`): flows to
    /// it belong to another proxy.
    pub fn is_other_proxy_address(&self, ip: &IpAddr) -> bool {
        self.other_proxy.contains_key(ip)
    }

    pub fn in_service_cidr(&self, ip: &IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    pub fn service_cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&Service> {
        self.services.by_key(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().map(|(_, s)| s)
    }

    /// The `ghostbuster.io/mode` annotation of the Namespace `name`, if it has one.
    pub fn namespace_mode(&self, name: &str) -> Option<SweepMode> {
        self.namespace_modes.get(name).copied()
    }

    /// The mode that applies to `svc`'s flows: its own annotation if it has one, else its
    /// Namespace's, else `None` (the default: sweep). Every reader of the override (the
    /// classifier, hence scan, sweep, explain, the agent and its metrics) goes through here so
    /// they cannot disagree.
    pub fn mode_of(&self, svc: &Service) -> Option<SweepMode> {
        self.effective_mode(svc).map(|m| m.mode)
    }

    /// [`Index::mode_of`] with where the mode came from, for `explain`.
    pub fn effective_mode(&self, svc: &Service) -> Option<EffectiveMode> {
        let namespace = self.namespace_mode(&svc.key.namespace);
        match (svc.mode, namespace) {
            (Some(mode), overrides) => Some(EffectiveMode {
                mode,
                from: ModeSource::Service,
                overrides,
            }),
            (None, Some(mode)) => Some(EffectiveMode {
                mode,
                from: ModeSource::Namespace,
                overrides: None,
            }),
            (None, None) => None,
        }
    }

    /// Every slice endpoint listing `ip`, in any Service.
    pub fn endpoints_at(&self, ip: &IpAddr) -> impl Iterator<Item = EndpointView<'_>> {
        let refs = self.by_ip.get(*ip, |r| endpoint_ip(&self.slices, r));
        refs.iter().filter_map(|r| {
            let slice = self.slices.get(r.slice)?;
            Some(EndpointView {
                slice,
                endpoint: slice.endpoint(r.endpoint as usize)?,
            })
        })
    }

    /// Every slice of the Service `key` (a Service may have slices before or after itself).
    pub fn slices_of(&self, key: &ObjectKey) -> impl Iterator<Item = &Slice> {
        let ids = self
            .slices_of
            .get(service_of(key), |&id| service_of_slice(&self.slices, id));
        ids.iter().filter_map(|&id| self.slices.get(id))
    }

    /// True when some slice of the Service is not the pod controller's, or lists an endpoint that
    /// is not a Pod: the Service's endpoint changes prove nothing about pods.
    pub fn proves_nothing(&self, key: &ObjectKey) -> bool {
        self.proving_nothing.contains_key(key)
    }

    /// Pods whose `status.podIPs` include `ip`.
    pub fn pods_at(&self, ip: &IpAddr) -> impl Iterator<Item = &Pod> {
        let refs = self.pods_by_ip.get(*ip, |r| pod_ip(&self.pods, r));
        refs.iter().filter_map(|r| self.pods.get(r.pod))
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.by_key(key)
    }

    /// The pod `namespace/name`, without building its key.
    pub fn pod_named(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(self.pods.id_of(namespace, name)?)
    }

    /// True for an address of any Node in the index, or of this node (host-network endpoints
    /// live there), or of a pod the index knows runs on the host network (its IP is its node's,
    /// whichever node that is, even one whose Node object this index does not hold). Such an IP
    /// is shared by every host-network pod of that node: never evidence that it was reused, nor
    /// that its backend is absent.
    pub fn is_node_address(&self, ip: &IpAddr) -> bool {
        self.node_ips.contains_key(ip)
            || self.local_ips.contains(ip)
            || self.pods_at(ip).any(|p| p.host_network)
    }

    /// Addresses on which this node serves NodePorts.
    pub fn local_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.local_ips.iter()
    }

    // --- reducing API objects ----------------------------------------------------------------

    fn reduce(&mut self, obj: &Object) -> Result<Entry> {
        let pool = &mut self.pool;
        Ok(match obj {
            Object::Service(o) => Entry::Service(Service::from_api(o, pool)?),
            Object::EndpointSlice(o) => match Slice::from_api(o, pool)? {
                Some(s) => Entry::Slice(s),
                None => Entry::IgnoredSlice(meta::key(&o.metadata, Kind::EndpointSlice, pool)?),
            },
            Object::Node(o) => Entry::Node(Node::from_api(o, pool)?),
            Object::ServiceCidr(o) => Entry::ServiceCidr(ServiceCidr::from_api(o, pool)?),
            Object::Pod(o) => Entry::Pod(Pod::from_api(o, pool)?),
            Object::Namespace(o) => Entry::Namespace(NamespaceMode::from_api(o, pool)?),
        })
    }

    /// Kind, key and uid: enough to delete, even for an object that would not reduce.
    fn identify(&mut self, obj: &Object) -> Result<(Kind, ObjectKey, Option<Uid>)> {
        let kind = obj.kind();
        let m = match obj {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::ServiceCidr(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        };
        Ok((
            kind,
            meta::key(m, kind, &mut self.pool)?,
            meta::uid(m, &mut self.pool),
        ))
    }

    // --- upserts and removals -----------------------------------------------------------------

    fn upsert(&mut self, entry: Entry, now: Timestamp, changes: &mut Changes) {
        match entry {
            Entry::Service(s) => self.upsert_service(s),
            Entry::Slice(s) => {
                let key = s.key.clone();
                self.replace_slice(&key, Some(s), now, changes);
            }
            Entry::IgnoredSlice(key) => self.replace_slice(&key, None, now, changes),
            Entry::Node(n) => self.upsert_node(n),
            Entry::ServiceCidr(c) => {
                self.cidr_objects.insert(c.key, c.cidrs);
                self.refresh_cidrs();
            }
            Entry::Pod(p) => self.upsert_pod(p, now, changes),
            Entry::Namespace(n) => match n.mode {
                Some(mode) => {
                    // Pooled: the same string as the namespace of its Services' keys.
                    let name = self.pool.intern(&n.key.name);
                    self.namespace_modes.insert(name, mode);
                }
                None => {
                    self.namespace_modes.remove(&*n.key.name);
                }
            },
        }
    }

    fn remove(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        uid: Option<&Uid>,
        now: Timestamp,
        changes: &mut Changes,
    ) {
        // A delete for an older incarnation (same name, other uid) must not remove the new one.
        let stale = |stored: Option<&Uid>| matches!((stored, uid), (Some(a), Some(b)) if a != b);
        match kind {
            Kind::Service => {
                let Some(id) = self.services.id(key) else {
                    return;
                };
                if stale(self.services.get(id).and_then(|s| s.uid.as_ref())) {
                    return;
                }
                if let Some(old) = self.services.remove(id) {
                    self.unlink_frontends(id, &old);
                    changes.services_removed.push(old.key);
                }
            }
            Kind::EndpointSlice => {
                let Some(id) = self.slices.id(key) else {
                    return;
                };
                if stale(self.slices.get(id).and_then(|s| s.uid.as_ref())) {
                    return;
                }
                self.replace_slice(key, None, now, changes);
            }
            Kind::Pod => {
                let Some(id) = self.pods.id(key) else {
                    return;
                };
                if stale(self.pods.get(id).and_then(|p| p.uid.as_ref())) {
                    return;
                }
                self.unlink_pod(id);
                if let Some(old) = self.pods.remove(id) {
                    self.pod_ended(&old, now, changes);
                }
            }
            Kind::Node => {
                if let Some(old) = self.nodes.remove(key) {
                    self.count_node_ips(&old, false);
                    if self.is_this_node(key) {
                        self.refresh_local_ips();
                    }
                }
            }
            Kind::ServiceCidr => {
                if self.cidr_objects.remove(key).is_some() {
                    self.refresh_cidrs();
                }
            }
            // No uid check: a Namespace's name cannot be reused before the old one is gone, and
            // the watch delivers that deletion first.
            Kind::Namespace => {
                self.namespace_modes.remove(&*key.name);
            }
        }
        self.removals_since_purge += 1;
        if self.removals_since_purge > 1024 && self.removals_since_purge > self.pool.len() / 4 {
            self.pool.purge();
            self.removals_since_purge = 0;
        }
    }

    fn finish_relist(&mut self, kind: Kind, relist: Relist, now: Timestamp, changes: &mut Changes) {
        let listed: HashSet<&ObjectKey> = relist
            .entries
            .iter()
            .map(Entry::key)
            .chain(&relist.rejected)
            .collect();
        let current: Vec<ObjectKey> = match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Node => self.nodes.keys().cloned().collect(),
            Kind::ServiceCidr => self.cidr_objects.keys().cloned().collect(),
            Kind::Namespace => self
                .namespace_modes
                .keys()
                .map(|name| ObjectKey {
                    namespace: Name::new(""),
                    name: name.clone(),
                })
                .collect(),
        };
        let gone: Vec<ObjectKey> = current
            .into_iter()
            .filter(|k| !listed.contains(k))
            .collect();
        drop(listed);
        let mut local = Changes::default();
        for key in &gone {
            self.remove(kind, key, None, now, &mut local);
        }
        for entry in relist.entries {
            self.upsert(entry, now, &mut local);
        }
        // An endpoint that moved between two slices during the relist shows up as removed and
        // added again: neither happened.
        let removed: HashSet<(ObjectKey, IpAddr)> =
            local.endpoints_removed.iter().cloned().collect();
        let added: HashSet<(ObjectKey, IpAddr)> = local.endpoints_added.iter().cloned().collect();
        local.endpoints_removed.retain(|x| !added.contains(x));
        local.endpoints_added.retain(|x| !removed.contains(x));
        changes.extend(local);
        self.pool.purge();
    }

    fn upsert_service(&mut self, s: Service) {
        let (id, old) = self.services.upsert(s);
        if let Some(old) = old {
            self.unlink_frontends(id, &old);
        }
        let Some(s) = self.services.get(id) else {
            return;
        };
        for ip in &s.other_proxy_addresses {
            *self.other_proxy.entry(*ip).or_default() += 1;
        }
        for (i, p) in s.ports.iter().enumerate() {
            let Ok(port) = u16::try_from(i) else { break };
            for &(ip, kind) in &s.frontends {
                let key = FrontendKey {
                    ip,
                    port: p.port,
                    protocol: p.protocol,
                };
                let r = PortRef {
                    service: id,
                    port,
                    kind,
                };
                push(&mut self.frontends, key, r);
            }
            if let (Some(np), None) = (p.node_port, s.not_proxied) {
                let r = PortRef {
                    service: id,
                    port,
                    kind: FrontendKind::NodePort,
                };
                push(&mut self.node_ports, (np, p.protocol), r);
            }
        }
    }

    fn unlink_frontends(&mut self, id: u32, s: &Service) {
        for ip in &s.other_proxy_addresses {
            if let Some(c) = self.other_proxy.get_mut(ip) {
                *c -= 1;
                if *c == 0 {
                    self.other_proxy.remove(ip);
                }
            }
        }
        for p in &s.ports {
            for &(ip, _) in &s.frontends {
                let key = FrontendKey {
                    ip,
                    port: p.port,
                    protocol: p.protocol,
                };
                pull(&mut self.frontends, key, |r| r.service == id);
            }
            if let Some(np) = p.node_port {
                pull(&mut self.node_ports, (np, p.protocol), |r| r.service == id);
            }
        }
    }

    /// Replaces (or removes, with `None`) the slice `key`, recording tombstones for IPs that left
    /// every slice of their Service and reviving those that came back.
    fn replace_slice(
        &mut self,
        key: &ObjectKey,
        new: Option<Slice>,
        now: Timestamp,
        changes: &mut Changes,
    ) {
        let old_id = self.slices.id(key);
        // (service, ip) pairs whose membership may change, and whether they were members before.
        let mut affected: Vec<(ObjectKey, IpAddr, bool)> = Vec::new();
        let mut seen = HashSet::new();
        let old_slice = old_id.and_then(|id| self.slices.get(id));
        for s in old_slice.into_iter().chain(new.as_ref()) {
            for e in s.endpoints() {
                if seen.insert((s.service.clone(), e.ip)) {
                    let was = self.lists(&s.service, &e.ip);
                    affected.push((s.service.clone(), e.ip, was));
                }
            }
        }

        let old = old_id.and_then(|id| {
            self.unlink_slice(id);
            self.slices.remove(id)
        });
        if let Some(s) = new {
            let (id, _) = self.slices.upsert(s);
            self.link_slice(id);
        }

        for (service, ip, was) in affected {
            let is = self.lists(&service, &ip);
            if was && !is {
                let last = old
                    .as_ref()
                    .filter(|s| s.service == service)
                    .and_then(|s| Some((s, s.endpoints().find(|e| e.ip == ip)?)));
                if let Some((s, e)) = last {
                    self.tombstones.bury(Tombstone {
                        service: service.clone(),
                        ip,
                        ports: s.ports.to_vec(),
                        pod: e.pod.as_ref().map(PodRef::to_target),
                        conditions: e.conditions,
                        managed: s.managed && e.pod.is_some(),
                        removed_at: now,
                        pod_gone: false,
                    });
                    changes.endpoints_removed.push((service, ip));
                }
            } else if !was && is {
                self.tombstones.revive(&service, &ip);
                changes.endpoints_added.push((service, ip));
            }
        }
    }

    /// True when some slice of `service` lists `ip`.
    fn lists(&self, service: &ObjectKey, ip: &IpAddr) -> bool {
        self.endpoints_at(ip).any(|v| v.slice.service == *service)
    }

    fn link_slice(&mut self, id: u32) {
        let slices = &self.slices;
        let Some(s) = slices.get(id) else { return };
        for (i, e) in s.endpoints().enumerate() {
            let r = EndpointRef {
                slice: id,
                endpoint: i as u32,
            };
            self.by_ip.push(e.ip, r, |r| endpoint_ip(slices, r));
        }
        let service = service_of(&s.service);
        self.slices_of
            .push(service, id, |&id| service_of_slice(slices, id));
        if s.proves_nothing() {
            *self.proving_nothing.entry(s.service.clone()).or_default() += 1;
        }
    }

    /// Takes slice `id` out of the reverse tables; it must still be in the slab (they find their
    /// keys through it).
    fn unlink_slice(&mut self, id: u32) {
        let slices = &self.slices;
        let Some(s) = slices.get(id) else { return };
        for e in s.endpoints() {
            self.by_ip
                .pull(e.ip, |r| endpoint_ip(slices, r), |r| r.slice == id);
        }
        let service = service_of(&s.service);
        self.slices_of
            .pull(service, |&id| service_of_slice(slices, id), |&i| i == id);
        if s.proves_nothing() {
            if let Some(n) = self.proving_nothing.get_mut(&s.service) {
                *n -= 1;
                if *n == 0 {
                    self.proving_nothing.remove(&s.service);
                }
            }
        }
    }

    fn upsert_pod(&mut self, p: Pod, now: Timestamp, changes: &mut Changes) {
        if !p.is_alive() {
            // Succeeded or Failed (evicted): its containers stopped and its IP was released.
            self.pod_ended(&p, now, changes);
        }
        if let Some(id) = self.pods.id(&p.key) {
            self.unlink_pod(id);
        }
        let (id, _) = self.pods.upsert(p);
        let pods = &self.pods;
        let Some(p) = pods.get(id) else { return };
        for (i, ip) in p.ips.iter().enumerate() {
            let r = PodIpRef {
                pod: id,
                ip: i as u32,
            };
            self.pods_by_ip.push(*ip, r, |r| pod_ip(pods, r));
        }
    }

    /// Pod `p` is deleted or finished: tombstones naming it are confirmed, and their backends
    /// are worth another look.
    fn pod_ended(&mut self, p: &Pod, now: Timestamp, changes: &mut Changes) {
        for ip in &p.ips {
            let t = self.pods_left.entry(*ip).or_insert(now);
            *t = (*t).max(now);
            if self.tombstones.mark_pod_ended(ip, &p.key, p.uid.as_ref()) > 0 {
                changes.pods_ended.push(*ip);
            }
        }
    }

    /// Takes pod `id` out of `pods_by_ip`; it must still be in the slab.
    fn unlink_pod(&mut self, id: u32) {
        let pods = &self.pods;
        let Some(p) = pods.get(id) else { return };
        for ip in &p.ips {
            self.pods_by_ip
                .pull(*ip, |r| pod_ip(pods, r), |r| r.pod == id);
        }
    }

    fn upsert_node(&mut self, n: Node) {
        self.count_node_ips(&n, true);
        let this = self.is_this_node(&n.key);
        if let Some(old) = self.nodes.insert(n.key.clone(), n) {
            self.count_node_ips(&old, false);
        }
        if this {
            self.refresh_local_ips();
        }
    }

    fn is_this_node(&self, key: &ObjectKey) -> bool {
        self.node_name.as_ref() == Some(&key.name)
    }

    fn count_node_ips(&mut self, n: &Node, add: bool) {
        for ip in &n.addresses {
            if add {
                *self.node_ips.entry(*ip).or_default() += 1;
            } else if let Some(c) = self.node_ips.get_mut(ip) {
                *c -= 1;
                if *c == 0 {
                    self.node_ips.remove(ip);
                }
            }
        }
    }

    fn refresh_local_ips(&mut self) {
        let node = self.node_name.as_ref().and_then(|name| {
            self.nodes.get(&ObjectKey {
                namespace: Name::new(""),
                name: name.clone(),
            })
        });
        self.local_ips = self
            .configured_local
            .iter()
            .chain(node.into_iter().flat_map(|n| &n.addresses))
            .copied()
            .collect();
    }

    fn refresh_cidrs(&mut self) {
        let mut cidrs = self.configured_cidrs.clone();
        for c in self.cidr_objects.values().flatten() {
            if !cidrs.contains(c) {
                cidrs.push(*c);
            }
        }
        self.cidrs = cidrs;
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("counts", &self.counts())
            .field("snapshot_time", &self.snapshot_time)
            .field("pods_complete", &self.pods_complete)
            .finish_non_exhaustive()
    }
}

/// Sizes of an index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub services: usize,
    pub slices: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub nodes: usize,
    pub tombstones: usize,
    /// Namespaces that carry a `ghostbuster.io/mode` annotation (the others are not kept).
    pub namespace_modes: usize,
}

/// The address an [`EndpointRef`] points at.
fn endpoint_ip(slices: &KeyedSlab<Slice>, r: &EndpointRef) -> Option<IpAddr> {
    slices.get(r.slice)?.endpoint_ip(r.endpoint as usize)
}

/// The Service of slice `id`, as `slices_of` files it.
fn service_of_slice(slices: &KeyedSlab<Slice>, id: u32) -> Option<(&str, &str)> {
    slices.get(id).map(|s| service_of(&s.service))
}

fn service_of(key: &ObjectKey) -> (&str, &str) {
    (key.namespace.as_str(), key.name.as_str())
}

/// The address a [`PodIpRef`] points at.
fn pod_ip(pods: &KeyedSlab<Pod>, r: &PodIpRef) -> Option<IpAddr> {
    pods.get(r.pod)?.ips.get(r.ip as usize).copied()
}

impl Keyed for Service {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

impl Keyed for Slice {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

impl Keyed for Pod {
    fn key(&self) -> &ObjectKey {
        &self.key
    }
}

fn push<K: std::hash::Hash + Eq, V: Copy + PartialEq>(
    map: &mut HashMap<K, OneOrMany<V>>,
    key: K,
    v: V,
) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().push(v),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(OneOrMany::One(v));
        }
    }
}

fn pull<K: std::hash::Hash + Eq, V: Copy + PartialEq>(
    map: &mut HashMap<K, OneOrMany<V>>,
    key: K,
    pred: impl Fn(&V) -> bool,
) {
    if let Some(vs) = map.get_mut(&key) {
        if vs.remove_where(pred) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn index_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Index>();
    }

    // --- the ghostbuster.io/mode annotation of Services and Namespaces ------------------------

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn annotations(mode: Option<&str>) -> serde_json::Value {
        match mode {
            Some(m) => json!({ "ghostbuster.io/mode": m }),
            None => json!({}),
        }
    }

    fn service(ns: &str, name: &str, mode: Option<&str>) -> Object {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "annotations": annotations(mode)},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .unwrap();
        Object::from(svc)
    }

    fn namespace(name: &str, mode: Option<&str>) -> Object {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations(mode)},
            "status": {"phase": "Active"}
        }))
        .unwrap();
        Object::from(ns)
    }

    fn apply(index: &mut Index, event: Event) {
        index.apply(event, now()).unwrap();
    }

    /// The effective mode of the Service `ns/name`.
    fn effective(index: &Index, ns: &str, name: &str) -> Option<EffectiveMode> {
        let key = ObjectKey {
            namespace: Name::new(ns),
            name: Name::new(name),
        };
        index.effective_mode(index.service(&key).expect("the Service"))
    }

    fn mode(index: &Index, ns: &str, name: &str) -> Option<SweepMode> {
        effective(index, ns, name).map(|m| m.mode)
    }

    #[test]
    fn a_namespace_mode_applies_to_its_services_without_their_own() {
        for (value, want) in [
            ("off", SweepMode::Off),
            ("report", SweepMode::Report),
            ("sweep", SweepMode::Sweep),
            (" Report ", SweepMode::Report),
            ("maybe", SweepMode::Report),
        ] {
            let mut index = Index::default();
            apply(&mut index, Event::Apply(service("shop", "web", None)));
            apply(&mut index, Event::Apply(service("other", "web", None)));
            assert_eq!(mode(&index, "shop", "web"), None, "no annotation anywhere");
            // The Namespace may arrive after its Services: the mode is looked up, not copied.
            apply(&mut index, Event::Apply(namespace("shop", Some(value))));
            assert_eq!(
                effective(&index, "shop", "web"),
                Some(EffectiveMode {
                    mode: want,
                    from: ModeSource::Namespace,
                    overrides: None
                }),
                "{value:?}"
            );
            assert_eq!(index.namespace_mode("shop"), Some(want));
            assert_eq!(mode(&index, "other", "web"), None, "another namespace");
            assert_eq!(index.counts().namespace_modes, 1);
        }
    }

    #[test]
    fn the_services_own_annotation_wins_over_its_namespaces() {
        let mut index = Index::default();
        apply(&mut index, Event::Apply(namespace("shop", Some("off"))));
        apply(
            &mut index,
            Event::Apply(service("shop", "opted-in", Some("sweep"))),
        );
        apply(
            &mut index,
            Event::Apply(service("shop", "watched", Some("report"))),
        );
        apply(&mut index, Event::Apply(service("shop", "plain", None)));
        assert_eq!(
            effective(&index, "shop", "opted-in"),
            Some(EffectiveMode {
                mode: SweepMode::Sweep,
                from: ModeSource::Service,
                overrides: Some(SweepMode::Off)
            })
        );
        assert_eq!(mode(&index, "shop", "watched"), Some(SweepMode::Report));
        assert_eq!(mode(&index, "shop", "plain"), Some(SweepMode::Off));
        // A Service's annotation alone, in a namespace without one.
        apply(
            &mut index,
            Event::Apply(service("free", "web", Some("off"))),
        );
        assert_eq!(
            effective(&index, "free", "web"),
            Some(EffectiveMode {
                mode: SweepMode::Off,
                from: ModeSource::Service,
                overrides: None
            })
        );
    }

    #[test]
    fn a_deleted_or_unannotated_namespace_is_back_to_the_default() {
        let mut index = Index::default();
        apply(&mut index, Event::Apply(service("shop", "web", None)));
        apply(&mut index, Event::Apply(namespace("shop", Some("off"))));
        apply(&mut index, Event::Delete(namespace("shop", Some("off"))));
        assert_eq!(mode(&index, "shop", "web"), None);
        assert_eq!(index.counts().namespace_modes, 0);

        apply(&mut index, Event::Apply(namespace("shop", Some("report"))));
        assert_eq!(mode(&index, "shop", "web"), Some(SweepMode::Report));
        // The annotation removed (the Namespace stays).
        apply(&mut index, Event::Apply(namespace("shop", None)));
        assert_eq!(mode(&index, "shop", "web"), None);
        // Deleting a Namespace the index never kept is nothing.
        apply(&mut index, Event::Delete(namespace("never-seen", None)));
        assert_eq!(index.counts().namespace_modes, 0);
    }

    #[test]
    fn a_namespace_relist_replaces_every_mode_at_init_done() {
        let mut index = Index::default();
        for ns in ["a", "b", "d"] {
            apply(&mut index, Event::Apply(service(ns, "web", None)));
        }
        apply(&mut index, Event::Apply(namespace("a", Some("off"))));
        apply(&mut index, Event::Apply(namespace("b", Some("report"))));
        apply(&mut index, Event::Apply(namespace("d", Some("off"))));

        apply(&mut index, Event::Init(Kind::Namespace));
        apply(&mut index, Event::InitApply(namespace("a", Some("sweep"))));
        apply(&mut index, Event::InitApply(namespace("b", None)));
        apply(&mut index, Event::InitApply(namespace("c", Some("off"))));
        // Until InitDone the previous view is served.
        assert_eq!(mode(&index, "a", "web"), Some(SweepMode::Off));
        assert_eq!(mode(&index, "b", "web"), Some(SweepMode::Report));
        apply(&mut index, Event::InitDone(Kind::Namespace));
        assert_eq!(mode(&index, "a", "web"), Some(SweepMode::Sweep));
        assert_eq!(
            mode(&index, "b", "web"),
            None,
            "listed without the annotation"
        );
        assert_eq!(mode(&index, "d", "web"), None, "not listed: deleted");
        assert_eq!(index.namespace_mode("c"), Some(SweepMode::Off));
        assert_eq!(index.counts().namespace_modes, 2);
    }

    #[test]
    fn namespaces_without_the_annotation_cost_nothing() {
        let mut index = Index::default();
        apply(&mut index, Event::Apply(service("shop", "web", None)));
        let pooled = index.pool.len();
        for i in 0..10_000 {
            apply(
                &mut index,
                Event::Apply(namespace(&format!("ns-{i}"), None)),
            );
        }
        apply(&mut index, Event::Init(Kind::Namespace));
        for i in 0..10_000 {
            apply(
                &mut index,
                Event::InitApply(namespace(&format!("ns-{i}"), None)),
            );
        }
        assert!(
            index.relists[&Kind::Namespace].entries.is_empty(),
            "a relist holds no unannotated Namespace"
        );
        apply(&mut index, Event::InitDone(Kind::Namespace));
        assert_eq!(index.counts().namespace_modes, 0);
        assert_eq!(index.pool.len(), pooled, "no names interned for them");
        // The annotated one shares its name with its Services' keys.
        apply(&mut index, Event::Apply(namespace("shop", Some("off"))));
        assert_eq!(index.pool.len(), pooled);
    }

    #[test]
    fn a_nameless_namespace_is_rejected_and_changes_nothing() {
        let mut index = Index::default();
        apply(&mut index, Event::Apply(namespace("shop", Some("off"))));
        let nameless: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            json!({"metadata": {"annotations": {"ghostbuster.io/mode": "sweep"}}}),
        )
        .unwrap();
        let e = index
            .apply(Event::Apply(Object::from(nameless.clone())), now())
            .unwrap_err();
        assert!(e.to_string().contains("Namespace"), "{e}");
        assert!(index
            .apply(Event::Delete(Object::from(nameless)), now())
            .is_err());
        assert_eq!(index.namespace_mode("shop"), Some(SweepMode::Off));
    }
}
