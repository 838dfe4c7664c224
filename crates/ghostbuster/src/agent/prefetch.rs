//! Reading a removed backend's flows while its gate is still closed.
//!
//! Between an endpoint's removal and the gate opening (kube-proxy's next sync, typically a second)
//! the agent has nothing to do; a targeted read of the table, on the other hand, walks every entry
//! in the kernel (about 0.3 s at a million entries, whatever the filter). So the walk happens
//! during the wait, and opening the gate costs only the deletes.
//!
//! A snapshot is only as good as what happened after it was taken. It is used only when:
//! - the conntrack event thread is running and saw no NEW flow toward the backend, and lost no
//!   events, since just before the read started (a new flow would be missing from it);
//! - none of its flows is half-open: that is the one property of a flow the decision table reads
//!   that can still change (a reply may arrive); every other input (tuples, start time, zone, id)
//!   is fixed for the life of an entry, and deletes are exact by id, so a flow that ended or was
//!   replaced by a new one with the same tuple is never hit;
//! - it is younger than [`MAX_AGE`].
//!
//! Otherwise the flows are read again when the gate opens. Classification always happens at the
//! gate's opening, with the index as it is then.
//!
//! With a trusted flow index the read is exact ([`read_indexed`]: the entries the index names,
//! one `CT_GET` each, no walk) and the same rules apply. At 20 backends of ~1,650 entries the
//! reads are ~0.2 s of kernel work: done during the wait, the opening costs only the deletes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ctnetlink::{Filter, Flow, TupleMatch};

use crate::table::Table;

use super::flow_index::FlowIndex;
use crate::classify::is_half_open;
use crate::sweep::DEFAULT_MAX_VERDICT_AGE;

/// The oldest snapshot used when a gate opens: well under the sweep's
/// [`DEFAULT_MAX_VERDICT_AGE`], so that verdicts judged from a snapshot are not refused as stale
/// at the delete (the backend would be read again in a later turn). A backend that waits longer
/// is read again while it waits.
pub const MAX_AGE: Duration = Duration::from_secs(3);
const _: () = assert!(MAX_AGE.as_millis() * 3 / 2 <= DEFAULT_MAX_VERDICT_AGE.as_millis());

/// A waiting backend whose snapshot went stale is read again at most this often.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

/// Up to this many backends are read by one kernel-filtered walk each; more are read together by
/// one full dump filtered in user space (a filtered walk costs about a tenth of a full dump).
pub const MAX_SEPARATE_READS: usize = 6;

/// What the conntrack event thread has seen since a point in time, per backend.
#[derive(Debug, Default)]
pub struct EventMarks {
    live: AtomicBool,
    lost: AtomicU64,
    seen: Mutex<HashMap<IpAddr, u64>>,
}

/// A point in [`EventMarks`]' history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    lost: u64,
    seen: u64,
}

impl EventMarks {
    /// The event thread runs (true) or has stopped (false): without it no snapshot is trusted.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
    }

    /// Events were lost: every snapshot taken before is suspect.
    pub fn lost(&self) {
        self.lost.fetch_add(1, Ordering::SeqCst);
    }

    /// A NEW flow toward `ip` was seen.
    pub fn saw(&self, ip: IpAddr) {
        let mut m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(ip).or_insert(0) += 1;
    }

    /// The current mark for `ip`; `None` when events are not being read.
    pub fn mark(&self, ip: IpAddr) -> Option<Mark> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let lost = self.lost.load(Ordering::SeqCst);
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0);
        Some(Mark { lost, seen })
    }

    /// Forgets backends that are no longer watched (keeps the map as small as the dead set).
    pub fn retain(&self, keep: &HashSet<IpAddr>) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|ip, _| keep.contains(ip));
    }
}

/// The flows of one backend, read at `taken`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub flows: Vec<Flow>,
    mark: Option<Mark>,
    pub taken: Instant,
    /// Read through the flow index (exact reads), not by a walk of the table.
    pub by_index: bool,
}

impl Snapshot {
    /// Whether the flows may stand in for a fresh read of `ip` now (see the module's rules).
    pub fn usable(&self, marks: &EventMarks, ip: IpAddr, now: Instant) -> bool {
        let Some(then) = self.mark else {
            return false;
        };
        now.saturating_duration_since(self.taken) <= MAX_AGE
            && marks.mark(ip) == Some(then)
            && !self.flows.iter().any(is_half_open)
    }
}

