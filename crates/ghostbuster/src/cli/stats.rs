//! `ghostbuster stats`: how full the table is, what holds it, and the per-CPU counters that show
//! drops — all over netlink, so it works on kernels without `/proc/net/stat/nf_conntrack`.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use ctnetlink::{Conntrack, CpuStats};

use super::cluster_args::ClusterArgs;
use crate::exit::ExitCode;
pub use crate::stats::{collect, Share, StatsReport, Top};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Where the table lives (`--netns`) and, optionally, the cluster view (`--from-file`) that
    /// lets `--top` name services and pods instead of addresses.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Show the N biggest holders of entries: destination services, source pods, states.
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// table or json.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// Also show the counters of each CPU.
    #[arg(long)]
    pub per_cpu: bool,
}

fn bar(u: f64, width: usize) -> String {
    let filled = ((u.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

pub fn run(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let loaded = if a.cluster.from_file.is_empty() {
        None
    } else {
        Some(a.cluster.load()?)
    };
    let mut ct = Conntrack::open_in(a.cluster.netns.as_deref()).context("open conntrack")?;
    let top = a.top.map(|n| (n, loaded.as_ref().map(|l| &l.index)));
    let r = collect(&mut ct, a.per_cpu, top).context("read conntrack statistics")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.output == "json" {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
        return Ok(ExitCode::Ok);
    }
    writeln!(
        out,
        "entries      {} / {}  {} {:.1}%",
        r.entries,
        r.max_entries,
        bar(r.utilization, 30),
        r.utilization * 100.0
    )?;
    writeln!(out, "dnat         {}", r.dnat)?;
    writeln!(out, "unreplied    {}", r.unreplied)?;
    writeln!(out, "\nby protocol")?;
    for (p, n) in &r.by_protocol {
        writeln!(out, "  {p:<10} {n:>10}")?;
    }
    writeln!(out, "\nby state")?;
    for (s, n) in &r.by_state {
        writeln!(out, "  {s:<20} {n:>10}")?;
    }
    writeln!(out, "\ncounters (sum over CPUs)")?;
    for (k, v) in &r.counters {
        writeln!(out, "  {k:<16} {v:>12}")?;
    }
    if let Some(t) = &r.top {
        for (title, rows) in [
            ("top destination services", &t.by_service),
            ("top sources", &t.by_source),
            ("top states", &t.by_state),
        ] {
            writeln!(out, "\n{title}")?;
            for s in rows {
                writeln!(
                    out,
                    "  {:<48} {:>10} {:>6.1}%",
                    s.name,
                    s.entries,
                    s.share * 100.0
                )?;
            }
        }
    }
    if let Some(per) = &r.per_cpu {
        write!(out, "\n{:<5}", "cpu")?;
        for k in CpuStats::NAMES {
            write!(out, " {k:>14}")?;
        }
        writeln!(out)?;
        for c in per {
            write!(out, "{:<5}", c.get("cpu").copied().unwrap_or(0))?;
            for k in CpuStats::NAMES {
                write!(out, " {:>14}", c.get(k).copied().unwrap_or(0))?;
            }
            writeln!(out)?;
        }
    }
    Ok(ExitCode::Ok)
}
