//! The full pass's walk: the dump of the whole table and the classification of every entry,
//! apart from what is done with the findings.
//!
//! A walk takes seconds on a big table (~3 s at a million entries). In the agent it runs on a
//! thread of its own ([`spawn`], the `walker` actor, with its own netlink socket), so that the
//! reactor keeps serving removals meanwhile: a backend's gate check, the exact reads and deletes
//! of its flows never wait for a pass. The reactor gets the [`Walked`] result back (woken by
//! [`Work::Walked`]) and acts on it itself — the gates, the breakers and every delete stay on
//! the one thread that changes the table. Without a walker (the tests' reactor over a table in
//! memory) the walk runs inline, in the turn that asks for it.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctnetlink::Filter;

use super::report::{is_settled, Settled};
use super::{Shared, Work};
use crate::agent::cpu::cost_of;
use crate::agent::flow_index::{Builder, Indexing};
use crate::agent::supervisor::{Actor, Shutdown};
use crate::policy::Policy;
use crate::scan::{scan_into, Locked, ScanOptions, ScanReport};
use crate::table::Table;

/// What a walk produced.
pub struct Walked {
    pub(super) started: Instant,
    pub(super) report: ctnetlink::Result<ScanReport>,
    /// Kept findings no step of the pass can change: counted, a few kept for the report.
    pub(super) settled: Settled,
    /// The walking thread's CPU time (the pass's cost for `--resync-cpu-percent`).
    pub(super) cost: Duration,
}

/// Walks the whole table: every entry classified against the shared index (read-locked one
/// entry at a time, so the watch is never held back), only the findings the pass may act on
/// kept; the dump also rebuilds the flow index while the event thread feeds it.
pub fn walk(table: &mut impl Table, shared: &Shared, policy: &Policy) -> Walked {
    let started = Instant::now();
    let ((report, settled), cost) = cost_of(|| {
        let mut settled = Settled::default();
        let rebuilding = shared.flows.is_live().then(|| shared.flows.begin_rebuild());
        let mut fresh = Builder::default();
        let mut indexing = Indexing {
            table,
            fresh: &mut fresh,
        };
        let report = scan_into(
            &mut indexing,
            Locked(&shared.index),
            policy,
            &Filter::default(),
            ScanOptions {
                tally: true,
                pipelined: false,
            },
            |f, ix| {
                if is_settled(&f, ix) {
                    settled.take(f);
                    None
                } else {
                    Some(f)
                }
            },
        );
        // A failed dump drops the rebuild: abandoned, the index stays as it was.
        if let (Ok(_), Some(mut r)) = (&report, rebuilding) {
            r.fresh = fresh;
            let s = shared.flows.finish_rebuild(r);
            tracing::debug!(
                flows = s.flows,
                heap_bytes = s.heap_bytes,
                trusted = s.trusted,
                "flow index rebuilt"
            );
        }
        (report, settled)
    });
    Walked {
        started,
        report,
        settled,
        cost,
    }
}

/// The reactor's handle on the walker thread.
pub struct Walker {
    jobs: Sender<()>,
    done: Receiver<Walked>,
    busy: bool,
}

impl Walker {
    /// Starts a walk unless one is under way; false if one is.
    pub(super) fn start(&mut self) -> bool {
        if self.busy {
            return false;
        }
        self.busy = self.jobs.send(()).is_ok();
        self.busy
    }

    /// The finished walk, if there is one.
    pub(super) fn finished(&mut self) -> Option<Walked> {
        let w = self.done.try_recv().ok()?;
        self.busy = false;
        Some(w)
    }
}

/// Starts the walker actor (a thread: the dump runs inside `recvmsg`) over its own `table`; it
/// wakes the reactor with [`Work::Walked`] after each walk.
pub fn spawn<T: Table + Send + 'static>(
    mut table: T,
    shared: Arc<Shared>,
    policy: Policy,
    wake: Sender<Work>,
    shutdown: Shutdown,
) -> std::io::Result<(Walker, Actor)> {
    let (jobs, job_rx) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let actor = Actor::thread("walker", move || loop {
        if shutdown.is_set() {
            return Ok(());
        }
        match job_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let walked = walk(&mut table, &shared, &policy);
        if done_tx.send(walked).is_err() || wake.send(Work::Walked).is_err() {
            return Ok(());
        }
    })?;
    Ok((
        Walker {
            jobs,
            done,
            busy: false,
        },
        actor,
    ))
}
