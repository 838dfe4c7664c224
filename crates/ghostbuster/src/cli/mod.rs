//! The command line: one file per subcommand, this file only declares and dispatches.

use clap::{Parser, Subcommand, ValueEnum};

use crate::exit::ExitCode;

pub mod agent;
pub mod audit;
pub mod cluster_args;
pub mod completions;
#[cfg(feature = "demo")]
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
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Not in this build (built without the `demo` feature, like the container image): kept,
    /// hidden, so that `ghostbuster demo` says so instead of "unrecognized subcommand".
    #[cfg(not(feature = "demo"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo(NoDemoArgs),
}

/// Whatever followed `demo` in a build without it: accepted only to give the clear error.
#[cfg(not(feature = "demo"))]
#[derive(Debug, clap::Args)]
pub struct NoDemoArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

/// The error of `ghostbuster demo` in a build without the `demo` feature (exit 2, nothing done).
#[cfg(not(feature = "demo"))]
fn no_demo() -> anyhow::Result<ExitCode> {
    Err(crate::exit::input_error(anyhow::anyhow!(
        "this build of ghostbuster has no demo (built without the `demo` cargo feature, like the \
         container image); install the CLI with it: `cargo install --path crates/ghostbuster`"
    )))
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
        #[cfg(feature = "demo")]
        Command::Demo(a) => demo::run(a),
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => no_demo(),
    }
}

/// Only in a build without the demo (`cargo test -p ghostbuster --no-default-features --lib cli::`).
#[cfg(all(test, not(feature = "demo")))]
mod no_demo_tests {
    use super::*;

    #[test]
    fn demo_says_this_build_has_none_and_exits_2() {
        let cli = Cli::try_parse_from(["ghostbuster", "demo", "--act", "1", "-o", "json"])
            .expect("`demo` and its old flags still parse, to give the clear error");
        let err = run(cli).expect_err("no demo in this build");
        assert_eq!(crate::exit::code_of(&err), ExitCode::Input);
        let msg = format!("{err:#}");
        assert!(msg.contains("has no demo"), "{msg}");
        assert!(
            msg.contains("cargo install --path crates/ghostbuster"),
            "{msg}"
        );
    }
}
