//! Bulk fill: a namespace's conntrack table with N synthetic DNAT'd entries shaped like a
//! cluster's, plus the ground truth — which entries point at deleted backends — and the matching
//! Kubernetes objects, so scan tests and benchmarks can check ghostbuster's verdicts exactly.
//!
//! The cluster: `services` Services spread over ten namespaces; most are web services (TCP
//! "http" 80→8080, every third also "metrics" 9090), every fifth a DNS-like one (UDP "dns" and
//! TCP "dns-tcp" 53→5353), every tenth a statsd-like one (UDP 8125); `backends` live pods each
//! plus `deleted_per_service` deleted ones (no Pod object, absent from every slice). The IPv4
//! documentation ranges hold only 254 backends and 254 VIPs, so services that no longer fit are
//! IPv6-only (2001:db8::/32 is large): big fills are a mix of both families.
//!
//! Entries are created with CT_NEW + CTA_NAT_DST (ctnetlink), so the kernel computes the reply
//! tuple and sets DST_NAT as for a packet that hit a kube-proxy rule; TCP ones are ESTABLISHED and
//! ASSURED, UDP ones have seen a reply. Every original tuple is distinct: entry `i` uses client
//! `i mod 254` and source port `1024 + (i / 254) mod 64000`. Generation is deterministic for a
//! seed and streamed in batches, so memory stays small for a million entries.
//!
//! The conntrack hash is shared by every namespace of the machine and `nf_conntrack_max` is
//! global: run bulk fills one at a time, and never change the machine's limits to make one fit.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

use ctnetlink::{Conntrack, NewFlow, Tuple};

use crate::error::{Error, Result};
use crate::k8s::{self, PodObject};
use crate::model::{Endpoint, Protocol, Service, ServicePort};
use crate::node::NODE_NAME;

/// What to fill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkSpec {
    /// Number of entries to create.
    pub entries: usize,
    /// Number of services.
    pub services: usize,
    /// Live backends per service.
    pub backends: usize,
    /// Deleted backends per service (stale entries point at these).
    pub deleted_per_service: usize,
    /// Share of entries that point at a deleted backend (0.0..=1.0).
    pub stale_fraction: f64,
    /// Timeout of TCP entries, seconds.
    pub tcp_timeout: u32,
    /// Timeout of UDP entries, seconds.
    pub udp_timeout: u32,
    /// Conntrack zone of every entry.
    pub zone: u16,
    /// Seed of the deterministic generator.
    pub seed: u64,
}

impl Default for BulkSpec {
    fn default() -> Self {
        BulkSpec {
            entries: 100_000,
            services: 200,
            backends: 3,
            deleted_per_service: 1,
            stale_fraction: 0.05,
            tcp_timeout: 86_400,
            udp_timeout: 120,
            zone: 0,
            seed: 1,
        }
    }
}

/// A backend that was deleted: its entries are the ghosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedBackend {
    /// `namespace/name` of its service.
    pub service: String,
    /// The deleted pod's name.
    pub pod: String,
    /// Its address.
    pub ip: IpAddr,
}

/// The synthetic cluster: services with their live endpoints, live pods, deleted backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// Services (endpoints are the live backends only).
    pub services: Vec<Service>,
    /// Live backend pods.
    #[serde(skip)]
    pub pods: Vec<PodObject>,
    /// Deleted backends, per service in order.
    pub deleted: Vec<DeletedBackend>,
}

impl Cluster {
    /// The `kubectl get -o json` style List of the cluster's Services, EndpointSlices and Pods.
    pub fn kubernetes_objects(&self) -> serde_json::Value {
        k8s::list(&self.services, &self.pods, "2024-01-01T00:00:00Z")
    }
}

/// The ground truth of a fill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Truth {
    /// The spec it was made from.
    pub spec: BulkSpec,
    /// Entries the generator produced.
    pub planned: u64,
    /// Entries the kernel created.
    pub created: u64,
    /// Entries that already existed (EEXIST).
    pub existed: u64,
    /// Entries the kernel refused.
    pub failed: u64,
    /// First errno of a refused entry.
    pub first_errno: Option<i32>,
    /// Planned entries pointing at a deleted backend.
    pub stale: u64,
    /// Planned entries per deleted backend IP.
    pub stale_per_backend: BTreeMap<IpAddr, u64>,
    /// Planned entries per service (`namespace/name`): (live, stale).
    pub per_service: BTreeMap<String, (u64, u64)>,
    /// Planned TCP and UDP entries.
    pub per_protocol: BTreeMap<String, u64>,
    /// Planned IPv4 and IPv6 entries.
    pub per_family: BTreeMap<String, u64>,
}

