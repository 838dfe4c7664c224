//! The reactor: the one thread that reads and changes the conntrack table for the agent.
//!
//! Dumps run inside `recvmsg`, so they live here, off the async runtime's workers. Work arrives as
//! [`Work`] items (a backend to look at, a full pass) and is coalesced: a burst of endpoint
//! changes during a rollout becomes one targeted pass per backend, and any number of "events were
//! lost" signals become one full pass. A backend whose gate is not open yet (kube-proxy behind,
//! grace running) is parked with a due time and looked at again then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, EventFilterHandle, Filter, FilterApplied};
use jiff::Timestamp;

use super::gate::{self, Breaker, DeleteBudget, Global, Hold, KubeProxyView, Trip};
use super::prefetch::{self, EventMarks, Snapshot};
use crate::classify::classify;
use crate::cluster::{Index, IpFamily, Name, ObjectKey};
use crate::policy::Policy;
use crate::scan::{classify_flows, scan_into, Finding, ScanOptions};
use crate::sweep::{sweep, Outcome, SweepTotals};
use crate::telemetry::metrics::{stale_counts, StaleKey};
use crate::verdict::{KeepReason, VerdictKind};

/// What the reactor is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Look at the flows of this backend (it left a Service, or was seen again in a NEW event).
    Backend(IpAddr),
    /// Scan the whole table (periodic resync, lost events, a deleted Service).
    Full,
    /// A reading of kube-proxy moved the gate's view: look again at the backends waiting on it.
    KubeProxy,
}

/// What a pod GET said about the pod a tombstone names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodFate {
    /// 404, another uid, or another IP: the backend is gone.
    Gone,
    /// Still there (maybe terminating): keep its flows.
    Alive,
    /// The API could not be asked: keep, try again later.
    Unknown,
    /// A lookup is under way (it never blocks the reactor): keep the flows for now. Its answer
    /// wakes the reactor for the backend when it is `Gone` or `Unknown`.
    Pending,
}

/// What the API server said when asked which pods hold an IP
/// ([`crate::cluster::kube::IpHolders`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldersAnswer {
    /// No pod's primary IP was the IP when the question was sent (`as_of`, the local clock).
    Absent { as_of: Timestamp },
    /// Some pod is listed at the IP (finished ones too: conservative).
    Held,
    /// No answer (timeout, error, over the rate limit): keep, ask again later.
    Unknown,
    /// The question is under way: keep the flows for now; its answer wakes the reactor.
    Pending,
}

/// The outside world the reactor needs, behind small traits so the loop can be driven by tests
/// and by the real API/kube-proxy clients alike.
pub trait World: Send {
    /// What is known of kube-proxy's syncs (read now; the tracker behind it remembers earlier
    /// readings).
    fn kube_proxy(&mut self) -> KubeProxyView;
    /// Is the pod `namespace/name` (uid, ip) gone? Must not block on the network: an answer
    /// not known yet is [`PodFate::Pending`] (see [`super::lookups`]).
    fn pod_fate(&mut self, namespace: &str, name: &str, uid: Option<&str>, ip: IpAddr) -> PodFate;
    /// Which pods hold `ip`, cluster-wide (rate-limited, with a timeout). Must not block on the
    /// network, like [`World::pod_fate`]. The default knows nothing.
    fn ip_holders(&mut self, _ip: IpAddr) -> HoldersAnswer {
        HoldersAnswer::Unknown
    }
    /// The global gate's current inputs (sync/freshness of watches, dataplane mode, dry run).
    fn global(&mut self) -> Global;
    /// Called after every pass with what happened.
    fn report(&mut self, pass: &PassReport);
    /// Called on every turn of the loop (at least every 250 ms): the liveness heartbeat.
    fn tick(&mut self) {}
    /// The deletes-per-minute budget tripped the circuit breaker (once: it stays open).
    fn circuit_tripped(&mut self, _trip: &Trip) {}
}

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
    /// Full passes: entries per (protocol, state) and service flows per Service.
    pub by_state: BTreeMap<(u8, &'static str), u64>,
    pub by_service: HashMap<(Name, Name), u64>,
}

impl PassReport {
    /// A pass that looked at nothing (its dump failed) — the base of the others.
    fn nothing(kind: PassKind, started: Instant) -> PassReport {
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
            by_state: BTreeMap::new(),
            by_service: HashMap::new(),
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

/// Reactor settings.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    pub policy: Policy,
    pub grace: Duration,
    /// Longest wait for a readable kube-proxy to sync after a removal (its `syncPeriod` + slack).
    pub kube_proxy_max_wait: Duration,
    pub resync_interval: Duration,
    /// Most of a core the periodic full passes may use, in percent (0: no limit).
    pub resync_cpu_percent: f64,
    pub breaker: Breaker,
    /// How long tombstones are kept.
    pub tombstone_ttl: Duration,
    /// The least time between two "who holds this IP?" questions about one backend (ghosts
    /// without a tombstone); zero: never ask.
    pub ip_lookup_every: Duration,
}

/// How long the API server's "no pod at this IP" is remembered (the agent asks again while the
/// flows are there).
const IP_ANSWER_TTL: Duration = Duration::from_secs(600);

/// The "who holds this IP?" questions: when each backend may be asked again, and the backoff
/// of unanswered ones. (The questions themselves run off the reactor: see [`super::lookups`].)
#[derive(Debug, Default)]
pub struct HolderAsks {
    next: HashMap<IpAddr, Instant>,
    backoff: HashMap<IpAddr, Duration>,
}

/// What asking about one backend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Nothing to ask, or asked too recently.
    No,
    /// An answer was recorded in the index: judge the flows again. `Some(d)`: some flows began
    /// too close to the answer for it to prove anything about them; look again after `d` (the
    /// next answer is asked for then).
    Recorded(Option<Duration>),
    /// No answer: look at the backend again after this long.
    Unanswered(Duration),
    /// The question is under way: its answer wakes the reactor for the backend.
    Pending,
}

impl HolderAsks {
    fn begin_turn(&mut self) {
        // Bounded by the backends with ghosts: forget those not asked about for a long time.
        let now = Instant::now();
        self.next
            .retain(|_, t| now.saturating_duration_since(*t) < IP_ANSWER_TTL);
        let next = &self.next;
        self.backoff.retain(|ip, _| next.contains_key(ip));
    }
}

/// Whether the API server's empty answer for `ip` can be read as "no pod holds it": its field
/// selector matches a pod's first IP only, so an empty answer is absence only for the cluster's
/// primary family. The agent cannot read that from a pod it does not see, so it takes an empty
/// answer as absence only on a cluster whose Services are all of `ip`'s family (single-stack);
/// on a dual-stack cluster, or one with no Services yet, an empty answer is unknown.
fn empty_answer_is_absence(ix: &Index, ip: &IpAddr) -> bool {
    let family = IpFamily::of(ip);
    let other = match family {
        IpFamily::V4 => IpFamily::V6,
        IpFamily::V6 => IpFamily::V4,
    };
    let mut any = false;
    for s in ix.services() {
        if s.families.contains(other) || s.frontends.iter().any(|(a, _)| IpFamily::of(a) == other) {
            return false;
        }
        any |= s.families.contains(family);
    }
    any
}

/// A stale TCP/SCTP flow of `ip` kept only for lack of evidence (or because it began after the
/// last answer: asked again), with a known start, and nothing in the index at `ip` (no
/// tombstone, endpoint, live pod or node address): the kind of ghost an answer from the API
/// server can prove gone.
fn wants_holders(ix: &Index, ip: &IpAddr, findings: &[Finding]) -> bool {
    let candidate = findings.iter().any(|f| {
        f.verdict.backend.is_some_and(|b| b.ip == *ip)
            && f.verdict.kind == VerdictKind::EndpointGone
            && !f.verdict.removable
            && matches!(
                f.verdict.kept_because,
                Some(KeepReason::NoEvidence | KeepReason::NewerThanApiAnswer)
            )
            && matches!(f.flow.orig.proto, 6 | 17 | 132)
            && f.flow.start_ns.is_some()
    });
    candidate
        && ix.tombstones().at(ip).is_empty()
        && !ix.is_node_address(ip)
        && ix.endpoints_at(ip).next().is_none()
        && !ix.pods_at(ip).any(|p| p.is_alive() || p.host_network)
}

