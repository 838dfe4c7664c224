//! A scan: stream the conntrack table through the classifier and keep only what is not healthy.
//!
//! Healthy and non-service flows are counted, never stored, so memory depends on the number of
//! ghosts, not on the table size.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ctnetlink::{DumpSummary, Filter, Flow};

use crate::table::Table;
use jiff::Timestamp;

use crate::classify::classify;
use crate::cluster::{Index, Name};
use crate::policy::Policy;
use crate::verdict::{Verdict, VerdictKind};

/// A flow that is not healthy, with its verdict.
#[derive(Debug, Clone)]
pub struct Finding {
    pub flow: Flow,
    pub verdict: Verdict,
}

/// What a scan saw.
#[derive(Debug)]
pub struct ScanReport {
    pub scanned: u64,
    pub counts: BTreeMap<VerdictKind, u64>,
    pub removable: u64,
    pub findings: Vec<Finding>,
    pub dump: DumpSummary,
    pub elapsed: Duration,
    pub now: Timestamp,
    /// Entries per (protocol, state), when asked for ([`ScanOptions::tally`]).
    pub by_state: BTreeMap<(u8, &'static str), u64>,
    /// Service flows per Service, when asked for ([`ScanOptions::tally`]).
    pub by_service: HashMap<(Name, Name), u64>,
}

/// Extra bookkeeping a scan can do on the way (the agent's metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Count entries per protocol state and service flows per Service.
    pub tally: bool,
    /// Decode and classify on a second thread while the kernel fills the next batch
    /// ([`Table::dump_pipelined`]): the CLI's scans and sweeps. Not the agent's reactor, whose
    /// full-pass stretch counts the CPU time of its own thread.
    pub pipelined: bool,
}

impl ScanReport {
    pub fn removable_findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.verdict.removable)
    }
}

/// Classifies every flow of the table that matches `filter` and keeps the ones that are not
/// healthy (`explain`, which also wants healthy ones, uses [`classify_matching`]).
pub fn scan(
    ct: &mut impl Table,
    index: &Index,
    policy: &Policy,
    filter: &Filter,
) -> ctnetlink::Result<ScanReport> {
    scan_with(ct, index, policy, filter, ScanOptions::default())
}

/// [`scan`] with extra bookkeeping.
pub fn scan_with(
    ct: &mut impl Table,
    index: &Index,
    policy: &Policy,
    filter: &Filter,
    opts: ScanOptions,
) -> ctnetlink::Result<ScanReport> {
    scan_into(ct, index, policy, filter, opts, |f, _| Some(f))
}

/// Where a scan reads the cluster index for each flow: a plain reference (the CLI's), or the
/// agent's shared lock, taken for one flow at a time ([`Locked`]).
pub trait IndexSource: Send + Sync {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R;
}

impl IndexSource for &Index {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(self)
    }
}

/// The agent's index behind its lock, read-locked for one flow at a time: a pass over a million
/// entries takes seconds, and the watch must not wait that long to apply a change (the lock
/// prefers writers, so a waiting writer would also stall every other reader, the removals
/// among them). An uncontended lock costs a few tens of nanoseconds per flow.
pub struct Locked<'a>(pub &'a std::sync::RwLock<Index>);

