//! `ghostbuster agent`: the node agent (a DaemonSet pod on every node).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::cluster_args::parse_duration;
use crate::agent::gate::Breaker;
use crate::agent::reactor::ReactorConfig;
use crate::agent::Config;
use crate::cluster::{Cidr, Protocol};
use crate::exit::{input_error, ExitCode};
use crate::kube_proxy::{self, KubeProxyConfig};
use crate::policy::{Policy, ProtocolSet};

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
    /// Address of the admin server (/metrics, /healthz, /readyz, /debug/recent). When it is not
    /// a loopback address, the agent also listens on 127.0.0.1 at the same port, for
    /// /debug/recent.
    #[arg(long, env = "GHOSTBUSTER_LISTEN", default_value = "127.0.0.1:9477")]
    pub listen: SocketAddr,
    /// Serve /debug/recent (the tuples of removed flows) to any client of --listen, not only to
    /// clients on localhost. It has no authentication: expose it on trusted networks only.
    #[arg(long)]
    pub expose_debug_recent: bool,
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
    /// The least time between two questions to the API server about who holds one backend IP
    /// (a ghost without a tombstone: older than the agent); 0s: never ask. The questions are
    /// also rate-limited (5 per second) and time out after --pod-get-timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ip_lookup_every: Duration,
    /// Cap of per-service metric series; the rest is aggregated as service="_other".
    #[arg(long, default_value_t = 100)]
    pub max_service_series: usize,
    /// Post Kubernetes Events on Services when flows were removed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub events: bool,
    /// Log one line per removed flow (forensics: "did you kill my connection?").
    #[arg(long)]
    pub log_removed_flows: bool,
    /// Also end the client's socket of each flow the agent deleted, when the client is on this
    /// node (a pod's network namespace or the host's): a reader blocked on a dead backend gets
    /// ECONNABORTED at once instead of waiting for its keepalive. TCP and connected UDP only,
    /// never an unconnected UDP socket. Needs CAP_SYS_ADMIN (to enter pod network namespaces)
    /// and the node's /run/netns and /proc (hostPID). Off by default.
    #[arg(long)]
    pub terminate_sockets: bool,
    /// kube-proxy's metrics endpoint (its last sync time).
    #[arg(long, default_value = kube_proxy::DEFAULT_METRICS_URL)]
    pub kube_proxy_metrics_url: String,
    /// kube-proxy's health endpoint (`lastUpdated`), used when the metrics cannot be read.
    #[arg(long, default_value = kube_proxy::DEFAULT_HEALTHZ_URL)]
    pub kube_proxy_healthz_url: String,
    /// kube-proxy's mode endpoint (iptables, nftables, ipvs).
    #[arg(long, default_value = kube_proxy::DEFAULT_PROXY_MODE_URL)]
    pub kube_proxy_mode_url: String,
    /// How often kube-proxy's mode is read again (IPVS turns the agent to report-only, and back).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub kube_proxy_mode_interval: Duration,
    /// Receive buffer of the conntrack event socket, in bytes. When a burst of new flows overflows
    /// it, events are lost and one full scan resynchronises (`ghostbuster_conntrack_events_lost_total`).
    #[arg(long, default_value_t = 8 << 20)]
    pub event_buffer_bytes: usize,
    /// Keep an index of this node's DNAT'd conntrack entries by backend, from NEW and DESTROY
    /// events (rebuilt by each full pass), so that removing a backend's flows reads only them
    /// instead of walking the whole table. `--flow-index=false`: NEW events toward dead
    /// backends only, and a kernel walk per removal.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_index: bool,
    /// The most DNAT'd entries the flow index holds (12-16 bytes each: at most ~25 MiB at the
    /// default). On a table with more, the index is dropped and removals walk the table, until a
    /// full pass finds fewer. 0: no bound.
    #[arg(long, default_value_t = 1_500_000)]
    pub flow_index_max_entries: usize,
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
    pub policy: AgentPolicyArgs,
}

