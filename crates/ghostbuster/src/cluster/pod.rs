//! A Pod reduced to what tells whether an IP still belongs to a live pod, and since when.

use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1 as api;

use super::error::{Error, Result};
use super::event::Kind;
use super::meta;
use super::model::{ObjectKey, Uid};
use super::name::NamePool;

/// `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// The compact form of a Pod.
#[derive(Clone, Debug)]
pub struct Pod {
    pub key: ObjectKey,
    pub uid: Option<Uid>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Box<[IpAddr]>,
    pub phase: PodPhase,
    pub created: Option<Timestamp>,
    /// Set while the pod terminates: it still runs and drains.
    pub deleting: Option<Timestamp>,
    pub host_network: bool,
}

impl Pod {
    /// Its containers may still answer: not Succeeded or Failed (a terminating pod still runs;
    /// a Pending pod with an IP may be starting).
    pub fn is_alive(&self) -> bool {
        !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    pub fn from_api(pod: &api::Pod, pool: &mut NamePool) -> Result<Self> {
        let key = meta::key(&pod.metadata, Kind::Pod, pool)?;
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .filter(|l| !l.is_empty());
        let raw: Vec<&str> = match listed {
            Some(l) => l.iter().map(|p| p.ip.as_str()).collect(),
            None => status
                .and_then(|s| s.pod_ip.as_deref())
                .into_iter()
                .collect(),
        };
        for (i, ip) in raw.into_iter().filter(|ip| !ip.is_empty()).enumerate() {
            let ip: IpAddr = ip.parse().map_err(|_| {
                Error::invalid(
                    Kind::Pod,
                    &key,
                    format!("status.podIPs[{i}] {ip:?} is not an IP address"),
                )
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            _ => PodPhase::Unknown,
        };
        Ok(Pod {
            uid: meta::uid(&pod.metadata, pool),
            key,
            ips: ips.into_boxed_slice(),
            phase,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
        })
    }
}
