//! The command line: one file per subcommand, this file only declares and dispatches.

use clap::{Parser, Subcommand, ValueEnum};

use crate::exit::ExitCode;

pub mod agent;
pub mod audit;
pub mod cluster_args;
pub mod completions;
pub mod demo;
pub mod explain;
pub mod filter_args;
pub mod list;
pub mod scan;
pub mod stats;

/// Find and remove stale conntrack flows left behind by Kubernetes Service endpoint changes.
#[derive(Debug, Parser)]
#[command(name = "ghostbuster", version, about, propagate_version = true)]
pub struct Cli {
    /// Log level filter (tracing syntax), e.g. `info` or `ghostbuster=debug`.
    #[arg(long, global = true, env = "GHOSTBUSTER_LOG", default_value = "warn")]
    pub log: String,
    /// Log format: human text, or one JSON object per line (the agent's default in the DaemonSet).
    #[arg(long, global = true, env = "GHOSTBUSTER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List conntrack entries (like `conntrack -L`, with filters and JSON).
    List(list::ListArgs),
    /// Table size, limit, utilization, entries per protocol and state, per-CPU counters.
    Stats(stats::StatsArgs),
    /// Audit conntrack sysctls against what Kubernetes nodes need.
    Audit(audit::AuditArgs),
    /// Find flows whose Service backend is gone (read-only).
    Scan(scan::ScanArgs),
    /// Scan, then remove the stale flows that are safe to remove (exact deletes).
    Sweep(scan::SweepArgs),
    /// Show the verdict for one flow or IP and every rule it passed through.
    Explain(explain::ExplainArgs),
    /// Run the node agent: watch the cluster, remove ghosts as endpoints leave, export metrics.
    Agent(agent::AgentArgs),
    /// Print shell completions.
    Completions(completions::CompletionsArgs),
    /// Reproduce the ghost-pod failures in throwaway namespaces and fix them
    Demo(demo::DemoArgs),
}

/// Output formats shared by the commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Ndjson,
}

/// Runs a parsed command line and returns the exit code it earned.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::List(a) => list::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Scan(a) => scan::run_scan(a),
        Command::Sweep(a) => scan::run_sweep(a),
        Command::Explain(a) => explain::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Completions(a) => completions::run(a),
        Command::Demo(a) => demo::run(a),
    }
}
