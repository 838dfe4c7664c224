//! The kernel's per-CPU conntrack counters as Prometheus counters.
//!
//! `struct ip_conntrack_stat` holds `unsigned int`s, sent as be32 (`ctnetlink_dump_stat_cpu` in
//! `net/netfilter/nf_conntrack_netlink.c`): they wrap at 2^32 — `found` and `insert` do within
//! days on a busy node. A Prometheus counter must only go up, so each CPU's last raw value is
//! kept and the forward distance to the next one is added to a 64-bit total.
//!
//! Rules, each tested below:
//! - The first reading of the CPUs seen at start is taken as-is: the totals begin at the kernel's
//!   own count since boot, as `conntrack -S` shows it.
//! - A CPU that appears later (hot-add, or a dump that missed it) starts from 0 at its first
//!   reading, so the summed counter never jumps by a CPU's whole history at once.
//! - A CPU missing from a reading (hot-unplug) keeps its total: counters never go down. The kernel
//!   dumps every *possible* CPU, so this is rare.
//! - A raw value lower than the last one is a wrap when the forward distance is under 2^31 (no
//!   counter moves 2^31 between two readings taken seconds apart), and otherwise a reset, counted
//!   from 0.

use std::collections::BTreeMap;

use ctnetlink::CpuStats;

/// How many counters a [`CpuStats`] has ([`CpuStats::NAMES`]).
pub const COUNTERS: usize = CpuStats::NAMES.len();

/// Forward distances at or above this are resets, not wraps.
const RESET_DISTANCE: u32 = 1 << 31;

/// The increase from `prev` to `now` of a 32-bit counter that wraps at 2^32.
pub fn delta(prev: u32, now: u32) -> u64 {
    let forward = now.wrapping_sub(prev);
    if now < prev && forward >= RESET_DISTANCE {
        // Went down by at most half the range: a reset, not a wrap.
        u64::from(now)
    } else {
        u64::from(forward)
    }
}

/// One wrapping kernel counter accumulated into a monotonic 64-bit total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wrapping {
    last: u32,
    total: u64,
}

impl Wrapping {
    /// Starts at the raw value (the kernel's count so far).
    pub fn starting_at(raw: u32) -> Self {
        Wrapping {
            last: raw,
            total: u64::from(raw),
        }
    }

    /// Starts at 0 with `raw` as the baseline: only later increases count.
    pub fn baseline(raw: u32) -> Self {
        Wrapping {
            last: raw,
            total: 0,
        }
    }

    /// Takes a new raw reading and returns how much the total grew.
    pub fn update(&mut self, raw: u32) -> u64 {
        let d = delta(self.last, raw);
        self.last = raw;
        self.total += d;
        d
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn last(&self) -> u32 {
        self.last
    }
}

/// Every CPU's ten counters, accumulated.
#[derive(Debug, Clone, Default)]
pub struct CpuCounters {
    cpus: BTreeMap<u16, [Wrapping; COUNTERS]>,
    readings: u64,
}

impl CpuCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one reading of every CPU (`Conntrack::stats_per_cpu`).
    pub fn update(&mut self, stats: &[CpuStats]) {
        let first = self.readings == 0;
        self.readings += 1;
        for s in stats {
            let raw = s.values();
            match self.cpus.get_mut(&s.cpu) {
                Some(counters) => {
                    for (c, v) in counters.iter_mut().zip(raw) {
                        c.update(v);
                    }
                }
                None => {
                    let start = if first {
                        Wrapping::starting_at
                    } else {
                        Wrapping::baseline
                    };
                    self.cpus.insert(s.cpu, raw.map(start));
                }
            }
        }
    }

