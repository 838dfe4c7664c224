//! The reactor's own deletes, without the DESTROY events it would send itself.
//!
//! The flow index learns of ended entries from the DESTROY events of the agent's event socket.
//! For the agent's own deletes those events are pure cost: with `nf_conntrack_events=2` (the
//! default) the kernel builds a DESTROY message per deleted entry and queues a copy for every
//! socket in the group, inside the delete. Measured at 1M entries (`cargo bench -p ghostbuster
//! --bench conntrack -- --deletes-only 1000000`): the kernel's batched delete takes 2.4 µs an
//! entry with no DESTROY listener and 6.8 µs with one. A rolling update's 20 backends (~33,000
//! entries) are 80 ms of deletes one way and 225 ms the other.
//!
//! So for a batch of [`QUIET_AT`] deletes or more, the event socket leaves the DESTROY group for
//! the batch ([`begin`]) and the index learns of the batch from the flows themselves:
//!
//! - before the deletes, the entries about to be deleted are forgotten, as their DESTROY events
//!   would have made it;
//! - after them ([`Quiet::end`]), the socket joins again, and every entry that was not deleted
//!   (kept at the re-check, already gone, failed) is added back.
//!
//! The index stays complete. An entry that holds a forgotten tuple after the batch either was
//! not deleted (added back), or was created after the delete and so announced by a NEW event
//! the event thread applied after the tuple was forgotten (the socket stays in the NEW group).
//! What it may hold too much — entries that ended by themselves during the batch, their DESTROY
//! unheard, or that were gone before the delete and were added back — a removal reads as gone
//! and the next full pass drops: the index may name too much, never too little. A socket that
//! cannot join again would leave the index blind to every later end: it is then never trusted
//! again (removals walk the table), which fails closed.

use std::sync::Arc;

use ctnetlink::{EventFilterHandle, EventKind, Flow};

use crate::agent::flow_index::FlowIndex;
use crate::scan::Finding;
use crate::sweep::Outcome;

/// Batches of fewer planned deletes keep their DESTROY events: the two system calls and the
/// window of unheard ends are not worth it for a few entries.
pub const QUIET_AT: usize = 64;

/// The event socket's subscription to DESTROY events (the kernel's socket in the agent; a
/// recording fake in tests).
pub trait DestroyEvents: Send + Sync {
    /// Joins (`true`) or leaves the DESTROY group.
    fn subscribe(&self, on: bool) -> Result<(), String>;
}

impl DestroyEvents for EventFilterHandle {
    fn subscribe(&self, on: bool) -> Result<(), String> {
        self.set_destroy_events(on).map_err(|e| e.to_string())
    }
}

/// A batch of deletes under way with the DESTROY subscription left; [`Quiet::end`] it.
#[must_use]
pub struct Quiet<'a> {
    flows: &'a FlowIndex,
    events: Arc<dyn DestroyEvents>,
    ended: bool,
}

/// Leaves the DESTROY group and forgets the removable findings' entries, when the batch is worth
/// it and the index is being kept. `None`: delete with the events, as always.
pub fn begin<'a>(
    flows: &'a FlowIndex,
    events: Option<Arc<dyn DestroyEvents>>,
    findings: &[Finding],
) -> Option<Quiet<'a>> {
    let events = events?;
    let removable: Vec<(EventKind, Flow)> = findings
        .iter()
        .filter(|f| f.verdict.removable)
        .map(|f| (EventKind::Destroy, f.flow))
        .collect();
    if removable.len() < QUIET_AT || !flows.is_live() {
        return None;
    }
    if let Err(e) = events.subscribe(false) {
        tracing::debug!(error = %e, "could not leave the DESTROY group; deleting with the events");
        return None;
    }
    flows.apply(&removable);
    Some(Quiet {
        flows,
        events,
        ended: false,
    })
}

impl Quiet<'_> {
    /// The batch is over (`outcomes` in the order of `findings`; a failed sweep: all `Failed`):
    /// joins the DESTROY group again and adds back every forgotten entry that was not deleted.
    pub fn end(mut self, findings: &[Finding], outcomes: &[Outcome]) {
        self.ended = true;
        self.rejoin();
        let back: Vec<(EventKind, Flow)> = findings
            .iter()
            .zip(outcomes.iter().chain(std::iter::repeat(&Outcome::Failed)))
            .filter(|(f, o)| f.verdict.removable && **o != Outcome::Deleted)
            .map(|(f, _)| (EventKind::New, f.flow))
            .collect();
        self.flows.apply(&back);
    }

    fn rejoin(&self) {
        if let Err(e) = self.events.subscribe(true) {
            tracing::warn!(error = %e, "could not join the DESTROY group again: the flow index is no longer kept; removals walk the table");
            self.flows.set_live(false);
        }
    }
}

