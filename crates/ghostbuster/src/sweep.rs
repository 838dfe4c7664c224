//! The sweep: exact, batched deletes of what the classifier marked removable.
//!
//! Each delete carries the reply tuple (it names the backend), the zone and the kernel's id, so a
//! flow that ended and was replaced by a new one in the meantime is answered "already gone"
//! instead of being hit — even a UDP flow that kube-proxy re-routed to another backend with the
//! same original tuple and, the slot being reused, the same id ([`ctnetlink::DeleteKey`]).
//!
//! A verdict is made from a dump; the world moves on before the delete (pod GETs, a kube-proxy
//! gate). Two guards keep a verdict from outliving what it saw (issue #12 §2):
//! - **Age.** Findings from a dump that began more than [`SweepOptions::max_verdict_age`] ago are
//!   not acted on: each gets [`Outcome::StaleVerdict`] and nothing is deleted. The caller re-dumps
//!   and judges again (a scan is cheap next to a wrong delete).
//! - **Re-check.** A finding whose removability rests on half-open alone (the verdict's evidence
//!   has `half_open` and nothing else that suffices: see [`rests_on_half_open`]) is read again
//!   with an exact CT_GET right before the delete. If it has seen a reply since (or is not the
//!   same entry any more: another id or tuple), it is kept with [`Outcome::Changed`]: a SYN that
//!   was answered while the pod GETs ran is a live connection. An entry that is gone by then is
//!   [`Outcome::AlreadyGone`]; a read that fails keeps the flow ([`Outcome::Failed`]).
//!
//! What remains between the re-read and the delete is one round trip of the same batch (tens of
//! microseconds): a reply in that window cannot be told apart, as with any user-space delete.

use std::time::{Duration, Instant};

use ctnetlink::{DeleteKey, DeleteOutcome, Flow, Lookup};

use crate::table::Table;
use serde::Serialize;

use crate::classify::is_half_open;
use crate::scan::Finding;
use crate::verdict::{Evidence, Verdict};

/// How old a dump may be when its findings are deleted (see [`SweepOptions::max_verdict_age`]).
pub const DEFAULT_MAX_VERDICT_AGE: Duration = Duration::from_secs(5);

/// The fate of one flow in a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deleted,
    AlreadyGone,
    Failed,
    /// Not removable, or `--dry-run`.
    Kept,
    /// Removable when dumped, but re-read before the delete it no longer was: a half-open flow
    /// that got its reply, or another entry with the same reply tuple. Kept.
    Changed,
    /// Removable, but the dump it was judged from is older than the sweep's `max_verdict_age`:
    /// not deleted; re-dump and judge again.
    StaleVerdict,
}

impl Outcome {
    /// Every outcome: docs/flow.schema.json's `result` enum is checked against it.
    pub const ALL: [Outcome; 6] = [
        Outcome::Deleted,
        Outcome::AlreadyGone,
        Outcome::Failed,
        Outcome::Kept,
        Outcome::Changed,
        Outcome::StaleVerdict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deleted => "deleted",
            Outcome::AlreadyGone => "already_gone",
            Outcome::Failed => "failed",
            Outcome::Kept => "kept",
            Outcome::Changed => "changed",
            Outcome::StaleVerdict => "stale_verdict",
        }
    }
}

/// Counts of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepTotals {
    pub deleted: u64,
    pub already_gone: u64,
    pub failed: u64,
    /// Kept because the re-read before the delete showed the verdict no longer held.
    pub changed: u64,
    /// Not deleted because the verdict was older than `max_verdict_age`: re-dump.
    pub stale_verdict: u64,
}

/// How a sweep treats its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepOptions {
    /// Report what would be removed, remove nothing (every finding is [`Outcome::Kept`]).
    pub dry_run: bool,
    /// When the dump the findings were judged from *began*: its oldest observation.
    pub dumped_at: Instant,
    /// The longest time from `dumped_at` to the delete. Past it, removable findings are returned
    /// as [`Outcome::StaleVerdict`] and nothing is deleted.
    pub max_verdict_age: Duration,
}

impl SweepOptions {
    /// Deletes (unless `dry_run`) findings from a dump that began at `dumped_at`, with the
    /// default [`DEFAULT_MAX_VERDICT_AGE`].
    pub fn new(dry_run: bool, dumped_at: Instant) -> Self {
        SweepOptions {
            dry_run,
            dumped_at,
            max_verdict_age: DEFAULT_MAX_VERDICT_AGE,
        }
    }
}

/// True when the verdict's removability rests on half-open alone: `half_open` is among its
/// evidence and nothing else there suffices on its own ([`Evidence::suffices`]). Such a verdict
/// stops holding the moment the flow gets a reply.
pub fn rests_on_half_open(v: &Verdict) -> bool {
    v.evidence.contains(Evidence::HalfOpen)
        && !v
            .evidence
            .iter()
            .any(|e| e != Evidence::HalfOpen && e.suffices())
}

/// True when `now` (the entry read again) is the entry `then` was, still half-open.
pub fn still_half_open(then: &Flow, now: &Flow) -> bool {
    now.id == then.id
        && now.orig == then.orig
        && now.reply == then.reply
        && now.zone == then.zone
        && is_half_open(now)
}