    /// No reading yet: nothing to export.
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// Totals per CPU, in [`CpuStats::NAMES`] order, by CPU number.
    pub fn per_cpu(&self) -> impl Iterator<Item = (u16, [u64; COUNTERS])> + '_ {
        self.cpus
            .iter()
            .map(|(cpu, c)| (*cpu, c.map(|w| w.total())))
    }

    /// Totals over every CPU ever seen, in [`CpuStats::NAMES`] order.
    pub fn totals(&self) -> [u64; COUNTERS] {
        let mut t = [0u64; COUNTERS];
        for c in self.cpus.values() {
            for (sum, w) in t.iter_mut().zip(c) {
                *sum += w.total();
            }
        }
        t
    }

    /// The total of one counter (index into [`CpuStats::NAMES`]).
    pub fn total(&self, counter: usize) -> u64 {
        self.cpus.values().map(|c| c[counter].total()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = u32::MAX;

    fn cpu(cpu: u16, insert: u32, drop: u32) -> CpuStats {
        let mut c = CpuStats::new(cpu);
        c.insert = insert;
        c.drop = drop;
        c
    }

    fn idx(name: &str) -> usize {
        CpuStats::NAMES.iter().position(|n| *n == name).unwrap()
    }

    #[test]
    fn delta_is_forward_distance() {
        assert_eq!(delta(10, 15), 5);
        assert_eq!(delta(7, 7), 0);
        assert_eq!(delta(MAX - 2, 3), 6, "wrap at 2^32: MAX-2 → MAX → 0 → 3");
        assert_eq!(delta(MAX, 0), 1);
        assert_eq!(
            delta(0, MAX),
            u64::from(MAX),
            "a forward jump is not a wrap"
        );
    }

    #[test]
    fn a_large_drop_is_a_reset() {
        // From 3e9 down to 5: forward distance 2^32 - 3e9 + 5 ≈ 1.29e9 < 2^31 → a wrap.
        assert_eq!(delta(3_000_000_000, 5), (1u64 << 32) - 3_000_000_000 + 5);
        // From 100 down to 50: the forward distance would be ~4.29e9 → a reset, count 50.
        assert_eq!(delta(100, 50), 50);
        // Exactly half the range back: a reset.
        assert_eq!(delta(RESET_DISTANCE, 0), 0);
    }

    #[test]
    fn wrapping_accumulates_past_2_pow_32() {
        let mut w = Wrapping::starting_at(MAX - 10);
        assert_eq!(w.total(), u64::from(MAX - 10));
        assert_eq!(w.update(MAX), 10);
        assert_eq!(w.update(4), 5);
        assert_eq!(w.total(), u64::from(MAX) + 5);
        assert!(
            w.total() > u64::from(u32::MAX),
            "the total goes beyond 32 bits"
        );
        // Many laps.
        let mut w = Wrapping::baseline(0);
        let mut raw = 0u32;
        for _ in 0..10 {
            raw = raw.wrapping_add(1 << 30);
            w.update(raw);
        }
        assert_eq!(w.total(), 10 << 30);
        assert_eq!(w.last(), raw);
    }

    #[test]
    fn first_reading_is_the_kernels_count_then_deltas() {
        let mut c = CpuCounters::new();
        assert!(c.is_empty());
        c.update(&[cpu(0, 100, 1), cpu(1, 200, 2)]);
        assert!(!c.is_empty());
        assert_eq!(c.total(idx("insert")), 300);
        assert_eq!(c.total(idx("drop")), 3);
        c.update(&[cpu(0, 150, 1), cpu(1, 260, 4)]);
        assert_eq!(c.total(idx("insert")), 410);
        assert_eq!(c.total(idx("drop")), 5);
        assert_eq!(c.totals()[idx("insert")], 410);
        let per: Vec<_> = c.per_cpu().map(|(n, v)| (n, v[idx("insert")])).collect();
        assert_eq!(per, vec![(0, 150), (1, 260)]);
    }

    #[test]
    fn wrap_on_one_cpu_keeps_the_sum_monotonic() {
        let mut c = CpuCounters::new();
        c.update(&[cpu(0, MAX - 5, 0), cpu(1, 10, 0)]);
        let before = c.total(idx("insert"));
        c.update(&[cpu(0, 20, 0), cpu(1, 11, 0)]);
        assert_eq!(c.total(idx("insert")), before + 26 + 1);
    }

    #[test]
    fn cpu_hot_unplug_keeps_its_total() {
        let mut c = CpuCounters::new();
        c.update(&[cpu(0, 100, 0), cpu(1, 200, 0)]);
        c.update(&[cpu(0, 110, 0), cpu(1, 230, 0)]);
        assert_eq!(c.total(idx("insert")), 340);
        // CPU 1 goes away: its 230 stays in the sum.
        c.update(&[cpu(0, 120, 0)]);
        assert_eq!(c.total(idx("insert")), 350);
        assert_eq!(c.per_cpu().count(), 2, "the series of a gone CPU stays");
        // It comes back with a higher value: only the increase counts.
        c.update(&[cpu(0, 120, 0), cpu(1, 240, 0)]);
        assert_eq!(c.total(idx("insert")), 360);
    }

    #[test]
    fn a_new_cpu_starts_from_zero() {
        let mut c = CpuCounters::new();
        c.update(&[cpu(0, 100, 0)]);
        // CPU 2 appears with a long history: no jump in the sum.
        c.update(&[cpu(0, 100, 0), cpu(2, 1_000_000, 7)]);
        assert_eq!(c.total(idx("insert")), 100);
        assert_eq!(c.total(idx("drop")), 0);
        c.update(&[cpu(0, 100, 0), cpu(2, 1_000_050, 9)]);
        assert_eq!(c.total(idx("insert")), 150);
        assert_eq!(c.total(idx("drop")), 2);
    }

    #[test]
    fn an_empty_first_reading_makes_later_cpus_start_from_zero() {
        let mut c = CpuCounters::new();
        c.update(&[]);
        assert!(!c.is_empty());
        c.update(&[cpu(0, 500, 0)]);
        assert_eq!(c.total(idx("insert")), 0);
    }
}
