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
    scan_into(ct, index, policy, filter, opts, Some)
}

/// [`scan_with`], where every finding goes through `keep` first: what it returns is carried in
/// the report, what it takes (returns `None` for) is counted in `counts` and `removable` only.
/// The agent takes the kept findings nothing in its pass can change, so that a node keeping
/// 100,000 stale flows does not hold 100,000 findings (~800 B each) at once.
pub fn scan_into(
    ct: &mut impl Table,
    index: &Index,
    policy: &Policy,
    filter: &Filter,
    opts: ScanOptions,
    mut keep: impl FnMut(Finding) -> Option<Finding> + Send,
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
            findings.extend(keep(Finding {
                flow: *flow,
                verdict: v,
            }));
        }
        ControlFlow::Continue(())
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
