//! An EndpointSlice reduced to what decides whether a flow's backend is still an endpoint.
//!
//! Rules from discovery.k8s.io/v1 and kube-proxy (pkg/proxy/endpointslicecache.go):
//! - the slice belongs to the Service named by label `kubernetes.io/service-name`; a slice without
//!   it is ignored, as kube-proxy ignores it;
//! - `ports[].name` is the *Service port's* name (`""` when unnamed) and `ports[].port` the resolved
//!   target port; a port without a number is skipped;
//! - only `addresses[0]` of an endpoint is used (the others are fungible and kube-proxy ignores
//!   them);
//! - FQDN slices carry no IPs and are ignored.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1 as api;

use super::error::{Error, Result};
use super::event::Kind;
use super::meta;
use super::model::{Conditions, IpFamily, ObjectKey, PodTarget, Protocol, Uid};
use super::name::{Name, NamePool};
use super::service::port_number;

pub(crate) const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The only controller whose slices follow Pods: its removal of an endpoint means the pod is gone
/// or no longer selected. Anything else (the mirroring controller, custom controllers, the API
/// server for `default/kubernetes`) proves nothing about a pod.
pub const POD_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// One port of a slice: the Service port `name` resolved to a target `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Name,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub conditions: Conditions,
    /// `targetRef` when it is a Pod.
    pub pod: Option<PodTarget>,
}

/// The compact form of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Slice {
    pub key: ObjectKey,
    pub uid: Option<Uid>,
    /// The owning Service (same namespace as the slice).
    pub service: ObjectKey,
    pub family: IpFamily,
    /// Managed by [`POD_CONTROLLER`].
    pub managed: bool,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

impl Slice {
    /// The target port this slice resolves Service port `name`/`protocol` to.
    pub fn port_for(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| &*p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// True when no endpoint of this slice may be taken as evidence about a pod.
    pub fn proves_nothing(&self) -> bool {
        !self.managed || self.endpoints.iter().any(|e| e.pod.is_none())
    }

    /// Converts an API EndpointSlice. `Ok(None)`: a slice kube-proxy ignores (no service label,
    /// FQDN addresses).
    pub fn from_api(slice: &api::EndpointSlice, pool: &mut NamePool) -> Result<Option<Self>> {
        let key = meta::key(&slice.metadata, Kind::EndpointSlice, pool)?;
        let invalid = |reason: String| Error::invalid(Kind::EndpointSlice, &key, reason);
        let family = match slice.address_type.as_str() {
            "FQDN" => return Ok(None),
            "" => return Err(invalid("addressType is missing".into())),
            t => IpFamily::from_k8s(t)
                .ok_or_else(|| invalid(format!("addressType {t:?} is not IPv4, IPv6 or FQDN")))?,
        };
        let Some(service) =
            meta::label(&slice.metadata, LABEL_SERVICE_NAME).filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let service = ObjectKey {
            namespace: key.namespace.clone(),
            name: pool.intern(service),
        };

        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let Some(number) = p.port else { continue };
            let port = port_number(number)
                .ok_or_else(|| invalid(format!("ports[{i}].port {number} is not 1-65535")))?;
            let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
                invalid(format!(
                    "ports[{i}].protocol {:?} is not TCP, UDP or SCTP",
                    p.protocol.as_deref().unwrap_or_default()
                ))
            })?;
            ports.push(SlicePort {
                name: pool.intern(p.name.as_deref().unwrap_or_default()),
                port,
                protocol,
            });
        }

        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for (i, e) in slice.endpoints.iter().enumerate() {
            let Some(addr) = e.addresses.first() else {
                continue;
            };
            let ip: IpAddr = addr
                .parse()
                .ok()
                .filter(|ip| IpFamily::of(ip) == family)
                .ok_or_else(|| {
                    invalid(format!(
                        "endpoints[{i}].addresses[0] {addr:?} is not an {} address",
                        slice.address_type
                    ))
                })?;
            let c = e.conditions.as_ref();
            let conditions = Conditions::from_api(
                c.and_then(|c| c.ready),
                c.and_then(|c| c.serving),
                c.and_then(|c| c.terminating),
            );
            let pod = e
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| {
                    // Not pooled: a pod name is unique, a pool entry would cost more than it
                    // shares.
                    Some(PodTarget {
                        name: Name::new(t.name.as_deref().filter(|n| !n.is_empty())?),
                        uid: t
                            .uid
                            .as_deref()
                            .filter(|u| !u.is_empty())
                            .map(|u| Uid::parse(u, pool)),
                    })
                });
            endpoints.push(Endpoint {
                ip,
                conditions,
                pod,
            });
        }

        Ok(Some(Slice {
            uid: meta::uid(&slice.metadata, pool),
            managed: meta::label(&slice.metadata, LABEL_MANAGED_BY) == Some(POD_CONTROLLER),
            key,
            service,
            family,
            ports,
            endpoints,
        }))
    }
}
