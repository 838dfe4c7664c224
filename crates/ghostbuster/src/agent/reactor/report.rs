//! What a pass did ([`PassReport`]) and how its findings are kept within a bounded memory: every
//! flow acted on, the first [`MAX_KEPT_SHOWN`] kept ones in detail, the rest counted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::agent::gate::Hold;
use crate::cluster::{Index, Name, ObjectKey};
use crate::scan::Finding;
use crate::sweep::{Outcome, SweepTotals};
use crate::telemetry::metrics::StaleKey;
use crate::verdict::KeepReason;

/// The result of one pass, for metrics, logs, Events and `/debug/recent`.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub kind: PassKind,
    pub started: Instant,
    pub elapsed: Duration,
    pub scanned: u64,
    pub service_flows: u64,
    /// The flows the sweep acted on (deleted, already gone, failed), and the first
    /// [`MAX_KEPT_SHOWN`] of the other non-healthy ones (Kept): a kept finding costs ~700 B, and
    /// a node may keep 100,000 stale flows. `stale` counts all of them.
    pub findings: Vec<(Finding, Outcome)>,
    /// Kept findings left out of `findings`.
    pub not_shown: u64,
    /// Stale flows per (Service, port, protocol, verdict), exact.
    pub stale: BTreeMap<StaleKey, u64>,
    /// Backends with removable flows that `held` kept.
    pub held_backends: Vec<IpAddr>,
    /// Backends whose removable flows were judged from a dump older than the sweep's
    /// `max_verdict_age` (pod GETs took long, a slow pass): nothing of theirs was deleted, and
    /// they are read and judged again at once, by a targeted pass.
    pub redo_backends: Vec<IpAddr>,
    pub totals: SweepTotals,
    /// Why nothing was removed, when something removable was held back.
    pub held: Option<Hold>,
    /// A circuit breaker is open (this pass's share, or the budget across passes).
    pub circuit_open: bool,
    /// For targeted passes: when the backend left its Service, and when the gate opened.
    pub removed_at: Option<Timestamp>,
    pub gate_opened: Option<Instant>,
    /// When its deletes were done: the end of the reaction (the report may be handed over
    /// later, once every backend of the turn is done).
    pub acted_at: Instant,
    /// Full passes: entries per (protocol, state) and service flows per Service.
    pub by_state: BTreeMap<(u8, &'static str), u64>,
    pub by_service: HashMap<(Name, Name), u64>,
    /// Targeted passes: whether the backend's flows were read through the flow index (exact
    /// reads of its entries) rather than a walk of the table.
    pub read_by_index: bool,
    /// Its deletes were made with the event socket out of the DESTROY group
    /// ([`super::quiet_deletes`]): the flow index forgot them itself.
    pub without_destroy_events: bool,
    /// The flow index after the pass (`None` when it is off).
    pub flow_index: Option<crate::agent::flow_index::Summary>,
    /// Full passes: the time to the next one (the interval, stretched by
    /// `--resync-cpu-percent`).
    pub next_full_in: Option<Duration>,
}

