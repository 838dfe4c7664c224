//! Conntrack NEW events: catch flows created toward a backend that is already gone.
//!
//! While kube-proxy lags, or with session affinity, new packets can still be DNAT'd to a backend
//! that left its Service; each such NEW event is a ghost being (re)created. Per-event work is one
//! hash lookup; the reactor does the rest, coalesced. Lost events (ENOBUFS) mean "resync": one full
//! pass once the overflows stop (at most `RESYNC_MAX_DELAY` later), however many happen.
//!
//! With the flow index (`--flow-index`, the default) the thread also keeps
//! [`super::flow_index::FlowIndex`] current: it reads NEW and DESTROY events of every DNAT'd
//! flow (the kernel drops the others: a filter on the status's DST_NAT bit), adds and removes
//! them, and marks the index untrusted when events are lost or the thread ends.
//!
//! Without it, the socket reads NEW events only and carries a kernel-side filter on the reply
//! source (see `ctnetlink::bpf`), kept equal to the dead backends by
//! [`Shared::refresh_dead_backends`], so the kernel drops flows toward live backends before they
//! are queued: no wake-up, and far fewer overflows. Either way every event that does arrive is
//! still checked here: a filter lets through what it cannot read, and nothing when attaching
//! fails.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctnetlink::{EventGroups, EventKind, EventSocket, Flow};

use super::reactor::{Shared, Work};
use super::supervisor::{Actor, Shutdown};

/// After lost events, the full pass waits until no overflow happened for this long (the
/// socket's read timeout, 250 ms, bounds how late that is noticed)...
const RESYNC_QUIET: Duration = Duration::from_secs(1);
/// ... or, under an overflow that never ends, this long.
const RESYNC_MAX_DELAY: Duration = Duration::from_secs(10);

/// A read that found fewer events than this found the socket nearly drained...
const GATHER_BELOW: usize = 16;
/// ... and the thread pauses this long before the next read, so that events are taken in
/// batches rather than one wake-up each. Why: the kernel's conntrack garbage collector destroys
/// expired entries a few at a time, so at ~700 expiries a second (the agent bench's steady
/// state) the thread woke up to ~1,000 times a second for one or two DESTROY events each;
/// reading them in batches took a quarter off the agent's CPU at 10,000 new flows a second
/// (docs/performance.md, session 13). A pause only delays what the events feed
/// (the flow index, a recreated ghost's removal) by at most this much, as a busy scheduler
/// could; it never makes the reactor trust anything it would not trust otherwise.
const GATHER_PAUSE: Duration = Duration::from_millis(10);
/// The pause is shortened so that a burst arriving during it at this rate (an event's buffer
/// footprint is about a kilobyte) fills at most half of the receive buffer: a small
/// `--event-buffer-bytes` gets a short pause, not lost events.
const BURST_BYTES_PER_SEC: u64 = 200 << 20;

/// How long to pause after a read of `events` events, with a receive buffer of `buffer` bytes.
fn gather_pause(events: usize, buffer: usize) -> Option<Duration> {
    if events >= GATHER_BELOW {
        return None;
    }
    let fits = Duration::from_micros(buffer as u64 / 2 * 1_000_000 / BURST_BYTES_PER_SEC);
    Some(GATHER_PAUSE.min(fits)).filter(|d| !d.is_zero())
}

/// What the event thread counts, for metrics.
pub trait EventSink: Send {
    fn lost(&self);
    fn recreated(&self, backend: IpAddr);
}

/// Per-backend backoff: a backend that keeps coming back is re-examined at most every
/// `min`..`max`, doubling while it recurs (kube-proxy lag or session affinity).
struct Backoff {
    next: HashMap<IpAddr, (Instant, Duration)>,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn ready(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.next.get_mut(&ip) {
            Some((at, step)) if now < *at => false,
            Some((at, step)) => {
                *step = (*step * 2).min(self.max);
                *at = now + *step;
                true
            }
            None => {
                self.next.insert(ip, (now + self.min, self.min));
                true
            }
        }
    }
    /// When `ip` may be examined again.
    fn due(&self, ip: IpAddr) -> Option<Instant> {
        self.next.get(&ip).map(|(at, _)| *at)
    }
    fn forget_older_than(&mut self, now: Instant, age: Duration) {
        self.next
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < age);
    }
}