/// Asks the API server who holds `ip` when its flows need it (see [`wants_holders`]), at most
/// once per `ip_lookup_every` per backend, and records a "no pod" answer in the index. Must be
/// called with the gate of `ip` open (the index is not locked here).
fn ask_holders(
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    asks: &mut HolderAsks,
    ip: IpAddr,
    findings: &[Finding],
) -> Asked {
    if cfg.ip_lookup_every.is_zero() {
        return Asked::No;
    }
    let now = Instant::now();
    if asks.next.get(&ip).is_some_and(|t| *t > now) {
        return Asked::No;
    }
    {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        if !wants_holders(&ix, &ip, findings) {
            return Asked::No;
        }
    }
    let answer = world.ip_holders(ip);
    let now = Instant::now();
    match answer {
        HoldersAnswer::Pending => Asked::Pending,
        HoldersAnswer::Unknown => {
            let again = next_retry(&mut asks.backoff, ip);
            asks.next.insert(ip, now + again);
            Asked::Unanswered(again)
        }
        HoldersAnswer::Held => {
            asks.backoff.remove(&ip);
            asks.next.insert(ip, now + cfg.ip_lookup_every);
            let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
            ix.ip_answers_mut().forget(&ip);
            Asked::No
        }
        HoldersAnswer::Absent { as_of } => {
            asks.backoff.remove(&ip);
            asks.next.insert(ip, now + cfg.ip_lookup_every);
            let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
            if !empty_answer_is_absence(&ix, &ip) {
                tracing::debug!(%ip, "no pod lists the IP first, but the cluster may be dual-stack: unknown");
                return Asked::No;
            }
            ix.ip_answers_mut().record_absent(ip, as_of);
            let soon = ask_again_after(findings, ip, as_of, cfg.policy.clock_skew);
            if let Some(d) = soon {
                asks.next.insert(ip, now + d.min(cfg.ip_lookup_every));
            }
            Asked::Recorded(soon.map(|d| d.min(cfg.ip_lookup_every)))
        }
    }
}

/// When an empty answer taken at `as_of` cannot prove a candidate flow of `ip` gone — it began
/// after `as_of - skew` (a pod may have been made at the IP since, or the clocks differ) — the
/// time until an answer taken then could (its start + skew, half a second to spare, at least a
/// second). `None` when the answer covers every candidate. Without it such a ghost (a pod made
/// and deleted while a watch was down, its flows seconds old) waited `--ip-lookup-every`.
fn ask_again_after(
    findings: &[Finding],
    ip: IpAddr,
    as_of: Timestamp,
    skew: Duration,
) -> Option<Duration> {
    let as_of_ns = as_of.as_nanosecond();
    let skew_ns = i128::try_from(skew.as_nanos()).unwrap_or(i128::MAX / 4);
    findings
        .iter()
        .filter(|f| {
            f.verdict.backend.is_some_and(|b| b.ip == ip)
                && f.verdict.kind == VerdictKind::EndpointGone
                && !f.verdict.removable
        })
        .filter_map(|f| f.flow.start_ns)
        .map(|start| i128::from(start) + skew_ns - as_of_ns)
        .filter(|&short| short >= 0)
        .max()
        .map(|short| {
            let short = u64::try_from(short).unwrap_or(u64::MAX);
            (Duration::from_nanos(short) + Duration::from_millis(500)).max(Duration::from_secs(1))
        })
}

/// Backoff of a backend whose pod GET could not be answered (error, timeout): looked at again
/// after 1 s, 2 s, 4 s, ... at most [`MAX_RETRY`], not only at the next full pass.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

fn next_retry(backoff: &mut HashMap<IpAddr, Duration>, ip: IpAddr) -> Duration {
    let d = backoff.entry(ip).or_insert(Duration::ZERO);
    *d = if d.is_zero() {
        FIRST_RETRY
    } else {
        (*d * 2).min(MAX_RETRY)
    };
    *d
}

/// The reactor's shared state with the rest of the agent.
pub struct Shared {
    pub index: RwLock<Index>,
    /// Backends with tombstones: the conntrack event thread looks NEW flows up here. Written only
    /// by [`Shared::refresh_dead_backends`], which keeps the event socket's filter in step.
    dead_backends: RwLock<HashSet<IpAddr>>,
    /// The kernel-side filter of the conntrack event socket, once the event thread runs.
    event_filter: Mutex<EventFilter>,
    /// The index holds the first list of every kind (or its API is absent): a whole view of
    /// the cluster, though a relist may be running. The reactor starts then.
    pub initial_sync_done: AtomicBool,
    pub circuit_open: AtomicBool,
    /// The latest change the agent saw whose removals no tombstone remembers: its start, and
    /// the removal of a Service. A flow removable without a tombstone (`service_gone`, a ghost
    /// older than the agent) waits for a kube-proxy sync that began after it.
    changed_at: Mutex<Timestamp>,
    /// What the event thread saw since a snapshot of a backend's flows was taken.
    pub event_marks: EventMarks,
    /// Backends whose gate waits on kube-proxy (behind, failing, unreadable): looked at again
    /// as soon as a reading moves its view ([`Work::KubeProxy`]).
    waiting_on_kube_proxy: Mutex<HashSet<IpAddr>>,
}

/// The event socket's filter and what was last said about it (each condition is logged once).
#[derive(Default)]
struct EventFilter {
    handle: Option<EventFilterHandle>,
    /// The filter on the socket was made from the current `dead_backends`.
    in_sync: bool,
    /// A failure to attach was logged.
    warned: bool,
    /// The set was too large for a filter last time (logged on the change only).
    too_large: bool,
}

impl EventFilter {
    fn apply(&mut self, dead: &HashSet<IpAddr>) {
        let Some(handle) = &self.handle else {
            return;
        };
        match handle.set(dead.iter().copied()) {
            Ok(FilterApplied::Filtered { instructions }) => {
                if self.too_large {
                    tracing::info!(
                        dead_backends = dead.len(),
                        instructions,
                        "conntrack events filtered in the kernel again"
                    );
                }
                self.too_large = false;
            }
            // `Unfiltered`, or an outcome a newer ctnetlink may add: assume every event arrives.
            Ok(_) => {
                if !self.too_large {
                    tracing::info!(
                        dead_backends = dead.len(),
                        "too many dead backends for a kernel event filter: reading every NEW event"
                    );
                }
                self.too_large = true;
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(
                        error = %e,
                        "could not filter conntrack events in the kernel; reading every NEW event"
                    );
                }
                self.warned = true;
            }
        }
        // Also after a failure: the socket is left unfiltered, which is safe; the next change
        // of the set tries again.
        self.in_sync = true;
    }
}

impl Shared {
    pub fn new(index: Index) -> Arc<Self> {
        Arc::new(Shared {
            index: RwLock::new(index),
            dead_backends: RwLock::new(HashSet::new()),
            event_filter: Mutex::new(EventFilter::default()),
            initial_sync_done: AtomicBool::new(false),
            circuit_open: AtomicBool::new(false),
            changed_at: Mutex::new(Timestamp::now()),
            event_marks: EventMarks::default(),
            waiting_on_kube_proxy: Mutex::default(),
        })
    }

    /// A Service was removed at `at` (its flows' `service_gone` waits for kube-proxy).
    pub fn note_services_removed(&self, at: Timestamp) {
        let mut c = self.changed_at.lock().unwrap_or_else(|e| e.into_inner());
        *c = (*c).max(at);
    }

