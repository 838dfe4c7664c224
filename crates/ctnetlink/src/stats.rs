//! Table statistics: global count/limit and the per-CPU counters.

use crate::attr::Attrs;
use crate::consts::*;
use crate::error::ParseError;

/// `conntrack -C` and the limit, for one network namespace (the limit is machine-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalStats {
    pub entries: u32,
    pub max_entries: u32,
}

impl GlobalStats {
    /// Parses the attributes of a CT_GET_STATS answer (after the nfgenmsg).
    pub fn parse(attrs: Attrs<'_>) -> Result<Self, ParseError> {
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
pub struct CpuStats {
    pub cpu: u16,
    pub found: u32,
    pub invalid: u32,
    pub insert: u32,
    pub insert_failed: u32,
    pub drop: u32,
    pub early_drop: u32,
    pub error: u32,
    pub search_restart: u32,
    pub clash_resolve: u32,
    pub chaintoolong: u32,
}

impl CpuStats {
    /// Counter names in a stable order, with accessors; used for output and metrics.
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
    pub fn parse(cpu: u16, attrs: Attrs<'_>) -> Result<Self, ParseError> {
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
