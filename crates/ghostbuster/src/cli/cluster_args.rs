//! Flags that say where the cluster view comes from and what a sweep may remove; shared by
//! `scan`, `sweep` and `explain`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use jiff::Timestamp;

use crate::cluster::kube as live;
use crate::cluster::{file, Cidr, IndexConfig, Kind, Protocol};
use crate::exit::{input_error, CodedError, ExitCode};
use crate::policy::Policy;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Network namespace whose table to scan (a name under /run/netns, or a path).
    #[arg(long)]
    pub netns: Option<String>,
    /// Cluster objects as JSON or YAML: a kubectl List, single objects or multi-document YAML;
    /// repeatable, `-` for stdin. Make one with
    /// `kubectl get services,endpointslices,pods,nodes,servicecidrs,namespaces -A -o json`.
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
    /// Without --from-file the cluster is read live from the API server, with this kubeconfig
    /// (several paths separated by ':' are merged, as kubectl does); default: ~/.kube/config, or
    /// the pod's service account.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
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
    /// How far the API server's clock and this node's may disagree: a pod's creationTimestamp or
    /// the export's time proves an order against a flow's start only beyond this margin.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub clock_skew: Duration,
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
            clock_skew: self.clock_skew,
        })
    }
}

impl ClusterArgs {
    /// Loads the cluster view: the `--from-file` exports, or else one live read of the API
    /// server. Bad files and kubeconfigs are input errors (exit 2); an unreachable API server or
    /// refused credentials or permissions are environment errors (exit 3). Every failure happens
    /// before any conntrack access, so nothing is deleted on a bad view.
    pub fn load(&self) -> anyhow::Result<file::Loaded> {
        let local = crate::local_addrs::of(self.netns.as_deref())
            .context("read the namespace's local addresses")?;
        let config = IndexConfig {
            node_name: self.node_name.clone(),
            local_addresses: local,
            service_cidrs: self.service_cidrs.clone(),
        };
        if self.from_file.is_empty() {
            return self.load_live(config);
        }
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
                 services,endpointslices,pods,nodes,servicecidrs,namespaces -A -o json`; nothing \
                 was changed",
                files.join(", ")
            )));
        }
        Ok(loaded)
    }

    /// One live read of the API server (a small runtime of its own: this is called from
    /// synchronous code).
    fn load_live(&self, config: IndexConfig) -> anyhow::Result<file::Loaded> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the runtime for reading the API server")?;
        let read = runtime.block_on(async {
            let mut kc = live::config(self.kubeconfig.as_deref()).await?;
            // A one-shot command should fail in seconds, not wait out kube's watch-sized timeouts.
            kc.connect_timeout = Some(Duration::from_secs(10));
            kc.read_timeout = Some(Duration::from_secs(60));
            let client = live::client_from(kc)?;
            live::read_once(&client, live::ReadConfig::new(config)).await
        });
        let mut index = read.map_err(|e| {
            let code = if e.is_environment() {
                ExitCode::Environment
            } else {
                ExitCode::Input
            };
            anyhow::Error::from(CodedError {
                code,
                error: anyhow::Error::new(e).context("read the cluster from the API server"),
            })
        })?;
        let counts = index.counts();
        // Every cluster has default/kubernetes: no Service at all means a view that would make
        // every DNAT'd flow look like a deleted Service's.
        if counts.services == 0 {
            return Err(CodedError {
                code: ExitCode::Environment,
                error: anyhow::anyhow!(
                    "the API server listed no Services (not even default/kubernetes); nothing \
                     was changed"
                ),
            }
            .into());
        }
        let snapshot_time = self
            .snapshot_time
            .or(index.snapshot_time())
            .unwrap_or_else(Timestamp::now);
        index.set_snapshot_time(Some(snapshot_time));
        let objects = [
            (Kind::Service, counts.services),
            (Kind::EndpointSlice, counts.slices),
            (Kind::Node, counts.nodes),
            (Kind::Pod, counts.pods),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
        Ok(file::Loaded {
            index,
            snapshot_time,
            warnings: Vec::new(),
            objects,
        })
    }
}
