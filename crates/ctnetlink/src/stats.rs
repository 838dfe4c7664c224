//! Table statistics: global count/limit and the per-CPU counters.

use crate::attr::Attrs;
use crate::consts::*;
use crate::error::ParseError;

/// `conntrack -C` and the limit, for one network namespace (the limit is machine-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GlobalStats {
    /// Entries in the table now.
    pub entries: u32,
    /// The table's limit (`net.netfilter.nf_conntrack_max`).
    pub max_entries: u32,
}

impl GlobalStats {
    /// Statistics with these values (for tests and fixtures; [`crate::Conntrack::stats`] reads
    /// the kernel's).
    pub const fn new(entries: u32, max_entries: u32) -> Self {
        GlobalStats {
            entries,
            max_entries,
        }
    }
    /// Parses the attributes of a CT_GET_STATS answer (after the nfgenmsg).
    pub(crate) fn parse(attrs: Attrs<'_>) -> Result<Self, ParseError> {
        let mut s = GlobalStats::default();
        for a in attrs {
            let a = a?;
            match a.kind {
                CTA_STATS_GLOBAL_ENTRIES => s.entries = a.be32("entries")?,
                CTA_STATS_GLOBAL_MAX_ENTRIES => s.max_entries = a.be32("max entries")?,
                _ => {}
            }
        }
        Ok(s)
    }
    /// Fill level in [0, 1]; 0 when the limit is unknown.
    pub fn utilization(&self) -> f64 {
        if self.max_entries == 0 {
            0.0
        } else {
            self.entries as f64 / self.max_entries as f64
        }
    }
}

/// One CPU's counters. They are the kernel's 32-bit values and wrap around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// The CPU these counters belong to.
    pub cpu: u16,
    /// Lookups that found an entry.
    pub found: u32,
    /// Packets conntrack could not track.
    pub invalid: u32,
    /// Entries inserted.
    pub insert: u32,
    /// Entries that could not be inserted (a clash, or the table is full).
    pub insert_failed: u32,
    /// Packets dropped because an entry could not be created.
    pub drop: u32,
    /// Entries dropped early to make room.
    pub early_drop: u32,
    /// Packets with errors (ICMP errors that match no entry, ...).
    pub error: u32,
    /// Lookups restarted because a hash chain changed under them.
    pub search_restart: u32,
    /// Insert clashes that were resolved.
    pub clash_resolve: u32,
    /// Inserts refused because a hash chain was too long.
    pub chaintoolong: u32,
}

impl CpuStats {
    /// All-zero counters of one CPU (for tests and fixtures: set the fields needed;
    /// [`crate::Conntrack::stats_per_cpu`] reads the kernel's).
    pub fn new(cpu: u16) -> Self {
        CpuStats {
            cpu,
            ..Default::default()
        }
    }

    /// Counter names in a stable order, the order of [`CpuStats::values`] and [`CpuStats::sum`].
    pub const NAMES: [&'static str; 10] = [
        "found",
        "invalid",
        "insert",
        "insert_failed",
        "drop",
        "early_drop",
        "error",
        "search_restart",
        "clash_resolve",
        "chaintoolong",
    ];

    /// The counters, in the order of [`CpuStats::NAMES`].
    pub fn values(&self) -> [u32; 10] {
        [
            self.found,
            self.invalid,
            self.insert,
            self.insert_failed,
            self.drop,
            self.early_drop,
            self.error,
            self.search_restart,
            self.clash_resolve,
            self.chaintoolong,
        ]
    }

    /// Parses the attributes of one CT_GET_STATS_CPU answer (after the nfgenmsg, whose `res_id`
    /// is the CPU).
    pub(crate) fn parse(cpu: u16, attrs: Attrs<'_>) -> Result<Self, ParseError> {
        let mut s = CpuStats {
            cpu,
            ..Default::default()
        };
        for a in attrs {
            let a = a?;
            let v = || a.be32("cpu counter");
            match a.kind {
                CTA_STATS_FOUND => s.found = v()?,
                CTA_STATS_INVALID => s.invalid = v()?,
                CTA_STATS_INSERT => s.insert = v()?,
                CTA_STATS_INSERT_FAILED => s.insert_failed = v()?,
                CTA_STATS_DROP => s.drop = v()?,
                CTA_STATS_EARLY_DROP => s.early_drop = v()?,
                CTA_STATS_ERROR => s.error = v()?,
                CTA_STATS_SEARCH_RESTART => s.search_restart = v()?,
                CTA_STATS_CLASH_RESOLVE => s.clash_resolve = v()?,
                CTA_STATS_CHAIN_TOOLONG => s.chaintoolong = v()?,
                _ => {}
            }
        }
        Ok(s)
    }

    /// The sum over CPUs, in 64 bits (each CPU's value as the kernel reports it).
    pub fn sum(all: &[CpuStats]) -> [u64; 10] {
        let mut t = [0u64; 10];
        for c in all {
            for (i, v) in c.values().iter().enumerate() {
                t[i] += *v as u64;
            }
        }
        t
    }
}
