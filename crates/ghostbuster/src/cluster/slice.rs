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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

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

/// One endpoint of a slice, as [`Slice::endpoints`] reads it out of the slice's compact storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    pub conditions: Conditions,
    /// `targetRef` when it is a Pod.
    pub pod: Option<PodRef<'a>>,
}

/// The Pod an endpoint points at, borrowed from its slice (its namespace is the slice's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef<'a> {
    pub name: &'a str,
    pub uid: Option<Uid>,
}

impl PodRef<'_> {
    /// An owned copy, for what outlives the slice (tombstones, verdicts).
    pub fn to_target(&self) -> PodTarget {
        PodTarget {
            name: Name::new(self.name),
            uid: self.uid.clone(),
        }
    }
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
    pub ports: Box<[SlicePort]>,
    endpoints: Endpoints,
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
        !self.managed || self.endpoints().any(|e| e.pod.is_none())
    }

    /// Its endpoints, in the slice's order.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint<'_>> {
        (0..self.endpoints.len()).filter_map(|i| self.endpoint(i))
    }

    /// Endpoint `i` (its position in [`Slice::endpoints`]).
    pub fn endpoint(&self, i: usize) -> Option<Endpoint<'_>> {
        self.endpoints.get(i)
    }

    /// The address of endpoint `i`, without reading the rest of it.
    pub fn endpoint_ip(&self, i: usize) -> Option<IpAddr> {
        self.endpoints.ips.get(i)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
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

        let mut endpoints = EndpointsBuilder::with_capacity(slice.endpoints.len());
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
                    let name = t.name.as_deref().filter(|n| !n.is_empty())?;
                    let uid = t
                        .uid
                        .as_deref()
                        .filter(|u| !u.is_empty())
                        .map(|u| Uid::parse(u, pool));
                    Some((name, uid))
                });
            endpoints.push(ip, conditions, pod);
        }

        Ok(Some(Slice {
            uid: meta::uid(&slice.metadata, pool),
            managed: meta::label(&slice.metadata, LABEL_MANAGED_BY) == Some(POD_CONTROLLER),
            key,
            service,
            family,
            ports: ports.into_boxed_slice(),
            endpoints: endpoints.build(),
        }))
    }
}

/// The endpoints of a slice, in about 60 bytes each (pod name included) instead of the ~110 of a
/// `Vec` of structs with an `IpAddr`, a reference-counted pod name and an `Option<Uid>`: at the
/// budget's 100,000 endpoints they are the index's largest part. Endpoint `i` is row `i` with
/// address `i`; [`Slice::endpoint`] puts it back together.
#[derive(Clone)]
struct Endpoints {
    ips: Addresses,
    rows: Box<[Row]>,
    /// Every pod name, end to end: endpoint `i`'s is `names[rows[i - 1].name_end..rows[i].name_end]`,
    /// empty when it names no pod (a Pod `targetRef` without a name is not kept).
    names: Box<str>,
    /// The uids that are not UUIDs, by endpoint index (ascending). The API server makes UUIDs,
    /// so this is nearly always empty and costs no allocation.
    odd_uids: Box<[(u32, Uid)]>,
}

/// An endpoint without its address and pod name: 24 bytes.
#[derive(Clone, Copy, Debug)]
struct Row {
    uid: StoredUid,
    conditions: Conditions,
    name_end: u32,
}

/// A pod uid as a row holds it: 17 bytes, alignment 1 (a [`Uid`] is 24, for the pointer of its
/// rare non-UUID form).
#[derive(Clone, Copy, Debug)]
enum StoredUid {
    None,
    Uuid([u8; 16]),
    /// In [`Endpoints::odd_uids`].
    Odd,
}

/// The endpoints' addresses: IPv4 ones, nearly every cluster's, in 4 bytes instead of the 17 of
/// an `IpAddr`.
#[derive(Clone, Debug)]
enum Addresses {
    V4(Box<[Ipv4Addr]>),
    /// IPv6 (a slice has one family; mixed lists are stored this way too).
    Any(Box<[IpAddr]>),
}

impl Addresses {
    fn new(ips: Vec<IpAddr>) -> Self {
        let v4: Option<Box<[Ipv4Addr]>> = ips
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        v4.map_or_else(|| Addresses::Any(ips.into_boxed_slice()), Addresses::V4)
    }

    fn get(&self, i: usize) -> Option<IpAddr> {
        match self {
            Addresses::V4(a) => a.get(i).copied().map(IpAddr::V4),
            Addresses::Any(a) => a.get(i).copied(),
        }
    }
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len()).filter_map(|i| self.get(i)))
            .finish()
    }
}

