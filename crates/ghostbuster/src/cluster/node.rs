//! Nodes and ServiceCIDRs: the addresses NodePorts listen on, and the ranges ClusterIPs come from.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;

use super::cidr::Cidr;
use super::error::{Error, Result};
use super::event::Kind;
use super::meta;
use super::model::ObjectKey;
use super::name::NamePool;

/// A Node's IP addresses (`InternalIP` and `ExternalIP` entries of `status.addresses`).
#[derive(Clone, Debug)]
pub struct Node {
    pub key: ObjectKey,
    pub addresses: Vec<IpAddr>,
}

impl Node {
    pub fn from_api(node: &core::Node, pool: &mut NamePool) -> Result<Self> {
        let key = meta::key(&node.metadata, Kind::Node, pool)?;
        let mut addresses = Vec::new();
        let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in listed.into_iter().flatten().enumerate() {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue; // Hostname, InternalDNS, ...: not addresses
            }
            let ip: IpAddr = a.address.parse().map_err(|_| {
                Error::invalid(
                    Kind::Node,
                    &key,
                    format!("status.addresses[{i}] {:?} is not an IP address", a.address),
                )
            })?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        Ok(Node { key, addresses })
    }
}

/// A ServiceCIDR's ranges (`spec.cidrs`).
#[derive(Clone, Debug)]
pub struct ServiceCidr {
    pub key: ObjectKey,
    pub cidrs: Vec<Cidr>,
}

impl ServiceCidr {
    pub fn from_api(obj: &networking::ServiceCIDR, pool: &mut NamePool) -> Result<Self> {
        let key = meta::key(&obj.metadata, Kind::ServiceCidr, pool)?;
        let mut cidrs = Vec::new();
        let listed = obj.spec.as_ref().and_then(|s| s.cidrs.as_ref());
        for (i, c) in listed.into_iter().flatten().enumerate() {
            let cidr = c.parse().map_err(|e| {
                Error::invalid(Kind::ServiceCidr, &key, format!("spec.cidrs[{i}]: {e}"))
            })?;
            cidrs.push(cidr);
        }
        Ok(ServiceCidr { key, cidrs })
    }
}
