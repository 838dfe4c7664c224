//! The sweep: exact, batched deletes of what the classifier marked removable.
//!
//! Each delete carries the original tuple, the zone and the kernel's id, so a flow that ended and
//! was replaced by a new one with the same tuple in the meantime is answered "already gone"
//! instead of being hit (see docs/detection.md for the one case the id cannot tell apart).

use ctnetlink::{Conntrack, DeleteKey, DeleteOutcome};
use serde::Serialize;

use crate::scan::Finding;

/// The fate of one flow in a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deleted,
    AlreadyGone,
    Failed,
    /// Not removable, or `--dry-run`.
    Kept,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deleted => "deleted",
            Outcome::AlreadyGone => "already_gone",
            Outcome::Failed => "failed",
            Outcome::Kept => "kept",
        }
    }
}

/// Counts of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepTotals {
    pub deleted: u64,
    pub already_gone: u64,
    pub failed: u64,
}

/// Deletes every removable finding (none with `dry_run`) and returns one outcome per finding, in
/// order, plus the totals and the first failure's errno.
pub fn sweep(
    ct: &mut Conntrack,
    findings: &[Finding],
    dry_run: bool,
) -> ctnetlink::Result<(Vec<Outcome>, SweepTotals, Option<i32>)> {
    let mut outcomes = vec![Outcome::Kept; findings.len()];
    let mut totals = SweepTotals::default();
    if dry_run {
        return Ok((outcomes, totals, None));
    }
    let picked: Vec<usize> = (0..findings.len())
        .filter(|&i| findings[i].verdict.removable)
        .collect();
    let keys: Vec<DeleteKey> = picked
        .iter()
        .map(|&i| DeleteKey::from(&findings[i].flow))
        .collect();
    let results = ct.delete(&keys)?;
    let mut first_errno = None;
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
        };
    }
    Ok((outcomes, totals, first_errno))
}
