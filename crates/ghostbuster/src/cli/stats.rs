//! `ghostbuster stats`: how full the table is, what holds it, and the per-CPU counters that show
//! drops — all over netlink, so it works on kernels without `/proc/net/stat/nf_conntrack`.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context;
use clap::Args;
use ctnetlink::{Conntrack, CpuStats, Filter, GlobalStats};
use serde::Serialize;

use crate::exit::ExitCode;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Network namespace (a name under /run/netns, or a path).
    #[arg(long)]
    pub netns: Option<String>,
    /// table or json.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// Also show the counters of each CPU.
    #[arg(long)]
    pub per_cpu: bool,
}

/// The `stats -o json` document.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub entries: u32,
    pub max_entries: u32,
    pub utilization: f64,
    /// Entries counted by the dump (may differ slightly from `entries` under churn).
    pub dumped: u64,
    pub by_protocol: BTreeMap<&'static str, u64>,
    /// `"tcp ESTABLISHED"`-style keys: protocol and state.
    pub by_state: BTreeMap<String, u64>,
    pub unreplied: u64,
    pub dnat: u64,
    /// Per-CPU counters summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_cpu: Option<Vec<BTreeMap<&'static str, u64>>>,
}

/// Gathers the report (one stats request, one dump, one per-CPU dump).
pub fn collect(ct: &mut Conntrack, per_cpu: bool) -> ctnetlink::Result<StatsReport> {
    let g: GlobalStats = ct.stats()?;
    let mut by_protocol = BTreeMap::new();
    let mut state_counts: BTreeMap<(u8, &'static str), u64> = BTreeMap::new();
    let (mut dumped, mut unreplied, mut dnat) = (0u64, 0u64, 0u64);
    ct.dump(&Filter::default(), |f| {
        dumped += 1;
        *by_protocol.entry(f.proto_name()).or_insert(0) += 1;
        if let Some(s) = f.state_name() {
            *state_counts.entry((f.proto(), s)).or_insert(0) += 1;
        }
        unreplied += f.unreplied() as u64;
        dnat += f.is_dnat() as u64;
        ControlFlow::Continue(())
    })?;
    let cpus = ct.stats_per_cpu()?;
    let sums = CpuStats::sum(&cpus);
    let counters = CpuStats::NAMES.iter().copied().zip(sums).collect();
    let per_cpu = per_cpu.then(|| {
        cpus.iter()
            .map(|c| {
                let mut m: BTreeMap<&'static str, u64> = CpuStats::NAMES
                    .iter()
                    .copied()
                    .zip(c.values().map(u64::from))
                    .collect();
                m.insert("cpu", c.cpu as u64);
                m
            })
            .collect()
    });
    Ok(StatsReport {
        entries: g.entries,
        max_entries: g.max_entries,
        utilization: g.utilization(),
        dumped,
        by_protocol,
        by_state: state_counts
            .into_iter()
            .map(|((p, s), n)| (format!("{} {s}", ctnetlink::proto_name(p)), n))
            .collect(),
        unreplied,
        dnat,
        counters,
        per_cpu,
    })
}

fn bar(u: f64, width: usize) -> String {
    let filled = ((u.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

pub fn run(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut ct = Conntrack::open_in(a.netns.as_deref()).context("open conntrack")?;
    let r = collect(&mut ct, a.per_cpu).context("read conntrack statistics")?;
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