/// What the agent may remove: the policy flags of `scan`/`sweep` except `--trust-snapshot`. The
/// agent has better evidence than a snapshot's silence (the tombstone of an endpoint it saw
/// leave, and a GET of its pod); taking absence for proof would skip that GET, so the flag does
/// not exist here (`ghostbuster agent --trust-snapshot` is a usage error).
#[derive(Debug, Clone, Args)]
pub struct AgentPolicyArgs {
    /// Half-open flows younger than this are left alone (when their age is known).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Also remove TCP/SCTP flows to pods that are alive but no longer selected.
    #[arg(long)]
    pub include_deselected: bool,
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
    /// How far the API server's clock and this node's may disagree: a pod's creationTimestamp
    /// proves an order against a flow's start only beyond this margin.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub clock_skew: Duration,
}

impl AgentPolicyArgs {
    /// The agent's policy: never `trust_snapshot`; anything this struct has no flag for keeps
    /// its default.
    // `..Policy::default()`: a policy field added later (with its CLI flag elsewhere) must not
    // break the agent's build, and its default is the conservative choice.
    #[allow(clippy::needless_update)]
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut protocols = ProtocolSet::NONE;
        for p in &self.protocols {
            match Protocol::parse(p) {
                Some(p) => protocols.insert(p),
                None => anyhow::bail!("unknown protocol {p:?} in --protocols (tcp, udp, sctp)"),
            }
        }
        Ok(Policy {
            min_age: self.min_age,
            include_deselected: self.include_deselected,
            trust_snapshot: false,
            protocols,
            namespaces: self.namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            all_zones: self.all_zones,
            include_unmanaged: self.include_unmanaged,
            clock_skew: self.clock_skew,
            ..Policy::default()
        })
    }
}

impl AgentArgs {
    /// The agent's settings from its flags. A bad `--protocols` or kube-proxy URL is a usage
    /// error (exit 2).
    pub fn config(&self) -> anyhow::Result<Config> {
        let policy = self.policy.policy().map_err(input_error)?;
        Ok(Config {
            kubeconfig: self.kubeconfig.clone(),
            node_name: self.node_name.clone(),
            netns: self.netns.clone(),
            service_cidrs: self.service_cidrs.clone(),
            listen: self.listen,
            expose_debug_recent: self.expose_debug_recent,
            dry_run: self.dry_run,
            reactor: ReactorConfig {
                policy,
                grace: self.grace,
                kube_proxy_max_wait: self.kube_proxy_max_wait,
                resync_interval: self.resync_interval,
                resync_cpu_percent: self.resync_cpu_percent,
                breaker: Breaker {
                    max_deletes_per_pass: self.max_deletes_per_pass,
                    max_deletes_per_minute: self.max_deletes_per_minute,
                    ..Breaker::default()
                },
                tombstone_ttl: self.tombstone_ttl,
                ip_lookup_every: self.ip_lookup_every,
            },
            pod_get_timeout: self.pod_get_timeout,
            max_service_series: self.max_service_series,
            events: self.events,
            log_removed_flows: self.log_removed_flows,
            terminate_sockets: self.terminate_sockets,
            kube_proxy: KubeProxyConfig {
                metrics_url: self.kube_proxy_metrics_url.clone(),
                healthz_url: self.kube_proxy_healthz_url.clone(),
                proxy_mode_url: self.kube_proxy_mode_url.clone(),
                ..KubeProxyConfig::default()
            },
            kube_proxy_mode_interval: self.kube_proxy_mode_interval,
            event_buffer_bytes: self.event_buffer_bytes,
            flow_index: self.flow_index,
            flow_index_max_entries: self.flow_index_max_entries,
            per_cpu_metrics: self.per_cpu_metrics,
            watch_stale_after: self.watch_stale_after,
        })
    }
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::agent::main(a.config()?)
}
