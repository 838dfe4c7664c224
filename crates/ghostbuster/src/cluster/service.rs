//! A Service as kube-proxy programs it: its frontends and ports, nothing else.
//!
//! Follows pkg/proxy/servicechangetracker.go and serviceport.go: every `spec.clusterIPs` entry,
//! `spec.externalIPs` and `status.loadBalancer.ingress[].ip` (unless `ipMode: Proxy`, where the
//! load balancer proxies and no DNAT to the VIP happens on the node), each only in the families the
//! Service has a ClusterIP in (a per-family proxier skips a Service without a ClusterIP of its
//! family). NodePorts are kept per port and matched against node addresses at lookup time.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::error::{Error, Result};
use super::event::Kind;
use super::meta;
use super::model::{IpFamilies, IpFamily, ObjectKey, Protocol, Uid};
use super::name::{Name, NamePool};

const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// How a flow's destination reached a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

/// Why kube-proxy does not program a Service (pkg/proxy/util `ShouldSkipService` and the label
/// selector of kube-proxy's informers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotProxied {
    Headless,
    ExternalName,
    ProxyNameLabel,
    HeadlessLabel,
}

/// One `spec.ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `""` for an unnamed port; slices name their ports after it.
    pub name: Name,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
}

/// The compact form of a Service.
#[derive(Clone, Debug)]
pub struct Service {
    pub key: ObjectKey,
    pub uid: Option<Uid>,
    /// `Some` when kube-proxy ignores the Service: it has no frontends then.
    pub not_proxied: Option<NotProxied>,
    /// For a Service another proxy programs (labelled `service-proxy-name` or `headless` while it
    /// has a ClusterIP): its addresses (ClusterIPs, external and load-balancer IPs). A flow to
    /// them was DNAT'd by that proxy, not by kube-proxy: never ours to judge or remove, and never
    /// `service_gone`.
    pub other_proxy_addresses: Box<[IpAddr]>,
    /// A Service without selector gets its endpoints from someone else (manual Endpoints mirrored
    /// into slices, a custom controller): their disappearance proves nothing about a pod.
    pub has_selector: bool,
    /// Families of the ClusterIPs.
    pub families: IpFamilies,
    /// Address frontends (ClusterIPs, external IPs, load-balancer IPs), already family-filtered.
    pub frontends: Box<[(IpAddr, FrontendKind)]>,
    pub ports: Box<[ServicePort]>,
    /// The Service's own `ghostbuster.io/mode` annotation. What applies to its flows also depends
    /// on its Namespace's: ask [`Index::mode_of`](super::Index::mode_of), never read this alone.
    pub mode: Option<SweepMode>,
}

/// The operator's override (`ghostbuster.io/mode: off|report|sweep`), on a Service or on its
/// Namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// Never removed. Meant as "leave it alone entirely", but the classifier treats it as
    /// `report` (flows still show in scans and metrics, `kept_because: annotation`).
    Off,
    /// Reported, never removed.
    Report,
    /// The default: removed when the decision table says so.
    Sweep,
}

/// The annotation that sets [`SweepMode`].
pub const MODE_ANNOTATION: &str = "ghostbuster.io/mode";

impl SweepMode {
    /// Case and surrounding whitespace do not matter (`" Off "` is `off`). An unknown value is
    /// taken as `report`: the safe reading of an operator's intent to restrict.
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => SweepMode::Off,
            "sweep" => SweepMode::Sweep,
            _ => SweepMode::Report,
        }
    }

    /// The annotation of `meta`, if it has one. The key is matched exactly: annotation keys are
    /// case-sensitive in Kubernetes.
    pub(crate) fn of(meta: &ObjectMeta) -> Option<Self> {
        meta.annotations
            .as_ref()?
            .get(MODE_ANNOTATION)
            .map(|v| SweepMode::parse(v))
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            SweepMode::Off => "off",
            SweepMode::Report => "report",
            SweepMode::Sweep => "sweep",
        }
    }

    /// `off` and `report`: flows are reported, never removed.
    pub const fn keeps(self) -> bool {
        !matches!(self, SweepMode::Sweep)
    }
}

impl std::fmt::Display for SweepMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which object's annotation set the mode of a Service's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeSource {
    Service,
    Namespace,
}

/// The mode that applies to a Service's flows ([`Index::effective_mode`](super::Index::effective_mode)):
/// the Service's own annotation if it has one, else its Namespace's. The more specific object
/// wins either way, so a Service annotated `sweep` in a Namespace annotated `off` is swept: an
/// operator can exempt a namespace and still opt single Services back in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveMode {
    pub mode: SweepMode,
    pub from: ModeSource,
    /// The Namespace's mode that the Service's own annotation overrode, if any (for `explain`).
    pub overrides: Option<SweepMode>,
}

impl Service {
    /// `default/kubernetes`: its endpoints are the API servers, maintained by the API server itself.
    pub fn is_api_server(&self) -> bool {
        &*self.key.namespace == "default" && &*self.key.name == "kubernetes"
    }