/// An open event socket, and whether it feeds the flow index.
pub struct Subscription {
    sock: EventSocket,
    index: bool,
    /// The receive buffer asked for, in bytes: bounds the pause between reads.
    buffer: usize,
}

/// Opens the subscription (so errors surface at start). `buffer`: the receive buffer to ask for
/// (bigger buffers lose fewer events in bursts). `index`: also keep the flow index (NEW and
/// DESTROY events of every DNAT'd flow), else NEW events toward dead backends only.
pub fn subscribe(
    netns: Option<&str>,
    buffer: usize,
    index: bool,
) -> ctnetlink::Result<Subscription> {
    let groups = if index {
        EventGroups::NEW | EventGroups::DESTROY
    } else {
        EventGroups::NEW
    };
    let sock = EventSocket::open_in(netns, groups, buffer)?;
    sock.set_timeout(Some(Duration::from_millis(250)))?;
    Ok(Subscription {
        sock,
        index,
        buffer,
    })
}

/// Forgets the socket's filter handle when the event thread ends, however it ends.
struct FilterInstalled<'a>(&'a Shared);

impl Drop for FilterInstalled<'_> {
    fn drop(&mut self) {
        self.0.set_event_filter(None);
    }
}

/// Starts the event reader actor (a thread: `recv` blocks): [`run`] until the shutdown.
pub fn spawn(
    sock: Subscription,
    shared: Arc<Shared>,
    work: Sender<Work>,
    sink: impl EventSink + 'static,
    shutdown: Shutdown,
) -> std::io::Result<Actor> {
    if sock.index {
        // Before the thread runs: a full pass that starts meanwhile may trust what it builds.
        shared.flows.set_live(true);
    }
    Actor::thread("ct-events", move || {
        run(sock, shared, work, sink, shutdown);
        Ok(())
    })
}

