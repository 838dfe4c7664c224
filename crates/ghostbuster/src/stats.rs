//! The conntrack table's statistics: size and limit, entries by protocol and state, unreplied
//! and DNAT'd counts, the per-CPU counters, and who fills the table (`--top`). `ghostbuster stats`
//! prints them; the demo reads them between acts.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use ctnetlink::{Conntrack, CpuStats, Filter, GlobalStats};
use serde::Serialize;

use crate::cluster::{Index, Protocol};

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