/// splitmix64: tiny, deterministic, good enough for picking services.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn v6(subnet: u16, n: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, subnet, 0, 0, 0, (n >> 16) as u16, n as u16)
}

/// Builds the synthetic cluster (pure; deterministic for a spec).
pub fn plan_cluster(spec: &BulkSpec) -> Result<Cluster> {
    if spec.services == 0 || spec.backends == 0 {
        return Err(Error::Invalid(
            "a bulk cluster needs at least one service with one backend".into(),
        ));
    }
    if !(0.0..=1.0).contains(&spec.stale_fraction) {
        return Err(Error::Invalid(format!(
            "stale_fraction {} is not within 0..=1",
            spec.stale_fraction
        )));
    }
    let per_service = spec.backends + spec.deleted_per_service;
    let mut next_v4_backend: u32 = 1;
    let mut next_v6_backend: u32 = 1;
    let mut next_v4_vip: u32 = 1;
    let mut rng = Rng(spec.seed ^ 0x5eed);
    let mut cluster = Cluster {
        services: Vec::new(),
        pods: Vec::new(),
        deleted: Vec::new(),
    };
    for s in 0..spec.services {
        let namespace = format!("team-{}", s % 10);
        let (name, ports) = match s % 10 {
            2 | 7 => (
                format!("dns-{s}"),
                vec![
                    ServicePort::udp("dns", 53, 5353),
                    ServicePort::tcp("dns-tcp", 53, 5353),
                ],
            ),
            9 => (
                format!("statsd-{s}"),
                vec![ServicePort::udp("statsd", 8125, 8125)],
            ),
            _ if s % 3 == 0 => (
                format!("web-{s}"),
                vec![
                    ServicePort::tcp("http", 80, 8080),
                    ServicePort::tcp("metrics", 9090, 9090),
                ],
            ),
            _ => (format!("web-{s}"), vec![ServicePort::tcp("http", 80, 8080)]),
        };
        let fits_v4 = next_v4_backend + per_service as u32 <= 255 && next_v4_vip <= 254;
        let (vip, mut addrs): (IpAddr, Vec<IpAddr>) = if fits_v4 {
            let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, next_v4_vip as u8));
            next_v4_vip += 1;
            let addrs = (0..per_service)
                .map(|k| {
                    IpAddr::V4(Ipv4Addr::new(
                        203,
                        0,
                        113,
                        (next_v4_backend + k as u32) as u8,
                    ))
                })
                .collect();
            next_v4_backend += per_service as u32;
            (vip, addrs)
        } else {
            let vip = IpAddr::V6(v6(3, s as u32 + 1));
            let addrs = (0..per_service)
                .map(|k| IpAddr::V6(v6(2, next_v6_backend + k as u32)))
                .collect();
            next_v6_backend += per_service as u32;
            (vip, addrs)
        };
        let template = format!("{:05x}", rng.next() & 0xfffff);
        let deleted_addrs = addrs.split_off(spec.backends);
        let mut svc = Service::new(&namespace, &name).cluster_ip(vip);
        svc.ports = ports;
        for (k, ip) in addrs.into_iter().enumerate() {
            let pod = format!("{name}-{template}-{k}");
            svc.endpoints.push(Endpoint::ready(ip, &pod));
            cluster.pods.push(PodObject {
                namespace: namespace.clone(),
                name: pod.clone(),
                uid: k8s::uid(&["Pod", &namespace, &pod]),
                ips: vec![ip],
                node_name: format!("{NODE_NAME}-{}", k % 3),
                labels: [("app".to_string(), name.clone())].into_iter().collect(),
                creation_timestamp: "2024-01-01T00:00:00Z".to_string(),
                ports: svc
                    .ports
                    .iter()
                    .map(|p| (p.target_port, p.protocol))
                    .collect(),
            });
        }
        for (k, ip) in deleted_addrs.into_iter().enumerate() {
            cluster.deleted.push(DeletedBackend {
                service: svc.key(),
                pod: format!("{name}-old{template}-{k}"),
                ip,
            });
        }
        cluster.services.push(svc);
    }
    Ok(cluster)
}

/// One planned entry and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFlow {
    /// What to create.
    pub flow: NewFlow,
    /// Index into [`Cluster::services`].
    pub service: usize,
    /// True when it points at a deleted backend.
    pub stale: bool,
}

