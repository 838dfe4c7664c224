//! Flags that say where the cluster view comes from and what a sweep may remove; shared by
//! `scan`, `sweep` and `explain`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use jiff::Timestamp;

use crate::cluster::file::{self, Gap};
use crate::cluster::kube as live;
use crate::cluster::{Cidr, IndexConfig, Kind, Protocol};
use crate::exit::{input_error, CodedError, ExitCode};
use crate::policy::Policy;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Network namespace whose table to scan (a name under /run/netns, or a path).
    #[arg(long)]
    pub netns: Option<String>,
    /// Cluster objects as JSON or YAML: a kubectl List, single objects or multi-document YAML;
    /// repeatable, `-` for stdin. Make one with
    /// `kubectl get services,endpointslices,pods,nodes,namespaces -A -o json` (add
    /// `servicecidrs` on Kubernetes 1.33+). Without EndpointSlices it is refused.
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

/// The export every verdict can lean on (ServiceCIDRs, only served from Kubernetes 1.33 on, only
/// widen what is recognised as a Service address, and `--service-cidr` stands in for them).
pub const EXPORT_COMMAND: &str =
    "kubectl get services,endpointslices,pods,nodes,namespaces -A -o json";

/// What a command does with the view, hence what it cannot go without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `scan`, `explain`: a report. Only a view that is wrong is refused.
    Report,
    /// `sweep` (a dry run too: it shows what the sweep would do). A view that hides an
    /// operator's opt-out is refused as well, unless `--ignore-namespace-modes`.
    Sweep { ignore_namespace_modes: bool },
}

/// What an export's gaps mean for a command: the gaps it refuses, and the ones it only warns
/// about (the classifier keeps what they would have condemned). Pure.
pub fn judge_export(gaps: &[Gap], need: Need) -> (Vec<Gap>, Vec<Gap>) {
    let sweep = matches!(need, Need::Sweep { .. });
    let ignore_ns = matches!(
        need,
        Need::Sweep {
            ignore_namespace_modes: true
        }
    );
    gaps.iter().partition(|g| match g {
        Gap::EndpointSlices => true,
        Gap::Namespaces => sweep && !ignore_ns,
        Gap::Nodes => sweep,
        Gap::Pods => false,
    })
}

/// The refusal: what is missing, what it would cost, how to export it; nothing was changed.
fn refusal(files: &str, refused: &[Gap], need: Need) -> anyhow::Error {
    let kinds: Vec<&str> = refused.iter().map(|g| g.kind()).collect();
    let why: Vec<&str> = refused.iter().map(|g| g.consequence()).collect();
    let override_hint = if refused.contains(&Gap::Namespaces) {
        "; or, to sweep without the namespaces' ghostbuster.io/mode opt-outs, pass \
         --ignore-namespace-modes"
    } else {
        ""
    };
    let command = match need {
        Need::Report => "refusing to judge flows",
        Need::Sweep { .. } => "refusing to sweep",
    };
    anyhow::anyhow!(
        "{files} holds no {}: {}. {command}; export them with `{EXPORT_COMMAND}` (add \
         `servicecidrs` on Kubernetes 1.33+){override_hint}. nothing was changed",
        kinds.join(" and no "),
        why.join("; ")
    )
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
    /// [`ClusterArgs::load`] for a command that judges flows: an export is then also checked for
    /// the kinds the verdicts lean on ([`judge_export`]). A refusal is an input error (exit 2),
    /// raised before conntrack is opened, so nothing is changed. The live read lists every kind
    /// or fails, so it has no gaps.
    pub fn load_for(&self, need: Need) -> anyhow::Result<file::Loaded> {
        let loaded = self.load()?;
        if self.from_file.is_empty() {
            return Ok(loaded);
        }
        let (refused, warned) = judge_export(&loaded.gaps(), need);
        if !refused.is_empty() {
            return Err(input_error(refusal(&self.files(), &refused, need)));
        }
        for g in warned {
            let hint = match g {
                Gap::Namespaces => " (`sweep` refuses this export unless --ignore-namespace-modes)",
                _ => "",
            };
            tracing::warn!(
                "{} holds no {}: {}{hint}; export with `{EXPORT_COMMAND}`",
                self.files(),
                g.kind(),
                g.consequence()
            );
        }
        let cidrs = loaded
            .objects
            .get(&Kind::ServiceCidr)
            .is_some_and(|n| *n > 0);
        if !cidrs && self.service_cidrs.is_empty() {
            tracing::info!(
                "no ServiceCIDRs and no --service-cidr: flows to the ClusterIP of a deleted \
                 Service are not recognised as service flows (they are kept)"
            );
        }
        Ok(loaded)
    }

    /// The `--from-file` paths, for messages.
    fn files(&self) -> String {
        let files: Vec<String> = self
            .from_file
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        files.join(", ")
    }

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
            return Err(input_error(anyhow::anyhow!(
                "no Service objects in {}: export the cluster with `{EXPORT_COMMAND}`; nothing \
                 was changed",
                self.files()
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
            host_network_pods: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWEEP: Need = Need::Sweep {
        ignore_namespace_modes: false,
    };
    const SWEEP_IGNORING: Need = Need::Sweep {
        ignore_namespace_modes: true,
    };

    #[test]
    fn a_view_without_endpointslices_is_refused_by_every_command() {
        for need in [Need::Report, SWEEP, SWEEP_IGNORING] {
            let (refused, _) = judge_export(&[Gap::EndpointSlices], need);
            assert_eq!(refused, [Gap::EndpointSlices], "{need:?}");
        }
    }

    #[test]
    fn without_namespaces_sweep_refuses_unless_told_and_scan_warns() {
        assert_eq!(
            judge_export(&[Gap::Namespaces], SWEEP),
            (vec![Gap::Namespaces], vec![])
        );
        assert_eq!(
            judge_export(&[Gap::Namespaces], SWEEP_IGNORING),
            (vec![], vec![Gap::Namespaces])
        );
        assert_eq!(
            judge_export(&[Gap::Namespaces], Need::Report),
            (vec![], vec![Gap::Namespaces])
        );
    }

    #[test]
    fn pods_only_warn_and_nodes_refuse_a_sweep() {
        for need in [Need::Report, SWEEP, SWEEP_IGNORING] {
            assert_eq!(judge_export(&[Gap::Pods], need), (vec![], vec![Gap::Pods]));
        }
        assert_eq!(
            judge_export(&[Gap::Nodes], SWEEP),
            (vec![Gap::Nodes], vec![])
        );
        assert_eq!(
            judge_export(&[Gap::Nodes], Need::Report),
            (vec![], vec![Gap::Nodes])
        );
    }

    #[test]
    fn the_refusal_names_the_kinds_the_command_and_the_way_out() {
        let e = refusal("a.json", &[Gap::EndpointSlices, Gap::Namespaces], SWEEP).to_string();
        for w in [
            "a.json holds no EndpointSlices and no Namespaces",
            EXPORT_COMMAND,
            "--ignore-namespace-modes",
            "refusing to sweep",
            "nothing was changed",
        ] {
            assert!(e.contains(w), "{w:?} in {e}");
        }
        let e = refusal("a.json", &[Gap::EndpointSlices], Need::Report).to_string();
        assert!(!e.contains("--ignore-namespace-modes"), "{e}");
    }
}
