//! Flags that say where the cluster view comes from and what a sweep may remove; shared by
//! `scan`, `sweep` and `explain`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use jiff::Timestamp;

use crate::cluster::{file, Cidr, IndexConfig, Kind, Protocol};
use crate::exit::input_error;
use crate::policy::Policy;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Network namespace whose table to scan (a name under /run/netns, or a path).
    #[arg(long)]
    pub netns: Option<String>,
    /// Cluster objects as JSON or YAML: a kubectl List, single objects or multi-document YAML;
    /// repeatable, `-` for stdin. Make one with
    /// `kubectl get services,endpointslices,pods,nodes,servicecidrs -A -o json`.
    #[arg(long = "from-file", short = 'F', value_name = "PATH")]
    pub from_file: Vec<PathBuf>,
    /// When the export was taken (RFC 3339); default: the newest file's modification time.
    #[arg(long)]
    pub snapshot_time: Option<Timestamp>,
    /// This node's name: its Node object's addresses serve NodePorts.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Service CIDRs, for clusters without ServiceCIDR objects (before 1.33); repeatable.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<Cidr>,
}

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Half-open flows younger than this are left alone (when their age is known).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Also remove TCP/SCTP flows to pods that are alive but no longer selected.
    #[arg(long)]
    pub include_deselected: bool,
    /// Take "absent from the export" as proof that a backend is gone.
    #[arg(long)]
    pub trust_snapshot: bool,
    /// Protocols whose flows may be removed (comma separated: tcp,udp,sctp).
    #[arg(long, value_delimiter = ',', default_value = "tcp,udp,sctp")]
    pub protocols: Vec<String>,
    /// Only Services of these namespaces may have flows removed (repeatable).
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Never remove flows of Services in these namespaces (repeatable).
    #[arg(long = "exclude-namespace")]
    pub exclude_namespaces: Vec<String>,
    /// Also remove flows in conntrack zones other than 0.
    #[arg(long)]
    pub all_zones: bool,
    /// Also remove flows of default/kubernetes and of Services whose endpoints are not Pods of
    /// the EndpointSlice controller.
    #[arg(long)]
    pub include_unmanaged: bool,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl PolicyArgs {
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut protocols = crate::policy::ProtocolSet::NONE;
        for p in &self.protocols {
            match Protocol::parse(p) {
                Some(p) => protocols.insert(p),
                None => bail!("unknown protocol {p:?} in --protocols (tcp, udp, sctp)"),
            }
        }
        Ok(Policy {
            min_age: self.min_age,
            include_deselected: self.include_deselected,
            trust_snapshot: self.trust_snapshot,
            protocols,
            namespaces: self.namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            all_zones: self.all_zones,
            include_unmanaged: self.include_unmanaged,
        })
    }
}

impl ClusterArgs {
    /// Loads the cluster view; every failure is an input error (exit 2) and happens before any
    /// conntrack access, so nothing is deleted on bad input.
    pub fn load(&self) -> anyhow::Result<file::Loaded> {
        if self.from_file.is_empty() {
            return Err(input_error(anyhow::anyhow!(
                "no cluster view: pass --from-file with an export of \
                 `kubectl get services,endpointslices,pods,nodes,servicecidrs -A -o json`"
            )));
        }
        let local = crate::local_addrs::of(self.netns.as_deref())
            .context("read the namespace's local addresses")?;
        let config = IndexConfig {
            node_name: self.node_name.clone(),
            local_addresses: local,
            service_cidrs: self.service_cidrs.clone(),
        };
        let loaded =
            file::load(&self.from_file, config, self.snapshot_time).map_err(input_error)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // Every cluster has Services (at least default/kubernetes). An export without any is the
        // wrong file, and judged against it every DNAT'd UDP flow in the service CIDRs would be
        // `service_gone`, hence removed.
        if !loaded.objects.contains_key(&Kind::Service) {
            let files: Vec<String> = self
                .from_file
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(input_error(anyhow::anyhow!(
                "no Service objects in {}: export the cluster with `kubectl get \
                 services,endpointslices,pods,nodes,servicecidrs -A -o json`; nothing was changed",
                files.join(", ")
            )));
        }
        Ok(loaded)
    }
}
