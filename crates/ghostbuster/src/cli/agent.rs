//! `ghostbuster agent`: the node agent (a DaemonSet pod on every node).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::cluster_args::{parse_duration, PolicyArgs};
use crate::cluster::Cidr;
use crate::exit::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// kubeconfig to use; default: in-cluster config, then KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the downward API's spec.nodeName): its Node and its Pods are watched.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Serve another network namespace than the agent's own (tests, labs).
    #[arg(long)]
    pub netns: Option<String>,
    /// Service CIDRs, for clusters without ServiceCIDR objects (before 1.33); repeatable.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<Cidr>,
    /// Address of the admin server (/metrics, /healthz, /readyz, /debug/recent).
    #[arg(long, env = "GHOSTBUSTER_LISTEN", default_value = "127.0.0.1:9477")]
    pub listen: SocketAddr,
    /// Report only: never delete.
    #[arg(long)]
    pub dry_run: bool,
    /// Without a readable kube-proxy sync time, wait this long after an endpoint's removal.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long a removed backend is looked at every 100 ms while a readable kube-proxy has not
    /// completed a sync that began after the removal; after it, every second. Its flows are
    /// never removed before such a sync (kube-proxy's periodic one, `syncPeriod`, comes anyway).
    #[arg(long, default_value = "35s", value_parser = parse_duration)]
    pub kube_proxy_max_wait: Duration,
    /// Full scan interval: the source of truth behind the fast paths.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Most of a core the periodic full scans may use, in percent: on a big table (a full scan of
    /// 262,144 entries costs about a second, mostly in the kernel) the interval is stretched
    /// beyond --resync-interval to stay under it. 0.7 leaves room for the rest of the agent's
    /// work within 1 % of a core. 0: never stretch.
    #[arg(long, default_value_t = 0.7)]
    pub resync_cpu_percent: f64,
    /// Circuit breaker: never more deletes than this in one pass.
    #[arg(long, default_value_t = 100_000)]
    pub max_deletes_per_pass: u64,
    /// Circuit breaker across passes (full and targeted): a pass that would exceed this many
    /// deletes in the last minute removes nothing and trips the breaker, which stays open
    /// (report only, a Warning Event on the Node, `ghostbuster_circuit_breaker_trips_total`)
    /// until the agent restarts. 0: no budget.
    #[arg(long, default_value_t = crate::agent::gate::DEFAULT_MAX_DELETES_PER_MINUTE)]
    pub max_deletes_per_minute: u64,
    /// The longest a pod GET may take (the agent's confirmation that a removed backend's pod is
    /// gone); unanswered, the flows are kept and the pod is asked again with backoff.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub pod_get_timeout: Duration,
    /// Cap of per-service metric series; the rest is aggregated as service="_other".
    #[arg(long, default_value_t = 100)]
    pub max_service_series: usize,
    /// Post Kubernetes Events on Services when flows were removed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,
    /// Log one line per removed flow (forensics: "did you kill my connection?").
    #[arg(long)]
    pub log_removed_flows: bool,
    /// kube-proxy's metrics endpoint (its last sync time).
    #[arg(long, default_value = "http://127.0.0.1:10249/metrics")]
    pub kube_proxy_metrics_url: String,
    /// kube-proxy's health endpoint (`lastUpdated`), used when the metrics cannot be read.
    #[arg(long, default_value = "http://127.0.0.1:10256/healthz")]
    pub kube_proxy_healthz_url: String,
    /// kube-proxy's mode endpoint (iptables, nftables, ipvs).
    #[arg(long, default_value = "http://127.0.0.1:10249/proxyMode")]
    pub kube_proxy_mode_url: String,
    /// Receive buffer of the conntrack event socket, in bytes. When a burst of new flows overflows
    /// it, events are lost and one full scan resynchronises (`ghostbuster_conntrack_events_lost_total`).
    #[arg(long, default_value_t = 8 << 20)]
    pub event_buffer_bytes: usize,
    /// Export per-CPU conntrack counters with a `cpu` label (default: summed).
    #[arg(long)]
    pub per_cpu_metrics: bool,
    /// How long an endpoint that left its Service is remembered as evidence.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub tombstone_ttl: Duration,
    /// A watch silent for longer than this is stale (BOOKMARKs arrive about every minute).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub watch_stale_after: Duration,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::agent::main(a)
}