impl Drop for Quiet<'_> {
    /// Not ended (a panic in the sweep): which entries were deleted is unknown, so the index is
    /// rebuilt by the next full pass.
    fn drop(&mut self) {
        if !self.ended {
            self.rejoin();
            self.flows.lost();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::reactor::scenario::{tcp, Recorder, WEB_0, WEB_1};
    use crate::verdict::Verdict;

    fn finding(flow: Flow, removable: bool) -> Finding {
        let verdict = Verdict {
            kind: crate::verdict::VerdictKind::EndpointGone,
            evidence: Default::default(),
            half_open: false,
            removable,
            kept_because: None,
            service: None,
            backend: None,
            now_owned_by: None,
            trace: crate::verdict::Trace::default(),
        };
        Finding { flow, verdict }
    }

    /// A live, trusted index of `flows`.
    fn index_of(flows: &[Flow]) -> FlowIndex {
        let ix = FlowIndex::default();
        ix.set_live(true);
        let mut r = ix.begin_rebuild();
        for f in flows {
            r.fresh.push(f);
        }
        ix.finish_rebuild(r);
        assert!(ix.is_trusted());
        ix
    }

    fn batch(n: u16, backend: std::net::IpAddr) -> Vec<Flow> {
        (0..n).map(|i| tcp(40000 + i, backend)).collect()
    }

    #[test]
    fn a_large_batch_leaves_the_group_and_the_index_keeps_what_was_not_deleted() {
        let ghosts = batch(QUIET_AT as u16 + 6, WEB_0);
        let healthy = tcp(50000, WEB_1);
        let mut all = ghosts.clone();
        all.push(healthy);
        let ix = index_of(&all);
        let rec = Arc::new(Recorder::default());
        let mut findings: Vec<Finding> = ghosts.iter().map(|f| finding(*f, true)).collect();
        findings.push(finding(healthy, false));
        let q = begin(&ix, Some(rec.clone()), &findings).expect("quiet");
        assert_eq!(*rec.calls.lock().unwrap(), [false], "left the group");
        assert_eq!(ix.count_of(WEB_0), Some(0), "forgotten before the deletes");
        assert_eq!(ix.count_of(WEB_1), Some(1), "not removable: untouched");
        // The sweep: most deleted; one kept at the re-check, one already gone, one failed.
        let mut outcomes = vec![Outcome::Deleted; findings.len()];
        outcomes[0] = Outcome::Changed;
        outcomes[1] = Outcome::AlreadyGone;
        outcomes[2] = Outcome::Failed;
        *outcomes.last_mut().unwrap() = Outcome::Kept;
        q.end(&findings, &outcomes);
        assert_eq!(*rec.calls.lock().unwrap(), [false, true], "joined again");
        assert_eq!(
            ix.count_of(WEB_0),
            Some(3),
            "the three not deleted are back"
        );
        assert_eq!(ix.count_of(WEB_1), Some(1));
        assert!(ix.is_trusted());
    }

    /// A flow created with a deleted flow's tuple after the delete: its NEW event, applied
    /// after the tuple was forgotten, keeps it in the index.
    #[test]
    fn a_newer_entry_announced_during_the_batch_stays_in_the_index() {
        let ghosts = batch(QUIET_AT as u16, WEB_0);
        let ix = index_of(&ghosts);
        let findings: Vec<Finding> = ghosts.iter().map(|f| finding(*f, true)).collect();
        let q = begin(&ix, Some(Arc::new(Recorder::default())), &findings).expect("quiet");
        let mut newer = ghosts[5];
        newer.id = Some(999);
        ix.apply(&[(EventKind::New, newer)]);
        q.end(&findings, &vec![Outcome::Deleted; findings.len()]);
        assert_eq!(ix.count_of(WEB_0), Some(1));
    }

    #[test]
    fn small_batches_untrusted_indexes_and_a_refused_leave_keep_the_events() {
        let ghosts = batch(QUIET_AT as u16 - 1, WEB_0);
        let ix = index_of(&ghosts);
        let findings: Vec<Finding> = ghosts.iter().map(|f| finding(*f, true)).collect();
        let rec = Arc::new(Recorder::default());
        assert!(begin(&ix, Some(rec.clone()), &findings).is_none(), "small");
        assert!(rec.calls.lock().unwrap().is_empty());
        assert!(begin(&ix, None, &findings).is_none(), "no socket");

        let ghosts = batch(QUIET_AT as u16, WEB_0);
        let ix = index_of(&ghosts);
        let findings: Vec<Finding> = ghosts.iter().map(|f| finding(*f, true)).collect();
        let refusing = Arc::new(Recorder {
            fail_leave: true,
            ..Recorder::default()
        });
        assert!(begin(&ix, Some(refusing), &findings).is_none(), "refused");
        assert_eq!(ix.count_of(WEB_0), Some(QUIET_AT), "nothing forgotten");
        ix.set_live(false);
        assert!(begin(&ix, Some(rec), &findings).is_none(), "not kept");
    }

    /// Failing closed: a socket that cannot join again, or a batch that never ended, costs the
    /// index its trust.
    #[test]
    fn a_failed_join_or_an_unfinished_batch_costs_the_index_its_trust() {
        let ghosts = batch(QUIET_AT as u16, WEB_0);
        let findings: Vec<Finding> = ghosts.iter().map(|f| finding(*f, true)).collect();
        let ix = index_of(&ghosts);
        let refusing = Arc::new(Recorder {
            fail_join: true,
            ..Recorder::default()
        });
        let q = begin(&ix, Some(refusing), &findings).expect("quiet");
        q.end(&findings, &vec![Outcome::Deleted; findings.len()]);
        assert!(!ix.is_trusted() && !ix.is_live());

        let ix = index_of(&ghosts);
        let rec = Arc::new(Recorder::default());
        drop(begin(&ix, Some(rec.clone()), &findings).expect("quiet"));
        assert_eq!(*rec.calls.lock().unwrap(), [false, true], "joined again");
        assert!(!ix.is_trusted(), "rebuilt by the next pass");
    }
}
