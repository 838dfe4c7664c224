//! ghostbuster: find and remove the conntrack flows that Kubernetes Service endpoint changes leave
//! behind, and watch the conntrack table's health.
//!
//! The binary is thin (`main.rs`); everything lives here so tests drive the same code.
//! Layout: `cli/` one file per subcommand, `render` the flow object and table rows, `flow_json`
//! the flow-with-verdict object every JSON output shares, `cluster` the cluster model, `classify`
//! the pure verdict function, `sweep` the deletes.

pub mod agent;
pub mod audit;
pub mod classify;
pub mod cli;
pub mod cluster;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exit;
pub mod flow_json;
pub mod kube_proxy;
pub mod local_addrs;
pub mod policy;
pub mod render;
pub mod scan;
pub mod sockets;
pub mod stats;
pub mod sweep;
pub mod sweep_budget;
pub mod table;
pub mod telemetry;
pub mod verdict;