/// Reads the flows whose reply source is one of `ips` (their backend), one snapshot per address.
/// The event marks are taken before the read starts, so any flow created during it is noticed.
pub fn read(
    ct: &mut impl Table,
    marks: &EventMarks,
    ips: &[IpAddr],
) -> ctnetlink::Result<HashMap<IpAddr, Snapshot>> {
    let taken = Instant::now();
    let mut out: HashMap<IpAddr, Snapshot> = ips
        .iter()
        .map(|ip| {
            (
                *ip,
                Snapshot {
                    flows: Vec::new(),
                    mark: marks.mark(*ip),
                    taken,
                    by_index: false,
                },
            )
        })
        .collect();
    if ips.len() <= MAX_SEPARATE_READS {
        for ip in ips {
            let filter = backend_filter(*ip);
            let mut flows = Vec::new();
            ct.dump(&filter, |f| {
                flows.push(*f);
                ControlFlow::Continue(())
            })?;
            if let Some(s) = out.get_mut(ip) {
                s.flows = flows;
            }
        }
    } else {
        ct.dump(&Filter::default(), |f| {
            if let Some(s) = out.get_mut(&f.reply.src) {
                s.flows.push(*f);
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(out)
}

/// Reads, exactly, the entries the flow index names toward each of `ips`: the entry that holds
/// each reply tuple now (a newer one is as much the backend's flow as the one the index saw).
/// The event marks are taken before the index is asked, so a flow it gains after that is
/// noticed. `None` (walk the table instead) while the index is not trusted, or when a read
/// failed: a backend's flows must be read whole.
pub fn read_indexed(
    ct: &mut impl Table,
    marks: &EventMarks,
    index: &FlowIndex,
    ips: &[IpAddr],
) -> Option<Vec<(IpAddr, Snapshot)>> {
    let taken = Instant::now();
    let taken_marks: Vec<Option<Mark>> = ips.iter().map(|ip| marks.mark(*ip)).collect();
    let keys = index.keys_of(ips)?;
    let all: Vec<ctnetlink::DeleteKey> = keys.iter().flat_map(|(_, k)| k.iter().copied()).collect();
    let found = match ct.get(&all) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "reading backends' entries through the flow index failed; walking the table");
            return None;
        }
    };
    let mut found = found.into_iter();
    let mut out = Vec::with_capacity(ips.len());
    for ((ip, keys), mark) in keys.iter().zip(taken_marks) {
        let mut flows = Vec::with_capacity(keys.len());
        for lookup in found.by_ref().take(keys.len()) {
            match lookup {
                ctnetlink::Lookup::Found(f) if f.reply.src == *ip => flows.push(f),
                ctnetlink::Lookup::Found(_) | ctnetlink::Lookup::Gone => {}
                failed => {
                    tracing::warn!(backend = %ip, ?failed, "an exact read through the flow index failed; walking the table");
                    return None;
                }
            }
        }
        out.push((
            *ip,
            Snapshot {
                flows,
                mark,
                taken,
                by_index: true,
            },
        ));
    }
    Some(out)
}

/// The kernel filter for "backend is `ip`": the reply tuple's source. The kernel compares IPv4
/// addresses itself; IPv6 is matched in user space (see `ctnetlink::Filter`).
pub fn backend_filter(ip: IpAddr) -> Filter {
    Filter::new().with_reply(TupleMatch::new().with_src(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::{Status, Tuple};

    fn flow(replied: bool) -> Flow {
        let orig = Tuple::ports(
            "192.0.2.2".parse().unwrap(),
            40000,
            "198.51.100.10".parse().unwrap(),
            80,
            17,
        );
        let reply = Tuple::ports(
            "203.0.113.7".parse().unwrap(),
            8080,
            "192.0.2.2".parse().unwrap(),
            40000,
            17,
        );
        let status = if replied {
            Status::SEEN_REPLY | Status::DST_NAT
        } else {
            Status::DST_NAT
        };
        let mut f = Flow::new(orig, reply);
        f.status = status;
        f.timeout = Some(30);
        f.id = Some(1);
        f
    }

    fn snapshot(marks: &EventMarks, ip: IpAddr, flows: Vec<Flow>) -> Snapshot {
        Snapshot {
            flows,
            mark: marks.mark(ip),
            taken: Instant::now(),
            by_index: false,
        }
    }

    #[test]
    fn a_snapshot_is_used_only_while_nothing_happened_to_its_backend() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        let marks = EventMarks::default();
        // Events not read: never trusted.
        let s = snapshot(&marks, ip, vec![flow(true)]);
        assert!(!s.usable(&marks, ip, Instant::now()));

        marks.set_live(true);
        let s = snapshot(&marks, ip, vec![flow(true)]);
        assert!(s.usable(&marks, ip, Instant::now()));
        // A new flow toward another backend changes nothing.
        marks.saw(other);
        assert!(s.usable(&marks, ip, Instant::now()));
        // A new flow toward this one: read again.
        marks.saw(ip);
        assert!(!s.usable(&marks, ip, Instant::now()));

        let s = snapshot(&marks, ip, vec![flow(true)]);
        marks.lost();
        assert!(!s.usable(&marks, ip, Instant::now()), "lost events");

        let s = snapshot(&marks, ip, vec![flow(true)]);
        assert!(!s.usable(
            &marks,
            ip,
            Instant::now() + MAX_AGE + Duration::from_millis(1)
        ));
        marks.set_live(false);
        assert!(
            !s.usable(&marks, ip, Instant::now()),
            "event thread stopped"
        );
    }

    #[test]
    fn a_half_open_flow_makes_the_snapshot_unusable() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let marks = EventMarks::default();
        marks.set_live(true);
        let s = snapshot(&marks, ip, vec![flow(true), flow(false)]);
        assert!(!s.usable(&marks, ip, Instant::now()));
    }

    #[test]
    fn retain_keeps_only_watched_backends() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let marks = EventMarks::default();
        marks.set_live(true);
        marks.saw(ip);
        let before = marks.mark(ip);
        marks.retain(&HashSet::new());
        assert_ne!(marks.mark(ip), before);
    }
}
