//! The agent's settings as plain values. `ghostbuster agent`'s flags (`cli/agent.rs`) build one;
//! tests and embedders can build one directly. Nothing under `agent/` knows about clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::reactor::ReactorConfig;
use crate::cluster::Cidr;
use crate::kube_proxy::KubeProxyConfig;

/// Everything `agent::run` needs besides its API client, listener and shutdown signal.
#[derive(Debug, Clone)]
pub struct Config {
    /// kubeconfig to use (`None`: in-cluster config, then KUBECONFIG / ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node and its Pods are watched.
    pub node_name: String,
    /// Serve another network namespace than the agent's own (tests, labs).
    pub netns: Option<String>,
    /// Service CIDRs for clusters without ServiceCIDR objects.
    pub service_cidrs: Vec<Cidr>,
    /// The admin server's address (also served on 127.0.0.1 when it is not loopback).
    pub listen: SocketAddr,
    /// Serve /debug/recent to any client, not only to localhost.
    pub expose_debug_recent: bool,
    /// Report only: never delete.
    pub dry_run: bool,
    /// What the reactor may remove and when: policy, grace, breakers, resync, tombstones.
    pub reactor: ReactorConfig,
    /// The longest a pod GET or an IP-holder question may take.
    pub pod_get_timeout: Duration,
    /// Cap of per-service metric series.
    pub max_service_series: usize,
    /// Post Kubernetes Events on Services when flows were removed.
    pub events: bool,
    /// Log one line per removed flow.
    pub log_removed_flows: bool,
    /// End the client socket of each deleted flow when it is on this node ([`crate::sockets`]).
    pub terminate_sockets: bool,
    /// Where kube-proxy's metrics, health and mode are read.
    pub kube_proxy: KubeProxyConfig,
    /// How often kube-proxy's mode is read again.
    pub kube_proxy_mode_interval: Duration,
    /// Receive buffer of the conntrack event socket, in bytes.
    pub event_buffer_bytes: usize,
    /// Keep an index of DNAT'd entries by backend from conntrack events (removals without a
    /// walk of the table).
    pub flow_index: bool,
    /// The most entries the flow index holds (0: no bound); past it, removals walk the table.
    pub flow_index_max_entries: usize,
    /// Export per-CPU conntrack counters with a `cpu` label.
    pub per_cpu_metrics: bool,
    /// A watch silent for longer than this is stale.
    pub watch_stale_after: Duration,
}