impl PassReport {
    /// A pass that looked at nothing (its dump failed) — the base of the others.
    pub(super) fn nothing(kind: PassKind, started: Instant) -> PassReport {
        PassReport {
            kind,
            started,
            elapsed: started.elapsed(),
            scanned: 0,
            service_flows: 0,
            findings: Vec::new(),
            not_shown: 0,
            stale: BTreeMap::new(),
            held_backends: Vec::new(),
            redo_backends: Vec::new(),
            totals: SweepTotals::default(),
            held: None,
            circuit_open: false,
            removed_at: None,
            gate_opened: None,
            acted_at: Instant::now(),
            by_state: BTreeMap::new(),
            by_service: HashMap::new(),
            read_by_index: false,
            without_destroy_events: false,
            flow_index: None,
            next_full_in: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Full,
    Targeted,
}

impl PassKind {
    pub fn label(self) -> &'static str {
        match self {
            PassKind::Full => "full",
            PassKind::Targeted => "targeted",
        }
    }
}

/// Kept findings a pass report carries in detail (the rest are only counted).
pub const MAX_KEPT_SHOWN: usize = 256;

/// A kept finding that nothing later in a full pass can make removable: kept by policy (zone,
/// protocol, namespace, the API servers, unmanaged endpoints, the mode annotation), or for lack
/// of evidence (or of a known age) when its start is unknown and there is no tombstone at its
/// backend: no pod GET can speak for it, and an answer of the API server proves nothing about a
/// flow of unknown age (the agent does not even ask).
pub(super) fn is_settled(f: &Finding, ix: &Index) -> bool {
    if f.verdict.removable {
        return false;
    }
    match f.verdict.kept_because {
        Some(
            KeepReason::Zone
            | KeepReason::Protocol
            | KeepReason::Namespace
            | KeepReason::ApiServer
            | KeepReason::Unmanaged
            | KeepReason::Annotation,
        ) => true,
        Some(KeepReason::UnknownAge | KeepReason::NoEvidence) => {
            f.flow.start_ns.is_none()
                && f.verdict
                    .backend
                    .is_none_or(|b| ix.tombstones().at(&b.ip).is_empty())
        }
        _ => false,
    }
}

/// The settled findings of a full pass ([`is_settled`]): counted for the stale gauge, the first
/// [`MAX_KEPT_SHOWN`] kept for the report.
#[derive(Default)]
pub(super) struct Settled {
    pub(super) stale: BTreeMap<StaleKey, u64>,
    pub(super) shown: Vec<Finding>,
    pub(super) not_shown: u64,
}

impl Settled {
    pub(super) fn take(&mut self, f: Finding) {
        if let Some(k) = StaleKey::of(&f) {
            *self.stale.entry(k).or_insert(0) += 1;
        }
        if self.shown.len() < MAX_KEPT_SHOWN {
            self.shown.push(f);
        } else {
            self.not_shown += 1;
        }
    }

    /// Adds them to the pass's report as kept, within its cap of kept details.
    pub(super) fn add_to(self, r: &mut PassReport) {
        for (k, n) in self.stale {
            *r.stale.entry(k).or_insert(0) += n;
        }
        let kept = r
            .findings
            .iter()
            .filter(|(_, o)| *o == Outcome::Kept)
            .count();
        let room = MAX_KEPT_SHOWN.saturating_sub(kept);
        let over = self.shown.len().saturating_sub(room) as u64;
        r.findings.extend(
            self.shown
                .into_iter()
                .take(room)
                .map(|f| (f, Outcome::Kept)),
        );
        r.not_shown += self.not_shown + over;
    }
}

/// Every finding the sweep acted on, and the first [`MAX_KEPT_SHOWN`] kept ones; and how many
/// kept ones were left out.
pub(super) fn keep_shown(
    all: impl Iterator<Item = (Finding, Outcome)>,
) -> (Vec<(Finding, Outcome)>, u64) {
    let mut shown = Vec::new();
    let (mut kept, mut not_shown) = (0usize, 0u64);
    for (f, o) in all {
        if o == Outcome::Kept {
            if kept >= MAX_KEPT_SHOWN {
                not_shown += 1;
                continue;
            }
            kept += 1;
        }
        shown.push((f, o));
    }
    (shown, not_shown)
}

/// Keys of Services mentioned by a set of findings (for Events and logs).
pub fn services_of(findings: &[(Finding, Outcome)]) -> Vec<ObjectKey> {
    let mut v: Vec<ObjectKey> = Vec::new();
    for (f, _) in findings {
        if let Some(s) = &f.verdict.service {
            let k = ObjectKey::new(&s.namespace, &s.name);
            if !v.contains(&k) {
                v.push(k);
            }
        }
    }
    v
}
