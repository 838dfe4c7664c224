//! The cluster model: Services, EndpointSlices, Nodes, ServiceCIDRs, Pods and the
//! `ghostbuster.io/mode` annotation of Namespaces, reduced to a compact [`Index`] that answers the
//! classifier's questions, fed by [`Index::apply`] from files ([`file`](mod@file)) or, in the
//! agent, from watches.

mod cidr;
mod error;
mod event;
pub mod file;
mod index;
mod ip_answers;
mod keyless;
pub mod kube;
mod meta;
mod model;
mod name;
mod namespace;
mod node;
mod one_or_many;
mod pod;
mod service;
mod slab;
mod slice;
mod tombstone;

pub use cidr::{Cidr, CidrError};
pub use error::{Error, Result};
pub use event::{Event, Kind, Object};
pub use index::{Changes, Counts, EndpointView, FrontendMatch, Index, IndexConfig};
pub use ip_answers::IpAnswers;
pub use model::{Conditions, IpFamilies, IpFamily, ObjectKey, PodTarget, Protocol, Uid};
pub use name::{Name, NamePool};
pub use namespace::NamespaceMode;
pub use node::{Node, ServiceCidr};
pub use pod::{Pod, PodPhase};
pub use service::{
    EffectiveMode, FrontendKind, ModeSource, NotProxied, Service, ServicePort, SweepMode,
    MODE_ANNOTATION,
};
pub use slice::{Endpoint, PodRef, Slice, SlicePort, POD_CONTROLLER};
pub use tombstone::{Tombstone, Tombstones};