impl Endpoints {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn get(&self, i: usize) -> Option<Endpoint<'_>> {
        let row = self.rows.get(i)?;
        let start = match i.checked_sub(1) {
            Some(prev) => self.rows[prev].name_end as usize,
            None => 0,
        };
        let name = self.names.get(start..row.name_end as usize)?;
        let uid = match row.uid {
            StoredUid::None => None,
            StoredUid::Uuid(b) => Some(Uid::Uuid(b)),
            StoredUid::Odd => {
                let i = u32::try_from(i).ok()?;
                let at = self.odd_uids.binary_search_by_key(&i, |(j, _)| *j).ok()?;
                Some(self.odd_uids[at].1.clone())
            }
        };
        Some(Endpoint {
            ip: self.ips.get(i)?,
            conditions: row.conditions,
            pod: (!name.is_empty()).then_some(PodRef { name, uid }),
        })
    }
}

/// Gathers a slice's endpoints one by one, then stores them without spare capacity.
struct EndpointsBuilder {
    ips: Vec<IpAddr>,
    rows: Vec<Row>,
    names: String,
    odd_uids: Vec<(u32, Uid)>,
}

impl EndpointsBuilder {
    fn with_capacity(n: usize) -> Self {
        EndpointsBuilder {
            ips: Vec::with_capacity(n),
            rows: Vec::with_capacity(n),
            names: String::new(),
            odd_uids: Vec::new(),
        }
    }

    /// Adds an endpoint; `pod` is its Pod's name (not empty) and uid.
    fn push(&mut self, ip: IpAddr, conditions: Conditions, pod: Option<(&str, Option<Uid>)>) {
        let index = u32::try_from(self.rows.len()).expect("fewer than 2^32 endpoints a slice");
        let (name, uid) = pod.unwrap_or_default();
        self.names.push_str(name);
        let uid = match uid {
            None => StoredUid::None,
            Some(Uid::Uuid(b)) => StoredUid::Uuid(b),
            Some(odd @ Uid::Other(_)) => {
                self.odd_uids.push((index, odd));
                StoredUid::Odd
            }
        };
        self.ips.push(ip);
        self.rows.push(Row {
            uid,
            conditions,
            name_end: u32::try_from(self.names.len()).expect("under 4 GiB of pod names a slice"),
        });
    }

    fn build(self) -> Endpoints {
        Endpoints {
            ips: Addresses::new(self.ips),
            rows: self.rows.into_boxed_slice(),
            names: self.names.into_boxed_str(),
            odd_uids: self.odd_uids.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(address_type: &str, endpoints: serde_json::Value) -> Slice {
        let api: api::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": address_type,
            "endpoints": endpoints,
        }))
        .unwrap();
        Slice::from_api(&api, &mut NamePool::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn endpoints_read_back_as_stored() {
        let uuid = "0f4c6e2a-9b1d-4c3e-8a7f-1234567890ab";
        let s = slice(
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "web-1", "uid": uuid}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "wéb-3", "uid": "odd-uid"}},
                {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "web-4"}},
                {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Pod", "name": ""}},
                {"addresses": []},
            ]),
        );
        let eps: Vec<Endpoint<'_>> = s.endpoints().collect();
        assert_eq!(s.endpoint_count(), 5, "one without an address is skipped");
        fn pod(e: &Endpoint<'_>) -> Option<(String, Option<String>)> {
            let p = e.pod.as_ref()?;
            Some((p.name.to_string(), p.uid.as_ref().map(Uid::to_string)))
        }
        let some = |name: &str, uid: Option<&str>| Some((name.to_string(), uid.map(String::from)));
        assert_eq!(eps[0].ip.to_string(), "10.0.0.1");
        assert_eq!(pod(&eps[0]), some("web-1", Some(uuid)));
        assert_eq!(pod(&eps[1]), None);
        assert!(!eps[1].conditions.ready() && eps[1].conditions.terminating());
        assert_eq!(pod(&eps[2]), some("wéb-3", Some("odd-uid")));
        assert_eq!(pod(&eps[3]), some("web-4", None));
        assert_eq!(pod(&eps[4]), None, "a nameless target is no pod");
        assert_eq!(
            s.endpoint_ip(4).map(|ip| ip.to_string()).as_deref(),
            Some("10.0.0.5")
        );
        assert!(s.endpoint(5).is_none() && s.endpoint_ip(5).is_none());
        assert!(s.proves_nothing());
    }

    #[test]
    fn ipv6_endpoints_keep_their_addresses() {
        let s = slice(
            "IPv6",
            json!([{"addresses": ["fd00::1"]}, {"addresses": ["fd00::2"]}]),
        );
        let ips: Vec<String> = s.endpoints().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["fd00::1", "fd00::2"]);
    }
}