/// Deletes every removable finding (none with `dry_run`) of a dump that began at `dumped_at`,
/// with the default guards ([`sweep_with`]).
pub fn sweep(
    ct: &mut impl Table,
    findings: &[Finding],
    dry_run: bool,
    dumped_at: Instant,
) -> ctnetlink::Result<(Vec<Outcome>, SweepTotals, Option<i32>)> {
    sweep_with(ct, findings, &SweepOptions::new(dry_run, dumped_at))
}

/// Deletes every removable finding whose verdict still holds, and returns one outcome per finding,
/// in order, plus the totals and the first failure's errno. Findings that are not removable are
/// [`Outcome::Kept`]; see the module documentation for [`Outcome::StaleVerdict`] and
/// [`Outcome::Changed`]. A caller that gets `stale_verdict` outcomes re-dumps, re-classifies and
/// sweeps the new findings.
pub fn sweep_with(
    ct: &mut impl Table,
    findings: &[Finding],
    opts: &SweepOptions,
) -> ctnetlink::Result<(Vec<Outcome>, SweepTotals, Option<i32>)> {
    let mut outcomes = vec![Outcome::Kept; findings.len()];
    let mut totals = SweepTotals::default();
    if opts.dry_run {
        return Ok((outcomes, totals, None));
    }
    let mut picked: Vec<usize> = (0..findings.len())
        .filter(|&i| findings[i].verdict.removable)
        .collect();
    if picked.is_empty() {
        return Ok((outcomes, totals, None));
    }
    if opts.dumped_at.elapsed() > opts.max_verdict_age {
        for &i in &picked {
            outcomes[i] = Outcome::StaleVerdict;
        }
        totals.stale_verdict = picked.len() as u64;
        return Ok((outcomes, totals, None));
    }
    let mut first_errno = None;

    // Re-read, right before the delete, what only half-open made removable.
    let recheck: Vec<usize> = picked
        .iter()
        .copied()
        .filter(|&i| rests_on_half_open(&findings[i].verdict))
        .collect();
    if !recheck.is_empty() {
        let keys: Vec<DeleteKey> = recheck
            .iter()
            .map(|&i| DeleteKey::from(&findings[i].flow))
            .collect();
        let now = ct.get(&keys)?;
        for (&i, l) in recheck.iter().zip(now) {
            let fate = match l {
                Lookup::Found(f) if still_half_open(&findings[i].flow, &f) => continue,
                Lookup::Found(_) => {
                    totals.changed += 1;
                    Outcome::Changed
                }
                Lookup::Gone => {
                    totals.already_gone += 1;
                    Outcome::AlreadyGone
                }
                Lookup::Failed(e) => {
                    totals.failed += 1;
                    first_errno.get_or_insert(e);
                    Outcome::Failed
                }
                // An answer a newer ctnetlink may add: not a reason to delete.
                _ => {
                    totals.failed += 1;
                    Outcome::Failed
                }
            };
            outcomes[i] = fate;
        }
        picked.retain(|&i| outcomes[i] == Outcome::Kept);
    }

    let keys: Vec<DeleteKey> = picked
        .iter()
        .map(|&i| DeleteKey::from(&findings[i].flow))
        .collect();
    let results = ct.delete(&keys)?;
    for (&i, r) in picked.iter().zip(results) {
        outcomes[i] = match r {
            DeleteOutcome::Deleted => {
                totals.deleted += 1;
                Outcome::Deleted
            }
            DeleteOutcome::AlreadyGone => {
                totals.already_gone += 1;
                Outcome::AlreadyGone
            }
            DeleteOutcome::Failed(e) => {
                totals.failed += 1;
                first_errno.get_or_insert(e);
                Outcome::Failed
            }
            // An outcome a newer ctnetlink may add: counted as not deleted.
            _ => {
                totals.failed += 1;
                Outcome::Failed
            }
        };
    }
    Ok((outcomes, totals, first_errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(evidence: &[Evidence]) -> Verdict {
        Verdict {
            kind: crate::verdict::VerdictKind::EndpointGone,
            evidence: evidence.iter().copied().collect(),
            half_open: true,
            removable: true,
            kept_because: None,
            service: None,
            backend: None,
            now_owned_by: None,
            trace: crate::verdict::Trace::default(),
        }
    }

    #[test]
    fn only_verdicts_that_need_half_open_are_re_read() {
        use Evidence::*;
        assert!(rests_on_half_open(&verdict(&[HalfOpen])));
        // Evidence that is not enough on its own does not change that.
        assert!(rests_on_half_open(&verdict(&[HalfOpen, SnapshotOnly])));
        assert!(rests_on_half_open(&verdict(&[HalfOpen, EndpointRemoved])));
        // Any other sufficient evidence makes the reply irrelevant.
        for e in [Udp, PodAbsent, PodReplaced, PodCreatedAfterFlow, PodGone] {
            assert!(!rests_on_half_open(&verdict(&[HalfOpen, e])), "{e}");
            assert!(!rests_on_half_open(&verdict(&[e])), "{e}");
        }
        assert!(!rests_on_half_open(&verdict(&[])));
    }

    #[test]
    fn outcome_names_are_the_json_names() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