    fn changed_at(&self) -> Timestamp {
        *self.changed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kube_proxy_waiters(&self) -> std::sync::MutexGuard<'_, HashSet<IpAddr>> {
        self.waiting_on_kube_proxy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The backends with tombstones, for the event thread's own check of every event it gets.
    pub fn dead_backends(&self) -> RwLockReadGuard<'_, HashSet<IpAddr>> {
        self.dead_backends.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes the dead backends from the index's tombstones and, before returning, makes the
    /// event socket's filter match them. Callers that then ask the reactor to look at a removed
    /// backend rely on this order: a flow toward it created after the call is let through by
    /// the kernel, one created before is in the table when the reactor dumps it. Must not be
    /// called with the index locked.
    pub fn refresh_dead_backends(&self) {
        // Held across the recompute and the filter update, so that concurrent refreshes apply
        // in order and the last filter always matches the last set.
        let mut filter = self.event_filter.lock().unwrap_or_else(|e| e.into_inner());
        let dead: HashSet<IpAddr> = {
            let ix = self.index.read().unwrap_or_else(|e| e.into_inner());
            ix.tombstones().iter().map(|t| t.ip).collect()
        };
        let changed = {
            let mut d = self
                .dead_backends
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let changed = *d != dead;
            if changed {
                d.clone_from(&dead);
            }
            changed
        };
        if changed || !filter.in_sync {
            filter.apply(&dead);
        }
    }

    /// Installs (or, with `None`, forgets) the event socket's filter handle, and filters on the
    /// current dead backends right away.
    pub fn set_event_filter(&self, handle: Option<EventFilterHandle>) {
        {
            let mut filter = self.event_filter.lock().unwrap_or_else(|e| e.into_inner());
            filter.handle = handle;
            filter.in_sync = false;
        }
        self.refresh_dead_backends();
    }
}

/// Runs until `stop` is set or the work channel closes. `ct` is the conntrack handle of the
/// namespace the agent serves.
pub fn run(
    mut ct: Conntrack,
    shared: Arc<Shared>,
    work: Receiver<Work>,
    mut world: impl World,
    cfg: ReactorConfig,
    stop: Arc<AtomicBool>,
) {
    // Backends waiting for their gate, with the time to look again.
    let mut parked: HashMap<IpAddr, Instant> = HashMap::new();
    // Flows of backends whose gate is still closed, read while waiting.
    let mut prefetched: HashMap<IpAddr, Snapshot> = HashMap::new();
    // Backends with removable flows that a passing hold kept (a watch relisting or quiet): looked
    // at again as soon as the global gate opens, not at the next full pass minutes later.
    let mut held_back: HashSet<IpAddr> = HashSet::new();
    // The brake across passes, and the backoff of backends whose pod GET went unanswered.
    let mut budget = DeleteBudget::new(cfg.breaker.max_deletes_per_minute);
    let mut backoff: HashMap<IpAddr, Duration> = HashMap::new();
    let mut asks = HolderAsks::default();
    let mut next_full = Instant::now();
    let mut resync_logged = cfg.resync_interval;
    // A first reading of kube-proxy's sync metrics: the duration of the first sync after a
    // removal is measured against it.
    world.kube_proxy();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        world.tick();
        let now = Instant::now();
        let next_due = parked
            .values()
            .copied()
            .min()
            .unwrap_or(next_full)
            .min(next_full);
        let wait = next_due
            .saturating_duration_since(now)
            .min(Duration::from_millis(250));
        let mut full = false;
        let mut backends: HashSet<IpAddr> = HashSet::new();
        match work.recv_timeout(wait) {
            Ok(w) => {
                absorb(&shared, w, &mut full, &mut backends);
                // Coalesce everything already queued.
                while let Ok(w) = work.try_recv() {
                    absorb(&shared, w, &mut full, &mut backends);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        if now >= next_full {
            full = true;
        }
        parked.retain(|ip, due| {
            if *due <= now {
                backends.insert(*ip);
                false
            } else {
                true
            }
        });
        if !held_back.is_empty() && world.global().check().is_ok() {
            backends.extend(held_back.drain());
        }
        expire_tombstones(&shared, cfg.tombstone_ttl);
        asks.begin_turn();
        if full {
            let (r, cost) = super::cpu::cost_of(|| {
                full_pass(
                    &mut ct,
                    &shared,
                    &mut world,
                    &cfg,
                    &mut parked,
                    &mut budget,
                    &mut backoff,
                    &mut asks,
                )
            });
            if r.held.as_ref().is_some_and(Hold::lifts_by_itself) {
                held_back.extend(r.held_backends.iter().copied());
            }
            let now = Instant::now();
            parked.extend(r.redo_backends.iter().map(|ip| (*ip, now)));
            let every = resync_every(cfg.resync_interval, cfg.resync_cpu_percent, cost);
            // Logged when it starts and when it moves by more than a tenth.
            let moved = every.abs_diff(resync_logged) > resync_logged / 10;
            if every > cfg.resync_interval && moved {
                tracing::info!(
                    every_s = every.as_secs(),
                    pass_ms = r.elapsed.as_millis() as u64,
                    pass_cpu_ms = cost.as_millis() as u64,
                    "full passes stretched to stay under --resync-cpu-percent of a core"
                );
            }
            if moved {
                resync_logged = every;
            }
            next_full = Instant::now() + every;
            world.report(&r);
        }
        prefetched.retain(|_, s| s.taken.elapsed() <= prefetch::MAX_AGE);
        let many = backends.len() > prefetch::MAX_SEPARATE_READS;
        targeted(
            &mut ct,
            &shared,
            &mut world,
            &cfg,
            backends,
            full,
            &mut parked,
            &mut prefetched,
            &mut held_back,
            &mut budget,
            &mut backoff,
            &mut asks,
        );
        if full || many {
            // The peaks of a pass are over (findings, flows read for many backends at once).
            super::memory::release_freed_memory();
        }
    }
}

/// The targeted passes of one turn. Backends whose gate is closed are parked, and their flows
/// are read now (see [`prefetch`]); backends whose gate is open are classified and swept, from
/// their snapshot when it is still good, else from a fresh read. A full pass in the same turn has
/// already judged every flow with the same index, so open backends are left to it.
#[allow(clippy::too_many_arguments)]
fn targeted(
    ct: &mut Conntrack,
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    backends: HashSet<IpAddr>,
    full_ran: bool,
    parked: &mut HashMap<IpAddr, Instant>,
    prefetched: &mut HashMap<IpAddr, Snapshot>,
    held_back: &mut HashSet<IpAddr>,
    budget: &mut DeleteBudget,
    backoff: &mut HashMap<IpAddr, Duration>,
    asks: &mut HolderAsks,
) {
    let started = Instant::now();
    let mut open: Vec<(IpAddr, Option<Timestamp>)> = Vec::new();
    let mut waiting: Vec<IpAddr> = Vec::new();
    // kube-proxy is read once per turn, however many backends wait on it (a rollout parks
    // hundreds, all due at about the same time).
    let mut synced = None;
    for ip in backends {
        match backend_gate(shared, world, cfg, ip, &mut synced) {
            Ok(removed_at) => open.push((ip, removed_at)),
            Err(again) => {
                parked.insert(ip, Instant::now() + again);
                waiting.push(ip);
            }
        }
    }
    let gate_opened = Instant::now();
    if full_ran {
        for (ip, _) in open.drain(..) {
            prefetched.remove(&ip);
        }
    }

    // Gate closed: read the flows now, while waiting.
    let now = Instant::now();
    let marks = &shared.event_marks;
    // A backend whose flows keep changing (kube-proxy still sends it new ones) is re-read at most
    // every REREAD_EVERY while it waits: each read walks the whole table. The opening reads it
    // again anyway when its snapshot is not usable then.
    let need: Vec<IpAddr> = waiting
        .into_iter()
        .filter(|ip| match prefetched.get(ip) {
            None => true,
            Some(s) => {
                !s.usable(marks, *ip, now)
                    && now.saturating_duration_since(s.taken) >= prefetch::REREAD_EVERY
            }
        })
        .collect();
    if !need.is_empty() {
        match prefetch::read(ct, marks, &need) {
            Ok(snaps) => {
                for (ip, snap) in snaps {
                    if !snap.flows.is_empty() {
                        // The pod GET, too, starts during the wait (its answer is used when
                        // the gate opens; an unanswered one is asked again then).
                        confirm_pods(shared, world, ip);
                    }
                    prefetched.insert(ip, snap);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading a removed backend's flows failed"),
        }
    }

    // Gate open: snapshots that are still good, a fresh read for the others.
    let now = Instant::now();
    // (backend, its removal, its flows, when they were read)
    let mut ready: Vec<(IpAddr, Option<Timestamp>, Vec<ctnetlink::Flow>, Instant)> = Vec::new();
    let mut reread: Vec<(IpAddr, Option<Timestamp>)> = Vec::new();
    for (ip, removed_at) in open {
        match prefetched.remove(&ip) {
            Some(s) if s.usable(marks, ip, now) => ready.push((ip, removed_at, s.flows, s.taken)),
            _ => reread.push((ip, removed_at)),
        }
    }
    if !reread.is_empty() {
        let ips: Vec<IpAddr> = reread.iter().map(|(ip, _)| *ip).collect();
        let read_at = Instant::now();
        match prefetch::read(ct, marks, &ips) {
            Ok(mut snaps) => {
                for (ip, removed_at) in reread {
                    let flows = snaps.remove(&ip).map(|s| s.flows).unwrap_or_default();
                    ready.push((ip, removed_at, flows, read_at));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading a backend's flows failed"),
        }
    }
    for (ip, removed_at, flows, read_at) in ready {
        if flows.is_empty() {
            continue;
        }
        // Only ask the API server when this node holds flows to the backend.
        match confirm_pods(shared, world, ip) {
            // Kept for now (the evidence is unknown); asked again soon, with backoff.
            Confirmed::Unanswered => {
                parked.insert(ip, Instant::now() + next_retry(backoff, ip));
            }
            Confirmed::Answered => {
                backoff.remove(&ip);
            }
            // Kept for now, not parked: the answer (gone, or none) wakes the reactor.
            Confirmed::Pending => {}
        }
        let mut findings = {
            let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
            classify_flows(&flows, &ix, &cfg.policy)
        };
        // A ghost without a tombstone: ask the API server who holds the IP.
        match ask_holders(shared, world, cfg, asks, ip, &findings) {
            Asked::Recorded(soon) => {
                // The answer is the change: its flows wait for a sync that began after it.
                if let Err(again) = backend_gate(shared, world, cfg, ip, &mut synced) {
                    parked.insert(ip, Instant::now() + again);
                    continue;
                }
                let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
                findings = classify_flows(&flows, &ix, &cfg.policy);
                if let Some(d) = soon {
                    let due = Instant::now() + d;
                    let p = parked.entry(ip).or_insert(due);
                    *p = (*p).min(due);
                }
            }
            Asked::Unanswered(again) => {
                let due = Instant::now() + again;
                let p = parked.entry(ip).or_insert(due);
                *p = (*p).min(due);
            }
            Asked::No | Asked::Pending => {}
        }
        let n = flows.len() as u64;
        let r = act(
            ct,
            shared,
            world,
            cfg,
            budget,
            PassKind::Targeted,
            findings,
            n,
            n,
            Span {
                started,
                dumped_at: read_at,
            },
            removed_at,
            Some(gate_opened),
        );
        if r.held.as_ref().is_some_and(Hold::lifts_by_itself) {
            held_back.insert(ip);
        }
        if !r.redo_backends.is_empty() {
            parked.insert(ip, Instant::now());
        }
        world.report(&r);
    }
}

/// The time to the next periodic full pass: `interval`, stretched so that a pass that cost `took`
/// of the reactor thread's CPU time (user and system: the kernel's dump runs in the agent's own
/// `recvmsg`) uses at most `cpu_percent` of a core. The fast paths (targeted passes, NEW events)
/// do not wait for it.
fn resync_every(interval: Duration, cpu_percent: f64, took: Duration) -> Duration {
    if !(cpu_percent > 0.0 && cpu_percent.is_finite()) {
        return interval;
    }
    let needed = took.as_secs_f64() * 100.0 / cpu_percent;
    interval.max(
        Duration::try_from_secs_f64(needed)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(3600)),
    )
}

fn absorb(shared: &Shared, w: Work, full: &mut bool, backends: &mut HashSet<IpAddr>) {
    match w {
        Work::Full => *full = true,
        Work::Backend(ip) => {
            backends.insert(ip);
        }
        // Each is looked at again (and waits again if it must).
        Work::KubeProxy => backends.extend(shared.kube_proxy_waiters().drain()),
    }
}

fn expire_tombstones(shared: &Shared, ttl: Duration) {
    let before = |d: Duration| {
        Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(d).unwrap_or_default())
            .unwrap_or(Timestamp::UNIX_EPOCH)
    };
    let cutoff = before(ttl);
    let expired = {
        let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
        if !ix.ip_answers().is_empty() {
            ix.ip_answers_mut().expire(before(IP_ANSWER_TTL));
        }
        ix.expire_pods_left(cutoff);
        ix.tombstones_mut().expire(cutoff)
    };
    // Also while any backend is dead: cheap (nothing is written when the set is unchanged) and
    // it heals a set or filter that missed a change.
    if expired > 0 || !shared.dead_backends().is_empty() {
        shared.refresh_dead_backends();
        let live = shared.dead_backends().clone();
        shared.event_marks.retain(&live);
    }
}

/// Whether kube-proxy has caught up with every change the flows of `ip` lean on: the latest
/// removal among the tombstones at `ip`, the API server's first "no pod at this IP" (a backend
/// without a tombstone), and the agent's baseline (its start, the last removal of a Service)
/// for flows no tombstone covers. `Ok` carries the tombstones' latest removal
/// (for the reaction metrics). `synced` caches kube-proxy's view for the caller's turn.
fn backend_gate(
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    ip: IpAddr,
    synced: &mut Option<KubeProxyView>,
) -> Result<Option<Timestamp>, Duration> {
    let (latest, answered, pod_left) = {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        let latest = ix.tombstones().at(&ip).iter().map(|t| t.removed_at).max();
        // Without a tombstone (the endpoint's removal was hidden from the agent), the pod
        // watch's "deleted" is when the agent learnt of it.
        let pod_left = latest.is_none().then(|| ix.pod_left_at(&ip)).flatten();
        (latest, ix.ip_answers().absent_since(&ip), pod_left)
    };
    // The API server's "no pod at this IP" is when the agent learnt that a backend it never
    // knew (no tombstone) is gone: kube-proxy may not have removed it before then.
    let change = [latest, answered, pod_left]
        .into_iter()
        .flatten()
        .fold(shared.changed_at(), Timestamp::max);
    let view = *synced.get_or_insert_with(|| world.kube_proxy());
    let verdict = gate::kube_proxy_caught_up(
        change,
        &view,
        cfg.grace,
        cfg.kube_proxy_max_wait,
        Timestamp::now(),
    );
    tracing::debug!(
        backend = %ip,
        removed_at = ?latest,
        no_pod_at_ip_since = ?answered,
        pod_left = ?pod_left,
        change = %change,
        sync_began_after = ?view.began_after,
        failing = view.failing,
        hold = ?verdict.as_ref().err().map(|(h, _)| h.label()),
        "gate"
    );
    match verdict {
        Ok(()) => {
            shared.kube_proxy_waiters().remove(&ip);
            Ok(latest)
        }
        Err((_, again)) => {
            shared.kube_proxy_waiters().insert(ip);
            Err(again)
        }
    }
}

/// Asks the API server about the pods named by the tombstones at `ip` — only when this node
/// holds flows to it. Always for a managed endpoint not yet confirmed gone, terminating or not:
/// an endpoint that left its slice while terminating may have been deselected (labels changed,
/// a controller that drops terminating endpoints) and still drain. A pod is its namespace, name
/// and uid: a 404 for `a/web-0` says nothing about `b/web-0`. The lookups run off the reactor
/// ([`World::pod_fate`] returns at once): each tombstone's pod is asked about, whatever the
/// others' answers. While any is unanswered or pending the flows are kept (unknown is not gone).
fn confirm_pods(shared: &Shared, world: &mut impl World, ip: IpAddr) -> Confirmed {
    let asks: Vec<(ObjectKey, Option<crate::cluster::Uid>)> = {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        ix.tombstones()
            .at(&ip)
            .iter()
            .filter(|t| t.managed && !t.pod_gone)
            .filter_map(|t| {
                // A Pod targetRef lives in the namespace of its Service's slices.
                t.pod.as_ref().map(|p| {
                    (
                        ObjectKey {
                            namespace: t.service.namespace.clone(),
                            name: p.name.clone(),
                        },
                        p.uid.clone(),
                    )
                })
            })
            .collect()
    };
    let mut asked: Vec<&ObjectKey> = Vec::new();
    let mut out = Confirmed::Answered;
    for (key, uid) in &asks {
        // Two Services' tombstones may name one pod.
        if asked.contains(&key) {
            continue;
        }
        asked.push(key);
        let uid_text = uid.as_ref().map(|u| u.to_string());
        match world.pod_fate(&key.namespace, &key.name, uid_text.as_deref(), ip) {
            PodFate::Gone => {
                let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                ix.tombstones_mut().mark_pod_gone(&ip, key, uid.as_ref());
            }
            PodFate::Alive => {}
            PodFate::Pending => out = out.max(Confirmed::Pending),
            PodFate::Unknown => out = Confirmed::Unanswered,
        }
    }
    out
}

/// What asking about the pods of a backend's tombstones came to (the worst of its answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Confirmed {
    /// Every pod asked about was answered (or none needed asking).
    Answered,
    /// Some lookup is under way: its answer wakes the reactor; do not park the backend.
    Pending,
    /// Some lookup went unanswered (error, timeout): park the backend with backoff.
    Unanswered,
}

#[allow(clippy::too_many_arguments)]
fn full_pass(
    ct: &mut Conntrack,
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    parked: &mut HashMap<IpAddr, Instant>,
    budget: &mut DeleteBudget,
    backoff: &mut HashMap<IpAddr, Duration>,
    asks: &mut HolderAsks,
) -> PassReport {
    let started = Instant::now();
    // Kept findings no step of this pass can change are counted (and a few kept for the
    // report), not carried through it: the pass's memory follows what it may act on.
    let mut settled = Settled::default();
    let report = {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        scan_into(
            ct,
            &ix,
            &cfg.policy,
            &Filter::default(),
            ScanOptions { tally: true },
            |f| {
                if is_settled(&f, &ix) {
                    settled.take(f);
                    None
                } else {
                    Some(f)
                }
            },
        )
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "full scan failed");
            return PassReport::nothing(PassKind::Full, started);
        }
    };
    let (by_state, by_service) = (report.by_state, report.by_service);
    let service_flows = report.scanned
        - report
            .counts
            .get(&VerdictKind::NotService)
            .copied()
            .unwrap_or(0);
    // Backends whose change kube-proxy may not have programmed yet (removed recently, or
    // no sync since the agent started or a Service was removed) are left to their targeted
    // pass; confirm pods for the others that need it.
    let mut findings = report.findings;
    let backends: BTreeMap<IpAddr, ()> = findings
        .iter()
        .filter(|f| f.verdict.kind.is_stale() || f.verdict.removable)
        .filter_map(|f| f.verdict.backend.map(|b| (b.ip, ())))
        .collect();
    let mut not_yet: HashSet<IpAddr> = HashSet::new();
    let mut synced = None;
    let mut reclassify = false;
    for ip in backends.keys() {
        match backend_gate(shared, world, cfg, *ip, &mut synced) {
            Ok(Some(_)) => {
                match confirm_pods(shared, world, *ip) {
                    Confirmed::Unanswered => {
                        parked.insert(*ip, Instant::now() + next_retry(backoff, *ip));
                    }
                    Confirmed::Answered => {
                        backoff.remove(ip);
                    }
                    // Kept for now; the answer wakes the reactor.
                    Confirmed::Pending => {}
                }
                reclassify = true;
            }
            Ok(None) => {
                // No tombstone, and kube-proxy has synced since the agent started (and the last
                // Service removal): a ghost older than the agent may be proved gone by the API.
                match ask_holders(shared, world, cfg, asks, *ip, &findings) {
                    Asked::Recorded(soon) => {
                        reclassify = true;
                        // The answer is the change: its flows wait for a sync that began
                        // after it (their targeted pass deletes them then).
                        if let Err(again) = backend_gate(shared, world, cfg, *ip, &mut synced) {
                            parked.insert(*ip, Instant::now() + again);
                            not_yet.insert(*ip);
                        } else if let Some(d) = soon {
                            parked.insert(*ip, Instant::now() + d);
                        }
                    }
                    Asked::Unanswered(again) => {
                        parked.insert(*ip, Instant::now() + again);
                    }
                    Asked::No | Asked::Pending => {}
                }
            }
            Err(again) => {
                parked.insert(*ip, Instant::now() + again);
                not_yet.insert(*ip);
            }
        }
    }
    // A removable flow without a backend leans on the baseline alone.
    let baseline_open = gate::kube_proxy_caught_up(
        shared.changed_at(),
        synced.get_or_insert_with(|| world.kube_proxy()),
        cfg.grace,
        cfg.kube_proxy_max_wait,
        Timestamp::now(),
    )
    .is_ok();
    if reclassify {
        // Evidence may have changed (pods confirmed gone): judge the stale flows again.
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        let now = Timestamp::now();
        for f in &mut findings {
            f.verdict = classify(&f.flow, &ix, &cfg.policy, now);
        }
    }
    for f in &mut findings {
        let wait = match f.verdict.backend {
            Some(b) => not_yet.contains(&b.ip),
            None => !baseline_open,
        };
        if wait {
            f.verdict.removable = false;
        }
    }
    let mut r = act(
        ct,
        shared,
        world,
        cfg,
        budget,
        PassKind::Full,
        findings,
        report.scanned,
        service_flows,
        Span {
            started,
            dumped_at: started,
        },
        None,
        None,
    );
    r.by_state = by_state;
    r.by_service = by_service;
    settled.add_to(&mut r);
    r
}

/// A kept finding that nothing later in a full pass can make removable: kept by policy (zone,
/// protocol, namespace, the API servers, unmanaged endpoints, the mode annotation), or for lack
/// of evidence (or of a known age) when its start is unknown and there is no tombstone at its
/// backend: no pod GET can speak for it, and an answer of the API server proves nothing about a
/// flow of unknown age (the agent does not even ask).
fn is_settled(f: &Finding, ix: &Index) -> bool {
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
struct Settled {
    stale: BTreeMap<StaleKey, u64>,
    shown: Vec<Finding>,
    not_shown: u64,
}

impl Settled {
    fn take(&mut self, f: Finding) {
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
    fn add_to(self, r: &mut PassReport) {
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

/// When a pass began, and when the flows it judges were read from the kernel (a prefetched
/// snapshot is older than its pass): the sweep refuses verdicts from a dump older than its
/// `max_verdict_age`.
#[derive(Debug, Clone, Copy)]
struct Span {
    started: Instant,
    dumped_at: Instant,
}

/// Applies the global gate and the circuit breakers (this pass's share, and the budget across
/// passes), then deletes.
#[allow(clippy::too_many_arguments)]
fn act(
    ct: &mut Conntrack,
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    budget: &mut DeleteBudget,
    kind: PassKind,
    findings: Vec<Finding>,
    scanned: u64,
    service_flows: u64,
    span: Span,
    removed_at: Option<Timestamp>,
    gate_opened: Option<Instant>,
) -> PassReport {
    let Span { started, dumped_at } = span;
    let planned = findings.iter().filter(|f| f.verdict.removable).count() as u64;
    let mut held = world.global().check().err();
    let trips = kind == PassKind::Full && cfg.breaker.trips(planned, service_flows)
        || planned > cfg.breaker.max_deletes_per_pass;
    if held.is_none() && trips {
        tracing::warn!(
            planned,
            service_flows,
            "circuit breaker open: too many removals at once; reporting only"
        );
        held = Some(Hold::CircuitOpen);
    }
    if held.is_none() && planned > 0 {
        if let Err(trip) = budget.admit(planned, Instant::now()) {
            if let Some(t) = trip {
                world.circuit_tripped(&t);
            }
            held = Some(Hold::CircuitOpen);
        }
    }
    let circuit_open = trips || budget.tripped().is_some();
    shared.circuit_open.store(circuit_open, Ordering::Relaxed);
    let dry = held.is_some() || planned == 0;
    let (outcomes, totals) = match sweep(ct, &findings, dry, dumped_at) {
        Ok((o, t, _)) => (o, t),
        Err(e) => {
            tracing::warn!(error = %e, "delete failed");
            (
                vec![Outcome::Failed; findings.len()],
                SweepTotals {
                    failed: planned,
                    ..Default::default()
                },
            )
        }
    };
    budget.spend(totals.deleted, Instant::now());
    let held = if planned > 0 { held } else { None };
    let stale = stale_counts(&findings);
    let mut held_backends: Vec<IpAddr> = Vec::new();
    if held.is_some() {
        for f in findings.iter().filter(|f| f.verdict.removable) {
            if let Some(b) = f.verdict.backend {
                if !held_backends.contains(&b.ip) {
                    held_backends.push(b.ip);
                }
            }
        }
    }
    let mut redo_backends: Vec<IpAddr> = Vec::new();
    for (f, o) in findings.iter().zip(&outcomes) {
        if *o == Outcome::StaleVerdict {
            if let Some(b) = f.verdict.backend {
                if !redo_backends.contains(&b.ip) {
                    redo_backends.push(b.ip);
                }
            }
        }
    }
    if !redo_backends.is_empty() {
        tracing::info!(
            backends = redo_backends.len(),
            flows = totals.stale_verdict,
            "verdicts older than the sweep allows (slow pass or pod lookups): judging those backends again"
        );
    }
    let (findings, not_shown) = keep_shown(findings.into_iter().zip(outcomes));
    PassReport {
        kind,
        started,
        elapsed: started.elapsed(),
        scanned,
        service_flows,
        findings,
        not_shown,
        stale,
        held_backends,
        redo_backends,
        totals,
        held,
        circuit_open,
        removed_at,
        gate_opened,
        by_state: BTreeMap::new(),
        by_service: HashMap::new(),
    }
}

/// Every finding the sweep acted on, and the first [`MAX_KEPT_SHOWN`] kept ones; and how many
/// kept ones were left out.
fn keep_shown(all: impl Iterator<Item = (Finding, Outcome)>) -> (Vec<(Finding, Outcome)>, u64) {
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

/// Backends that left a Service (or whose pod just ended), from an index change: what the
/// reactor should look at.
pub fn work_from_changes(changes: &crate::cluster::Changes) -> Vec<Work> {
    let mut w: Vec<Work> = Vec::new();
    let mut seen = HashSet::new();
    let ips = changes
        .endpoints_removed
        .iter()
        .chain(&changes.endpoints_added)
        .map(|(_, ip)| ip)
        .chain(&changes.pods_ended);
    for ip in ips {
        if seen.insert(*ip) {
            w.push(Work::Backend(*ip));
        }
    }
    if !changes.services_removed.is_empty() {
        w.push(Work::Full);
    }
    w
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{EvidenceSet, Trace, Verdict};
    use ctnetlink::{Flow, Status, Tuple};
    use std::net::Ipv4Addr;

    fn finding(sport: u16, removable: bool) -> Finding {
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
        let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
        let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        Finding {
            flow: {
                let mut fl = Flow::new(
                    Tuple::ports(client, sport, vip, 5432, 6),
                    Tuple::ports(pod, 5432, client, sport, 6),
                );
                fl.status = Status::DST_NAT;
                fl.timeout = Some(100);
                fl.id = Some(u32::from(sport));
                fl
            },
            verdict: Verdict {
                kind: VerdictKind::EndpointGone,
                evidence: EvidenceSet::default(),
                half_open: false,
                removable,
                kept_because: None,
                service: None,
                backend: Some(crate::verdict::Backend {
                    ip: pod,
                    port: 5432,
                }),
                now_owned_by: None,
                trace: Trace::default(),
            },
        }
    }

    /// Issue #12 §3: 100,000 kept stale flows must not be carried (cloned, ~700 B each) in a
    /// pass report: the counts stay exact, the details are capped; acted-on flows are all kept.
    #[test]
    fn a_pass_report_counts_every_kept_flow_and_details_a_few() {
        let n = 100_000usize;
        let all = (0..n).map(|i| {
            let o = if i < 3 {
                Outcome::Deleted
            } else {
                Outcome::Kept
            };
            (finding((i % 60_000) as u16, false), o)
        });
        let (shown, not_shown) = keep_shown(all);
        assert_eq!(shown.len(), 3 + MAX_KEPT_SHOWN);
        assert_eq!(not_shown, (n - 3 - MAX_KEPT_SHOWN) as u64);
        assert_eq!(
            shown.iter().filter(|(_, o)| *o == Outcome::Deleted).count(),
            3
        );
        // The counts for metrics are taken before the cap, over every finding.
        let many: Vec<Finding> = (0..1_000).map(|i| finding(i, false)).collect();
        let stale = stale_counts(&many);
        assert_eq!(stale.values().sum::<u64>(), 1_000);
    }

    /// Issue #12 §3, bounded memory: the kept findings no step of a full pass can change are
    /// counted and not carried — kept by policy, or of unknown age with no tombstone at the
    /// backend. Unknown age *with* a tombstone is carried (its pod GET may prove it gone), as is
    /// every finding that may still be removed or that an API answer may settle.
    #[test]
    fn only_kept_findings_nothing_in_the_pass_can_change_are_settled() {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let mut ix = index_with_services(&[&["10.96.0.10"]]);
        // Of unknown age (the helper's flows have no start).
        let kept = |why: Option<KeepReason>| {
            let mut f = finding(40_000, false);
            f.verdict.kept_because = why;
            f
        };
        let known_age = |why: KeepReason| {
            let mut f = kept(Some(why));
            f.flow.start_ns = Some(1);
            f
        };
        for why in [
            KeepReason::Zone,
            KeepReason::Protocol,
            KeepReason::Namespace,
            KeepReason::ApiServer,
            KeepReason::Unmanaged,
            KeepReason::Annotation,
            KeepReason::UnknownAge,
            KeepReason::NoEvidence,
        ] {
            assert!(is_settled(&kept(Some(why)), &ix), "{why:?}");
        }
        // Of known age, the API server may be asked about it: carried.
        assert!(!is_settled(&known_age(KeepReason::NoEvidence), &ix));
        assert!(is_settled(&known_age(KeepReason::Annotation), &ix));
        for why in [
            None,
            Some(KeepReason::NewerThanApiAnswer),
            Some(KeepReason::LivePod),
            Some(KeepReason::NewerThanSnapshot),
        ] {
            assert!(!is_settled(&kept(why), &ix), "{why:?}");
        }
        let mut removable = kept(Some(KeepReason::Annotation));
        removable.verdict.removable = true;
        assert!(!is_settled(&removable, &ix));
        // A tombstone at the backend: its pod GET may still make the flow removable.
        ix.tombstones_mut().bury(tombstone("shop", "web-0", ip));
        assert!(!is_settled(&kept(Some(KeepReason::UnknownAge)), &ix));
        assert!(!is_settled(&kept(Some(KeepReason::NoEvidence)), &ix));
        assert!(is_settled(&kept(Some(KeepReason::Annotation)), &ix));
    }

    /// Settled findings reach the report's counts in full, and its details within the cap of
    /// kept ones the pass's own findings left.
    #[test]
    fn settled_findings_are_counted_in_full_and_shown_within_the_cap() {
        let mut settled = Settled::default();
        let n = MAX_KEPT_SHOWN + 1_000;
        for i in 0..n {
            let mut f = finding((i % 60_000) as u16, false);
            f.verdict.kept_because = Some(KeepReason::UnknownAge);
            settled.take(f);
        }
        assert_eq!(settled.shown.len(), MAX_KEPT_SHOWN);
        let own_kept = 10;
        let mut r = PassReport {
            findings: (0..own_kept)
                .map(|i| (finding(i, false), Outcome::Kept))
                .chain([(finding(99, true), Outcome::Deleted)])
                .collect(),
            not_shown: 5,
            stale: stale_counts(&[finding(1, false)]),
            ..PassReport::nothing(PassKind::Full, Instant::now())
        };
        settled.add_to(&mut r);
        assert_eq!(r.stale.values().sum::<u64>(), 1 + n as u64);
        let kept = r
            .findings
            .iter()
            .filter(|(_, o)| *o == Outcome::Kept)
            .count();
        assert_eq!(kept, MAX_KEPT_SHOWN);
        assert_eq!(r.findings.len(), MAX_KEPT_SHOWN + 1);
        // Every stale flow is either shown or counted as not shown.
        assert_eq!(
            r.findings.len() as u64 + r.not_shown,
            (own_kept as u64 + 1 + 5) + n as u64
        );
    }

    fn index_with_services(cluster_ips: &[&[&str]]) -> Index {
        let mut ix = Index::new(crate::cluster::IndexConfig::default());
        for (i, ips) in cluster_ips.iter().enumerate() {
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{i}"), "namespace": "ns", "uid": format!("u{i}")},
                "spec": {"clusterIP": ips[0], "clusterIPs": ips, "selector": {"app": "x"},
                         "ports": [{"name": "http", "port": 80}], "type": "ClusterIP"}
            }))
            .unwrap();
            ix.apply(crate::cluster::Event::Apply(svc.into()), Timestamp::now())
                .unwrap();
        }
        ix
    }

    /// The API server's `status.podIP` selector matches a pod's first IP only: an empty answer
    /// is absence only on a single-stack cluster of the IP's family.
    #[test]
    fn an_empty_answer_is_absence_only_on_a_single_stack_cluster() {
        let v4: IpAddr = "10.244.0.2".parse().unwrap();
        let v6: IpAddr = "fd00:10:244::2".parse().unwrap();
        let single = index_with_services(&[&["10.96.0.10"], &["10.96.0.11"]]);
        assert!(empty_answer_is_absence(&single, &v4));
        assert!(!empty_answer_is_absence(&single, &v6));
        let dual = index_with_services(&[&["10.96.0.10"], &["10.96.0.11", "fd00:10:96::11"]]);
        assert!(!empty_answer_is_absence(&dual, &v4));
        assert!(!empty_answer_is_absence(&dual, &v6));
        // Nothing known of the cluster's families: unknown.
        let none = index_with_services(&[]);
        assert!(!empty_answer_is_absence(&none, &v4));
    }

    /// Asked only for stale TCP/UDP/SCTP flows kept for lack of evidence, of known age, with
    /// nothing in the index at the IP.
    #[test]
    fn only_ghosts_kept_for_lack_of_evidence_are_asked_about() {
        let ix = index_with_services(&[&["10.96.0.10"]]);
        let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let ghost = |f: fn(&mut Finding)| {
            let mut g = finding(40000, false);
            g.flow.start_ns = Some(1);
            g.verdict.kept_because = Some(KeepReason::NoEvidence);
            f(&mut g);
            g
        };
        assert!(wants_holders(&ix, &pod, &[ghost(|_| {})]));
        assert!(!wants_holders(
            &ix,
            &pod,
            &[ghost(|g| g.flow.start_ns = None)]
        ));
        // UDP too: without a tombstone, UDP alone is no evidence in the agent's view.
        assert!(wants_holders(
            &ix,
            &pod,
            &[ghost(|g| {
                g.flow.orig.proto = 17;
            })]
        ));
        assert!(!wants_holders(
            &ix,
            &pod,
            &[ghost(|g| {
                g.flow.orig.proto = 1;
            })]
        ));
        assert!(!wants_holders(
            &ix,
            &pod,
            &[ghost(|g| {
                g.verdict.kept_because = Some(KeepReason::LivePod);
            })]
        ));
        assert!(!wants_holders(
            &ix,
            &pod,
            &[ghost(|g| g.verdict.removable = true)]
        ));
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        assert!(!wants_holders(&ix, &other, &[ghost(|_| {})]));
    }

    /// A World whose pod lookups answer from a table (what the agent's lookups would have
    /// answered by now), and which records what was asked.
    struct Answers {
        fates: HashMap<String, PodFate>,
        asked: Vec<String>,
    }

    impl World for Answers {
        fn kube_proxy(&mut self) -> KubeProxyView {
            KubeProxyView::default()
        }
        fn pod_fate(&mut self, ns: &str, name: &str, _: Option<&str>, _: IpAddr) -> PodFate {
            let pod = format!("{ns}/{name}");
            self.asked.push(pod.clone());
            self.fates[&pod]
        }
        fn global(&mut self) -> Global {
            Global::default()
        }
        fn report(&mut self, _: &PassReport) {}
    }

    fn tombstone(ns: &str, pod: &str, ip: IpAddr) -> crate::cluster::Tombstone {
        crate::cluster::Tombstone {
            service: ObjectKey::new(ns, "web"),
            ip,
            ports: Vec::new(),
            pod: Some(crate::cluster::PodTarget {
                name: Name::new(pod),
                uid: None,
            }),
            conditions: crate::cluster::Conditions::new(true, true, false),
            managed: true,
            removed_at: Timestamp::now(),
            pod_gone: false,
        }
    }

    /// kube-proxy as a test sets it, and the API server's answer about every IP.
    struct Proxy {
        view: KubeProxyView,
        holders: HoldersAnswer,
    }

    impl Proxy {
        /// A readable kube-proxy whose last successful sync began after `t`.
        fn synced_after(t: Timestamp) -> Proxy {
            Proxy {
                view: KubeProxyView {
                    readable: true,
                    last_success: Some(t),
                    began_after: Some(t),
                    failing: false,
                },
                holders: HoldersAnswer::Unknown,
            }
        }
    }

    impl World for Proxy {
        fn kube_proxy(&mut self) -> KubeProxyView {
            self.view
        }
        fn pod_fate(&mut self, _: &str, _: &str, _: Option<&str>, _: IpAddr) -> PodFate {
            PodFate::Unknown
        }
        fn ip_holders(&mut self, _: IpAddr) -> HoldersAnswer {
            self.holders
        }
        fn global(&mut self) -> Global {
            Global::default()
        }
        fn report(&mut self, _: &PassReport) {}
    }

    fn test_config() -> ReactorConfig {
        ReactorConfig {
            policy: Policy::default(),
            grace: Duration::from_secs(5),
            kube_proxy_max_wait: Duration::from_secs(60),
            resync_interval: Duration::from_secs(60),
            resync_cpu_percent: 0.0,
            breaker: Breaker::default(),
            tombstone_ttl: Duration::from_secs(600),
            ip_lookup_every: Duration::from_secs(30),
        }
    }

    /// The soak in CI (a pod made and deleted while the slice watch was silent, so without a
    /// tombstone): the API server's "no pod at this IP" came 0.15 s after the deletion, and the
    /// agent deleted the flows at once — the gate had compared kube-proxy's last sync with the
    /// agent's start, not with the answer, and the sync that removed the pod began 0.43 s after
    /// the deletion. The answer is when the agent learnt of the change: the gate waits for a
    /// sync that began after it.
    #[test]
    fn an_answer_that_no_pod_holds_the_ip_waits_for_a_sync_that_began_after_it() {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
        let cfg = test_config();
        let secs = |s: i64| {
            Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        let answered = secs(10);
        shared
            .index
            .write()
            .unwrap()
            .ip_answers_mut()
            .record_absent(ip, answered);
        let world = Proxy::synced_after;
        // A sync that began after the agent started, but before the answer: not yet.
        let r = backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None);
        assert!(
            r.is_err(),
            "the gate opened on a sync that began before the API said the IP was free"
        );
        // One that began after it: open.
        let r = backend_gate(&shared, &mut world(secs(11)), &cfg, ip, &mut None);
        assert_eq!(r, Ok(None));
    }

    /// The same for a backend whose endpoint's removal the agent never saw (a silent slice
    /// watch) but whose pod this node's pod watch saw deleted: that is the change. With a
    /// tombstone at the IP the endpoint's removal stays the change (kube-proxy programs
    /// endpoints; a pod deleted long after its endpoint left needs no new sync).
    #[test]
    fn a_pod_seen_gone_without_a_tombstone_waits_for_a_sync_that_began_after_it() {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
        let cfg = test_config();
        let t0 = Timestamp::now();
        let secs = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "dns-0", "namespace": "ns", "uid": "p1",
                         "creationTimestamp": "2025-06-01T10:00:00Z"},
            "spec": {"nodeName": "n"},
            "status": {"phase": "Running", "podIP": "203.0.113.7",
                       "podIPs": [{"ip": "203.0.113.7"}]}
        }))
        .unwrap();
        {
            let mut ix = shared.index.write().unwrap();
            ix.apply(crate::cluster::Event::Apply(pod.clone().into()), secs(1))
                .unwrap();
            ix.apply(crate::cluster::Event::Delete(pod.into()), secs(10))
                .unwrap();
            assert_eq!(ix.pod_left_at(&ip), Some(secs(10)));
        }
        let world = Proxy::synced_after;
        assert!(backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None).is_err());
        assert!(backend_gate(&shared, &mut world(secs(11)), &cfg, ip, &mut None).is_ok());
        // A tombstone at the IP: its removal (now) is the change, not the pod's deletion.
        shared
            .index
            .write()
            .unwrap()
            .tombstones_mut()
            .bury(tombstone("ns", "dns-0", ip));
        assert!(backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None).is_ok());
    }

    /// The reactor's side of the lookups: every tombstone's pod is asked about (none waits for
    /// another); a gone answer marks only its own tombstone; a pending lookup keeps the flows
    /// without parking the backend (its answer wakes the reactor); an unanswered one parks it
    /// with backoff, whatever else is pending.
    #[test]
    fn pending_lookups_keep_the_flows_and_only_unanswered_ones_park() {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
        {
            let mut ix = shared.index.write().unwrap();
            for ns in ["a", "b", "c"] {
                ix.tombstones_mut().bury(tombstone(ns, "web-0", ip));
            }
        }
        let gone = |shared: &Shared| -> Vec<String> {
            let ix = shared.index.read().unwrap();
            let at = ix.tombstones().at(&ip);
            at.iter()
                .filter(|t| t.pod_gone)
                .map(|t| t.service.namespace.to_string())
                .collect()
        };
        let world = |a, b, c| Answers {
            fates: [("a/web-0", a), ("b/web-0", b), ("c/web-0", c)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            asked: Vec::new(),
        };
        let mut w = world(PodFate::Pending, PodFate::Gone, PodFate::Alive);
        assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Pending);
        assert_eq!(w.asked.len(), 3);
        assert_eq!(gone(&shared), ["b"]);
        // b is confirmed: not asked again.
        let mut w = world(PodFate::Unknown, PodFate::Gone, PodFate::Pending);
        assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Unanswered);
        assert_eq!(w.asked, ["a/web-0", "c/web-0"]);
        let mut w = world(PodFate::Alive, PodFate::Gone, PodFate::Gone);
        assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Answered);
        assert_eq!(gone(&shared), ["b", "c"]);
    }

    /// An empty answer taken 1 s after a ghost began proves nothing about it with a 2 s skew
    /// margin: the backend is asked about again once it can (start + skew), not after
    /// `--ip-lookup-every` — a pod made and deleted while a watch was down leaves exactly such
    /// ghosts (the soak's silent watch). An answer that covers every flow needs no second one.
    #[test]
    fn an_answer_too_close_to_the_flows_is_asked_for_again_soon() {
        let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let skew = Duration::from_secs(2);
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |secs: f64| {
            t0.checked_add(jiff::SignedDuration::from_secs_f64(secs))
                .unwrap()
        };
        let began = |secs: f64| {
            let mut f = finding(40_000, false);
            f.flow.start_ns = Some(at(secs).as_nanosecond() as u64);
            f
        };
        // Began at 0, answered at 1: ask again at 0 + 2 + 0.5, i.e. 1.5 s after the answer.
        let d = ask_again_after(&[began(0.0)], pod, at(1.0), skew).unwrap();
        assert_eq!(d, Duration::from_millis(1500));
        // The latest flow counts; never sooner than a second.
        let d = ask_again_after(&[began(0.0), began(0.5)], pod, at(2.4), skew).unwrap();
        assert_eq!(d, Duration::from_secs(1));
        let d = ask_again_after(&[began(0.0), began(3.0)], pod, at(1.0), skew).unwrap();
        assert_eq!(d, Duration::from_millis(4500));
        // Every flow older than the answer beyond the skew: nothing to ask.
        assert_eq!(ask_again_after(&[began(0.0)], pod, at(2.5), skew), None);
        // Removable ones, flows of unknown age and other backends do not count.
        let mut removable = began(0.0);
        removable.verdict.removable = true;
        let unknown_age = finding(40_001, false);
        assert_eq!(
            ask_again_after(&[removable, unknown_age], pod, at(1.0), skew),
            None
        );
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8));
        assert_eq!(ask_again_after(&[began(0.0)], other, at(1.0), skew), None);
    }

    #[test]
    fn a_long_full_pass_stretches_the_resync_interval() {
        let min = Duration::from_secs(60);
        // 0.3 s at 0.9 %: 33 s of budget, the interval wins.
        assert_eq!(resync_every(min, 0.9, Duration::from_millis(300)), min);
        // 1.08 s at 0.9 %: 120 s.
        let e = resync_every(min, 0.9, Duration::from_millis(1080));
        assert!((e.as_secs_f64() - 120.0).abs() < 0.01, "{e:?}");
        // Disabled, or nonsense: the interval.
        assert_eq!(resync_every(min, 0.0, Duration::from_secs(5)), min);
        assert_eq!(resync_every(min, f64::NAN, Duration::from_secs(5)), min);
        // Never beyond an hour.
        assert_eq!(
            resync_every(min, 0.001, Duration::from_secs(100)),
            Duration::from_secs(3600)
        );
    }
}
