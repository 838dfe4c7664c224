//! What the index is fed: objects and watch events.
//!
//! Shaped after kube-runtime's `watcher::Event` (Apply | Delete | Init | InitApply | InitDone), one
//! stream per kind: a relist is `Init(kind)`, `InitApply(object)`..., `InitDone(kind)`, and only
//! `InitDone` changes the index, so a half-finished relist never shows an empty cluster.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

/// The kinds the index understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
    Pod,
    /// Read only for its `ghostbuster.io/mode` annotation (the per-namespace override).
    Namespace,
}

impl Kind {
    /// Every kind, in a fixed order (health slots and `/readyz` follow it).
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCidr,
        Kind::Pod,
        Kind::Namespace,
    ];

    /// The `kind` field of the API object.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCidr => "ServiceCIDR",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
        }
    }

    /// The `apiVersion` this crate reads the kind in.
    pub const fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node | Kind::Pod | Kind::Namespace => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCidr => "networking.k8s.io/v1",
        }
    }

    /// Recognises an object by its `apiVersion` and `kind` (a Knative `Service` is not ours).
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.api_version() == api_version)
    }

    pub const fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice | Kind::Pod)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One API object of a kind the index understands. Boxed: a Pod is kilobytes, and events are
/// moved through channels before the index reduces them.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    ServiceCidr(Box<ServiceCIDR>),
    Pod(Box<Pod>),
    Namespace(Box<Namespace>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::ServiceCidr(_) => Kind::ServiceCidr,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
        }
    }
}

impl From<Service> for Object {
    fn from(o: Service) -> Self {
        Object::Service(Box::new(o))
    }
}
impl From<EndpointSlice> for Object {
    fn from(o: EndpointSlice) -> Self {
        Object::EndpointSlice(Box::new(o))
    }
}
impl From<Node> for Object {
    fn from(o: Node) -> Self {
        Object::Node(Box::new(o))
    }
}
impl From<ServiceCIDR> for Object {
    fn from(o: ServiceCIDR) -> Self {
        Object::ServiceCidr(Box::new(o))
    }
}
impl From<Pod> for Object {
    fn from(o: Pod) -> Self {
        Object::Pod(Box::new(o))
    }
}
impl From<Namespace> for Object {
    fn from(o: Namespace) -> Self {
        Object::Namespace(Box::new(o))
    }
}

/// A change to the cluster, as a watch reports it.
#[derive(Clone, Debug)]
pub enum Event {
    /// Added or modified.
    Apply(Object),
    /// Deleted (the object's last state).
    Delete(Object),
    /// A relist of `Kind` starts; the index keeps serving the previous state until `InitDone`.
    Init(Kind),
    /// One object of the relist.
    InitApply(Object),
    /// The relist is complete: objects of `Kind` not listed are deleted, the rest applied.
    InitDone(Kind),
}