/// Generates entry `i` of the fill (pure).
fn plan_flow(
    spec: &BulkSpec,
    cluster: &Cluster,
    deleted_by_service: &[Vec<IpAddr>],
    rng: &mut Rng,
    i: usize,
) -> PlannedFlow {
    let s = rng.below(cluster.services.len());
    let svc = &cluster.services[s];
    let port = &svc.ports[rng.below(svc.ports.len())];
    let vip = svc.cluster_ips[0];
    let stale = !deleted_by_service[s].is_empty() && rng.chance(spec.stale_fraction);
    let backend = if stale {
        deleted_by_service[s][rng.below(deleted_by_service[s].len())]
    } else {
        svc.endpoints[rng.below(svc.endpoints.len())].ip
    };
    let client_n = (i % 254) as u32 + 1;
    let sport = 1024 + ((i / 254) % 64_000) as u16;
    let client = match vip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, client_n as u8)),
        IpAddr::V6(_) => IpAddr::V6(v6(1, client_n)),
    };
    let orig = Tuple::ports(client, sport, vip, port.port, port.protocol.number());
    let mut flow = NewFlow::established(orig, Some((backend, port.target_port)));
    flow.timeout = match port.protocol {
        Protocol::Udp => spec.udp_timeout,
        _ => spec.tcp_timeout,
    };
    flow.zone = spec.zone;
    PlannedFlow {
        flow,
        service: s,
        stale,
    }
}

/// Every planned entry, streamed to `f` in order (pure; deterministic for a spec).
pub fn for_each_flow(spec: &BulkSpec, cluster: &Cluster, mut f: impl FnMut(&PlannedFlow)) {
    let mut deleted_by_service: Vec<Vec<IpAddr>> = vec![Vec::new(); cluster.services.len()];
    let index: BTreeMap<String, usize> = cluster
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key(), i))
        .collect();
    for d in &cluster.deleted {
        if let Some(&i) = index.get(&d.service) {
            deleted_by_service[i].push(d.ip);
        }
    }
    let mut rng = Rng(spec.seed);
    for i in 0..spec.entries {
        f(&plan_flow(spec, cluster, &deleted_by_service, &mut rng, i));
    }
}