    /// Converts an API Service; rejects what the API server would never have stored.
    pub fn from_api(svc: &api::Service, pool: &mut NamePool) -> Result<Self> {
        let key = meta::key(&svc.metadata, Kind::Service, pool)?;
        let invalid = |reason: String| Error::invalid(Kind::Service, &key, reason);
        let spec = svc
            .spec
            .as_ref()
            .ok_or_else(|| invalid("has no spec".into()))?;

        let labelled = |l| meta::label(&svc.metadata, l).is_some();
        let cluster_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
            _ => Vec::new(),
        };
        let not_proxied = if spec.type_.as_deref() == Some("ExternalName") {
            Some(NotProxied::ExternalName)
        } else if cluster_ips.first() == Some(&"None") {
            Some(NotProxied::Headless)
        } else if labelled(LABEL_PROXY_NAME) {
            Some(NotProxied::ProxyNameLabel)
        } else if labelled(LABEL_HEADLESS) {
            Some(NotProxied::HeadlessLabel)
        } else {
            None
        };

        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let port = port_number(p.port).ok_or_else(|| {
                invalid(format!("spec.ports[{i}].port {} is not 1-65535", p.port))
            })?;
            let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
                invalid(format!(
                    "spec.ports[{i}].protocol {:?} is not TCP, UDP or SCTP",
                    p.protocol.as_deref().unwrap_or_default()
                ))
            })?;
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(port_number(n).ok_or_else(|| {
                    invalid(format!("spec.ports[{i}].nodePort {n} is not 1-65535"))
                })?),
            };
            ports.push(ServicePort {
                name: pool.intern(p.name.as_deref().unwrap_or_default()),
                port,
                protocol,
                node_port,
            });
        }

        let uid = meta::uid(&svc.metadata, pool);
        // Its lists are boxed slices, without a vector's spare capacity.
        let svc_out = |ports: Vec<_>, families, frontends: Vec<_>, other_proxy: Vec<_>| Service {
            key: key.clone(),
            uid,
            not_proxied,
            other_proxy_addresses: other_proxy.into_boxed_slice(),
            has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
            families,
            frontends: frontends.into_boxed_slice(),
            ports: ports.into_boxed_slice(),
            mode: SweepMode::of(&svc.metadata),
        };
        if let Some(why) = not_proxied {
            let other_proxy = match why {
                NotProxied::ProxyNameLabel | NotProxied::HeadlessLabel => {
                    other_proxy_addresses(svc, &cluster_ips)
                }
                NotProxied::Headless | NotProxied::ExternalName => Vec::new(),
            };
            return Ok(svc_out(
                ports,
                IpFamilies::default(),
                Vec::new(),
                other_proxy,
            ));
        }
        if cluster_ips.is_empty() {
            return Err(invalid(
                "spec.clusterIP is missing (was the object exported from the API server?)".into(),
            ));
        }
        if ports.is_empty() {
            return Err(invalid("spec.ports is empty".into()));
        }
        let mut families = IpFamilies::default();
        let mut frontends = Vec::new();
        for (i, ip) in cluster_ips.iter().enumerate() {
            let ip: IpAddr = ip.parse().map_err(|_| {
                invalid(format!("spec.clusterIPs[{i}] {ip:?} is not an IP address"))
            })?;
            families.insert(IpFamily::of(&ip));
            frontends.push((ip, FrontendKind::ClusterIp));
        }
        // External and load-balancer IPs only in the ClusterIPs' families, each address once.
        let mut push_frontend = |ip: IpAddr, kind| {
            if families.contains(IpFamily::of(&ip)) && !frontends.iter().any(|(a, _)| *a == ip) {
                frontends.push((ip, kind));
            }
        };
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let ip: IpAddr = ip.parse().map_err(|_| {
                invalid(format!("spec.externalIPs[{i}] {ip:?} is not an IP address"))
            })?;
            push_frontend(ip, FrontendKind::ExternalIp);
        }
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue; // hostname-only ingress: no VIP on the node
            };
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let ip: IpAddr = ip.parse().map_err(|_| {
                invalid(format!(
                    "status.loadBalancer.ingress[{i}].ip {ip:?} is not an IP address"
                ))
            })?;
            push_frontend(ip, FrontendKind::LoadBalancer);
        }
        Ok(svc_out(ports, families, frontends, Vec::new()))
    }
}

/// Every address of a Service another proxy programs, read leniently (kube-proxy never validated
/// it, so neither do we): what does not parse is skipped.
fn other_proxy_addresses(svc: &api::Service, cluster_ips: &[&str]) -> Vec<IpAddr> {
    let spec = svc.spec.as_ref();
    let external = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref());
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in cluster_ips.iter().copied().chain(external).chain(ingress) {
        if let Ok(ip) = ip.parse() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

pub(crate) fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}
