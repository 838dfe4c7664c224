//! `ghostbuster stats`: how full the table is, what holds it, and the per-CPU counters that show
//! drops — all over netlink, so it works on kernels without `/proc/net/stat/nf_conntrack`.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context;
use clap::Args;
use ctnetlink::{Conntrack, CpuStats, Filter, GlobalStats};
use serde::Serialize;

use super::cluster_args::ClusterArgs;
use crate::cluster::{Index, Protocol};
use crate::exit::ExitCode;

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
    /// With `--top`: the biggest holders of entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Top>,
}

/// Who fills the table (`--top N`).
#[derive(Debug, Serialize)]
pub struct Top {
    /// Grouped by the Service the original destination is a frontend of (`namespace/name`), or by
    /// `address:port/protocol` without a cluster view; `(not a service)` for the rest.
    pub by_service: Vec<Share>,
    /// Grouped by the pod holding the original source address (never the reply destination,
    /// which is the node when kube-proxy masquerades), or by the address.
    pub by_source: Vec<Share>,
    /// Grouped by protocol and state.
    pub by_state: Vec<Share>,
}

/// One group and its share of the table.
#[derive(Debug, Serialize)]
pub struct Share {
    pub name: String,
    pub entries: u64,
    /// Fraction of the dumped entries, in [0, 1].
    pub share: f64,
}

fn top_n(counts: std::collections::HashMap<String, u64>, total: u64, n: usize) -> Vec<Share> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v.into_iter()
        .map(|(name, entries)| Share {
            name,
            entries,
            share: if total == 0 {
                0.0
            } else {
                entries as f64 / total as f64
            },
        })
        .collect()
}

/// Accumulates `--top` groups during the dump.
struct TopCounter<'a> {
    index: Option<&'a Index>,
    service: std::collections::HashMap<String, u64>,
    source: std::collections::HashMap<String, u64>,
}

impl TopCounter<'_> {
    fn add(&mut self, f: &ctnetlink::Flow) {
        let o = &f.orig;
        let svc = match (self.index, Protocol::from_ip_proto(f.proto()), o.dport()) {
            (Some(ix), Some(p), Some(port)) => match ix.frontend(o.dst, port, p) {
                Some(m) => m.service.key.to_string(),
                None => "(not a service)".to_string(),
            },
            _ => format!(
                "{}/{}",
                crate::render::endpoint(&o.dst, o.dport()),
                f.proto_name()
            ),
        };
        *self.service.entry(svc).or_insert(0) += 1;
        let src = self
            .index
            .and_then(|ix| ix.pods_at(&o.src).next().map(|p| p.key.to_string()))
            .unwrap_or_else(|| o.src.to_string());
        *self.source.entry(src).or_insert(0) += 1;
    }
}

/// Gathers the report (one stats request, one dump, one per-CPU dump).
pub fn collect(
    ct: &mut Conntrack,
    per_cpu: bool,
    top: Option<(usize, Option<&Index>)>,
) -> ctnetlink::Result<StatsReport> {
    let g: GlobalStats = ct.stats()?;
    let mut by_protocol = BTreeMap::new();
    let mut state_counts: BTreeMap<(u8, &'static str), u64> = BTreeMap::new();
    let (mut dumped, mut unreplied, mut dnat) = (0u64, 0u64, 0u64);
    let mut counter = top.map(|(_, index)| TopCounter {
        index,
        service: Default::default(),
        source: Default::default(),
    });
    ct.dump(&Filter::default(), |f| {
        dumped += 1;
        if let Some(c) = counter.as_mut() {
            c.add(f);
        }
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
    let by_state: BTreeMap<String, u64> = state_counts
        .into_iter()
        .map(|((p, s), n)| (format!("{} {s}", ctnetlink::proto_name(p)), n))
        .collect();
    let top = match (top, counter) {
        (Some((n, _)), Some(c)) => Some(Top {
            by_service: top_n(c.service, dumped, n),
            by_source: top_n(c.source, dumped, n),
            by_state: top_n(by_state.clone().into_iter().collect(), dumped, n),
        }),
        _ => None,
    };
    Ok(StatsReport {
        entries: g.entries,
        max_entries: g.max_entries,
        utilization: g.utilization(),
        dumped,
        by_protocol,
        by_state,
        unreplied,
        dnat,
        counters,
        per_cpu,
        top,
    })
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