/// Reads events until the shutdown; sends work to the reactor.
pub fn run(
    sub: Subscription,
    shared: Arc<Shared>,
    work: Sender<Work>,
    sink: impl EventSink,
    stop: Shutdown,
) {
    let Subscription {
        mut sock,
        index,
        buffer,
    } = sub;
    // While this thread reads events into the flow index, a full pass may make it trusted.
    struct Indexing<'a>(&'a Shared);
    impl Drop for Indexing<'_> {
        fn drop(&mut self) {
            self.0.set_destroy_events(None);
            self.0.flows.set_live(false);
        }
    }
    let _indexing = if index {
        if let Err(e) = sock.set_dnat_filter() {
            tracing::warn!(error = %e, "could not filter conntrack events in the kernel; reading every event");
        }
        shared.flows.set_live(true);
        shared.set_destroy_events(Some(Arc::new(sock.filter_handle())));
        Some(Indexing(&shared))
    } else {
        None
    };
    // From here on the dead-backend set and the kernel filter change together. Events queued
    // before are unfiltered, which is safe.
    if !index {
        shared.set_event_filter(Some(sock.filter_handle()));
    }
    let _installed = FilterInstalled(&shared);
    let mut backoff = Backoff {
        next: HashMap::new(),
        min: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    // Events were lost since this time (and last at `lost_last`): one full pass once the
    // overflows stop, so the pass sees the whole burst's flows, however many overflows it took.
    let mut lost_since: Option<Instant> = None;
    let mut lost_last = Instant::now();
    // Backends seen again while backing off: examined when their backoff ends, not forgotten
    // (else the last ghost recreated inside a backoff window lives until the periodic full scan).
    let mut deferred: HashMap<IpAddr, Instant> = HashMap::new();
    // While this thread reads events, the reactor may trust its snapshots of removed backends.
    struct Live<'a>(&'a Shared);
    impl Drop for Live<'_> {
        fn drop(&mut self) {
            self.0.event_marks.set_live(false);
        }
    }
    shared.event_marks.set_live(true);
    let _live = Live(&shared);
    // Reused across reads: a busy node delivers tens of thousands of events a second.
    let mut hits: Vec<IpAddr> = Vec::new();
    let mut changes: Vec<(EventKind, Flow)> = Vec::new();
    while !stop.is_set() {
        // Candidates first, the set after: the read lock is not held while blocked in recv, so
        // updating the set (and the filter) never waits for a read timeout.
        hits.clear();
        changes.clear();
        let r = sock.recv(|kind, f| {
            if !f.is_dnat() {
                return;
            }
            if kind == EventKind::New {
                hits.push(f.reply.src);
            }
            if index && kind != EventKind::Update {
                changes.push((kind, *f));
            }
        });
        shared.flows.apply(&changes);
        if !hits.is_empty() {
            let dead = shared.dead_backends();
            hits.retain(|ip| dead.contains(ip));
        }
        let now = Instant::now();
        match r {
            // An event that could not be read may have been a NEW toward a waiting backend (no
            // snapshot taken before stands in for a fresh read), or a NEW or a DESTROY the index
            // needed: like a lost one, it costs the index its trust and one full pass.
            Ok((_, malformed)) if malformed > 0 => {
                shared.event_marks.lost();
                if index {
                    tracing::warn!(
                        malformed,
                        "unreadable conntrack events; the flow index is rebuilt by a full pass"
                    );
                    shared.flows.lost();
                    lost_since.get_or_insert(now);
                    lost_last = now;
                }
            }
            Ok(_) => {}
            Err(ctnetlink::Error::EventsLost) => {
                shared.event_marks.lost();
                shared.flows.lost();
                sink.lost();
                lost_since.get_or_insert(now);
                lost_last = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "conntrack events failed; relying on periodic scans");
                return;
            }
        }
        if let Some(since) = lost_since {
            if now.duration_since(lost_last) >= RESYNC_QUIET
                || now.duration_since(since) >= RESYNC_MAX_DELAY
            {
                lost_since = None;
                if work.send(Work::Full).is_err() {
                    return;
                }
            }
        }
        for &ip in &hits {
            shared.event_marks.saw(ip);
            sink.recreated(ip);
            if backoff.ready(ip, now) {
                deferred.remove(&ip);
                if work.send(Work::Backend(ip)).is_err() {
                    return;
                }
            } else if let Some(at) = backoff.due(ip) {
                deferred.insert(ip, at);
            }
        }
        let due: Vec<IpAddr> = deferred
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in due {
            deferred.remove(&ip);
            if backoff.ready(ip, now) && work.send(Work::Backend(ip)).is_err() {
                return;
            }
        }
        backoff.forget_older_than(now, Duration::from_secs(600));
        // Never after lost events: an overflowing socket is read as fast as it can be.
        if let Ok((events, _)) = r {
            if let Some(pause) = gather_pause(events, buffer) {
                std::thread::sleep(pause);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nearly_drained_socket_pauses_the_reads_within_what_the_buffer_holds() {
        let default = 8 << 20;
        // Full reads follow each other: the socket is not drained.
        assert_eq!(gather_pause(GATHER_BELOW, default), None);
        assert_eq!(gather_pause(64, default), None);
        // A few events, or none (a read timeout): pause.
        assert_eq!(gather_pause(GATHER_BELOW - 1, default), Some(GATHER_PAUSE));
        assert_eq!(gather_pause(0, default), Some(GATHER_PAUSE));
        // A small buffer shortens the pause: a 200 MB/s burst during it fills half the buffer.
        let small = gather_pause(1, 256 << 10).expect("a pause");
        assert_eq!(small, Duration::from_micros(625));
        assert!(small.as_secs_f64() * BURST_BYTES_PER_SEC as f64 <= (256 << 10) as f64 / 2.0);
        // A buffer too small for any pause reads as before.
        assert_eq!(gather_pause(1, 100), None);
    }

    #[test]
    fn backoff_doubles_while_a_backend_recurs() {
        let mut b = Backoff {
            next: HashMap::new(),
            min: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        assert!(b.ready(ip, t0));
        assert!(!b.ready(ip, t0 + Duration::from_millis(50)));
        assert!(b.ready(ip, t0 + Duration::from_millis(100)));
        // Step is now 200 ms.
        assert!(!b.ready(ip, t0 + Duration::from_millis(250)));
        assert!(b.ready(ip, t0 + Duration::from_millis(300)));
        // Capped at 400 ms.
        assert!(b.ready(ip, t0 + Duration::from_millis(700)));
        assert!(!b.ready(ip, t0 + Duration::from_millis(1000)));
        assert!(b.ready(ip, t0 + Duration::from_millis(1100)));
    }
}