/// Reads the machine-wide table limit (readable, not writable, from a child namespace).
fn conntrack_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Fills the conntrack table of namespace `netns` (`None`: the caller's) and returns the cluster
/// and the ground truth. Fails before creating anything when `spec.entries` exceeds
/// `nf_conntrack_max`.
pub fn fill(netns: Option<&str>, spec: &BulkSpec) -> Result<(Cluster, Truth)> {
    if let Some(max) = conntrack_max() {
        if spec.entries as u64 > max {
            return Err(Error::Invalid(format!(
                "{} entries exceed nf_conntrack_max ({max}) of this machine; fill fewer (the \
                 limit is machine-wide and the lab never changes it)",
                spec.entries
            )));
        }
    }
    let cluster = plan_cluster(spec)?;
    let mut conntrack = Conntrack::open_in(netns)?;
    let mut truth = Truth {
        spec: spec.clone(),
        planned: 0,
        created: 0,
        existed: 0,
        failed: 0,
        first_errno: None,
        stale: 0,
        stale_per_backend: BTreeMap::new(),
        per_service: BTreeMap::new(),
        per_protocol: BTreeMap::new(),
        per_family: BTreeMap::new(),
    };
    const CHUNK: usize = 65_536;
    let mut batch: Vec<NewFlow> = Vec::with_capacity(CHUNK.min(spec.entries));
    let mut failure: Option<Error> = None;
    for_each_flow(spec, &cluster, |p| {
        if failure.is_some() {
            return;
        }
        record(&mut truth, &cluster, p);
        batch.push(p.flow);
        if batch.len() == CHUNK {
            if let Err(e) = create(&mut conntrack, &batch, &mut truth) {
                failure = Some(e);
            }
            batch.clear();
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    create(&mut conntrack, &batch, &mut truth)?;
    Ok((cluster, truth))
}

fn record(truth: &mut Truth, cluster: &Cluster, p: &PlannedFlow) {
    truth.planned += 1;
    let key = cluster.services[p.service].key();
    let counts = truth.per_service.entry(key).or_default();
    if p.stale {
        counts.1 += 1;
        truth.stale += 1;
        if let Some((ip, _)) = p.flow.dnat {
            *truth.stale_per_backend.entry(ip).or_default() += 1;
        }
    } else {
        counts.0 += 1;
    }
    let proto = ctnetlink::proto_name(p.flow.orig.proto).to_string();
    *truth.per_protocol.entry(proto).or_default() += 1;
    let family = if p.flow.orig.src.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    };
    *truth.per_family.entry(family.to_string()).or_default() += 1;
}

fn create(conntrack: &mut Conntrack, batch: &[NewFlow], truth: &mut Truth) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let summary = conntrack.create(batch)?;
    truth.created += summary.created;
    truth.existed += summary.existed;
    truth.failed += summary.failed;
    if truth.first_errno.is_none() {
        truth.first_errno = summary.first_errno;
    }
    Ok(())
}

/// Writes the ground truth into `dir`: `cluster.json` (the Kubernetes List: Services,
/// EndpointSlices, Pods; deleted backends absent), `truth.json` (counts, deleted backends, the
/// spec) and, when `with_flows`, `flows.tsv` (one planned entry per line: proto, client, sport,
/// vip, port, backend, backend port, stale).
pub fn write_truth(
    dir: &Path,
    spec: &BulkSpec,
    cluster: &Cluster,
    truth: &Truth,
    with_flows: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let write_json = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Invalid(format!("serializing {name}: {e}")))?;
        std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write_json("cluster.json", &cluster.kubernetes_objects())?;
    let truth_json = serde_json::json!({
        "truth": truth,
        "deleted_backends": cluster.deleted,
    });
    write_json("truth.json", &truth_json)?;
    if with_flows {
        let path = dir.join("flows.tsv");
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut out = std::io::BufWriter::new(file);
        let mut result: std::io::Result<()> = writeln!(
            out,
            "proto\tclient\tsport\tvip\tport\tbackend\tbackend_port\tstale"
        );
        for_each_flow(spec, cluster, |p| {
            if result.is_err() {
                return;
            }
            let o = &p.flow.orig;
            let (backend, backend_port) = p.flow.dnat.unwrap_or((o.dst, o.dport().unwrap_or(0)));
            result = writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                ctnetlink::proto_name(o.proto),
                o.src,
                o.sport().unwrap_or(0),
                o.dst,
                o.dport().unwrap_or(0),
                backend,
                backend_port,
                u8::from(p.stale)
            );
        });
        result
            .and_then(|()| out.flush())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn cluster_mixes_families_and_keeps_deleted_backends_out_of_slices() {
        let spec = BulkSpec::default();
        let cluster = plan_cluster(&spec).unwrap();
        assert_eq!(cluster.services.len(), 200);
        assert_eq!(cluster.deleted.len(), 200);
        let v4 = cluster
            .services
            .iter()
            .filter(|s| s.cluster_ips[0].is_ipv4())
            .count();
        assert!(v4 > 50 && v4 < 200, "{v4} IPv4 services");
        let deleted: BTreeSet<IpAddr> = cluster.deleted.iter().map(|d| d.ip).collect();
        let list = cluster.kubernetes_objects();
        for item in list["items"].as_array().unwrap() {
            if item["kind"] == "EndpointSlice" {
                for ep in item["endpoints"].as_array().unwrap() {
                    let ip: IpAddr = ep["addresses"][0].as_str().unwrap().parse().unwrap();
                    assert!(!deleted.contains(&ip));
                }
            }
        }
        // Every address is unique and from a documentation range.
        let mut all = BTreeSet::new();
        for s in &cluster.services {
            for e in &s.endpoints {
                assert!(all.insert(e.ip));
            }
        }
        for d in &deleted {
            assert!(all.insert(*d));
        }
    }

    #[test]
    fn flows_are_unique_deterministic_and_match_the_stale_fraction() {
        let spec = BulkSpec {
            entries: 20_000,
            ..BulkSpec::default()
        };
        let cluster = plan_cluster(&spec).unwrap();
        let mut tuples = BTreeSet::new();
        let mut stale = 0usize;
        let mut first = Vec::new();
        for_each_flow(&spec, &cluster, |p| {
            let o = p.flow.orig;
            assert!(tuples.insert((o.src, o.sport(), o.dst, o.dport(), o.proto)));
            stale += usize::from(p.stale);
            if first.len() < 5 {
                first.push(p.flow);
            }
        });
        assert!((800..1200).contains(&stale), "{stale} stale of 20000 at 5%");
        let mut again = Vec::new();
        for_each_flow(&spec, &cluster, |p| {
            if again.len() < 5 {
                again.push(p.flow);
            }
        });
        assert_eq!(first, again);
    }
}