impl IndexSource for Locked<'_> {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// [`scan_with`], where every finding goes through `keep` first: what it returns is carried in
/// the report, what it takes (returns `None` for) is counted in `counts` and `removable` only.
/// The agent takes the kept findings nothing in its pass can change, so that a node keeping
/// 100,000 stale flows does not hold 100,000 findings (~800 B each) at once.
pub fn scan_into(
    ct: &mut impl Table,
    index: impl IndexSource,
    policy: &Policy,
    filter: &Filter,
    opts: ScanOptions,
    mut keep: impl FnMut(Finding, &Index) -> Option<Finding> + Send,
) -> ctnetlink::Result<ScanReport> {
    let start = Instant::now();
    let now = Timestamp::now();
    let mut counts: BTreeMap<VerdictKind, u64> = BTreeMap::new();
    let mut findings = Vec::new();
    let mut scanned = 0u64;
    let mut removable = 0u64;
    let mut by_state: BTreeMap<(u8, &'static str), u64> = BTreeMap::new();
    let mut by_service: HashMap<(Name, Name), u64> = HashMap::new();
    let each = |flow: &Flow| {
        index.with(|index| {
            scanned += 1;
            let v = classify(flow, index, policy, now);
            *counts.entry(v.kind).or_insert(0) += 1;
            if opts.tally {
                if let Some(st) = flow.state_name() {
                    *by_state.entry((flow.proto(), st)).or_insert(0) += 1;
                }
                if let Some(s) = &v.service {
                    *by_service
                        .entry((s.namespace.clone(), s.name.clone()))
                        .or_insert(0) += 1;
                }
            }
            if v.kind.is_stale() {
                removable += v.removable as u64;
                findings.extend(keep(
                    Finding {
                        flow: *flow,
                        verdict: v,
                    },
                    index,
                ));
            }
            ControlFlow::Continue(())
        })
    };
    let dump = if opts.pipelined {
        ct.dump_pipelined(filter, each)?
    } else {
        ct.dump(filter, each)?
    };
    Ok(ScanReport {
        scanned,
        counts,
        removable,
        findings,
        dump,
        elapsed: start.elapsed(),
        now,
        by_state,
        by_service,
    })
}

/// Classifies flows read earlier (the agent's snapshots) and keeps the ones that are not healthy.
pub fn classify_flows(flows: &[Flow], index: &Index, policy: &Policy) -> Vec<Finding> {
    let now = Timestamp::now();
    flows
        .iter()
        .filter_map(|f| {
            let v = classify(f, index, policy, now);
            v.kind.is_stale().then_some(Finding {
                flow: *f,
                verdict: v,
            })
        })
        .collect()
}

/// Classifies every flow for which `select` is true, healthy ones included (for `explain`).
pub fn classify_matching(
    ct: &mut impl Table,
    index: &Index,
    policy: &Policy,
    filter: &Filter,
    mut select: impl FnMut(&Flow) -> bool,
) -> ctnetlink::Result<Vec<Finding>> {
    let now = Timestamp::now();
    let mut out = Vec::new();
    ct.dump(filter, |flow| {
        if select(flow) {
            out.push(Finding {
                flow: *flow,
                verdict: classify(flow, index, policy, now),
            });
        }
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::IndexConfig;
    use ctnetlink::{DeleteKey, DeleteOutcome, DumpSummary, Lookup, Tuple};
    use std::sync::RwLock;

    /// A table of `n` flows whose dump tries, after each flow, to take the index for writing,
    /// as the agent's watch would to apply a change in the middle of a full pass.
    struct WriterProbe<'a> {
        n: u16,
        lock: &'a RwLock<Index>,
        writes: Vec<bool>,
    }

    impl Table for WriterProbe<'_> {
        fn dump<F>(&mut self, _: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
        where
            F: FnMut(&Flow) -> ControlFlow<()>,
        {
            let client = "192.0.2.2".parse().unwrap();
            let vip = "198.51.100.10".parse().unwrap();
            for p in 0..self.n {
                let flow = Flow::new(
                    Tuple::ports(client, 40000 + p, vip, 80, 6),
                    Tuple::ports(vip, 80, client, 40000 + p, 6),
                );
                let _ = f(&flow);
                self.writes.push(self.lock.try_write().is_ok());
            }
            Ok(DumpSummary::default())
        }
        fn get(&mut self, _: &[DeleteKey]) -> ctnetlink::Result<Vec<Lookup>> {
            Ok(Vec::new())
        }
        fn delete(&mut self, _: &[DeleteKey]) -> ctnetlink::Result<Vec<DeleteOutcome>> {
            Ok(Vec::new())
        }
    }

    /// The agent's full pass reads the shared index one flow at a time: between two flows the
    /// watch can apply a change (a removal is not held back for the rest of a seconds-long
    /// pass, nor is the kube-proxy gate fooled by a removal stamped late).
    #[test]
    fn a_scan_through_the_lock_lets_a_writer_in_between_flows() {
        let lock = RwLock::new(Index::new(IndexConfig::default()));
        let mut t = WriterProbe {
            n: 5,
            lock: &lock,
            writes: Vec::new(),
        };
        let opts = ScanOptions::default();
        let r = scan_into(
            &mut t,
            Locked(&lock),
            &Policy::default(),
            &Filter::default(),
            opts,
            |f, _| Some(f),
        )
        .unwrap();
        assert_eq!(r.scanned, 5);
        assert_eq!(t.writes, [true; 5]);

        // Holding the lock for the whole pass (what the agent did) shuts the writer out.
        t.writes.clear();
        let held = lock.read().unwrap();
        scan_into(
            &mut t,
            &*held,
            &Policy::default(),
            &Filter::default(),
            opts,
            |f, _| Some(f),
        )
        .unwrap();
        assert_eq!(t.writes, [false; 5]);
    }
}
